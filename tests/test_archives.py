"""Safe extraction: real zip and tar archives built in a temporary folder."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import shutil
import stat
import struct
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies

from emotion_classifier import archive_readers, archive_sets, archives
from emotion_classifier.errors import PipelineError

CONTENT = {
    "dataset/train/happy/a.jpg": b"happy image a",
    "dataset/train/sad/b.jpg": b"sad image b" * 100,
    "dataset/labels.csv": b"filename,label\ntrain/happy/a.jpg,happy\n",
}


def make_zip(path: Path, content: dict[str, bytes] = CONTENT) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, mode: str = "w", content: dict[str, bytes] = CONTENT) -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in content.items():
            add_tar_entry(archive, name, data)
    return path


def add_tar_entry(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
                  linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tree_contents(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != archives.MARKER_NAME
    }


def assert_nothing_extracted(destination: Path) -> None:
    assert not destination.exists()
    leftovers = [path.name for path in destination.parent.iterdir() if path.name.startswith(f".{destination.name}.")]
    assert leftovers == []


@pytest.mark.parametrize(
    "name, builder",
    [
        ("data.zip", make_zip),
        ("data.tar", lambda path: make_tar(path, "w")),
        ("data.tar.gz", lambda path: make_tar(path, "w:gz")),
        ("data.tgz", lambda path: make_tar(path, "w:gz")),
        ("data.tar.bz2", lambda path: make_tar(path, "w:bz2")),
        ("data.tar.xz", lambda path: make_tar(path, "w:xz")),
    ],
)
def test_extracts_every_format_with_marker(tmp_path, name, builder):
    archive = builder(tmp_path / name)
    destination = tmp_path / "out" / "data"
    assert archives.extract_archive(archive, destination) == destination
    assert tree_contents(destination) == CONTENT
    marker = archives.files.read_json(destination / archives.MARKER_NAME)
    assert marker["archives"][0]["name"] == name
    assert marker["archives"][0]["size"] == archive.stat().st_size
    assert marker["archives"][0]["md5"] == archives.files.file_digest(archive)
    assert marker["files"] == len(CONTENT)
    assert archive_sets.archive_set_name([archive]) == "data"


def test_split_zip_pieces_are_extracted_as_one_archive(tmp_path):
    whole = make_zip(tmp_path / "whole.zip").read_bytes()
    pieces_folder = tmp_path / "pieces"
    pieces_folder.mkdir()
    piece_size = len(whole) // 3 + 1
    for index in range(3):
        (pieces_folder / f"AffectNet.zip.{index + 1:03d}").write_bytes(whole[index * piece_size:(index + 1) * piece_size])
    (pieces_folder / "notes.txt").write_text("not an archive")
    (pieces_folder / "fer.tar.gz").write_bytes(b"")
    sets = archive_sets.find_archive_sets(sorted(pieces_folder.iterdir(), reverse=True))
    assert [[path.name for path in archive_set] for archive_set in sets] == [
        ["AffectNet.zip.001", "AffectNet.zip.002", "AffectNet.zip.003"],
        ["fer.tar.gz"],
    ]
    assert archive_sets.archive_set_name(sets[0]) == "AffectNet"
    destination = tmp_path / "extracted" / "AffectNet"
    archives.extract_archive(sets[0], destination)
    assert tree_contents(destination) == CONTENT
    assert len(archives.files.read_json(destination / archives.MARKER_NAME)["archives"]) == 3


def test_split_zip_with_a_missing_piece_is_refused(tmp_path):
    whole = make_zip(tmp_path / "whole.zip").read_bytes()
    half = len(whole) // 2
    first = tmp_path / "X.zip.001"
    third = tmp_path / "X.zip.003"
    first.write_bytes(whole[:half])
    third.write_bytes(whole[half:])
    with pytest.raises(PipelineError, match=r"missing"):
        archives.extract_archive([first, third], tmp_path / "X")
    assert_nothing_extracted(tmp_path / "X")


def test_rar_volumes_are_grouped(tmp_path):
    names = ["Set.part2.rar", "Set.part1.rar", "Old.rar", "Old.r00", "Old.r01", "single.rar", ".hidden.zip"]
    sets = archive_sets.find_archive_sets([tmp_path / name for name in names])
    assert [[path.name for path in archive_set] for archive_set in sets] == [
        ["Old.rar", "Old.r00", "Old.r01"],
        ["Set.part1.rar", "Set.part2.rar"],
        ["single.rar"],
    ]


def zip_with_entry(path: Path, info: zipfile.ZipInfo, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good/first.jpg", b"fine")
        archive.writestr(info, data)
    return path


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "entry, data, reason",
    [
        (zipfile.ZipInfo("good/../../evil.jpg"), b"x", "'..'"),
        (zipfile.ZipInfo("/tmp/evil.jpg"), b"x", "absolute path"),
        (zipfile.ZipInfo("..\\evil.jpg"), b"x", "'..'"),
        (symlink_info("good/link"), b"../../outside", "points outside"),
        (symlink_info("good/abs_link"), b"/etc/passwd", "absolute"),
    ],
)
def test_unsafe_zip_entries_are_refused(tmp_path, entry, data, reason):
    archive = zip_with_entry(tmp_path / "bad.zip", entry, data)
    destination = tmp_path / "out" / "bad"
    with pytest.raises(archives.UnsafeArchiveError, match=reason) as caught:
        archives.extract_archive(archive, destination)
    assert "bad.zip" in str(caught.value) and repr(entry.filename) in str(caught.value)
    assert_nothing_extracted(destination)
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize(
    "name, kind, linkname, reason",
    [
        ("../evil.txt", tarfile.REGTYPE, "", "'..'"),
        ("/abs/evil.txt", tarfile.REGTYPE, "", "absolute path"),
        ("sub/link", tarfile.SYMTYPE, "../../outside.txt", "points outside"),
        ("sub/hard", tarfile.LNKTYPE, "../outside.txt", "hard link"),
        ("sub/hard_abs", tarfile.LNKTYPE, "/etc/passwd", "hard link to an absolute path"),
        ("sub/fifo", tarfile.FIFOTYPE, "", "fifo"),
        ("sub/device", tarfile.CHRTYPE, "", "device"),
    ],
)
def test_unsafe_tar_entries_are_refused_before_writing(tmp_path, name, kind, linkname, reason):
    archive_path = tmp_path / "bad.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        add_tar_entry(archive, "sub/ok.jpg", b"written first if we were careless")
        add_tar_entry(archive, name, b"evil" if kind == tarfile.REGTYPE else b"", kind, linkname)
    destination = tmp_path / "out" / "bad"
    with pytest.raises(archives.UnsafeArchiveError, match=reason) as caught:
        archives.extract_archive(archive_path, destination)
    assert "bad.tar.gz" in str(caught.value) and repr(name) in str(caught.value)
    assert_nothing_extracted(destination)
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_links_inside_the_tree_become_regular_files_not_symlinks(tmp_path):
    archive_path = tmp_path / "links.tar"
    with tarfile.open(archive_path, "w") as archive:
        add_tar_entry(archive, "images/a.jpg", b"picture")
        add_tar_entry(archive, "images/alias.jpg", kind=tarfile.SYMTYPE, linkname="a.jpg")
        add_tar_entry(archive, "copy/hard.jpg", kind=tarfile.LNKTYPE, linkname="images/a.jpg")
        add_tar_entry(archive, "images/folder_link", kind=tarfile.SYMTYPE, linkname=".")
    destination = archives.extract_archive(archive_path, tmp_path / "links")
    for name in ("images/alias.jpg", "copy/hard.jpg"):
        path = destination / name
        assert not path.is_symlink()
        assert path.read_bytes() == b"picture"
    assert not (destination / "images" / "folder_link").exists()
    assert not any(path.is_symlink() for path in destination.rglob("*"))


def test_marker_skips_a_second_extraction(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = tmp_path / "data"
    archives.extract_archive(archive, destination)
    marker_time = (destination / archives.MARKER_NAME).stat().st_mtime_ns

    def must_not_open(plan):
        raise AssertionError("the archive was opened again")

    monkeypatch.setattr(archives, "open_reader", must_not_open)
    assert archives.extract_archive(archive, destination) == destination
    assert (destination / archives.MARKER_NAME).stat().st_mtime_ns == marker_time
    # A changed archive is extracted again.
    monkeypatch.undo()
    make_zip(archive, {"other.jpg": b"new content"})
    archives.extract_archive(archive, destination)
    assert tree_contents(destination) == {"other.jpg": b"new content"}


def test_interrupted_extraction_leaves_no_destination(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = tmp_path / "out" / "data"
    original = archives._write_member
    calls = []

    def fail_on_second(reader, member, target, budget):
        calls.append(member.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(reader, member, target, budget)

    monkeypatch.setattr(archives, "_write_member", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        archives.extract_archive(archive, destination)
    assert_nothing_extracted(destination)


def test_failed_re_extraction_keeps_the_previous_tree(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    destination = archives.extract_archive(archive, tmp_path / "data")
    monkeypatch.setattr(archives, "_write_member", lambda *arguments: (_ for _ in ()).throw(OSError("disk error")))
    with pytest.raises(PipelineError, match="disk error"):
        archives.extract_archive(archive, destination, force=True)
    assert tree_contents(destination) == CONTENT


def test_not_enough_disk_space_is_reported(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "data.zip")
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(PipelineError, match="not enough free disk space"):
        archives.extract_archive(archive, tmp_path / "data")
    assert_nothing_extracted(tmp_path / "data")


def test_rar_without_backend_names_the_tools_to_install(tmp_path, monkeypatch):
    rarfile = pytest.importorskip("rarfile")

    def no_tool(*arguments, **keywords):
        raise rarfile.RarCannotExec("Cannot find working tool")

    monkeypatch.setattr(rarfile, "tool_setup", no_tool)
    archive = tmp_path / "AffectNet.part1.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x01\x00")
    with pytest.raises(PipelineError, match=r"unrar.*unar.*bsdtar.*7z") as caught:
        archives.extract_archive(archive, tmp_path / "AffectNet")
    assert "apt install unrar" in str(caught.value)
    assert_nothing_extracted(tmp_path / "AffectNet")


def rar4_block(head_type: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    """One RAR 4 block: CRC16 (low half of the CRC32 of the rest of the header), type, flags, size."""
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def make_rar4(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """Write a RAR 4 archive of stored (uncompressed) Unix entries: (name, data, mode).

    No tool can create RAR files freely, but stored entries are simple enough to write here,
    and rarfile reads them without an external tool.
    """
    content = b"Rar!\x1a\x07\x00" + rar4_block(0x73, 0, struct.pack("<HI", 0, 0))
    dos_time = (44 << 25) | (1 << 21) | (1 << 16)  # 2024-01-01
    for name, data, mode in entries:
        encoded = name.encode()
        body = struct.pack(
            "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), dos_time, 20, 0x30, len(encoded), mode
        ) + encoded
        content += rar4_block(0x74, 0x8000, body, data)
    path.write_bytes(content + rar4_block(0x7B, 0, b""))
    return path


@pytest.fixture
def rar_backend_present(monkeypatch):
    """Pretend a RAR tool is installed: stored entries are read by rarfile itself."""
    rarfile = pytest.importorskip("rarfile")
    monkeypatch.setattr(rarfile, "tool_setup", lambda *arguments, **keywords: None)


def test_rar_archive_is_extracted_through_rarfile(tmp_path, rar_backend_present):
    entries = [(name, data, stat.S_IFREG | 0o644) for name, data in CONTENT.items()]
    entries.append(("dataset/alias.jpg", b"train/happy/a.jpg", stat.S_IFLNK | 0o777))
    archive = make_rar4(tmp_path / "data.rar", entries)
    destination = archives.extract_archive(archive, tmp_path / "data")
    assert tree_contents(destination) == {**CONTENT, "dataset/alias.jpg": CONTENT["dataset/train/happy/a.jpg"]}
    assert not (destination / "dataset" / "alias.jpg").is_symlink()


def test_rar_symlink_to_outside_is_refused(tmp_path, rar_backend_present):
    archive = make_rar4(
        tmp_path / "bad.rar",
        [("ok.jpg", b"fine", stat.S_IFREG | 0o644), ("sub/escape", b"../../etc/passwd", stat.S_IFLNK | 0o777)],
    )
    with pytest.raises(archives.UnsafeArchiveError, match=r"bad\.rar.*'sub/escape'.*points outside"):
        archives.extract_archive(archive, tmp_path / "bad")
    assert_nothing_extracted(tmp_path / "bad")


@pytest.mark.skipif(
    shutil.which("rar") is None or not any(shutil.which(tool) for tool in archives.RAR_TOOLS),
    reason="needs the 'rar' tool to build an archive and a RAR backend to read it",
)
def test_rar_archive_is_extracted(tmp_path):
    import subprocess

    source = tmp_path / "source"
    for name, data in CONTENT.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    subprocess.run(["rar", "a", "-r", "-idq", str(tmp_path / "data.rar"), "dataset"], cwd=source, check=True)
    destination = archives.extract_archive(tmp_path / "data.rar", tmp_path / "data")
    assert tree_contents(destination) == CONTENT


def test_extraction_never_follows_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    archive = make_zip(tmp_path / "data.zip", {"a.txt": b"new"})
    destination = tmp_path / "data"
    archives.extract_archive(archive, destination)
    # Someone replaced an extracted file with a link; a forced re-extraction builds a fresh tree.
    (destination / "a.txt").unlink()
    os.symlink(outside, destination / "a.txt")
    archives.extract_archive(archive, destination, force=True)
    assert outside.read_text() == "keep me"
    assert (destination / "a.txt").read_bytes() == b"new" and not (destination / "a.txt").is_symlink()


# -- damaged, duplicated, oversized and undecodable archives -------------------------------------


def zip_bytes_with_corrupt_entry(tmp_path: Path, compression: int) -> Path:
    """A zip whose second entry's stored bytes were altered after it was written."""
    path = tmp_path / "damaged.zip"
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("good/first.jpg", b"fine")
        archive.writestr("good/second.jpg", bytes(range(256)) * 64)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("good/second.jpg")
    # The entry's data follows its 30-byte local header, its name and its extra field.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 10, start + 40):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_bad_crc_or_corrupt_deflate_stream_is_one_message_naming_the_entry(tmp_path, compression):
    archive = zip_bytes_with_corrupt_entry(tmp_path, compression)
    destination = tmp_path / "out" / "damaged"
    with pytest.raises(PipelineError, match=r"damaged\.zip: entry 'good/second\.jpg': damaged or unreadable"):
        archives.extract_archive(archive, destination)
    assert_nothing_extracted(destination)


