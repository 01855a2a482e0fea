"""Training from decoded images held in memory (``input_mode = "memory"``), on any Keras backend.

For datasets that fit in memory as 8-bit pixels (FER2013: 28,709 images of 48x48 take 66 MB;
AffectNet's 280k training faces at 112x112x3 take 10.5 GB), decoding every file once and keeping
the uint8 pixels takes the decoder out of the training loop entirely:

- each split is decoded once, in parallel, and cached as ``.npy`` files under
  ``data/processed/arrays/``; the cache is keyed by the split's rows (file names, labels, face
  boxes), the image size, channels and face margin, so a changed split or size decodes afresh
  and an unchanged one loads in a second;
- batches are sliced from the uint8 arrays and converted to float32 one batch at a time, and
  left unaugmented: the model augments them in its training step (``augmentation.AugmentationLayer``);
- with ``input_mode = "device"`` the training arrays are copied to the accelerator once
  (``DeviceBatches``) and each batch is gathered there.

Nothing here calls TensorFlow, so the same run works with ``KERAS_BACKEND=jax`` or ``torch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from emotion_classifier import files
from emotion_classifier.host_batches import ShuffledBatches, load_arrays

logger = logging.getLogger(__name__)

ARRAYS_DIR_NAME = "arrays"


def rows_key(frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
             face_margin: float, equalize_histogram: bool = False) -> str:
    """A digest of everything the decoded arrays of ``frame`` depend on."""
    columns = [name for name in ("filename", "class_index", "face_x", "face_y", "face_width", "face_height")
               if name in frame.columns]
    row_digest = hashlib.sha256(
        pd.util.hash_pandas_object(frame[columns].reset_index(drop=True), index=False).to_numpy().tobytes()
    ).hexdigest()
    settings = {
        "rows": row_digest,
        "images_root": str(Path(images_root)),
        "image_size": int(image_size),
        "channels": int(channels),
        "face_margin": float(face_margin),
        "equalize_histogram": bool(equalize_histogram),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def split_arrays(frame: pd.DataFrame, split_name: str, images_root: str | Path, processed_dir: str | Path,
                 image_size: int, channels: int, face_margin: float,
                 equalize_histogram: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """``(images uint8, labels int32, files left out)`` of one split, decoded once then cached.

    Unreadable files are left out (logged, and counted in the third value) rather than
    stopping a long run; the manifest stage has already rejected every file it could not read.
    """
    key = rows_key(frame, images_root, image_size, channels, face_margin, equalize_histogram)
    folder = Path(processed_dir) / ARRAYS_DIR_NAME
    stem = f"{split_name}_{image_size}px_{channels}ch_{key}"
    images_path, labels_path, info_path = (folder / f"{stem}_images.npy", folder / f"{stem}_labels.npy",
                                           folder / f"{stem}.json")
    if images_path.is_file() and labels_path.is_file() and info_path.is_file():
        info = files.read_json(info_path)
        images, labels = files.load_npy(images_path), files.load_npy(labels_path)
        if len(images) == len(labels) == info.get("images"):
            return images, labels, int(info.get("left_out", 0))
        logger.warning("%s does not match its arrays; decoding %s again", info_path, split_name)
    images, labels = load_arrays(
        frame, images_root, image_size, channels, face_margin, skip_unreadable=True, dtype="uint8",
        equalize_histogram=equalize_histogram,
    )
    left_out = len(frame) - len(images)
    # The sidecar is written last: arrays without it are never trusted.
    files.save_npy(images_path, images)
    files.save_npy(labels_path, labels)
    files.write_json(info_path, {"split": split_name, "images": len(images), "left_out": left_out,
                                 "image_size": image_size, "channels": channels, "face_margin": face_margin,
                                 "equalize_histogram": equalize_histogram})
    # Older caches of the same split (another size, or an earlier split) are only dead weight.
    for older in folder.glob(f"{split_name}_*"):
        if not older.name.startswith(stem):
            older.unlink(missing_ok=True)
    return images, labels, left_out


class ArrayBatches(ShuffledBatches):
    """float32 batches sliced from uint8 images in memory; training batches reshuffled each epoch.

    ``workers`` threads prepare batches ahead of the accelerator. Each batch draws its random
    numbers (mixup's) from (seed, epoch, batch), so results do not depend on which thread makes it.
    ``max_batches`` (> 0) caps the batches per epoch (each epoch then draws a fresh subset).
    ``num_classes`` turns the labels into one-hot rows; ``mixup`` (> 0, training only, needs
    ``num_classes``) then blends each image and its label with another of the batch, with a
    weight drawn per image from Beta(mixup, mixup); the model then augments the blend.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool,
                 seed: int = 0, max_batches: int = 0, workers: int = 1, num_classes: int | None = None,
                 mixup: float = 0.0):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"ArrayBatches needs as many labels as images (at least one), got "
                             f"{len(images)} and {len(labels)}")
        if mixup > 0 and not num_classes:
            raise ValueError("mixup needs num_classes (its labels are class probabilities)")
        super().__init__(len(images), batch_size, training, seed, max_batches, workers)
        self.images = images
        self.labels = labels.astype("int32", copy=False)
        self.num_classes = num_classes
        self.mixup = float(mixup) if training else 0.0

    def __getitem__(self, batch_index: int):
        indices = self.batch_rows(batch_index)
        if self.training:
            # Sorted indices read memory in order; the batch's contents are the same.
            indices = np.sort(indices)
        images, labels = self.images[indices].astype("float32"), self.labels[indices]
        if not self.num_classes:
            return images, labels
        targets = np.eye(self.num_classes, dtype="float32")[labels]
        if self.mixup > 0:
            random = self.batch_random(batch_index)
            weight = random.beta(self.mixup, self.mixup, size=len(images)).astype("float32")
            partner = random.permutation(len(images))
            images = np.clip(weight[:, None, None, None] * images + (1 - weight[:, None, None, None]) * images[partner],
                             0.0, 255.0)
            targets = weight[:, None] * targets + (1 - weight[:, None]) * targets[partner]
        return images, targets


