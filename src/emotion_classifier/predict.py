"""Label every face in photos and videos: ``emotion-predict INPUT --model PATH``.

For each photo (JPEG, PNG, WebP or BMP; see ``faces.read_photo`` for orientation, colour modes
and large photos) the configured detector finds the faces; each face is turned upright by its
eyes and framed as the training faces were (``align_faces``; otherwise cropped square with
``face_margin``), resized to the model's input and classified, the faces of several photos in
one batch, by default averaged over the face and its mirror image (``test_time_augmentation``
in ``[predict]``). The output folder receives:

- ``annotated/<file>.jpg``: a copy of each photo with a box, the emotion and its probability
  per face (``annotated/<file>.gradcam.jpg`` beside it with ``--explain``);
- ``faces.csv`` and ``faces.json``: one row per face (file, box, detector confidence,
  landmarks, predicted emotion, every class probability); a photo without a face is one row
  with status ``no_face``, or ``whole_image`` when it was classified whole instead (see
  ``classify_whole_if_no_face`` and ``FACE_CROP_MAX_SIDE``), and an unreadable file is a row
  with its error;
- ``contact_sheet.png``: every face found, with its label;
- ``videos/<file>/``: for each video, its per-frame table, timelines, annotated video and
  per-face summary (``emotion_classifier.video``);
- ``summary.json``: counts, and the time spent detecting, classifying and writing.

Photos are decoded at most ``faces.WORKING_MAX_SIDE`` pixels a side and handled a bounded number
of pixels at a time (``faces.photo_chunks``), so memory stays flat whatever the photos; a face
too small in that copy is cut from the full-size photo. ``--tflite PATH`` classifies with a TFLite model written by the export
stage, through the LiteRT interpreter (``ai-edge-litert``) and without importing TensorFlow,
unless ``--explain`` asks for Grad-CAM, which needs the Keras model.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from emotion_classifier import (
    annotate,
    classifiers,
    cli,
    detectors,
    faces,
    files,
    runs,
    video,
)
from emotion_classifier.classifiers import (  # noqa: F401  (the names predict's callers use)
    PROBABILITY_PREFIX,
    FaceClassifier,
    KerasFaceClassifier,
    build_classifier,
    calibrated_views,
    prediction_views,
)
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config, ConfigError, PredictConfig, check_section
from emotion_classifier.timing import Stopwatch

LOGGER = logging.getLogger(__name__)

CSV_NAME = "faces.csv"
JSON_NAME = "faces.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
SUMMARY_NAME = "summary.json"
STAMP_NAME = ".predict_stamp.json"
ANNOTATED_FOLDER = "annotated"
VIDEOS_FOLDER = "videos"


# Row statuses.
FACE = "face"
WHOLE_IMAGE = "whole_image"
NO_FACE = "no_face"
UNREADABLE = "unreadable"
# Pictures no larger than this on their longer side are face crops already (FER2013 is 48x48):
# they are classified whole and flagged "whole_image", without searching them for faces.
FACE_CROP_MAX_SIDE = 64


@dataclasses.dataclass
class PhotoResult:
    """What was found in one photo; ``crops`` are the model inputs, one per classified region,
    ``pictures`` the faces they were made from."""

    path: Path
    file: str
    status: str
    photo: np.ndarray | None = None
    boxes: list[faces.FaceBox] = dataclasses.field(default_factory=list)
    pictures: list[faces.FacePicture] = dataclasses.field(default_factory=list)
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
    videos: list[dict] = dataclasses.field(default_factory=list)


def check_settings(settings: PredictConfig) -> None:
    """The checks of the configuration's [predict] section (settings built in code, as the demo
    does, skip loading a configuration), and those that depend on the detector and the model."""
    try:
        check_section("predict", settings)
    except ConfigError as error:
        raise PipelineError(str(error)) from None
    if settings.detector != "haar" and settings.min_confidence > 1:
        raise PipelineError(f"predict.min_confidence: must be in [0, 1] for {settings.detector}, "
                            f"got {settings.min_confidence}")
    if settings.explain and not settings.model:
        raise PipelineError("--explain (predict.explain) needs the Keras model: set predict.model (--model)")


def _load_models(settings: PredictConfig, stopwatch: Stopwatch):
    """The detector, the classifier and (with ``explain``) the Keras model for Grad-CAM."""
    with stopwatch.measure("loading_models"):
        detector = detectors.build_detector(settings)
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
    return detector, classifier, explainer


def predict(settings: PredictConfig, show_progress: bool = True) -> PredictionResult:
    """Detect, classify and draw every face below ``settings.input``; write into ``settings.output_dir``."""
    check_settings(settings)
    input_path = Path(settings.input)
    output_dir = Path(settings.output_dir)
    photos, videos = faces.find_inputs(input_path)
    stopwatch = Stopwatch()
    detector, classifier, explainer = _load_models(settings, stopwatch)
    views = prediction_views(settings, classifier)
    start = time.perf_counter()
    written = _predict_photos(photos, input_path, output_dir, (detector, classifier, explainer), settings,
                              stopwatch, views, show_progress)
    rows, annotated_paths, gradcam_paths, sheet_tiles = written
    table = _table(rows, classifier.classes, detector.landmark_names)
    # A run on videos alone writes no (empty) photo tables.
    if photos or not videos:
        with stopwatch.measure("writing"):
            files.save_csv(output_dir / CSV_NAME, table)
            files.write_json(output_dir / JSON_NAME, {"classes": classifier.classes, "faces": rows})
            annotate.write_contact_sheet(output_dir / CONTACT_SHEET_NAME, sheet_tiles)
    summary = _summary(table, photos, time.perf_counter() - start, stopwatch, settings, detector.name, views[0])
    # Video frames are classified one view each: smoothing over frames does the averaging, at
    # half the classifier time of the mirrored pair.
    summary["videos"] = [
        video.analyse_video(path, output_dir / VIDEOS_FOLDER / _relative_name(path, input_path), detector,
                            classifier, settings, ("none", views[1]), show_progress)
        for path in videos
    ]
    files.write_json(output_dir / SUMMARY_NAME, summary)
    return PredictionResult(table, output_dir, annotated_paths, gradcam_paths, summary, summary["videos"])


def _predict_photos(photos, input_path, output_dir, models, settings, stopwatch, views, show_progress):
    """Every photo, chunk by chunk: detect, classify, explain, draw; return the rows, the pictures
    written and the contact sheet's tiles."""
    detector, classifier, explainer = models
    rows: list[dict] = []
    annotated_paths: list[Path] = []
    gradcam_paths: list[Path] = []
    sheet_tiles: list[tuple[np.ndarray, str]] = []
    progress = tqdm(total=len(photos), desc="predict", unit="photo", disable=not show_progress or not photos)
    for chunk in faces.photo_chunks(photos):
        results = [_find_faces(path, _relative_name(path, input_path), detector, classifier, settings, stopwatch)
                   for path in chunk]
        _classify(results, classifier, classifiers.BATCH_SIZE, stopwatch, views)
        if explainer is not None:
            _explain(results, explainer, settings, stopwatch)
        with stopwatch.measure("writing"):
            for result in results:
                annotated, gradcam = _write_pictures(result, output_dir, classifier.classes)
                annotated_paths.extend([annotated] if annotated else [])
                gradcam_paths.extend([gradcam] if gradcam else [])
                rows.extend(_rows(result, classifier.classes, detector.name, annotated, gradcam, output_dir))
                _collect_tiles(result, classifier.classes, sheet_tiles)
        progress.update(len(chunk))
    progress.close()
    return rows, annotated_paths, gradcam_paths, sheet_tiles


