"""Reading ordinary photos and cutting the faces out of them for the model.

Photos come in every mode a camera or an editor writes; ``load_photo`` turns each into an RGB
``uint8`` array the way it is meant to be seen (EXIF orientation applied, transparency laid over
white, CMYK and 16-bit images converted). A large photo is decoded at a reduced scale
(``load_photo(path, max_side)``; JPEGs are decoded straight at 1/2, 1/4 or 1/8 of their size by
the codec), so memory stays bounded whatever the photos. The detectors live in
``emotion_classifier.detectors``; their boxes and ``build_detector`` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from emotion_classifier import alignment, equalization
from emotion_classifier.errors import PipelineError
from emotion_classifier.detectors import (  # noqa: F401
    FaceBox,
    FaceDetector,
    HaarFaceDetector,
    build_detector,
)

# Suffixes ``find_photos`` picks up; Pillow reads all of them.
PHOTO_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Photos read and detected before their faces are classified together: large enough for full
# batches; the pixel budget keeps a chunk of large photos under about 100 megabytes.
PHOTOS_PER_CHUNK = 32
PIXELS_PER_CHUNK = 24_000_000
# Photos are decoded at most this many pixels a side (large JPEGs at a reduced scale by the
# codec): enough for every face the detector finds at its 640-pixel copy.
WORKING_MAX_SIDE = 2048
# A face smaller than this (pixels a side) in a reduced copy is cut from the full-size photo.
FULL_RESOLUTION_FACE_SIDE = 96
# Suffixes ``find_inputs`` takes for videos; OpenCV's FFmpeg reads all of them.
VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})


def find_inputs(input_path: str | Path) -> tuple[list[Path], list[Path]]:
    """``(photos, videos)``: the file itself, or every photo and video below a folder
    (recursively, sorted, hidden files skipped). A single file that is not a video is a photo."""
    input_path = Path(input_path)
    if input_path.is_file():
        return ([], [input_path]) if input_path.suffix.lower() in VIDEO_SUFFIXES else ([input_path], [])
    if not input_path.is_dir():
        raise PipelineError(f"input not found: {input_path} (give an image or video file, or a folder of them)")
    found = sorted(
        path
        for path in input_path.rglob("*")
        if path.is_file()
        and path.suffix.lower() in PHOTO_SUFFIXES | VIDEO_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(input_path).parts)
    )
    return ([path for path in found if path.suffix.lower() in PHOTO_SUFFIXES],
            [path for path in found if path.suffix.lower() in VIDEO_SUFFIXES])


def find_photos(input_path: str | Path) -> list[Path]:
    """The photo itself, or every photo below a folder (recursively, sorted, hidden files skipped)."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    return find_inputs(input_path)[0]