class DeviceBatches(ShuffledBatches):
    """Training batches gathered on the accelerator from uint8 images held there (``input_mode = "device"``).

    The images and labels are copied to the backend's default device once; each batch is a
    gather of ``batch_size`` rows there (only the indices travel), cast to float32.
    Every batch holds exactly ``batch_size`` images, so the compiled step keeps one shape:
    an epoch is ``size // batch_size`` batches of a fresh permutation (the remainder waits for
    a later epoch), and a split smaller than one batch repeats images to fill it. ``max_batches``
    (> 0) caps the batches per epoch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 max_batches: int = 0):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"DeviceBatches needs as many labels as images (at least one), got "
                             f"{len(images)} and {len(labels)}")
        super().__init__(len(images), batch_size, training=True, seed=seed, max_batches=max_batches, workers=1)
        self.images = keras.ops.convert_to_tensor(np.ascontiguousarray(images, dtype="uint8"))
        self.labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="int32"))

    @property
    def num_batches(self) -> int:
        full = max(1, self.size // self.batch_size)
        return min(full, self.max_batches) if self.max_batches > 0 else full

    def _new_order(self) -> np.ndarray:
        random = np.random.default_rng([self.seed, self.epoch])
        needed = self.num_batches * self.batch_size
        permutations = [random.permutation(self.size) for _ in range(-(-needed // self.size))]
        return np.concatenate(permutations)[:needed]

    def __getitem__(self, batch_index: int):
        indices = keras.ops.convert_to_tensor(self.batch_rows(batch_index).astype("int32"))
        images = keras.ops.cast(keras.ops.take(self.images, indices, axis=0), "float32")
        return images, keras.ops.take(self.labels, indices, axis=0)
