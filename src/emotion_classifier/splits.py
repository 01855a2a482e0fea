"""Train, validation and test splits from the manifest (the ``train_valid_test_clean.py`` stage).

Rules, in order:

1. rows of ``[split] drop_classes`` and rows without a label are left out; the kept classes, in
   canonical order, are the class list (``classes.json``) whose positions are the class indices;
2. test: the dataset's own evaluation rows (source split ``validation`` or ``test``, such as
   AffectNet's validation.csv) when ``use_source_evaluation_split`` and the dataset has them;
   otherwise a stratified ``test_fraction`` of every class;
3. validation: ``valid_per_class`` rows of each class drawn from the training rows (a
   class-balanced set), but never more than ``max_valid_fraction`` of the class's training rows;
4. the rest is training.

Random draws use one seeded random key per row and a rank within each class, so a million rows
are split with a few vectorised numpy operations, and the same seed gives the same splits.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd

from emotion_classifier import files, labels, manifest
from emotion_classifier.classes import CANONICAL_CLASSES, canonical_class
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

LOGGER = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
EVALUATION_SOURCE_SPLITS: tuple[str, ...] = ("validation", "test")


@dataclasses.dataclass
class SplitResult:
    """Rows kept with their ``split`` and ``class_index``, the class list and what was decided."""

    rows: pd.DataFrame
    classes: list[str]
    test_source: str
    warnings: list[str]


def kept_classes(labels: pd.Series, drop_classes: list[str]) -> list[str]:
    """The classes present in ``labels`` and not dropped, in canonical order."""
    dropped = set()
    for name in drop_classes:
        canonical = canonical_class(name)
        if canonical is None:
            raise PipelineError(
                f"[split] drop_classes: {name!r} is not a class; known: {', '.join(CANONICAL_CLASSES)}"
            )
        dropped.add(canonical)
    present = set(labels.unique())
    return [name for name in CANONICAL_CLASSES if name in present and name not in dropped]


def _rank_within_class(class_index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each row among the rows of its class, ordered by its random key."""
    order = np.lexsort((keys, class_index))
    sorted_classes = class_index[order]
    starts = np.searchsorted(sorted_classes, sorted_classes, side="left")
    ranks = np.empty(len(order), dtype="int64")
    ranks[order] = np.arange(len(order)) - starts
    return ranks


def assign_splits(frame: pd.DataFrame, config: Config) -> SplitResult:
    """Decide every row's split; ``frame`` is a manifest. Pure: reads and writes no files."""
    settings = config.split
    labelled = frame[(frame["label"] != "") & frame["label_id"].notna()]
    classes = kept_classes(labelled["label"], settings.drop_classes)
    if not classes:
        raise PipelineError(
            f"no rows left after dropping {', '.join(settings.drop_classes)} and unlabelled rows"
        )
    rows = labelled[labelled["label"].isin(classes)].reset_index(drop=True)
    class_index = rows["label"].map({name: index for index, name in enumerate(classes)}).to_numpy(dtype="int64")
    count = len(rows)
    rng = np.random.default_rng(settings.seed)
    keys = rng.random(count)
    split = np.full(count, "train", dtype=object)
    warnings: list[str] = []

    evaluation = rows["source_split"].isin(EVALUATION_SOURCE_SPLITS).to_numpy()
    if settings.use_source_evaluation_split and evaluation.any():
        split[evaluation] = "test"
        test_source = "source evaluation split (" + ", ".join(
            sorted(set(rows["source_split"][evaluation]))) + ")"
        pool = ~evaluation
    else:
        pool = np.ones(count, dtype=bool)
        pool_counts = np.bincount(class_index, minlength=len(classes))
        # Round half up, per class: the stratified share of each class.
        test_counts = np.floor(pool_counts * settings.test_fraction + 0.5).astype("int64")
        ranks = _rank_within_class(class_index, keys)
        is_test = ranks < test_counts[class_index]
        split[is_test] = "test"
        pool &= ~is_test
        test_source = f"stratified {settings.test_fraction:g} of every class"

    # Validation: a class-balanced draw from the training pool.
    pool_index = np.flatnonzero(pool)
    pool_classes = class_index[pool_index]
    training_counts = np.bincount(pool_classes, minlength=len(classes))
    valid_counts = np.empty(len(classes), dtype="int64")
    for index, name in enumerate(classes):
        cap = math.floor(training_counts[index] * settings.max_valid_fraction)
        valid_counts[index] = min(settings.valid_per_class, cap)
        if settings.valid_per_class > cap:
            warnings.append(
                f"class {name}: {cap} validation rows instead of {settings.valid_per_class} "
                f"(max_valid_fraction {settings.max_valid_fraction:g} of {training_counts[index]} training rows)"
            )
        if training_counts[index] - valid_counts[index] == 0:
            warnings.append(f"class {name}: no training rows")
    pool_ranks = _rank_within_class(pool_classes, keys[pool_index])
    split[pool_index[pool_ranks < valid_counts[pool_classes]]] = "valid"

    rows["split"] = split
    rows["class_index"] = class_index
    _check_disjoint(rows)
    for warning in warnings:
        LOGGER.warning(warning)
    return SplitResult(rows=rows, classes=classes, test_source=test_source, warnings=warnings)