def test_truncated_tarball_is_one_message(tmp_path):
    whole = make_tar(tmp_path / "whole.tar.gz", "w:gz", {"a.jpg": random.Random(1).randbytes(50_000)})
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(whole.read_bytes()[:20_000])
    with pytest.raises(PipelineError, match=r"cut\.tar\.gz"):
        archives.extract_archive(truncated, tmp_path / "out" / "cut")
    assert_nothing_extracted(tmp_path / "out" / "cut")


def test_two_entries_with_one_name_are_refused(tmp_path):
    zip_path = tmp_path / "twice.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        with zipfile.ZipFile(zip_path, "w") as archive:
            archive.writestr("images/a.jpg", b"first")
            archive.writestr("images/./a.jpg", b"second")
    tar_path = tmp_path / "twice.tar"
    with tarfile.open(tar_path, "w") as archive:
        add_tar_entry(archive, "images/a.jpg", b"first")
        add_tar_entry(archive, "images/a.jpg", b"second")
    for path in (zip_path, tar_path):
        destination = tmp_path / "out" / path.stem
        with pytest.raises(archives.UnsafeArchiveError, match=r"two entries of this name.*overwrite") as caught:
            archives.extract_archive(path, destination)
        assert path.name in str(caught.value) and "'images/a.jpg'" in str(caught.value)
        assert_nothing_extracted(destination)


