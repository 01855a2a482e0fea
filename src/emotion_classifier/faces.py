"""Reading ordinary photos and finding the faces in them.

Photos come in every mode a camera or an editor writes; ``load_photo`` turns each into an RGB
``uint8`` array the way it is meant to be seen (EXIF orientation applied, transparency laid over
white, CMYK and 16-bit images converted). Two OpenCV face detectors work on those arrays:

- ``HaarFaceDetector``: OpenCV's frontal-face Haar cascade. Its XML file ships with
  ``opencv-python-headless`` 4.x (5.x no longer does), so it works offline out of the box. A
  cascade gives no probability; the confidence reported is the boosting sum of the cascade's
  last stage (``levelWeights`` of ``detectMultiScale3``), a score where larger means surer and
  values around 0 to 1 are weak.
- ``YuNetFaceDetector``: ``cv2.FaceDetectorYN``, a small CNN that also finds turned and small
  faces; its model file (``face_detection_yunet_2023mar.onnx``) has to be supplied. Its
  confidence is the network's face score in [0, 1].

Both detect on a copy shrunk to ``detection_max_side`` (the search is quadratic in the image
side) and return boxes in the original photo's pixels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps

from emotion_classifier import equalization
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

# Suffixes ``find_photos`` picks up; Pillow reads all of them.
PHOTO_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

DEFAULT_HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """A face found in a photo: its box in the photo's pixels and the detector's confidence."""

    x: int
    y: int
    width: int
    height: int
    confidence: float


class FaceDetector(Protocol):
    """What ``predict`` needs from a detector."""

    name: str

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        """Return the faces in an RGB ``uint8`` photo of shape (height, width, 3)."""


def find_photos(input_path: str | Path) -> list[Path]:
    """The photo itself, or every photo below a folder (recursively, sorted, hidden files skipped)."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise PipelineError(f"input not found: {input_path} (give an image file or a folder of images)")
    return sorted(
        path
        for path in input_path.rglob("*")
        if path.is_file()
        and path.suffix.lower() in PHOTO_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(input_path).parts)
    )


def load_photo(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array, upright as its EXIF orientation says.

    Grayscale and palette images become RGB, transparent pixels are laid over white (a
    transparent background is black once the alpha channel is simply dropped), CMYK is converted,
    and 16-bit or floating-point images are scaled to 8 bits by their own range.
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return to_rgb_array(image)


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


def _shrink_for_detection(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Return the photo shrunk so its longer side is at most ``max_side``, and the scale used."""
    longer_side = max(photo.shape[:2])
    if max_side <= 0 or longer_side <= max_side:
        return photo, 1.0
    scale = max_side / longer_side
    size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA), scale


def _box_in_photo(x: float, y: float, width: float, height: float, scale: float, confidence: float,
                  photo_shape: tuple[int, ...]) -> FaceBox:
    """Map a box found on the shrunk copy back to the photo, clipped to its borders."""
    photo_height, photo_width = photo_shape[:2]
    left = int(np.clip(round(x / scale), 0, photo_width - 1))
    top = int(np.clip(round(y / scale), 0, photo_height - 1))
    right = int(np.clip(round((x + width) / scale), left + 1, photo_width))
    bottom = int(np.clip(round((y + height) / scale), top + 1, photo_height))
    return FaceBox(left, top, right - left, bottom - top, float(confidence))


class HaarFaceDetector:
    """OpenCV's Haar cascade face detector (frontal faces; offline, no model download)."""

    name = "haar"

    def __init__(self, cascade_path: str | Path = "", scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_size: int = 48, detection_max_side: int = 640):
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be greater than 1, got {scale_factor}")
        if min_neighbors < 0 or min_face_size < 1:
            raise ValueError("min_neighbors must not be negative and min_face_size must be positive")
        cascade_path = Path(cascade_path) if cascade_path else Path(cv2.data.haarcascades) / DEFAULT_HAAR_CASCADE
        if not cascade_path.is_file():
            raise PipelineError(
                f"Haar cascade not found: {cascade_path}. opencv-python-headless 5.x no longer ships the "
                "cascade files: install opencv-python-headless 4.x or set predict.haar_cascade to an XML file"
            )
        self.cascade = cv2.CascadeClassifier(str(cascade_path))
        if self.cascade.empty():
            raise PipelineError(f"{cascade_path}: not a Haar cascade OpenCV can load")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_size = min_face_size
        self.detection_max_side = detection_max_side

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        small, scale = _shrink_for_detection(photo, self.detection_max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        # Equalising the histogram makes the cascade's fixed thresholds work in dim or flat photos.
        gray = cv2.equalizeHist(gray)
        boxes, _, level_weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size),
            outputRejectLevels=True,
        )
        weights = np.asarray(level_weights, dtype=np.float64).reshape(-1)
        return [
            _box_in_photo(*box, scale, weight, photo.shape)
            for box, weight in zip(np.asarray(boxes).reshape(-1, 4), weights)
        ]


class YuNetFaceDetector:
    """``cv2.FaceDetectorYN`` with a YuNet ONNX model file (finds turned and small faces too)."""

    name = "yunet"

    def __init__(self, model_path: str | Path, score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 detection_max_side: int = 640):
        if not model_path:
            raise PipelineError(
                "predict.detector is \"yunet\" but predict.yunet_model is empty: set it to the YuNet ONNX "
                "file (face_detection_yunet_2023mar.onnx from the OpenCV model zoo)"
            )
        model_path = Path(model_path)
        if not model_path.is_file():
            raise PipelineError(
                f"YuNet model file not found: {model_path} (predict.yunet_model). Download "
                "face_detection_yunet_2023mar.onnx from the OpenCV model zoo, or use detector = \"haar\""
            )
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must be in [0, 1]")
        try:
            self.detector = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000
            )
        except cv2.error as error:
            raise PipelineError(f"{model_path}: OpenCV cannot load it as a YuNet model ({error})") from error
        self.detection_max_side = detection_max_side

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        small, scale = _shrink_for_detection(photo, self.detection_max_side)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        # YuNet was trained on OpenCV's usual BGR channel order.
        _, detections = self.detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if detections is None:
            return []
        # Each row: x, y, width, height, five landmarks (10 numbers), score.
        return [
            _box_in_photo(row[0], row[1], row[2], row[3], scale, row[-1], photo.shape)
            for row in np.asarray(detections, dtype=np.float64)
        ]


def build_detector(settings: PredictConfig) -> FaceDetector:
    """The detector the ``[predict]`` section names, with its settings."""
    if settings.detector == "haar":
        return HaarFaceDetector(
            settings.haar_cascade,
            scale_factor=settings.scale_factor,
            min_neighbors=settings.min_neighbors,
            min_face_size=settings.min_face_size,
            detection_max_side=settings.detection_max_side,
        )
    if settings.detector == "yunet":
        return YuNetFaceDetector(
            settings.yunet_model,
            score_threshold=settings.score_threshold,
            nms_threshold=settings.nms_threshold,
            detection_max_side=settings.detection_max_side,
        )
    raise PipelineError(f"predict.detector: {settings.detector!r} is not one of haar, yunet")


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
