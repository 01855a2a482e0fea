"""The emotion model behind ``predict`` and video analysis: a Keras model or a TFLite export.

Both take float32 face images in [0, 255] (the model applies its own preprocessing) and return
class probabilities. ``classify_faces`` runs a list of face inputs in batches, each face's
probabilities averaged over its test-time views as evaluation computes them
(``images.test_time_views``, resizing in NumPy, so the TFLite path needs no TensorFlow).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from emotion_classifier import images, model_io
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

# The CSV column of each class probability is this prefix and the class name.
PROBABILITY_PREFIX = "probability_"
# Faces classified together in one call of the model.
BATCH_SIZE = 32
# The crop fraction of "flip_crops" views when the model's info names none (as evaluation's).
DEFAULT_CROP_FRACTION = 0.9


class FaceClassifier(Protocol):
    """What ``predict`` needs from a model: its classes, input and a batch prediction."""

    classes: list[str]
    image_size: int
    channels: int
    equalize_histogram: bool
    # The test-time views its decisions were calibrated with: (mode, crop_fraction).
    calibrated_views: tuple[str, float]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (batch, classes), for float32 images in [0, 255]."""


class KerasFaceClassifier:
    """A trained ``.keras`` model (loading it loads TensorFlow)."""

    def __init__(self, model_path: str | Path):
        try:
            self.model, info = model_io.load_trained_model(model_path)
        except (FileNotFoundError, ValueError) as error:
            raise PipelineError(f"cannot load the model: {error}") from error
        self.classes = list(info["classes"])
        self.image_size = int(info["image_size"])
        self.channels = int(info["channels"])
        self.equalize_histogram = bool(info.get("equalize_histogram", False))
        self.calibrated_views = calibrated_views(info)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)


class TFLiteFaceClassifier:
    """A ``.tflite`` model run by the LiteRT interpreter; TensorFlow is never imported.

    The interpreter's batch size follows each call (the exported models have a free batch
    dimension). Quantised inputs and outputs, should a model have them, are converted with the
    model's own scale and zero point.
    """

    def __init__(self, tflite_path: str | Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        tflite_path = Path(tflite_path)
        if not tflite_path.is_file():
            raise PipelineError(f"TFLite model not found: {tflite_path} (write it with emotion-export)")
        try:
            info = model_io.read_model_info(tflite_path)
        except (FileNotFoundError, ValueError) as error:
            raise PipelineError(str(error)) from error
        self.classes = list(info["classes"])
        self.image_size = int(info["image_size"])
        self.channels = int(info["channels"])
        self.equalize_histogram = bool(info.get("equalize_histogram", False))
        self.calibrated_views = calibrated_views(info)
        try:
            self.interpreter = Interpreter(model_path=str(tflite_path), num_threads=threads or os.cpu_count())
        except ValueError as error:
            raise PipelineError(f"{tflite_path}: not a TFLite model the interpreter can load ({error})") from error
        self.batch_size = 0

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        input_detail = self.interpreter.get_input_details()[0]
        if len(images) != self.batch_size:
            self.interpreter.resize_tensor_input(input_detail["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.batch_size = len(images)
            input_detail = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(input_detail["index"], _quantize(images, input_detail))
        self.interpreter.invoke()
        output_detail = self.interpreter.get_output_details()[0]
        return _dequantize(self.interpreter.get_tensor(output_detail["index"]), output_detail)


def _quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def calibrated_views(info: dict) -> tuple[str, float]:
    """``(test_time_augmentation, crop_fraction)`` a model's decision offsets were fitted with
    (model_info.json's ``decision_calibration``); ("none", 0.9) for an uncalibrated model."""
    calibration = info.get("decision_calibration") or {}
    return (str(calibration.get("test_time_augmentation", "none")),
            float(calibration.get("crop_fraction", DEFAULT_CROP_FRACTION)))


def prediction_views(settings: PredictConfig, classifier: FaceClassifier) -> tuple[str, float]:
    """The views ``predict`` averages over: the setting, or with "model" the model's own."""
    mode, crop_fraction = classifier.calibrated_views
    return (mode if settings.test_time_augmentation == "model" else settings.test_time_augmentation), crop_fraction


def build_classifier(settings: PredictConfig) -> FaceClassifier:
    """The TFLite model when ``tflite_model`` is set, otherwise the Keras model."""
    if settings.tflite_model:
        return TFLiteFaceClassifier(settings.tflite_model)
    if not settings.model:
        raise PipelineError("no model given: set predict.model (or --model) or predict.tflite_model (--tflite)")
    return KerasFaceClassifier(settings.model)


def classify_faces(crops: list[np.ndarray], classifier: FaceClassifier, batch_size: int,
                   views: tuple[str, float] = ("none", DEFAULT_CROP_FRACTION)) -> np.ndarray:
    """Probabilities (faces, classes) of the model inputs ``crops``, ``batch_size`` faces per
    call; with test-time augmentation (``views``: mode and crop fraction) each face's
    probabilities are the mean over its views, all views of a batch in one call."""
    if not crops:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32)
    batches = []
    for index in range(0, len(crops), batch_size):
        faces_batch = np.stack(crops[index:index + batch_size])
        view_batches = images.test_time_views(faces_batch, *views)
        probabilities = classifier.probabilities(np.concatenate(view_batches))
        batches.append(probabilities.reshape(len(view_batches), len(faces_batch), -1).mean(axis=0))
    return np.concatenate(batches)