def _relative_name(path: Path, input_path: Path) -> str:
    return path.name if input_path.is_file() else path.relative_to(input_path).as_posix()


def _find_faces(path: Path, file: str, detector: detectors.FaceDetector, classifier: FaceClassifier,
                settings: PredictConfig, stopwatch: Stopwatch) -> PhotoResult:
    """Read one photo (reduced when large) and detect its faces; decide what gets classified."""
    with stopwatch.measure("reading"):
        try:
            photo, scale = faces.read_photo(path, faces.WORKING_MAX_SIDE)
        except Exception as error:  # noqa: BLE001 - any undecodable file is reported, not fatal
            return PhotoResult(path, file, UNREADABLE, error=f"{type(error).__name__}: {error}")
    # A picture no larger than a face crop is one already (FER2013's are 48x48): classified whole.
    is_face_crop = max(photo.shape[:2]) <= FACE_CROP_MAX_SIDE
    with stopwatch.measure("detector"):
        boxes = [] if is_face_crop else detector.detect(photo)
    result = PhotoResult(path, file, FACE if boxes else NO_FACE, photo=photo, boxes=boxes)
    with stopwatch.measure("cropping"):
        result.pictures = faces.face_pictures(path, photo, scale, boxes, settings.face_margin, settings.align_faces,
                                              classifier.image_size)
        if not boxes and (settings.classify_whole_if_no_face or is_face_crop):
            result.status = WHOLE_IMAGE
            result.pictures = [faces.FacePicture(photo, (0, 0, photo.shape[1], photo.shape[0]), False)]
        result.crops = [faces.model_input(face.picture, classifier.image_size, classifier.channels,
                                          classifier.equalize_histogram) for face in result.pictures]
    return result


