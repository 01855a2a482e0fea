"""The ``custom_generator.py`` stage: preview the training inputs and measure their speed.

It builds the training inputs exactly as training does (``inputs.make_inputs`` with the
``[model_4]`` settings and ``[generator]``'s augmentation), saves one augmented batch as a PNG
(reports/figures/augmented_batch.png) and prints how many images per second the inputs deliver.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from emotion_classifier import files, split_files
from emotion_classifier.inputs import make_inputs, model_augmentation, resolve_resize_in_model

# Images of the augmented batch saved as a PNG, and batches timed after the first.
PREVIEW_IMAGES = 16
TIMED_BATCHES = 20


def run(config, force: bool = False) -> int:
    """Build the training inputs, save one augmented batch as a PNG and measure their speed."""
    model_config = config.model_4
    figure_path = Path(config.paths.reports) / "figures" / "augmented_batch.png"
    frame, classes = split_files.read_split(config)
    training_rows = split_files.split_rows(frame, "train", config.paths.split_manifest)
    validation_rows = split_files.split_rows(frame, "valid", config.paths.split_manifest)
    resize_in_model = resolve_resize_in_model(config, model_config, training_rows)
    stamp = files.StageStamp(
        Path(config.paths.reports) / "figures" / ".augmented_batch.stamp.json",
        {"generator": dataclasses.asdict(config.generator), "model_4": dataclasses.asdict(model_config),
         "resize_in_model": resize_in_model},
        [config.paths.split_manifest, Path(config.paths.processed) / split_files.CLASSES_FILE_NAME],
    )
    if stamp.is_current() and not force:
        print(f"{figure_path} is up to date (use --force to redo it)")
        return 0

    inputs = make_inputs(config, model_config, training_rows, validation_rows, len(classes), resize_in_model)
    batches = _numpy_batches(inputs.training)
    # Outside tf.data the model augments these batches in its training step: the preview applies
    # the same layer.
    augmentation = model_augmentation(config, model_config)
    if augmentation is not None:
        batches = ((np.asarray(keras.ops.convert_to_numpy(augmentation(images, training=True))), labels)
                   for images, labels in batches)

    # Throughput: the first batch pays for start-up (thread pools, graph tracing), so the clock
    # starts after it.
    images, labels = next(batches)
    if labels.ndim == 2:
        # Mixup's class probabilities: each image is titled with its largest share.
        labels = labels.argmax(axis=1)
    started = time.perf_counter()
    timed_images = sum(int(next(batches)[0].shape[0]) for _ in range(TIMED_BATCHES))
    seconds = time.perf_counter() - started
    images_per_second = timed_images / seconds if seconds > 0 else float("inf")
    _save_preview(figure_path, images, labels, classes)
    summary = {
        "images_per_second": round(images_per_second, 1),
        "timed_batches": TIMED_BATCHES,
        "batch_size": model_config.batch_size,
        "image_size": model_config.image_size,
        "input_mode": model_config.input_mode,
        "training_images": len(training_rows),
        "value_range": [float(images.min()), float(images.max())],
    }
    print(json.dumps(summary))
    print(f"input pipeline: {images_per_second:.0f} images/s; wrote {figure_path}")
    stamp.record([figure_path])
    return 0


def _numpy_batches(training):
    """Endless ``(images, labels)`` numpy batches from a tf.data dataset or a Keras PyDataset."""
    if hasattr(training, "as_numpy_iterator"):
        return iter(training.as_numpy_iterator())
    return (tuple(np.asarray(part) for part in training[index % len(training)]) for index in itertools.count())


def _save_preview(figure_path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    shown = min(PREVIEW_IMAGES, len(images))
    columns = min(8, shown)
    rows = math.ceil(shown / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position >= shown:
            continue
        picture = np.clip(images[position], 0, 255).astype("uint8")
        if picture.shape[-1] == 1:
            axis.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(picture)
        axis.set_title(classes[int(labels[position])], fontsize=9)
    size = images.shape[1]
    figure.suptitle(f"Augmented training batch ({size}x{size}, as the model receives it)")
    files.save_figure(figure_path, figure)
