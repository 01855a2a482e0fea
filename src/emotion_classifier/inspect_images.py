"""Look at the data before training (the ``inspect_images.py`` stage).

Two figures from the manifest: ``sample_images.png``, a grid with ``SAMPLES_PER_CLASS`` random
images of every class (one row per class, the face box drawn where the row has one), and
``class_distribution.png``, the class counts of each source split as grouped bars.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot's global state, so the
stage works on machines without a display and never changes a notebook's backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from emotion_classifier import files, image_paths, manifest
from emotion_classifier.classes import CANONICAL_CLASSES
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

# Images per class in the sample grid, and the seed that draws them.
SAMPLES_PER_CLASS = 8
SEED = 0


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _classes_in_order(frame: pd.DataFrame) -> list[str]:
    present = set(frame["label"])
    return [name for name in CANONICAL_CLASSES if name in present] + sorted(present - set(CANONICAL_CLASSES))


def sample_rows(frame: pd.DataFrame, samples_per_class: int, seed: int) -> pd.DataFrame:
    """Up to ``samples_per_class`` random rows of each class, drawn reproducibly."""
    shuffled = frame.sample(frac=1.0, random_state=np.random.RandomState(seed))
    return shuffled.groupby("label", sort=False).head(samples_per_class)


def _read_pixels(images_root: Path, filename: str) -> np.ndarray | None:
    """The image as RGB pixels; None when it cannot be read or may not be (outside the images
    root, a named pipe: see ``image_paths.py``), so a hand-edited manifest cannot stop the stage."""
    if not image_paths.is_readable_image_path(images_root, filename):
        return None
    try:
        with Image.open(images_root / filename) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def sample_grid(frame: pd.DataFrame, images_root: Path, samples_per_class: int, seed: int) -> Figure:
    """The grid figure: a row per class, titled with its label, face boxes drawn."""
    classes = _classes_in_order(frame)
    samples = sample_rows(frame, samples_per_class, seed)
    columns = max(1, samples_per_class)
    figure = _new_figure(1.6 * columns, 1.8 * len(classes))
    axes = np.atleast_2d(figure.subplots(len(classes), columns, squeeze=False))
    for row_index, name in enumerate(classes):
        chosen = samples[samples["label"] == name]
        boxes = manifest.has_face_box(chosen)
        for column_index in range(columns):
            axis = axes[row_index, column_index]
            axis.set_xticks([])
            axis.set_yticks([])
            if column_index == 0:
                axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=11)
            if column_index >= len(chosen):
                axis.set_axis_off()
                continue
            row = chosen.iloc[column_index]
            axis.set_title(name, fontsize=8)
            pixels = _read_pixels(images_root, row["filename"])
            if pixels is None:
                axis.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=axis.transAxes)
                continue
            axis.imshow(pixels)
            if boxes[column_index]:
                axis.add_patch(Rectangle(
                    (row["face_x"], row["face_y"]), row["face_width"], row["face_height"],
                    fill=False, edgecolor="lime", linewidth=1.5,
                ))
    figure.suptitle(f"{samples_per_class} random images per class", fontsize=12)
    return figure


def distribution_chart(frame: pd.DataFrame) -> Figure:
    """Grouped bars: for each class, one bar per source split."""
    classes = _classes_in_order(frame)
    source_split = frame["source_split"].replace("", "(no split)")
    counts = pd.crosstab(frame["label"], source_split).reindex(index=classes, fill_value=0)
    figure = _new_figure(max(6.0, 0.9 * len(classes) + 2), 4.5)
    axis = figure.subplots()
    positions = np.arange(len(classes))
    width = 0.8 / max(1, len(counts.columns))
    for index, split in enumerate(counts.columns):
        bars = axis.bar(positions + (index - (len(counts.columns) - 1) / 2) * width,
                        counts[split].to_numpy(), width, label=split)
        axis.bar_label(bars, fontsize=7)
    axis.set_xticks(positions, classes, rotation=30, ha="right")
    axis.set_ylabel("images")
    axis.set_title("Images per class and source split")
    axis.legend(title="source split")
    return figure


def output_paths(config: Config) -> dict[str, Path]:
    figures = config.paths.reports / "figures"
    return {"samples": figures / "sample_images.png", "distribution": figures / "class_distribution.png"}


def run(config: Config, force: bool = False) -> int:
    """Draw the sample grid and the class distribution chart from the manifest."""
    paths = config.paths
    manifest.require_labels_stage_manifest(paths.manifest)
    outputs = output_paths(config)
    stamp = files.StageStamp(paths.processed / ".inspect.stamp.json",
                             {"samples_per_class": SAMPLES_PER_CLASS, "seed": SEED}, [paths.manifest])
    if not force and stamp.is_current():
        print(f"figures up to date in {outputs['samples'].parent} (use --force to redraw)")
        return 0
    frame = manifest.read_labels_stage_manifest(paths.manifest)
    if frame.empty:
        raise PipelineError(f"{paths.manifest} has no rows to inspect")
    files.save_figure(outputs["samples"], sample_grid(frame, paths.images_root, SAMPLES_PER_CLASS, SEED))
    files.save_figure(outputs["distribution"], distribution_chart(frame))
    stamp.record(list(outputs.values()))
    print(f"wrote {outputs['samples']} and {outputs['distribution']}")
    return 0