def _classify(results: list[PhotoResult], classifier: FaceClassifier, batch_size: int,
              stopwatch: Stopwatch, views: tuple[str, float] = ("none", classifiers.DEFAULT_CROP_FRACTION)) -> None:
    """Classify the crops of all photos together (``classifiers.classify_faces``)."""
    crops = [crop for result in results for crop in result.crops]
    if not crops:
        return
    with stopwatch.measure("classifier"):
        probabilities = classifiers.classify_faces(crops, classifier, batch_size, views)
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
                    np.stack(result.crops[index:index + classifiers.BATCH_SIZE]),
                    result.probabilities[index:index + classifiers.BATCH_SIZE].argmax(axis=1),
                )
                for index in range(0, len(result.crops), classifiers.BATCH_SIZE)
            ])


def _annotated_path(output_dir: Path, file: str, kind: str = "") -> Path:
    """``annotated/<file>.jpg`` (or ``.<kind>.jpg``); the original suffix stays so names never clash."""
    return output_dir / ANNOTATED_FOLDER / f"{file}{'.' + kind if kind else ''}.jpg"


def _labels(result: PhotoResult, classes: list[str]) -> list[tuple[faces.FaceBox | None, str, int]]:
    if result.probabilities is None:
        return []
    labels = []
    for box, probabilities in zip(result.boxes or [None], result.probabilities):
        name, probability, index = annotate.top_class(classes, probabilities)
        labels.append((box, f"{name} {probability:.0%}" if box else f"whole image: {name} {probability:.0%}", index))
    return labels