def load_photo(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array, upright as its EXIF orientation says.

    Grayscale and palette images become RGB, transparent pixels are laid over white (a
    transparent background is black once the alpha channel is simply dropped), CMYK is converted,
    and 16-bit or floating-point images are scaled to 8 bits by their own range.
    """
    return read_photo(path, 0)[0]


def read_photo(path: str | Path, max_side: int) -> tuple[np.ndarray, float]:
    """Read an image file as ``load_photo`` does, at most ``max_side`` pixels on its longer side
    (0: full size); return the array and its scale (its side / the photo's side, at most 1).

    A JPEG is decoded by the codec straight at 1/2, 1/4 or 1/8 of its size (Pillow's ``draft``),
    so a 36-megapixel photo never exists in memory at full size; other formats are decoded whole,
    then shrunk.
    """
    with Image.open(path) as image:
        full_width, full_height = image.size
        if max_side > 0 and max(full_width, full_height) > max_side:
            ratio = max_side / max(full_width, full_height)
            image.draft(image.mode, (math.ceil(full_width * ratio), math.ceil(full_height * ratio)))
        image = ImageOps.exif_transpose(image)
        photo = to_rgb_array(image)
    full_side = max(full_width, full_height)
    if max_side > 0 and max(photo.shape[:2]) > max_side:
        ratio = max_side / max(photo.shape[:2])
        size = (max(1, round(photo.shape[1] * ratio)), max(1, round(photo.shape[0] * ratio)))
        photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    return photo, max(photo.shape[:2]) / full_side


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any mode to an RGB ``uint8`` array (see ``load_photo``)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def expand_box(box: FaceBox, margin: float, photo_width: int, photo_height: int) -> tuple[int, int, int, int]:
    """The crop ``(left, top, right, bottom)`` around a face: made square, ``margin`` added per side.

    A square crop keeps the face's proportions when it is resized to the model's square input.
    The crop is clipped to the photo, so a face at the border gives a narrower crop.
    """
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    center_x = box.x + box.width / 2.0
    center_y = box.y + box.height / 2.0
    left = int(max(0, round(center_x - side / 2.0)))
    top = int(max(0, round(center_y - side / 2.0)))
    right = int(min(photo_width, round(center_x + side / 2.0)))
    bottom = int(min(photo_height, round(center_y + side / 2.0)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def model_input(region: np.ndarray, image_size: int, channels: int, equalize_histogram: bool = False) -> np.ndarray:
    """Resize an RGB ``uint8`` region to the model's input: float32 in [0, 255], 1 or 3 channels,
    histogram-equalised when the model was trained so (one channel only)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    shrinking = region.shape[0] > image_size or region.shape[1] > image_size
    resized = cv2.resize(
        region, (image_size, image_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    if channels == 1:
        gray = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., np.newaxis]
        return equalization.equalize_histogram(gray) if equalize_histogram else gray
    if equalize_histogram:
        raise ValueError("histogram equalisation needs channels = 1")
    return resized.astype(np.float32)


def crop_face(photo: np.ndarray, box: FaceBox, margin: float, image_size: int, channels: int,
              equalize_histogram: bool = False) -> np.ndarray:
    """The model input for one face: the box with its margin, cropped and resized."""
    left, top, right, bottom = expand_box(box, margin, photo.shape[1], photo.shape[0])
    return model_input(photo[top:bottom, left:right], image_size, channels, equalize_histogram)


def scale_box(box: FaceBox, factor: float) -> FaceBox:
    """The box and its landmarks in an image ``factor`` times as large."""
    return FaceBox(round(box.x * factor), round(box.y * factor), max(1, round(box.width * factor)),
                   max(1, round(box.height * factor)), box.confidence,
                   tuple((name, x * factor, y * factor) for name, x, y in box.landmarks))


@dataclasses.dataclass
class FacePicture:
    """A face cut from a photo: the RGB ``uint8`` picture the model input is made from, the
    photo region it came from, whether it was turned upright by its eyes, and then the 2x3
    affine map from photo pixels to the picture's."""

    picture: np.ndarray
    region: tuple[int, int, int, int]
    aligned: bool
    matrix: np.ndarray | None = None


def face_picture(photo: np.ndarray, box: FaceBox, margin: float, align: bool, minimum_side: int) -> FacePicture:
    """The face in ``box``: with ``align`` and eye landmarks, rotated upright and framed as the
    training faces were (``alignment.aligned_face``); otherwise the square box with ``margin``."""
    region = expand_box(box, margin, photo.shape[1], photo.shape[0])
    if align:
        aligned = alignment.aligned_face(photo, box, minimum_side)
        if aligned is not None:
            return FacePicture(aligned[0], region, True, aligned[1])
    left, top, right, bottom = region
    # A copy, so that keeping the face does not keep the whole photo in memory.
    return FacePicture(photo[top:bottom, left:right].copy(), region, False)


def face_pictures(path: Path, photo: np.ndarray, scale: float, boxes: list[FaceBox], margin: float, align: bool,
                  minimum_side: int) -> list[FacePicture]:
    """Each face's picture (``face_picture``) from ``photo``, the photo at ``path`` read at
    ``scale``; faces smaller than ``FULL_RESOLUTION_FACE_SIDE`` there are cut from the full-size
    photo instead (read once, then let go). Regions stay in ``photo``'s pixels."""
    pictures = [face_picture(photo, box, margin, align, minimum_side) for box in boxes]
    small = [index for index, box in enumerate(boxes) if max(box.width, box.height) < FULL_RESOLUTION_FACE_SIDE]
    if scale < 1.0 and small:
        full = load_photo(path)
        for index in small:
            picture = face_picture(full, scale_box(boxes[index], 1.0 / scale), margin, align, minimum_side)
            # From full-size pixels back to the reduced copy's: the map's linear part grows by 1 / scale.
            matrix = None if picture.matrix is None else np.hstack([picture.matrix[:, :2] / scale, picture.matrix[:, 2:]])
            pictures[index] = dataclasses.replace(picture, region=pictures[index].region, matrix=matrix)
        del full
    return pictures


def photo_chunks(photos: list[Path]) -> Iterator[list[Path]]:
    """Consecutive groups of photos, each at most ``PHOTOS_PER_CHUNK`` photos and (after its
    first photo) ``PIXELS_PER_CHUNK`` pixels of their working copies."""
    chunk: list[Path] = []
    pixels = 0
    for path in photos:
        size = working_pixels(path)
        if chunk and (len(chunk) >= PHOTOS_PER_CHUNK or pixels + size > PIXELS_PER_CHUNK):
            yield chunk
            chunk, pixels = [], 0
        chunk.append(path)
        pixels += size
    if chunk:
        yield chunk


def working_pixels(path: Path) -> int:
    """The pixels of a photo's working copy (at most ``WORKING_MAX_SIDE`` a side), from its
    header only; 0 when it cannot be read (that is reported when it is read)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - any unreadable file is reported by read_photo
        return 0
    ratio = min(1.0, WORKING_MAX_SIDE / max(width, height, 1))
    return int(width * ratio) * int(height * ratio)
