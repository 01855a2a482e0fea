"""Evaluating a trained model (the ``model_evaluation_4.py`` / ``model_evaluation_6.py`` stages).

A model is scored on the split stage's test (or validation) set, or on any dataset folder laid
out as a folder per class. Classes are matched by canonical name, never by position, so a model
trained on AffectNet can be scored on FER2013: images of a class the model does not know are
counted per class and left out of the scores, and model classes missing from the data are
listed.

Outputs, in ``reports/<name>/``: ``evaluation.json`` (every metric, the confusion matrix and the
classification report), ``confusion_matrix.png`` (counts and row-normalised) and
``predictions.csv`` (one row per image with every class probability). ``reports/comparison.md``
is rebuilt from every ``reports/*/evaluation.json``, one row per evaluated model.

Macro-averaged scores (balanced accuracy, macro F1) average over the classes present in the
evaluated data: a model class with no images has no recall to average, and counting it as zero
would punish the model for the dataset's gaps. Predictions of such a class still count as errors.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as sklearn_metrics
from tqdm import tqdm

from emotion_classifier import files, labels, manifest, model_io
from emotion_classifier.cli import PipelineError
from emotion_classifier.config import Config, EvaluationConfig

LOGGER = logging.getLogger(__name__)

EVALUATION_NAME = "evaluation.json"
CONFUSION_NAME = "confusion_matrix.png"
PREDICTIONS_NAME = "predictions.csv"
COMPARISON_NAME = "comparison.md"
STAMP_NAME = ".evaluation_stamp.json"
PROBABILITY_PREFIX = "probability_"
# ``dataset`` values that mean a split of the split stage's manifest.
MANIFEST_SPLITS: tuple[str, ...] = ("test", "valid")
# The part of a dataset folder that is evaluated: its test folders, else its validation folders,
# else (no split folders, or only train/) all of it. A dataset's training images are never
# preferred because a model may have been trained on them.
FOLDER_EVALUATION_SPLITS: tuple[str, ...] = ("test", "validation")
# Images decoded in parallel threads (Pillow releases the interpreter lock while decoding).
DECODE_THREADS = min(8, os.cpu_count() or 1)
# Images classified per call of the model.
BATCH_SIZE = 64
# test_time_augmentation = "flip_crops": the side of each crop, as a fraction of the image's.
CROP_FRACTION = 0.9
# The evaluation section of each training section (its test-time augmentation).
EVALUATION_SECTIONS = {"model_4": "model_evaluation_4", "model_6": "model_evaluation_6"}


@dataclasses.dataclass
class EvaluationData:
    """The labelled images to evaluate, before their classes are matched with the model's.

    ``rows`` has at least ``filename`` (relative to ``images_root``), ``label`` (canonical class
    name) and the face box columns; ``rejected`` counts files of a dataset folder that could not
    be used, by reason (unknown class folder, not an image).
    """

    rows: pd.DataFrame
    images_root: Path
    description: str
    inputs: list[Path]
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ClassMatch:
    """The evaluated rows with ``true_index`` (position in the model's classes) and the gaps."""

    rows: pd.DataFrame
    excluded_per_class: dict[str, int]
    model_classes_absent_from_data: list[str]


def resolve_model_path(config: Config, section: str, model_section: str) -> Path:
    """``[section] model``; when empty, the best model of the ``model_section`` training run,
    or the shipped model when that run does not exist (so a dataset can be scored out of the box)."""
    evaluation_config: EvaluationConfig = getattr(config, section)
    if evaluation_config.model:
        return Path(evaluation_config.model)
    run_model = config.paths.models / getattr(config, model_section).run_name / "best.keras"
    if not run_model.is_file() and model_io.SHIPPED_MODEL_PATH.is_file():
        LOGGER.info("no %s run at %s: evaluating the shipped model %s", model_section, run_model,
                    model_io.SHIPPED_MODEL_PATH)
        return model_io.SHIPPED_MODEL_PATH
    return run_model


def load_evaluation_data(dataset: str, config: Config) -> EvaluationData:
    """The rows named by ``dataset``: a split of the split manifest, or a dataset folder."""
    if dataset in MANIFEST_SPLITS:
        split_manifest = config.paths.split_manifest
        if not split_manifest.is_file():
            raise PipelineError(
                f"split manifest not found: {split_manifest}; run the split stage first "
                "(python train_valid_test_clean.py)"
            )
        frame = manifest.read_manifest(split_manifest)
        if "split" not in frame.columns:
            raise PipelineError(f"{split_manifest}: no 'split' column; re-run train_valid_test_clean.py")
        rows = frame[frame["split"] == dataset].reset_index(drop=True)
        return EvaluationData(
            rows=rows,
            images_root=config.paths.images_root,
            description=f"{dataset} split of {split_manifest}",
            inputs=[split_manifest],
        )
    folder = Path(dataset)
    if not folder.is_dir():
        raise PipelineError(
            f"dataset {dataset!r} is neither 'test', 'valid' nor an existing dataset folder "
            "(a folder per class, optionally inside train/, val/ and test/ folders)"
        )
    table = labels.read_class_folders(folder)
    rows = table.rows
    description = f"all of {folder}"
    for split in FOLDER_EVALUATION_SPLITS:
        in_split = rows["source_split"] == split
        if in_split.any():
            rows = rows[in_split]
            description = f"{split} part of {folder}"
            break
    rejected = {str(reason): int(count) for reason, count in table.rejected["reason"].value_counts().items()}
    return EvaluationData(rows=rows.reset_index(drop=True), images_root=folder,
                          description=description, inputs=[folder], rejected=rejected)


def match_classes(rows: pd.DataFrame, model_classes: list[str]) -> ClassMatch:
    """Keep the rows whose class the model knows, with ``true_index``; count the others."""
    known = rows["label"].isin(model_classes)
    excluded = rows.loc[~known, "label"].value_counts()
    kept = rows[known].copy()
    kept["true_index"] = kept["label"].map({name: index for index, name in enumerate(model_classes)})
    present = set(kept["label"])
    return ClassMatch(
        rows=kept.reset_index(drop=True),
        excluded_per_class={str(name): int(count) for name, count in sorted(excluded.items())},
        model_classes_absent_from_data=[name for name in model_classes if name not in present],
    )


def _face_box(row) -> tuple[float, float, float, float] | None:
    box = tuple(float(row[column]) for column in manifest.FACE_BOX_COLUMNS)
    if all(np.isfinite(box)) and box[2] > 0 and box[3] > 0:
        return box
    return None


def test_time_views(images: np.ndarray, mode: str, crop_fraction: float = 0.9) -> list[np.ndarray]:
    """The views of a batch that test-time augmentation averages over.

    ``mode`` is "none" (the batch itself), "flip" (the batch and its mirror images) or
    "flip_crops" (those, plus the four corner crops and the centre crop covering
    ``crop_fraction`` of each side, resized back to the input size, each with its mirror).
    Mirroring is the augmentation that face models are trained with and never changes the
    expression; small crops mimic the translation and zoom augmentation.
    """
    if mode == "none":
        return [images]
    if mode not in ("flip", "flip_crops"):
        raise ValueError(f"unknown test-time augmentation {mode!r}: use none, flip or flip_crops")
    views = [images]
    if mode == "flip_crops":
        if not 0.5 <= crop_fraction < 1.0:
            raise ValueError(f"crop_fraction must be in [0.5, 1), got {crop_fraction}")
        height, width = images.shape[1:3]
        crop_height, crop_width = int(round(height * crop_fraction)), int(round(width * crop_fraction))
        offsets = [(0, 0), (0, width - crop_width), (height - crop_height, 0),
                   (height - crop_height, width - crop_width),
                   ((height - crop_height) // 2, (width - crop_width) // 2)]
        for top, left in offsets:
            crop = images[:, top:top + crop_height, left:left + crop_width, :]
            resized = bilinear_resize(crop.astype(np.float32), height, width)
            views.append(np.clip(resized, 0.0, 255.0).astype(images.dtype))
    return views + [view[:, :, ::-1, :] for view in views]


def _bilinear_weights(source: int, target: int) -> np.ndarray:
    """``(target, source)`` sampling matrix of bilinear resizing with half-pixel centres."""
    positions = np.clip((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0, source - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, source - 1)
    fraction = (positions - lower).astype(np.float32)
    weights = np.zeros((target, source), dtype=np.float32)
    np.add.at(weights, (np.arange(target), lower), 1.0 - fraction)
    np.add.at(weights, (np.arange(target), upper), fraction)
    return weights


def bilinear_resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """A batch ``(n, h, w, c)`` resized as ``keras.ops.image.resize(..., "bilinear")`` resizes it
    (half-pixel centres, no antialiasing), in numpy: prediction with a TFLite model uses test-time
    views without importing TensorFlow."""
    rows = _bilinear_weights(images.shape[1], height)
    columns = _bilinear_weights(images.shape[2], width)
    return np.einsum("ij,njkc,lk->nilc", rows, images, columns, optimize=True).astype(np.float32)


def predict(model, rows: pd.DataFrame, images_root: Path, image_size: int, channels: int,
            batch_size: int, face_margin: float = 0.0, test_time_augmentation: str = "none",
            crop_fraction: float = 0.9, per_view: bool = False,
            equalize_histogram: bool = False) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Class probabilities for every row, in order, decoding one batch at a time.

    Memory stays at one batch of images however large the set. Returns the probabilities
    (NaN for images that could not be read) and the list of unreadable files with their error.
    With test-time augmentation, each image's probabilities are the mean over its views;
    ``per_view`` keeps them apart instead: ``(rows, views, classes)``. ``equalize_histogram``
    as the model was trained (model_info.json).
    """
    from emotion_classifier import input_pipeline

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def load(row) -> np.ndarray | Exception:
        try:
            return input_pipeline.load_image(images_root / row["filename"], image_size, channels,
                                             box=_face_box(row), margin=face_margin,
                                             equalize_histogram=equalize_histogram)
        except Exception as error:  # noqa: BLE001 - any decoder failure is reported per file
            return error

    output_count = int(model.output_shape[-1])
    view_count = len(test_time_views(np.zeros((1, 8, 8, 1), dtype="float32"), test_time_augmentation, crop_fraction))
    shape = (len(rows), view_count, output_count) if per_view else (len(rows), output_count)
    probabilities = np.full(shape, np.nan, dtype=np.float64)
    unreadable: list[dict[str, str]] = []
    records = rows.to_dict("records")
    with concurrent.futures.ThreadPoolExecutor(max_workers=DECODE_THREADS) as executor, \
            tqdm(total=len(records), desc="evaluating", unit="image") as progress:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            positions, images = [], []
            for offset, result in enumerate(executor.map(load, batch)):
                if isinstance(result, Exception):
                    unreadable.append({"filename": batch[offset]["filename"],
                                       "error": f"{type(result).__name__}: {result}"})
                else:
                    positions.append(start + offset)
                    images.append(result)
            if images:
                views = test_time_views(np.stack(images), test_time_augmentation, crop_fraction)
                view_probabilities = np.stack([np.asarray(model.predict_on_batch(view)) for view in views], axis=1)
                probabilities[positions] = view_probabilities if per_view else view_probabilities.mean(axis=1)
            progress.update(len(batch))
    return probabilities, unreadable


def compute_metrics(true_index: np.ndarray, predicted_index: np.ndarray, class_names: list[str]) -> dict:
    """Every score of the report, computed with scikit-learn.

    Averages run over the classes present in ``true_index`` (see the module docstring); the
    per-class scores, the report and the confusion matrix cover every model class.
    """
    true_index = np.asarray(true_index, dtype=np.int64)
    predicted_index = np.asarray(predicted_index, dtype=np.int64)
    if len(true_index) == 0:
        raise ValueError("no images to score")
    all_labels = list(range(len(class_names)))
    present_labels = sorted(set(true_index.tolist()))
    with warnings.catch_warnings():
        # Predictions of a class absent from the data are expected here, not a mistake.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced_accuracy = sklearn_metrics.balanced_accuracy_score(true_index, predicted_index)
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        true_index, predicted_index, labels=all_labels, zero_division=0
    )
    return {
        "accuracy": float(sklearn_metrics.accuracy_score(true_index, predicted_index)),
        "balanced_accuracy": float(balanced_accuracy),
        "macro_f1": float(sklearn_metrics.f1_score(
            true_index, predicted_index, labels=present_labels, average="macro", zero_division=0)),
        "weighted_f1": float(sklearn_metrics.f1_score(
            true_index, predicted_index, labels=present_labels, average="weighted", zero_division=0)),
        "cohen_kappa": float(sklearn_metrics.cohen_kappa_score(true_index, predicted_index)),
        "per_class": {
            name: {"precision": float(precision[index]), "recall": float(recall[index]),
                   "f1": float(f1[index]), "support": int(support[index])}
            for index, name in enumerate(class_names)
        },
        "confusion_matrix": sklearn_metrics.confusion_matrix(
            true_index, predicted_index, labels=all_labels).tolist(),
        "classification_report": sklearn_metrics.classification_report(
            true_index, predicted_index, labels=all_labels, target_names=class_names,
            digits=4, zero_division=0),
    }


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str):
    """Two panels: image counts, and each true class's row normalised to fractions."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.int64)
    row_totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_totals, out=np.zeros(matrix.shape, dtype=np.float64),
                           where=row_totals > 0)
    side = 2.5 + 0.55 * len(class_names)
    figure = Figure(figsize=(2 * side + 1, side))
    axes = figure.subplots(1, 2)
    panels = ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised (recall)", ".2f"))
    for axis, values, panel_title, number_format in panels:
        upper = values.max() if values.max() > 0 else 1
        image = axis.imshow(values, cmap="Blues", vmin=0, vmax=upper)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        for row in range(values.shape[0]):
            for column in range(values.shape[1]):
                value = values[row, column]
                axis.text(column, row, format(value, number_format), ha="center", va="center",
                          fontsize=8, color="white" if value > upper / 2 else "black")
        ticks = np.arange(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=45, ha="right")
        axis.set_yticks(ticks, class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(panel_title)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def write_comparison(reports_dir: str | Path) -> Path:
    """Rebuild ``comparison.md`` from every ``<reports_dir>/*/evaluation.json``."""
    reports_dir = Path(reports_dir)
    lines = [
        "# Model comparison",
        "",
        f"Rebuilt from every `*/{EVALUATION_NAME}` by the model evaluation stages. Balanced accuracy",
        "and macro F1 average over the classes present in each evaluated dataset.",
        "",
        "| name | dataset | images | accuracy | balanced accuracy | macro F1 | weighted F1 | kappa |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in sorted(reports_dir.glob(f"*/{EVALUATION_NAME}")):
        try:
            report = files.read_json(path)
            scores = report["metrics"]
            cells = [
                str(report["name"]), str(report["dataset_description"]), str(report["images"]),
                *(f"{scores[key]:.4f}" for key in
                  ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa")),
            ]
        except (OSError, ValueError, KeyError, TypeError) as error:
            LOGGER.warning("left out of the comparison: %s (%s)", path, error)
            continue
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    destination = reports_dir / COMPARISON_NAME
    files.write_text(destination, "\n".join(lines) + "\n")
    return destination


def _report_name(evaluation_config: EvaluationConfig, info: dict, model_path: Path, section: str) -> str:
    name = evaluation_config.name or str(info.get("run_name") or model_path.parent.name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise PipelineError(f"{section}.name: {name!r} cannot name a report folder; set {section}.name")
    return name


def _read_model_info(model_path: Path, section: str, model_section: str) -> dict:
    """The model's info, after checking that the model exists; errors say what to run."""
    if not model_path.is_file():
        raise PipelineError(
            f"model not found: {model_path}; train it first (python {model_section}.py) "
            f"or set {section}.model"
        )
    try:
        return model_io.read_model_info(model_path)
    except (FileNotFoundError, ValueError) as error:
        raise PipelineError(f"cannot use model {model_path}: {error}") from error


def print_summary(report: dict) -> None:
    """The scores and the classification report, on standard output."""
    scores = report["metrics"]
    print(f"\n{report['name']}: {report['model']} on {report['dataset_description']} "
          f"({report['images']} images)")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa"):
        print(f"  {key:<18} {scores[key]:.4f}")
    print("\n" + report["classification_report"])
    if report["excluded_per_class"]:
        excluded = ", ".join(f"{name}: {count}" for name, count in report["excluded_per_class"].items())
        print(f"left out (classes the model does not know): {excluded}")
    if report["model_classes_absent_from_data"]:
        print(f"model classes with no images: {', '.join(report['model_classes_absent_from_data'])} "
              "(the report's macro avg counts them as 0; macro_f1 above leaves them out)")
    if report["unreadable_images"]:
        print(f"unreadable images left out: {len(report['unreadable_images'])}")
    if report["rejected_files"]:
        print(f"dataset files not used: {report['rejected_files']}")


def run(config: Config, force: bool = False, section: str = "model_evaluation_4",
        model_section: str = "model_4") -> int:
    """Evaluate one model on one dataset and write its report; rebuild the comparison table."""
    evaluation_config: EvaluationConfig = getattr(config, section)
    model_path = resolve_model_path(config, section, model_section)
    # The model info (cheap to read) names the report; the model is loaded only if needed.
    info = _read_model_info(model_path, section, model_section)
    class_names = [str(name) for name in info["classes"]]
    name = _report_name(evaluation_config, info, model_path, section)
    report_dir = config.paths.reports / name
    data = load_evaluation_data(evaluation_config.dataset, config)

    stamp = files.StageStamp(
        report_dir / STAMP_NAME,
        settings={"section": dataclasses.asdict(evaluation_config), "model": str(model_path),
                  "face_margin": config.generator.face_margin},
        inputs=[model_path, model_io.model_info_path(model_path), *data.inputs],
    )
    outputs = [report_dir / EVALUATION_NAME, report_dir / CONFUSION_NAME, report_dir / PREDICTIONS_NAME]
    if not force and stamp.is_current():
        LOGGER.info("evaluation %s is up to date (use --force to redo)", report_dir)
        write_comparison(config.paths.reports)
        return 0

    match = match_classes(data.rows, class_names)
    if match.excluded_per_class:
        LOGGER.warning("images of classes the model does not know are left out: %s",
                       match.excluded_per_class)
    if match.rows.empty:
        raise PipelineError(
            f"no images of the model's classes ({', '.join(class_names)}) in {data.description}"
        )
    model, _ = model_io.load_trained_model(model_path)
    probabilities, unreadable = predict(
        model, match.rows, data.images_root, int(info["image_size"]), int(info["channels"]),
        BATCH_SIZE, face_margin=config.generator.face_margin,
        test_time_augmentation=evaluation_config.test_time_augmentation,
        crop_fraction=CROP_FRACTION,
        equalize_histogram=bool(info.get("equalize_histogram", False)),
    )
    readable = ~np.isnan(probabilities).any(axis=1)
    if not readable.any():
        raise PipelineError(f"none of the {len(match.rows)} images in {data.description} could be read")
    true_index = match.rows["true_index"].to_numpy()[readable]
    predicted_index = probabilities[readable].argmax(axis=1)
    scores = compute_metrics(true_index, predicted_index, class_names)

    report = {
        "name": name,
        "model": str(model_path),
        "model_classes": class_names,
        "image_size": int(info["image_size"]),
        "channels": int(info["channels"]),
        "equalize_histogram": bool(info.get("equalize_histogram", False)),
        "dataset": evaluation_config.dataset,
        "dataset_description": data.description,
        "images": int(readable.sum()),
        "test_time_augmentation": evaluation_config.test_time_augmentation,
        "metrics": {key: scores[key] for key in
                    ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa")},
        "per_class": scores["per_class"],
        "confusion_matrix": {"rows": "true class", "columns": "predicted class",
                             "classes": class_names, "counts": scores["confusion_matrix"]},
        "classification_report": scores["classification_report"],
        "excluded_per_class": match.excluded_per_class,
        "model_classes_absent_from_data": match.model_classes_absent_from_data,
        "unreadable_images": unreadable,
        "rejected_files": data.rejected,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    kept = match.rows[readable]
    predictions = pd.DataFrame({
        "filename": kept["filename"].to_numpy(),
        "true": kept["label"].to_numpy(),
        "predicted": [class_names[index] for index in predicted_index],
    })
    for index, class_name in enumerate(class_names):
        predictions[PROBABILITY_PREFIX + class_name] = probabilities[readable, index]
    files.save_csv(report_dir / PREDICTIONS_NAME, predictions)
    files.save_figure(
        report_dir / CONFUSION_NAME,
        plot_confusion_matrix(np.asarray(scores["confusion_matrix"]), class_names,
                              f"{name} on {data.description} ({report['images']} images)"),
    )
    files.write_json(report_dir / EVALUATION_NAME, report)
    stamp.record(outputs)
    print_summary(report)
    comparison = write_comparison(config.paths.reports)
    LOGGER.info("report: %s; comparison: %s", report_dir / EVALUATION_NAME, comparison)
    return 0



def run_model_evaluation_4(config: Config, force: bool = False) -> int:
    """The ``model_evaluation_4.py`` stage: evaluate model_4's run (or ``[model_evaluation_4] model``)."""
    return run(config, force, section=EVALUATION_SECTIONS["model_4"], model_section="model_4")


def run_model_evaluation_6(config: Config, force: bool = False) -> int:
    """The ``model_evaluation_6.py`` stage: evaluate model_6's run (or ``[model_evaluation_6] model``)."""
    return run(config, force, section=EVALUATION_SECTIONS["model_6"], model_section="model_6")
