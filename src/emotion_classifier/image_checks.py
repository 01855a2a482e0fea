"""Open every referenced image once, so that bad files are found when the manifest is built.

``check_image`` never raises, whatever the bytes: a broken file is a reason in the result, not
an exception in the middle of a million-image run. ``check_images`` runs it in parallel
processes with a progress bar.

Decisions, so that training never meets a file it cannot decode:

- rejected: a missing or zero-byte file, anything that is not a regular file (a named pipe, a
  socket, a device, a folder; named for what it is and never opened: opening a named pipe waits
  for a writer forever), bytes that are not an image (whatever the extension), a
  truncated or corrupt image, an image with a zero side, an image with more pixels than
  ``max_pixels`` (a possible decompression bomb; its pixels are never decoded), a format that the
  TensorFlow input pipeline cannot decode (only JPEG, PNG, GIF, BMP and WebP can), and animated
  images. An animated GIF or WebP is rejected rather than reduced to its first frame: a labelled
  face is one picture, and which frame carries the expression is unknown;
- accepted with a note: grayscale, palette, CMYK, images with an alpha channel and 16-bit images.
  The input pipeline converts every image to the model's channels and range.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import stat
import warnings
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from PIL import Image
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

# Formats that ``tf.io.decode_image`` (the input pipeline) can decode.
DECODABLE_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})

# Why an accepted image's mode is worth noting: the input pipeline converts these.
_MODE_NOTES: dict[str, str] = {
    "1": "black-and-white image, converted to the model's channels",
    "L": "grayscale image, converted to the model's channels",
    "LA": "grayscale image with alpha, alpha dropped",
    "P": "palette image, converted to RGB",
    "PA": "palette image with alpha, alpha dropped",
    "RGBA": "image with alpha channel, alpha dropped",
    "RGBa": "image with alpha channel, alpha dropped",
    "CMYK": "CMYK image, converted to RGB",
    "YCbCr": "YCbCr image, converted to RGB",
    "LAB": "Lab image, converted to RGB",
    "HSV": "HSV image, converted to RGB",
    "I": "32-bit integer image, rescaled to 8 bits",
    "I;16": "16-bit image, rescaled to 8 bits",
    "I;16B": "16-bit image, rescaled to 8 bits",
    "I;16L": "16-bit image, rescaled to 8 bits",
    "I;16N": "16-bit image, rescaled to 8 bits",
    "F": "floating-point image, rescaled to 8 bits",
}


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """The result of opening one image.

    ``ok`` is False when the image must be left out; ``reason`` then says why. ``note`` describes
    a conversion the input pipeline will make to an accepted image (empty when none is needed).
    ``width``, ``height`` and ``mode`` are 0, 0 and "" when they could not be read.
    """

    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    note: str = ""


def describe_file_kind(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``; empty for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_image(path: str | Path, max_pixels: int) -> ImageCheck:
    """Open and fully decode the image at ``path``; never raises, whatever the file holds."""
    try:
        return _check_image(Path(path), max_pixels)
    except Exception as error:  # noqa: BLE001 - any failure of any decoder means "unusable image"
        return ImageCheck(ok=False, reason=f"unreadable image: {_describe(error)}")


def _check_image(path: Path, max_pixels: int) -> ImageCheck:
    try:
        status = path.stat()
    except FileNotFoundError:
        return ImageCheck(ok=False, reason="missing file")
    kind = describe_file_kind(status.st_mode)
    if kind:
        return ImageCheck(ok=False, reason=f"not an image file: {kind}, never opened")
    if status.st_size == 0:
        return ImageCheck(ok=False, reason="empty file (zero bytes)")
    # Decoders warn about odd but readable files (EXIF quirks, palette transparency); the result
    # below is the only report this function gives.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as error:
            return ImageCheck(ok=False, reason=f"image too large (possible decompression bomb): {error}")
        except Exception as error:  # noqa: BLE001 - every decoder failure is a rejection reason
            if "truncated" in str(error).lower():
                return ImageCheck(ok=False, reason=f"corrupt or truncated image: {_describe(error)}")
            return ImageCheck(ok=False, reason=f"not an image or unknown format: {_describe(error)}")
        with image:
            width, height = image.size
            mode = image.mode
            image_format = image.format or "unknown"
            if width <= 0 or height <= 0:
                return ImageCheck(ok=False, reason=f"image has a zero side ({width}x{height})",
                                  width=width, height=height, mode=mode)
            if width * height > max_pixels:
                return ImageCheck(
                    ok=False,
                    reason=(f"image too large ({width}x{height} = {width * height} pixels, more than "
                            f"max_image_pixels {max_pixels}; possible decompression bomb)"),
                    width=width, height=height, mode=mode,
                )
            if image_format not in DECODABLE_FORMATS:
                return ImageCheck(
                    ok=False,
                    reason=f"image format {image_format} cannot be decoded by the input pipeline",
                    width=width, height=height, mode=mode,
                )
            frames = getattr(image, "n_frames", 1)
            if getattr(image, "is_animated", False) or frames > 1:
                return ImageCheck(ok=False, reason=f"animated image ({frames} frames)",
                                  width=width, height=height, mode=mode)
            try:
                # ``load`` decodes every pixel: truncated and corrupt data fail here.
                image.load()
            except Exception as error:  # noqa: BLE001 - a decoding failure is a rejection reason
                return ImageCheck(ok=False, reason=f"corrupt or truncated image: {_describe(error)}",
                                  width=width, height=height, mode=mode)
            note = _MODE_NOTES.get(mode, "")
            if mode == "P" and "transparency" in image.info:
                note = "palette image with transparency, alpha dropped"
            return ImageCheck(ok=True, width=width, height=height, mode=mode, note=note)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_chunk(arguments: tuple[list[str], int]) -> list[ImageCheck]:
    paths, max_pixels = arguments
    return [check_image(path, max_pixels) for path in paths]


def _set_pillow_pixel_limit(max_pixels: int) -> None:
    # Pillow refuses images beyond twice its own limit before this module can look at them;
    # aligning its limit with ours (in worker processes only) makes ``max_pixels`` decide.
    Image.MAX_IMAGE_PIXELS = max_pixels


def resolve_workers(workers: int) -> int:
    """``workers`` from the configuration: 0 means one per CPU core."""
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per CPU core) or positive, got {workers}")
    return workers or os.cpu_count() or 1


def map_in_processes(function: Callable[[T], list[R]], chunks: list[T], workers: int,
                     description: str, sizes: list[int] | None = None, progress: bool = True,
                     initializer: Callable[..., None] | None = None,
                     initargs: tuple = ()) -> list[R]:
    """Apply ``function`` to every chunk in ``workers`` processes and concatenate the results.

    ``function`` must be a module-level function returning a list. Results keep the order of
    ``chunks``. One worker (or one chunk) runs in this process, without a pool. ``sizes`` gives
    the number of items in each chunk for the progress bar.
    """
    sizes = sizes if sizes is not None else [1] * len(chunks)
    workers = min(resolve_workers(workers), max(1, len(chunks)))
    results: list[R] = []
    with tqdm(total=sum(sizes), desc=description, unit="file", disable=not progress) as bar:
        if workers == 1:
            for chunk, size in zip(chunks, sizes):
                results.extend(function(chunk))
                bar.update(size)
            return results
        # "spawn" starts clean interpreters: forking a parent that has already started
        # TensorFlow's threads can deadlock the children.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs
        ) as executor:
            for chunk_result, size in zip(executor.map(function, chunks), sizes):
                results.extend(chunk_result)
                bar.update(size)
    return results


def check_images(paths: Iterable[str | Path], max_pixels: int, workers: int = 0,
                 chunk_size: int = 256, progress: bool = True) -> list[ImageCheck]:
    """Check every path (results in the same order) with ``workers`` processes (0: one per core)."""
    path_list = [str(path) for path in paths]
    chunks = [path_list[start:start + chunk_size] for start in range(0, len(path_list), chunk_size)]
    return map_in_processes(
        _check_chunk, [(chunk, max_pixels) for chunk in chunks], workers, "checking images",
        sizes=[len(chunk) for chunk in chunks], progress=progress,
        initializer=_set_pillow_pixel_limit, initargs=(max_pixels,),
    )