def _write_pictures(result: PhotoResult, output_dir: Path, classes: list[str]) -> tuple[Path | None, Path | None]:
    """Write the annotated copy (and the Grad-CAM copy) of one photo; return their paths."""
    if result.photo is None:
        return None, None
    photo = result.photo
    annotated_path = _annotated_path(output_dir, result.file)
    annotate.save_jpeg(annotate.annotated_photo(photo, _labels(result, classes)), annotated_path)
    if result.heatmaps is None:
        return annotated_path, None
    from emotion_classifier import gradcam

    explained = photo.copy()
    # Over the face's box, or for an aligned face over the turned square it was cut from.
    for face, heatmap in zip(result.pictures, result.heatmaps):
        if face.matrix is not None:
            explained = gradcam.overlay_aligned_heatmap(explained, heatmap, face.matrix, face.picture.shape[0])
            continue
        left, top, right, bottom = face.region
        explained[top:bottom, left:right] = gradcam.overlay_heatmap(photo[top:bottom, left:right], heatmap)
    explained_path = _annotated_path(output_dir, result.file, "gradcam")
    annotate.save_jpeg(annotate.annotated_photo(explained, _labels(result, classes)), explained_path)
    return annotated_path, explained_path


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
            "landmarks": None, "aligned": False, "predicted": "", "probability": None, "probabilities": None,
            **pictures,
        }]
    rows = []
    # A photo classified whole has one region and no face box.
    boxes = result.boxes or [None]
    for face_index, (box, face, probabilities) in enumerate(zip(boxes, result.pictures, result.probabilities)):
        name, probability, _ = annotate.top_class(classes, probabilities)
        rows.append({
            "file": result.file,
            "face": face_index if box is not None else -1,
            "status": result.status,
            "box": None if box is None else {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
            "detector": detector_name,
            "detector_confidence": None if box is None else round(box.confidence, 4),
            "landmarks": None if box is None or not box.landmarks else
            {landmark: [round(x, 1), round(y, 1)] for landmark, x, y in box.landmarks},
            "aligned": face.aligned,
            "predicted": name,
            "probability": round(probability, 6),
            "probabilities": {label: round(float(value), 6) for label, value in zip(classes, probabilities)},
            **pictures,
        })
    return rows


def _table(rows: list[dict], classes: list[str], landmark_names: tuple[str, ...]) -> pd.DataFrame:
    """The rows flattened for the CSV: box, landmarks and probabilities become columns of their own."""
    landmark_columns = [f"{name}_{axis}" for name in landmark_names for axis in ("x", "y")]
    records = []
    for row in rows:
        box = row["box"] or {}
        landmarks = row["landmarks"] or {}
        probabilities = row["probabilities"] or {}
        records.append({
            **{key: row[key] for key in ("file", "face", "status")},
            **{key: box.get(key) for key in ("x", "y", "width", "height")},
            "detector": row["detector"],
            "detector_confidence": row["detector_confidence"],
            **{f"{name}_{axis}": landmarks.get(name, [None, None])[position]
               for name in landmark_names for position, axis in enumerate(("x", "y"))},
            "aligned": row["aligned"],
            "predicted": row["predicted"],
            "probability": row["probability"],
            **{PROBABILITY_PREFIX + label: probabilities.get(label) for label in classes},
            **{key: row[key] for key in ("annotated", "gradcam", "error")},
        })
    columns = ["file", "face", "status", "x", "y", "width", "height", "detector", "detector_confidence",
               *landmark_columns, "aligned", "predicted", "probability",
               *(PROBABILITY_PREFIX + label for label in classes), "annotated", "gradcam", "error"]
    table = pd.DataFrame.from_records(records, columns=columns)
    for column in ("x", "y", "width", "height"):
        table[column] = table[column].astype("Int64")
    return table


def _collect_tiles(result: PhotoResult, classes: list[str], tiles: list[tuple[np.ndarray, str]]) -> None:
    """Keep a small picture and a caption of each classified region for the contact sheet."""
    if result.probabilities is None:
        return
    for face, probabilities in zip(result.pictures, result.probabilities):
        if len(tiles) >= annotate.CONTACT_SHEET_MAX_FACES:
            return
        name, probability, _ = annotate.top_class(classes, probabilities)
        flag = " (whole)" if result.status == WHOLE_IMAGE else ""
        tiles.append((annotate.tile(face.picture), f"{name} {probability:.0%}{flag}\n{Path(result.file).name}"))


def _summary(table: pd.DataFrame, photos: list[Path], elapsed: float, stopwatch: Stopwatch,
             settings: PredictConfig, detector_name: str, views: str) -> dict:
    counts = table.drop_duplicates("file")["status"].value_counts()
    return {
        "input": str(settings.input),
        "model": settings.tflite_model or settings.model,
        "runtime": "tflite" if settings.tflite_model else "keras",
        "detector": detector_name,
        "align_faces": settings.align_faces,
        "test_time_augmentation": views,
        "photos": len(photos),
        "faces": int((table["status"] == FACE).sum()),
        "photos_with_faces": int(counts.get(FACE, 0)),
        "photos_classified_whole": int(counts.get(WHOLE_IMAGE, 0)),
        "photos_without_faces": int(counts.get(NO_FACE, 0)),
        "unreadable_files": int(counts.get(UNREADABLE, 0)),
        "seconds": round(elapsed, 3),
        "photos_per_second": round(len(photos) / elapsed, 2) if elapsed > 0 and photos else None,
        "seconds_by_activity": {name: round(value, 3) for name, value in sorted(stopwatch.seconds.items())},
    }


def run(config: Config, force: bool = False) -> int:
    """The predict stage: settings from ``[predict]``; does nothing when inputs and settings are unchanged."""
    settings = dataclasses.replace(config.predict)
    needs_keras = not settings.tflite_model or settings.explain
    if needs_keras and not settings.model:
        settings.model = str(runs.default_model_path(config))
    inputs = [path for path in (settings.input, settings.model, settings.tflite_model) if path]
    stamp = files.StageStamp(Path(settings.output_dir) / STAMP_NAME, dataclasses.asdict(settings), inputs)
    if stamp.is_current() and not force:
        LOGGER.info("%s is up to date (use --force to redo it)", settings.output_dir)
        return 0
    result = predict(settings)
    outputs = [result.output_dir / SUMMARY_NAME]
    if result.summary["photos"] or not result.videos:
        outputs += [result.output_dir / name for name in (CSV_NAME, JSON_NAME, CONTACT_SHEET_NAME)]
    stamp.record(outputs)
    print(_report_line(result))
    return 0


def _report_line(result: PredictionResult) -> str:
    """One line for the terminal: what was found, how fast, and where the results are."""
    summary = result.summary
    parts = []
    if summary["photos"] or not result.videos:
        parts.append(
            f"{summary['photos']} photos, {summary['faces']} faces, {summary['photos_without_faces']} without a face, "
            f"{summary['photos_classified_whole']} classified whole, {summary['unreadable_files']} unreadable; "
            f"{summary['photos_per_second']} photos/s"
        )
    if result.videos:
        failed = [video_summary for video_summary in result.videos if video_summary.get("error")]
        frames = sum(video_summary.get("frames_analysed", 0) for video_summary in result.videos)
        parts.append(f"{len(result.videos)} videos ({len(failed)} unreadable), {frames} frames analysed")
    return f"{'; '.join(parts)}; results in {result.output_dir}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Overrides: KEY=VALUE sets [predict] KEY (for example detector=haar align_faces=false "
            "video_frames_per_second=5), SECTION.KEY=VALUE any other section."
        ),
    )
    parser.add_argument("input", help="an image or video file, or a folder of them (searched recursively)")
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
