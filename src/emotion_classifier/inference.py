"""Class probabilities for the rows of a manifest, a batch at a time, with test-time views.

Evaluation, decision calibration and the ensembles' checks all predict through ``predict``, so
every figure comes from the same crops (``images.load_image``) and the same views
(``images.test_time_views``).
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from emotion_classifier import manifest
from emotion_classifier.images import load_image, test_time_views

# Threads decoding a batch while the model works on the previous one.
DECODE_THREADS = min(8, os.cpu_count() or 1)


def face_box(row) -> tuple[float, float, float, float] | None:
    """The row's face box ``(x, y, width, height)``, or None when it has none."""
    if not all(column in row for column in manifest.FACE_BOX_COLUMNS):
        return None
    box = tuple(float(row[column]) for column in manifest.FACE_BOX_COLUMNS)
    if all(np.isfinite(box)) and box[2] > 0 and box[3] > 0:
        return box
    return None


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def load(row) -> np.ndarray | Exception:
        try:
            return load_image(Path(images_root) / row["filename"], image_size, channels, box=face_box(row),
                              margin=face_margin, equalize_histogram=equalize_histogram)
        except Exception as error:  # noqa: BLE001 - any decoder failure is reported per file
            return error

    output_count = int(model.output_shape[-1])
    view_count = len(test_time_views(np.zeros((1, 8, 8, 1), dtype="float32"), test_time_augmentation, crop_fraction))
    shape = (len(rows), view_count, output_count) if per_view else (len(rows), output_count)
    probabilities = np.full(shape, np.nan, dtype=np.float64)
    unreadable: list[dict[str, str]] = []
    records = rows.to_dict("records")
    with concurrent.futures.ThreadPoolExecutor(max_workers=DECODE_THREADS) as executor, \
            tqdm(total=len(records), desc="predicting", unit="image") as progress:
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

