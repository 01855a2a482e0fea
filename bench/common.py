"""Shared pieces of the benchmark scripts: image sets, timing, the report table and JSON.

Every benchmark measures its variants side by side in one run, on the same machine and files,
so its ratios hold even when the machine is busy (the absolute figures do not).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "src"))

from emotion_classifier import files  # noqa: E402  (needs the src path above)
from emotion_classifier.manifest import MANIFEST_COLUMNS  # noqa: E402

# EMOTION_BENCH_FER_ROOT points elsewhere, e.g. at a copy carried to a GPU machine.
FER_ROOT = Path(os.environ.get("EMOTION_BENCH_FER_ROOT", PROJECT_ROOT.parent / "shared" / "datasets" / "fer2013"))
REPORT_DIR = PROJECT_ROOT / "reports" / "bench"
# The input size this project recommends for training on face crops (see docs/performance.md).
DEFAULT_TRAINING_SIZE = 112
# The original project's input size (model_4's seed preset).
ORIGINAL_SIZE = 256


def manifest_rows(filenames: list[str], class_indices: list[int], boxes: np.ndarray | None = None) -> pd.DataFrame:
    """A split manifest (every column, all rows in the training split) for the given images."""
    frame = pd.DataFrame({column: np.nan for column in MANIFEST_COLUMNS}, index=range(len(filenames)))
    frame["filename"] = filenames
    frame["class_index"] = np.asarray(class_indices, dtype="int32")
    frame["label"] = [f"class_{index}" for index in class_indices]
    frame["split"] = "train"
    if boxes is not None:
        frame[["face_x", "face_y", "face_width", "face_height"]] = boxes
    return frame


def fer_images(count: int) -> tuple[Path, pd.DataFrame]:
    """``count`` FER2013 training images (48x48 grayscale JPEG), spread over its classes."""
    train_root = FER_ROOT / "train"
    if not train_root.is_dir():
        raise SystemExit(f"{train_root} not found: the benchmarks read real FER2013 images from there")
    classes = sorted(path.name for path in train_root.iterdir() if path.is_dir())
    per_class = [sorted((train_root / name).iterdir()) for name in classes]
    filenames, labels = [], []
    position = 0
    # Stops early when the folder holds fewer than ``count`` images.
    while len(filenames) < count and position < max(len(paths) for paths in per_class):
        for class_index, paths in enumerate(per_class):
            if position < len(paths) and len(filenames) < count:
                filenames.append(f"{classes[class_index]}/{paths[position].name}")
                labels.append(class_index)
        position += 1
    return train_root, manifest_rows(filenames, labels)


def generated_images(folder: Path, count: int, side: int = 512, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    """``count`` smooth, noisy RGB JPEG photos of ``side`` pixels with a centred face box.

    Made once per size and count and reused; AffectNet's face photos are JPEGs of about this
    size, with the face box inside the photo.
    """
    folder = folder / f"generated_{side}px"
    random = np.random.default_rng(seed)
    filenames = [f"image_{index:05d}.jpg" for index in range(count)]
    for name in filenames:
        path = folder / name
        if path.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        coarse = random.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        picture = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype="int16")
        picture = np.clip(picture + random.integers(-12, 13, size=picture.shape), 0, 255).astype("uint8")
        with files.atomic_path(path) as temporary:
            Image.fromarray(picture).save(temporary, format="JPEG", quality=90)
    box = np.array([side * 0.2, side * 0.15, side * 0.6, side * 0.65], dtype="float64")
    boxes = np.tile(box, (count, 1))
    labels = [index % 5 for index in range(count)]
    return folder, manifest_rows(filenames, labels, boxes)


def time_batches(batches: Iterable, images_wanted: int) -> float:
    """Images per second over batches after the first (start-up: threads, tracing, caches)."""
    iterator = iter(batches)
    next(iterator)
    images = 0
    started = time.perf_counter()
    for batch in iterator:
        first = batch[0] if isinstance(batch, tuple) else batch
        images += int(first.shape[0])
        if images >= images_wanted:
            break
    seconds = time.perf_counter() - started
    return images / seconds if seconds > 0 else float("inf")


def timed(function: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def machine_description() -> dict:
    """What the figures were measured on (with whichever Keras backend is active)."""
    import keras

    description = {
        "machine": platform.machine(),
        "cpu": cpu_model_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "devices": [str(device) for device in keras.distribution.list_devices()],
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        description["gpus"] = [device.name for device in tf.config.list_physical_devices("GPU")]
        description["tensorflow"] = tf.__version__
    elif keras.backend.backend() == "jax":
        import jax

        description["gpus"] = [device.device_kind for device in jax.devices() if device.platform == "gpu"]
        description["jax"] = jax.__version__
    return description


def cpu_model_name(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A plain text table: one line per row, columns padded to their widest cell."""
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[position]) for line in cells)) for position, column in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def write_report(name: str, report: dict) -> Path:
    path = REPORT_DIR / f"{name}.json"
    files.write_json(path, report)
    print(f"\nwrote {path}")
    return path