def zip_bomb(path: Path, megabytes: int) -> Path:
    """Zeros compress about a thousand times: ``megabytes`` MiB from roughly as many KiB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.bin", "w") as entry:
            for _ in range(megabytes):
                entry.write(bytes(1 << 20))
    return path


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.zip", 40)
    assert bomb.stat().st_size < 100_000
    destination = tmp_path / "out" / "bomb"
    with pytest.raises(PipelineError, match=r"bomb\.zip: refused as a possible decompression bomb.*"
                                            r"max_expansion_ratio = 100"):
        archives.extract_archive(bomb, destination)
    assert_nothing_extracted(destination)
    # Within the absolute limit too: 40 MiB is more than 0.03 GB.
    limits = archives.ExtractionLimits(max_expansion_ratio=10_000, max_extracted_bytes=30_000_000)
    with pytest.raises(PipelineError, match=r"max_extracted_gb = 0\.03"):
        archives.extract_archive(bomb, destination, limits=limits)
    assert_nothing_extracted(destination)


def test_bytes_written_are_limited_even_when_the_sizes_declared_are_not(tmp_path, monkeypatch):
    """An archive that declares nothing (sizes of 0) is stopped by what it actually writes."""
    bomb = zip_bomb(tmp_path / "bomb.zip", 40)
    declared = archive_readers.ZipReader.members

    def declaring_nothing(reader):
        for member in declared(reader):
            yield dataclasses.replace(member, size=0)

    monkeypatch.setattr(archive_readers.ZipReader, "members", declaring_nothing)
    written: list[int] = []
    original_add = archives._ExpansionBudget.add

    def recording_add(budget, count, entry):
        try:
            original_add(budget, count, entry)
        finally:
            written.append(budget.written)

    monkeypatch.setattr(archives._ExpansionBudget, "add", recording_add)
    destination = tmp_path / "out" / "bomb"
    with pytest.raises(PipelineError, match=r"extraction stopped as a possible decompression bomb at entry "
                                            r"'zeros\.bin'.*partial output was removed"):
        archives.extract_archive(bomb, destination)
    assert archives.RATIO_FLOOR_BYTES < written[-1] <= archives.RATIO_FLOOR_BYTES + archives.COPY_CHUNK_BYTES
    assert_nothing_extracted(destination)


def test_name_that_is_not_utf8_is_refused(tmp_path):
    archive_path = tmp_path / "latin1.tar"
    name = b"images/caf\xe9.jpg".decode("utf-8", "surrogateescape")
    with tarfile.open(archive_path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        add_tar_entry(archive, "images/ok.jpg", b"fine")
        add_tar_entry(archive, name, b"named in Latin-1")
    destination = tmp_path / "out" / "latin1"
    with pytest.raises(archives.UnsafeArchiveError, match="not valid UTF-8") as caught:
        archives.extract_archive(archive_path, destination)
    assert "latin1.tar" in str(caught.value)
    assert_nothing_extracted(destination)


def test_a_lone_first_piece_is_not_a_complete_set(tmp_path):
    whole = make_zip(tmp_path / "whole.zip").read_bytes()
    lone = tmp_path / "Set.zip.001"
    lone.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PipelineError, match=r"Set\.zip\.002 is missing"):
        archives.extract_archive([lone], tmp_path / "Set")
    # Two pieces of three: the end of the zip is missing, and the message says so.
    pieces = [tmp_path / "Cut.zip.001", tmp_path / "Cut.zip.002"]
    pieces[0].write_bytes(whole[:100])
    pieces[1].write_bytes(whole[100:200])
    with pytest.raises(PipelineError, match=r"later piece is probably missing"):
        archives.extract_archive(pieces, tmp_path / "Cut")
    assert_nothing_extracted(tmp_path / "Cut")


# -- random input: only the project's own errors ---------------------------------------------------

ARCHIVE_NAMES = ["random.zip", "random.tar", "random.tar.gz", "random.tar.bz2", "random.tar.xz"]
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=60, deadline=None, database=None,  # no example database kept between runs
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


def extract_or_pipeline_error(archive, destination: Path) -> None:
    """Extraction either succeeds inside ``destination`` or raises PipelineError and leaves nothing."""
    try:
        archives.extract_archive(archive, destination)
    except PipelineError:
        assert not destination.exists()
        return
    for path in destination.rglob("*"):
        assert not path.is_symlink() and path.resolve().is_relative_to(destination.resolve())


@FUZZ_SETTINGS
@hypothesis.given(name=strategies.sampled_from(ARCHIVE_NAMES), data=strategies.binary(max_size=2048))
def test_random_bytes_only_raise_pipeline_errors(tmp_path, name, data):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / name).write_bytes(data)
    extract_or_pipeline_error(folder / name, folder / "out")


def valid_archive_bytes(folder: Path, name: str) -> bytes:
    path = folder / name
    if name.endswith(".zip"):
        make_zip(path)
    else:
        make_tar(path, "w:" + {"tar": "", "gz": "gz", "bz2": "bz2", "xz": "xz"}[name.rsplit(".", 1)[-1]])
    return path.read_bytes()


@FUZZ_SETTINGS
@hypothesis.given(name=strategies.sampled_from(ARCHIVE_NAMES), flips=strategies.lists(
    strategies.tuples(strategies.integers(min_value=0), strategies.integers(min_value=1, max_value=255)),
    min_size=1, max_size=8,
))
def test_damaged_valid_archives_only_raise_pipeline_errors(tmp_path, name, flips):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    data = bytearray(valid_archive_bytes(folder, name))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    (folder / name).write_bytes(bytes(data))
    extract_or_pipeline_error(folder / name, folder / "out")


MEMBER_NAMES = strategies.text(
    alphabet=strategies.characters(blacklist_categories=("Cs",)) | strategies.sampled_from(
        ["/", "\\", ".", "\x00", ":", "\udce9"]),
    min_size=1, max_size=30,
)


@FUZZ_SETTINGS
@hypothesis.given(names=strategies.lists(MEMBER_NAMES, min_size=1, max_size=5), as_zip=strategies.booleans())
def test_random_member_names_only_raise_pipeline_errors(tmp_path, names, as_zip):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    if as_zip:
        path = folder / "names.zip"
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
            warnings.simplefilter("ignore")
            for index, name in enumerate(names):
                try:
                    archive.writestr(name, f"entry {index}".encode())
                except (UnicodeEncodeError, ValueError, IndexError):
                    hypothesis.assume(False)  # zipfile cannot even write such a name
    else:
        path = folder / "names.tar"
        try:
            with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                              errors="surrogateescape") as archive:
                for index, name in enumerate(names):
                    add_tar_entry(archive, name, f"entry {index}".encode())
        except (ValueError, UnicodeEncodeError, tarfile.TarError):
            hypothesis.assume(False)  # tarfile cannot even write such a name
    extract_or_pipeline_error(path, folder / "out")
    assert sorted(path.name for path in folder.iterdir()) in (["names.tar"], ["names.tar", "out"],
                                                               ["names.zip"], ["names.zip", "out"])


@FUZZ_SETTINGS
@hypothesis.given(data=strategies.binary(max_size=2048), flips=strategies.lists(
    strategies.tuples(strategies.integers(min_value=0), strategies.integers(min_value=1, max_value=255)),
    max_size=8,
))
def test_random_and_damaged_rar_only_raise_pipeline_errors(tmp_path, rar_backend_present, data, flips):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    entries = [(name, content, stat.S_IFREG | 0o644) for name, content in CONTENT.items()]
    damaged = bytearray(make_rar4(folder / "valid.rar", entries).read_bytes() if flips else b"Rar!\x1a\x07\x00" + data)
    for position, mask in flips:
        damaged[position % len(damaged)] ^= mask
    (folder / "random.rar").write_bytes(bytes(damaged))
    extract_or_pipeline_error(folder / "random.rar", folder / "out")


def test_symbolic_link_with_a_huge_target_is_refused_unread(tmp_path):
    archive = zip_with_entry(tmp_path / "link.zip", symlink_info("good/link"), b"a" * 100_000)
    with pytest.raises(archives.UnsafeArchiveError, match="100000-byte target"):
        archives.extract_archive(archive, tmp_path / "out" / "link")
    assert_nothing_extracted(tmp_path / "out" / "link")


def test_tar_header_bomb_is_not_read_into_memory(tmp_path):
    """tarfile reads a pax header whole; a 40 MiB one is stopped at the limit instead."""
    archive_path = tmp_path / "header_bomb.tar.gz"
    with tarfile.open(archive_path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("a.jpg")
        info.pax_headers = {"comment": "x" * (40 << 20)}
        archive.addfile(info, io.BytesIO(b""))
    assert archive_path.stat().st_size < 100_000
    destination = tmp_path / "out" / "header_bomb"
    with pytest.raises(PipelineError, match=r"header_bomb\.tar\.gz: refused as a possible decompression bomb: "
                                            r"its decompressed content passes"):
        archives.extract_archive(archive_path, destination)
    assert_nothing_extracted(destination)
