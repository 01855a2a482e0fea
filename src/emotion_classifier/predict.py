"""Label every face in a photo or a folder of photos: ``emotion-predict INPUT --model PATH``.

For each photo (JPEG, PNG, WebP or BMP; see ``faces.load_photo`` for orientation and colour
modes) the configured detector finds the faces; each face is cropped square with a margin,
resized to the model's input and classified, the faces of several photos in one batch, by
default averaged over the face and its mirror image (``test_time_augmentation`` in
``[predict]``; "model" takes the views the model's decisions were calibrated with). The output
folder receives:

- ``annotated/<file>.jpg``: a copy of each photo with a box, the emotion and its probability
  per face (``annotated/<file>.gradcam.jpg`` beside it with ``--explain``);
- ``faces.csv`` and ``faces.json``: one row per face (file, box, detector confidence, predicted
  emotion, every class probability); a photo without a face is one row with status ``no_face``,
  or ``whole_image`` when it was classified whole instead (see ``classify_whole_if_no_face``
  and ``face_crop_max_side`` in ``[predict]``), and an unreadable file is a row with its error;
- ``contact_sheet.png``: every face found, with its label;
- ``summary.json``: counts, and the time spent detecting, classifying and writing.

``--tflite PATH`` classifies with a TFLite model written by the export stage, through the LiteRT
interpreter (``ai-edge-litert``) and without importing TensorFlow, unless ``--explain`` asks for
Grad-CAM, which needs the Keras model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm

from emotion_classifier import cli, faces, files, images, model_io
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config, PredictConfig

LOGGER = logging.getLogger(__name__)

CSV_NAME = "faces.csv"
JSON_NAME = "faces.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
SUMMARY_NAME = "summary.json"
STAMP_NAME = ".predict_stamp.json"
ANNOTATED_FOLDER = "annotated"
PROBABILITY_PREFIX = "probability_"

# Photos read and detected before their faces are classified together: large enough for full
# batches, small enough that a few dozen decoded photos fit in memory.
PHOTOS_PER_CHUNK = 32
# Annotated copies of smaller photos are enlarged to this side so that the labels stay legible.
MINIMUM_ANNOTATED_SIDE = 256
JPEG_QUALITY = 90
# The crop fraction of "flip_crops" views when the model's info names none (as evaluation's).
DEFAULT_CROP_FRACTION = 0.9

# One colour per canonical class position (more classes reuse them), chosen to be told apart.
BOX_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (120, 120, 120), (255, 255, 255), (170, 68, 153), (68, 170, 153),
)

# Row statuses.
FACE = "face"
WHOLE_IMAGE = "whole_image"
NO_FACE = "no_face"
UNREADABLE = "unreadable"


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


@dataclasses.dataclass
class PhotoResult:
    """What was found in one photo; ``crops`` are the model inputs, one per classified region."""

    path: Path
    file: str
    status: str
    photo: np.ndarray | None = None
    boxes: list[faces.FaceBox] = dataclasses.field(default_factory=list)
    regions: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)
    crops: list[np.ndarray] = dataclasses.field(default_factory=list)
    probabilities: np.ndarray | None = None
    heatmaps: np.ndarray | None = None
    error: str = ""


@dataclasses.dataclass
class PredictionResult:
    """What ``predict`` wrote, and its rows as a table (the CSV's content)."""

    table: pd.DataFrame
    output_dir: Path
    annotated: list[Path]
    gradcam: list[Path]
    summary: dict


class Stopwatch:
    """Seconds spent in named activities, summed over a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, activity: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[activity] = self.seconds.get(activity, 0.0) + time.perf_counter() - start


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


def check_settings(settings: PredictConfig) -> None:
    """Reject values that a type alone cannot, naming the key."""
    if settings.batch_size < 1:
        raise PipelineError(f"predict.batch_size: must be positive, got {settings.batch_size}")
    if settings.test_time_augmentation not in ("model", "none", "flip", "flip_crops"):
        raise PipelineError(f"predict.test_time_augmentation: one of model, none, flip, flip_crops; "
                            f"got {settings.test_time_augmentation!r}")
    if settings.face_margin < 0:
        raise PipelineError(f"predict.face_margin: must not be negative, got {settings.face_margin}")
    if settings.contact_sheet_tile < 32 or settings.contact_sheet_max_faces < 1:
        raise PipelineError("predict.contact_sheet_tile must be at least 32 and contact_sheet_max_faces positive")
    if settings.explain and not settings.model:
        raise PipelineError("--explain (predict.explain) needs the Keras model: set predict.model (--model)")


def predict(settings: PredictConfig, show_progress: bool = True) -> PredictionResult:
    """Detect, classify and draw every face below ``settings.input``; write into ``settings.output_dir``."""
    check_settings(settings)
    input_path = Path(settings.input)
    output_dir = Path(settings.output_dir)
    photos = faces.find_photos(input_path)
    stopwatch = Stopwatch()
    with stopwatch.measure("loading_models"):
        detector = faces.build_detector(settings)
        classifier = build_classifier(settings)
        explainer = None
        if settings.explain:
            reuse = isinstance(classifier, KerasFaceClassifier)
            explainer = classifier if reuse else KerasFaceClassifier(settings.model)
        if explainer is not None and explainer.classes != classifier.classes:
            raise PipelineError(
                f"the Keras model {settings.model} and the TFLite model {settings.tflite_model} have "
                "different classes; Grad-CAM would explain the wrong class"
            )
    views = prediction_views(settings, classifier)
    rows: list[dict] = []
    annotated_paths: list[Path] = []
    gradcam_paths: list[Path] = []
    sheet_tiles: list[tuple[np.ndarray, str]] = []
    start = time.perf_counter()
    progress = tqdm(total=len(photos), desc="predict", unit="photo", disable=not show_progress)
    for chunk_start in range(0, len(photos), PHOTOS_PER_CHUNK):
        chunk = photos[chunk_start:chunk_start + PHOTOS_PER_CHUNK]
        results = [
            _find_regions(path, _relative_name(path, input_path), detector, classifier, settings, stopwatch)
            for path in chunk
        ]
        _classify(results, classifier, settings.batch_size, stopwatch, views)
        if explainer is not None:
            _explain(results, explainer, settings, stopwatch)
        with stopwatch.measure("writing"):
            for result in results:
                annotated, gradcam = _write_pictures(result, output_dir, classifier.classes)
                annotated_paths.extend([annotated] if annotated else [])
                gradcam_paths.extend([gradcam] if gradcam else [])
                rows.extend(_rows(result, classifier.classes, detector.name, annotated, gradcam, output_dir))
                _collect_tiles(result, classifier.classes, settings, sheet_tiles)
        progress.update(len(chunk))
    progress.close()
    with stopwatch.measure("writing"):
        table = _table(rows, classifier.classes)
        files.save_csv(output_dir / CSV_NAME, table)
        files.write_json(output_dir / JSON_NAME, _json_rows(rows, classifier.classes))
        _write_contact_sheet(output_dir / CONTACT_SHEET_NAME, sheet_tiles, settings)
    elapsed = time.perf_counter() - start
    summary = _summary(table, photos, elapsed, stopwatch, settings, detector.name, views[0])
    files.write_json(output_dir / SUMMARY_NAME, summary)
    return PredictionResult(table, output_dir, annotated_paths, gradcam_paths, summary)


def _relative_name(path: Path, input_path: Path) -> str:
    return path.name if input_path.is_file() else path.relative_to(input_path).as_posix()


def _find_regions(path: Path, file: str, detector: faces.FaceDetector, classifier: FaceClassifier,
                  settings: PredictConfig, stopwatch: Stopwatch) -> PhotoResult:
    """Read one photo and detect its faces; decide what gets classified."""
    with stopwatch.measure("reading"):
        try:
            photo = faces.load_photo(path)
        except Exception as error:  # noqa: BLE001 - any undecodable file is reported, not fatal
            return PhotoResult(path, file, UNREADABLE, error=f"{type(error).__name__}: {error}")
    with stopwatch.measure("detector"):
        boxes = detector.detect(photo)
    result = PhotoResult(path, file, FACE if boxes else NO_FACE, photo=photo, boxes=boxes)
    with stopwatch.measure("cropping"):
        for box in boxes:
            region = faces.expand_box(box, settings.face_margin, photo.shape[1], photo.shape[0])
            left, top, right, bottom = region
            result.regions.append(region)
            result.crops.append(faces.model_input(photo[top:bottom, left:right], classifier.image_size,
                                                  classifier.channels, classifier.equalize_histogram))
        is_face_crop = max(photo.shape[:2]) <= settings.face_crop_max_side
        if not boxes and (settings.classify_whole_if_no_face or is_face_crop):
            result.status = WHOLE_IMAGE
            result.regions.append((0, 0, photo.shape[1], photo.shape[0]))
            result.crops.append(faces.model_input(photo, classifier.image_size, classifier.channels,
                                                  classifier.equalize_histogram))
    return result


def _classify(results: list[PhotoResult], classifier: FaceClassifier, batch_size: int,
              stopwatch: Stopwatch, views: tuple[str, float] = ("none", DEFAULT_CROP_FRACTION)) -> None:
    """Classify the crops of all photos together, in batches of ``batch_size`` faces; with
    test-time augmentation (``views``: mode and crop fraction) each face's probabilities are
    the mean over its views, as evaluation computes them."""
    crops = [crop for result in results for crop in result.crops]
    if not crops:
        return

    def classify(faces_batch: np.ndarray) -> np.ndarray:
        view_batches = images.test_time_views(faces_batch, *views)
        # All views in one call: (views x faces) images, then the mean over the views.
        probabilities = classifier.probabilities(np.concatenate(view_batches))
        return probabilities.reshape(len(view_batches), len(faces_batch), -1).mean(axis=0)

    with stopwatch.measure("classifier"):
        batches = [classify(np.stack(crops[index:index + batch_size])) for index in range(0, len(crops), batch_size)]
    probabilities = np.concatenate(batches)
    position = 0
    for result in results:
        if result.crops:
            result.probabilities = probabilities[position:position + len(result.crops)]
            position += len(result.crops)


def _explain(results: list[PhotoResult], explainer: KerasFaceClassifier, settings: PredictConfig,
             stopwatch: Stopwatch) -> None:
    """Grad-CAM maps for each classified region, explaining the predicted class."""
    from emotion_classifier import gradcam

    with stopwatch.measure("explain"):
        for result in results:
            if not result.crops:
                continue
            result.heatmaps = np.concatenate([
                gradcam.gradcam_heatmaps(
                    explainer.model,
                    np.stack(result.crops[index:index + settings.batch_size]),
                    result.probabilities[index:index + settings.batch_size].argmax(axis=1),
                    settings.gradcam_layer,
                )
                for index in range(0, len(result.crops), settings.batch_size)
            ])


def _annotated_path(output_dir: Path, file: str, kind: str = "") -> Path:
    """``annotated/<file>.jpg`` (or ``.<kind>.jpg``); the original suffix stays so names never clash."""
    return output_dir / ANNOTATED_FOLDER / f"{file}{'.' + kind if kind else ''}.jpg"


def _label(classes: list[str], probabilities: np.ndarray) -> tuple[str, float, int]:
    index = int(np.argmax(probabilities))
    return classes[index], float(probabilities[index]), index


def _write_pictures(result: PhotoResult, output_dir: Path, classes: list[str]) -> tuple[Path | None, Path | None]:
    """Write the annotated copy (and the Grad-CAM copy) of one photo; return their paths."""
    if result.photo is None:
        return None, None
    photo = result.photo
    annotated = _draw(photo, result, classes)
    annotated_path = _annotated_path(output_dir, result.file)
    _save_jpeg(annotated, annotated_path)
    if result.heatmaps is None:
        return annotated_path, None
    from emotion_classifier import gradcam

    explained = photo.copy()
    for (left, top, right, bottom), heatmap in zip(result.regions, result.heatmaps):
        explained[top:bottom, left:right] = gradcam.overlay_heatmap(photo[top:bottom, left:right], heatmap)
    explained_path = _annotated_path(output_dir, result.file, "gradcam")
    _save_jpeg(_draw(explained, result, classes), explained_path)
    return annotated_path, explained_path


def _draw(photo: np.ndarray, result: PhotoResult, classes: list[str]) -> Image.Image:
    """The photo with a labelled box per classified region, enlarged if it is small."""
    scale = max(1, math.ceil(MINIMUM_ANNOTATED_SIDE / max(photo.shape[:2])))
    image = Image.fromarray(photo)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    line_width = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    if result.probabilities is None:
        draw.text((4, 4), "no face found", fill=(255, 0, 0), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        return image
    labelled = zip(result.boxes or [None] * len(result.regions), result.regions, result.probabilities)
    for box, region, probabilities in labelled:
        name, probability, index = _label(classes, probabilities)
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        if box is None:
            corners = (0, 0, image.width - 1, image.height - 1)
            text = f"whole image: {name} {probability:.0%}"
        else:
            corners = (box.x * scale, box.y * scale, (box.x + box.width) * scale - 1, (box.y + box.height) * scale - 1)
            text = f"{name} {probability:.0%}"
        draw.rectangle(corners, outline=colour, width=line_width)
        text_box = draw.textbbox((0, 0), text, font=font)
        text_height = text_box[3] - text_box[1] + 4
        # The label sits above the box, or inside it when the box touches the photo's top.
        text_top = corners[1] - text_height if corners[1] >= text_height else corners[1] + line_width
        draw.rectangle((corners[0], text_top, corners[0] + text_box[2] + 6, text_top + text_height), fill=colour)
        draw.text((corners[0] + 3, text_top + 1), text, fill=(0, 0, 0), font=font)
    return image


def _save_jpeg(image: Image.Image, path: Path) -> None:
    with files.atomic_path(path) as temporary:
        image.save(temporary, format="JPEG", quality=JPEG_QUALITY)


def _rows(result: PhotoResult, classes: list[str], detector_name: str, annotated: Path | None,
          gradcam_path: Path | None, output_dir: Path) -> list[dict]:
    """One row per classified region, or a single row for a photo with nothing classified."""
    pictures = {
        "annotated": annotated.relative_to(output_dir).as_posix() if annotated else "",
        "gradcam": gradcam_path.relative_to(output_dir).as_posix() if gradcam_path else "",
        "error": result.error,
    }
    if result.probabilities is None:
        return [{
            "file": result.file, "face": -1, "status": result.status, "box": None,
            "detector": detector_name if result.photo is not None else "", "detector_confidence": None,
            "predicted": "", "probability": None, "probabilities": None, **pictures,
        }]
    rows = []
    # A photo classified whole has one region and no face box.
    boxes = result.boxes or [None]
    for face_index, (box, probabilities) in enumerate(zip(boxes, result.probabilities)):
        name, probability, _ = _label(classes, probabilities)
        rows.append({
            "file": result.file,
            "face": face_index if box is not None else -1,
            "status": result.status,
            "box": None if box is None else {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
            "detector": detector_name,
            "detector_confidence": None if box is None else round(box.confidence, 4),
            "predicted": name,
            "probability": round(probability, 6),
            "probabilities": {label: round(float(value), 6) for label, value in zip(classes, probabilities)},
            **pictures,
        })
    return rows


def _table(rows: list[dict], classes: list[str]) -> pd.DataFrame:
    """The rows flattened for the CSV: box and probabilities become columns of their own."""
    records = []
    for row in rows:
        box = row["box"] or {}
        probabilities = row["probabilities"] or {}
        records.append({
            "file": row["file"],
            "face": row["face"],
            "status": row["status"],
            "x": box.get("x"),
            "y": box.get("y"),
            "width": box.get("width"),
            "height": box.get("height"),
            "detector": row["detector"],
            "detector_confidence": row["detector_confidence"],
            "predicted": row["predicted"],
            "probability": row["probability"],
            **{PROBABILITY_PREFIX + label: probabilities.get(label) for label in classes},
            "annotated": row["annotated"],
            "gradcam": row["gradcam"],
            "error": row["error"],
        })
    columns = ["file", "face", "status", "x", "y", "width", "height", "detector", "detector_confidence",
               "predicted", "probability", *(PROBABILITY_PREFIX + label for label in classes),
               "annotated", "gradcam", "error"]
    table = pd.DataFrame.from_records(records, columns=columns)
    for column in ("x", "y", "width", "height"):
        table[column] = table[column].astype("Int64")
    return table


def _json_rows(rows: list[dict], classes: list[str]) -> dict:
    return {"classes": classes, "faces": rows}


def _collect_tiles(result: PhotoResult, classes: list[str], settings: PredictConfig,
                   tiles: list[tuple[np.ndarray, str]]) -> None:
    """Keep a small picture and a caption of each classified region for the contact sheet."""
    if result.probabilities is None:
        return
    for region, probabilities in zip(result.regions, result.probabilities):
        if len(tiles) >= settings.contact_sheet_max_faces:
            return
        left, top, right, bottom = region
        # Enlarged or shrunk to the tile, so tight 48-pixel crops are as visible as large faces.
        picture = ImageOps.contain(Image.fromarray(result.photo[top:bottom, left:right]),
                                   (settings.contact_sheet_tile, settings.contact_sheet_tile))
        name, probability, _ = _label(classes, probabilities)
        flag = " (whole)" if result.status == WHOLE_IMAGE else ""
        tiles.append((np.asarray(picture), f"{name} {probability:.0%}{flag}\n{Path(result.file).name}"))


def _write_contact_sheet(path: Path, tiles: list[tuple[np.ndarray, str]], settings: PredictConfig) -> None:
    """All face tiles in a grid, each captioned with its emotion, probability and file."""
    tile = settings.contact_sheet_tile
    font = ImageFont.load_default(size=11)
    caption_height = 30
    columns = max(1, min(10, math.ceil(math.sqrt(len(tiles)))))
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not tiles:
        draw.text((4, 4), "no faces\nfound", fill=(0, 0, 0), font=font)
    for position, (picture, caption) in enumerate(tiles):
        left = (position % columns) * tile
        top = (position // columns) * (tile + caption_height)
        offset_x = (tile - picture.shape[1]) // 2
        offset_y = (tile - picture.shape[0]) // 2
        sheet.paste(Image.fromarray(picture), (left + offset_x, top + offset_y))
        draw.multiline_text((left + 3, top + tile + 2), _fit(caption, tile, draw, font), fill=(0, 0, 0), font=font)
    with files.atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def _fit(caption: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    """Shorten each caption line (from the start, keeping its end) to fit in ``width`` pixels."""
    lines = []
    for line in caption.splitlines():
        while len(line) > 4 and draw.textlength(line, font=font) > width - 6:
            line = "…" + line[2:]
        lines.append(line)
    return "\n".join(lines)


def _summary(table: pd.DataFrame, photos: list[Path], elapsed: float, stopwatch: Stopwatch,
             settings: PredictConfig, detector_name: str, views: str) -> dict:
    counts = table.drop_duplicates("file")["status"].value_counts()
    return {
        "input": str(settings.input),
        "model": settings.tflite_model or settings.model,
        "runtime": "tflite" if settings.tflite_model else "keras",
        "detector": detector_name,
        "test_time_augmentation": views,
        "photos": len(photos),
        "faces": int((table["status"] == FACE).sum()),
        "photos_with_faces": int(counts.get(FACE, 0)),
        "photos_classified_whole": int(counts.get(WHOLE_IMAGE, 0)),
        "photos_without_faces": int(counts.get(NO_FACE, 0)),
        "unreadable_files": int(counts.get(UNREADABLE, 0)),
        "seconds": round(elapsed, 3),
        "photos_per_second": round(len(photos) / elapsed, 2) if elapsed > 0 else None,
        "seconds_by_activity": {name: round(value, 3) for name, value in sorted(stopwatch.seconds.items())},
    }


def default_model_path(config: Config) -> Path:
    """The shipped model (models/shipped/fer2013/), trained for faces from any source."""
    return model_io.SHIPPED_MODEL_PATH


def run(config: Config, force: bool = False) -> int:
    """The predict stage: settings from ``[predict]``; does nothing when inputs and settings are unchanged."""
    settings = dataclasses.replace(config.predict)
    needs_keras = not settings.tflite_model or settings.explain
    if needs_keras and not settings.model:
        settings.model = str(default_model_path(config))
    inputs = [path for path in (settings.input, settings.model, settings.tflite_model) if path]
    stamp = files.StageStamp(Path(settings.output_dir) / STAMP_NAME, dataclasses.asdict(settings), inputs)
    if stamp.is_current() and not force:
        LOGGER.info("%s is up to date (use --force to redo it)", settings.output_dir)
        return 0
    result = predict(settings)
    stamp.record([result.output_dir / name for name in (CSV_NAME, JSON_NAME, CONTACT_SHEET_NAME, SUMMARY_NAME)])
    summary = result.summary
    print(
        f"{summary['photos']} photos, {summary['faces']} faces, {summary['photos_without_faces']} without a face, "
        f"{summary['photos_classified_whole']} classified whole, {summary['unreadable_files']} unreadable; "
        f"{summary['photos_per_second']} photos/s; results in {result.output_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Overrides: KEY=VALUE sets [predict] KEY (for example detector=yunet yunet_model=PATH "
            "face_margin=0.3), SECTION.KEY=VALUE any other section."
        ),
    )
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("--model", help="trained .keras model (default: predict.model, else the shipped model)")
    parser.add_argument("--tflite", help="classify with this .tflite model (no TensorFlow needed)")
    parser.add_argument("--output", help="output folder (default: predict.output_dir)")
    parser.add_argument("--explain", action="store_true", help="save a Grad-CAM heat map over each face")
    cli.add_command_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``emotion-predict``; returns the exit status."""
    arguments = build_parser().parse_intermixed_args(argv)
    config_path = cli.command_config_path(arguments)
    options = {"input": arguments.input, "model": arguments.model, "tflite_model": arguments.tflite,
               "output_dir": arguments.output}

    def apply_options(config: Config) -> None:
        for key, value in options.items():
            if value is not None:
                setattr(config.predict, key, value)
        if arguments.explain:
            config.predict.explain = True

    return cli.run_configured(run, config_path, arguments.overrides, "predict", arguments.force, apply_options)


if __name__ == "__main__":
    sys.exit(main())
