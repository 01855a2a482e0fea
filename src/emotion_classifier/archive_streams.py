"""Byte streams over archive files: split zip pieces read as one file, and a decompressed tar
stream that cannot be read past a limit."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from emotion_classifier.errors import PipelineError


class ConcatenatedFile(io.RawIOBase):
    """A read-only, seekable view of several files one after another (split zip pieces).

    zipfile reads the central directory at the end and then seeks back to each entry, so the
    pieces are read in place instead of being joined into a temporary copy of the whole zip.
    """

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._handles: list[BinaryIO] = []
        self._starts: list[int] = []
        total = 0
        try:
            for path in paths:
                self._handles.append(open(path, "rb"))
                self._starts.append(total)
                total += path.stat().st_size
        except BaseException:
            self.close()
            raise
        self._size = total
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        written = 0
        while written < len(view) and self._position < self._size:
            # The last piece whose start is at or before the current position holds it.
            index = max(i for i, start in enumerate(self._starts) if start <= self._position)
            handle = self._handles[index]
            handle.seek(self._position - self._starts[index])
            count = handle.readinto(view[written:])
            if not count:
                break
            written += count
            self._position += count
        return written

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


# The first bytes of each compressed stream tar archives come in, and the module that reads it.
_TAR_COMPRESSIONS = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


class _BoundedStream(io.RawIOBase):
    """A decompressed stream that refuses to be read past ``limit`` bytes.

    tarfile reads some headers (pax, GNU long names) into memory whole, whatever size they
    claim; reading through this keeps a decompression bomb hidden in one from exhausting memory.
    """

    def __init__(self, stream, limit: int, label: str):
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._label = label

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._stream.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        room = self._limit - self._stream.tell()
        data = self._stream.read(room + 1 if size is None or size < 0 or size > room else size)
        if self._stream.tell() > self._limit:
            raise PipelineError(
                f"{self._label}: refused as a possible decompression bomb: its decompressed content passes "
                f"{self._limit:,} bytes, beyond get_data.max_expansion_ratio or get_data.max_extracted_gb; "
                "nothing was kept (raise the limit if the archive is genuine)"
            )
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def open_tar_stream(path: Path, limit: int, label: str) -> _BoundedStream:
    raw = open(path, "rb")
    try:
        magic = raw.read(6)
        raw.seek(0)
        opener = next((opener for prefix, opener in _TAR_COMPRESSIONS if magic.startswith(prefix)), None)
        return _BoundedStream(raw if opener is None else opener(raw), limit, label)
    except BaseException:
        raw.close()
        raise
