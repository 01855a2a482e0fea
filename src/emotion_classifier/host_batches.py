"""Batches prepared on the host for Keras' ``fit``: decoded files (``ImageBatches``) or all
rows at once (``load_arrays``), on any Keras backend.

Images come from ``images.load_image``, so they are the pixels the tf.data pipeline gives for the
same rows. Training batches are reshuffled every epoch and left unaugmented: the model augments
them in its training step (``augmentation.AugmentationLayer``). An image that fails to decode is
dropped from its batch, logged and counted in ``unreadable_files``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image

from emotion_classifier import split_files
from emotion_classifier.errors import PipelineError
from emotion_classifier.images import load_image, one_opencv_thread_per_worker

logger = logging.getLogger(__name__)


def load_arrays(frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                face_margin: float = 0.0, skip_unreadable: bool = False,
                workers: int = 0, dtype: str = "float32",
                equalize_histogram: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All rows of ``frame`` decoded with Pillow: ``(images, labels int32)``.

    The crops and sizes are those of ``make_dataset`` (without augmentation), in the frame's
    order. An unreadable file is an error naming it, unless ``skip_unreadable``, which leaves
    it out (logged). ``workers`` threads decode in parallel (0: one per CPU core). ``dtype``
    "uint8" rounds the pixels to 8 bits (a quarter of the memory of float32).
    """
    from tqdm import tqdm

    paths = split_files.image_paths(frame, images_root)
    boxes = split_files.face_boxes(frame)
    labels = frame["class_index"].to_numpy(dtype="int32")
    images = np.zeros((len(frame), image_size, image_size, channels), dtype=dtype)
    readable = np.ones(len(frame), dtype=bool)
    rounding = np.issubdtype(np.dtype(dtype), np.integer)

    def decode(index: int) -> None:
        box = boxes[index] if boxes[index, 2] > 0 else None
        try:
            if rounding:
                images[index] = np.round(load_image(paths[index], image_size, channels, box, face_margin,
                                                    equalize_histogram))
            else:
                load_image(paths[index], image_size, channels, box, face_margin, equalize_histogram,
                           out=images[index])
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            if not skip_unreadable:
                raise PipelineError(f"cannot read image {paths[index]}: {error}") from error
            logger.warning("skipping unreadable image %s: %s", paths[index], error)
            readable[index] = False

    threads = workers or os.cpu_count() or 1
    if threads > 1:
        one_opencv_thread_per_worker()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in tqdm(pool.map(decode, range(len(frame))), total=len(frame), desc="decoding images",
                      unit="image", disable=len(frame) < 200):
            pass
    if not readable.all():
        logger.warning("left out %d unreadable images of %d", int((~readable).sum()), len(frame))
    return images[readable], labels[readable]


class ShuffledBatches(keras.utils.PyDataset):
    """Batches of indices into ``size`` rows: reshuffled every epoch when training, in order otherwise.

    The order of epoch ``e`` is drawn from (seed, e), so a batch's rows never depend on which
    worker thread asks for it first. ``max_batches`` (> 0) caps the batches per epoch; each
    epoch then draws a fresh random subset. Subclasses turn ``batch_rows(index)`` into tensors.
    """

    def __init__(self, size: int, batch_size: int, training: bool, seed: int = 0, max_batches: int = 0,
                 workers: int = 1):
        super().__init__(workers=workers, use_multiprocessing=False)
        if workers > 1:
            one_opencv_thread_per_worker()
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.training = training
        self.seed = int(seed)
        self.max_batches = int(max_batches)
        self.epoch = 0
        self._order = self._new_order()

    def _new_order(self) -> np.ndarray:
        if self.training:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return np.arange(self.size)

    @property
    def num_batches(self) -> int:
        full = math.ceil(self.size / self.batch_size)
        return min(full, self.max_batches) if self.max_batches > 0 else full

    def __len__(self) -> int:
        return self.num_batches

    def batch_rows(self, batch_index: int) -> np.ndarray:
        return self._order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]

    def batch_random(self, batch_index: int) -> np.random.Generator:
        """Random numbers of one batch of the current epoch (mixup's)."""
        return np.random.default_rng([self.seed, self.epoch, batch_index])

    def on_epoch_end(self) -> None:
        self.start_at_epoch(self.epoch + 1)

    def start_at_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` next, as if the earlier ones had passed (a resumed run)."""
        self.epoch = int(epoch)
        self._order = self._new_order()


class ImageBatches(ShuffledBatches):
    """Batches decoded on the host (load_image), for training on any Keras backend (``input_mode = "arrays"``).

    Training batches are reshuffled every epoch (the model augments them). ``max_batches`` (> 0)
    caps the batches per epoch; each epoch then draws a fresh random subset. Images that fail to
    decode are dropped from their batch and counted in ``unreadable_files``.
    """

    def __init__(self, frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                 batch_size: int, training: bool, face_margin: float = 0.0, seed: int = 0,
                 max_batches: int = 0, workers: int = 1, equalize_histogram: bool = False,
                 use_opencv: bool = True):
        if len(frame) == 0:
            raise ValueError("ImageBatches needs at least one row")
        super().__init__(len(frame), batch_size, training, seed, max_batches, workers)
        self.paths = split_files.image_paths(frame, images_root)
        self.boxes = split_files.face_boxes(frame)
        self.labels = frame["class_index"].to_numpy(dtype="int32")
        self.image_size = image_size
        self.channels = channels
        self.margin = float(face_margin)
        self.equalize_histogram = equalize_histogram
        self.use_opencv = use_opencv
        self.unreadable_files: list[str] = []

    def __getitem__(self, batch_index: int):
        indices = self.batch_rows(batch_index)
        # Filled in place, slot by slot (load_image's ``out``): no per-image arrays of the
        # batch's size to allocate, free and stack.
        batch = np.empty((len(indices), self.image_size, self.image_size, self.channels), dtype="float32")
        labels = []
        for index in indices:
            box = self.boxes[index] if self.boxes[index, 2] > 0 else None
            try:
                load_image(self.paths[index], self.image_size, self.channels, box, self.margin,
                           self.equalize_histogram, out=batch[len(labels)], use_opencv=self.use_opencv)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                logger.warning("skipping unreadable image %s: %s", self.paths[index], error)
                self.unreadable_files.append(self.paths[index])
                continue
            labels.append(self.labels[index])
        if not labels:
            raise PipelineError(f"every image of batch {batch_index} is unreadable, e.g. {self.paths[indices[0]]}")
        return batch[:len(labels)], np.asarray(labels, dtype="int32")


# --- The custom_generator.py stage -----------------------------------------------------------