def _check_disjoint(rows: pd.DataFrame) -> None:
    """No image may sit in two splits: that would leak test images into training."""
    splits_per_file = rows.groupby("filename", sort=False)["split"].nunique()
    leaking = splits_per_file[splits_per_file > 1]
    if len(leaking):
        raise PipelineError(
            f"splits are not disjoint: {len(leaking)} image(s) are in more than one split, for example "
            f"{leaking.index[0]}; the manifest lists them twice, rebuild it with get_filenames_and_labels.py"
        )


def count_table(result: SplitResult) -> pd.DataFrame:
    """Per-class counts of each split (rows: classes in class order; columns: splits and total)."""
    table = pd.crosstab(result.rows["label"], result.rows["split"])
    table = table.reindex(index=result.classes, columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name = "class"
    return table


def output_paths(config: Config) -> dict[str, object]:
    processed = config.paths.processed
    paths = {
        "split_manifest": config.paths.split_manifest,
        "classes": processed / "classes.json",
        "summary": config.paths.reports / "split_summary.json",
    }
    for split in SPLITS:
        paths[f"X_{split}"] = processed / f"X_{split}_filenames.npy"
        paths[f"y_{split}"] = processed / f"y_{split}.npy"
    return paths


def run(config: Config, force: bool = False) -> int:
    """Split the manifest and write the split manifest, class list, npy hand-offs and summary."""
    paths = config.paths
    manifest.require_labels_stage_manifest(paths.manifest)
    outputs = output_paths(config)
    stamp = files.StageStamp(paths.processed / ".split.stamp.json", dataclasses.asdict(config.split),
                             [paths.manifest])
    if not force and stamp.is_current():
        print(f"splits up to date: {outputs['split_manifest']} (use --force to redo them)")
        return 0
    frame = manifest.read_labels_stage_manifest(paths.manifest)
    result = assign_splits(frame, config)
    rows = result.rows[[*manifest.MANIFEST_COLUMNS, "split", "class_index"]]
    files.save_csv(outputs["split_manifest"], labels.as_plain_objects(rows))
    files.write_json(outputs["classes"], {"classes": result.classes})
    for split in SPLITS:
        chosen = rows[rows["split"] == split]
        files.save_npy(outputs[f"X_{split}"], chosen["filename"].to_numpy(dtype=str))
        files.save_npy(outputs[f"y_{split}"], chosen["class_index"].to_numpy(dtype="int64"))
    table = count_table(result)
    files.write_json(outputs["summary"], {
        "classes": result.classes,
        "test_source": result.test_source,
        "counts": {split: {name: int(table.loc[name, split]) for name in table.index} for split in table.columns},
        "rows_dropped": int(len(frame) - len(rows)),
        "warnings": result.warnings,
    })
    print(f"test split: {result.test_source}")
    print(table.to_string())
    stamp.record(list(outputs.values()))
    return 0
