"""Decoded, face-cropped images written once as sharded TFRecord files, and read back fast.

With ``[generator] source = "tfrecords"`` training does not decode JPEGs every epoch: the
first run writes each split's images, cropped to their face box, resized to the model's input
size and reduced to its channels, as raw uint8 pixels in TFRecord shards; every epoch after
that reads the shards with interleaved, parallel reads and only parses bytes. This pays off
when decoding is the bottleneck (large photos such as AffectNet's, slow or network storage).

Layout: ``<data_dir>/processed/tfrecords/<split>_<size>x<size>x<channels>/shard-00000-of-00012.tfrecord`` and
``index.json`` beside the shards (what they were made from, image counts, unreadable files).
Shards are rewritten only when the rows, the size, the channels or the face margin change.

Each record holds ``image`` (the raw ``size * size * channels`` bytes) and ``label`` (the class
index). Pixels come from the host path (``images.load_image``) rounded to uint8, so
a shard holds what the file path would feed the model, to within half a grey level.

Storage: a raw image takes ``size * size * channels`` bytes (37 KB at 112x112x3, 196 KB at
256x256x3), so a 280,000-image split is 10 GB at 112 and 55 GB at 256.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from emotion_classifier import files, split_files
from emotion_classifier.augmentation import build_augmentation
from emotion_classifier.errors import PipelineError
from emotion_classifier.images import load_image

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-*.tfrecord"
FORMAT_VERSION = 1
# Images per shard, threads writing shards (0: one per CPU core), the seed of the order images
# are written in, and the records held for shuffling in training (decoded images: a bounded buffer).
SHARD_IMAGES = 2000
WRITE_WORKERS = 0
WRITE_SEED = 0
SHUFFLE_BUFFER = 10_000


def shard_folder(config, model_config, split: str) -> Path:
    """Where the shards of ``split`` at ``model_config``'s input size live."""
    root = Path(config.paths.processed) / "tfrecords"
    size = model_config.image_size
    equalized = "_equalized" if model_config.equalize_histogram else ""
    return root / f"{split}_{size}x{size}x{model_config.channels}{equalized}"


def rows_fingerprint(frame: pd.DataFrame, image_size: int, channels: int, face_margin: float,
                     equalize_histogram: bool = False) -> str:
    """A digest of what the shards hold: every row's file, label and face box, and the sizes."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{image_size}|{channels}|{face_margin!r}|{equalize_histogram}\n".encode())
    boxes = split_files.face_boxes(frame)
    digest.update("\n".join(frame["filename"].astype(str)).encode())
    digest.update(frame["class_index"].to_numpy(dtype="int64").tobytes())
    digest.update(boxes.tobytes())
    return digest.hexdigest()


def _example_bytes(pixels: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(frame: pd.DataFrame, images_root: str | Path, destination: str | Path, image_size: int,
                 channels: int, face_margin: float = 0.0, shard_images: int = 2000, workers: int = 0,
                 seed: int = 0, progress: bool = True, equalize_histogram: bool = False) -> dict:
    """Write the rows of ``frame`` as TFRecord shards in ``destination``; return the index.

    Rows are shuffled (seeded) before they are dealt into shards, so that every shard mixes
    classes even when the manifest is sorted by class. One thread writes each shard (Pillow
    and the TFRecord writer release the GIL while they work); every shard is written under a
    temporary name and renamed when complete, and ``index.json`` is written last, so an
    interrupted run leaves no index and the next run writes the shards again. Unreadable
    images are left out and listed in the index.
    """
    import tensorflow as tf
    from tqdm import tqdm

    if len(frame) == 0:
        raise ValueError("write_shards needs at least one row")
    if shard_images < 1:
        raise ValueError(f"shard_images must be positive, got {shard_images}")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for stale in list(destination.glob(SHARD_PATTERN)) + [destination / INDEX_NAME]:
        stale.unlink(missing_ok=True)

    paths = split_files.image_paths(frame, images_root)
    boxes = split_files.face_boxes(frame)
    labels = frame["class_index"].to_numpy(dtype="int64")
    order = np.random.default_rng(seed).permutation(len(frame))
    shard_count = max(1, math.ceil(len(frame) / shard_images))
    shard_rows = np.array_split(order, shard_count)
    names = [f"shard-{index:05d}-of-{shard_count:05d}.tfrecord" for index in range(shard_count)]
    bar = tqdm(total=len(frame), desc=f"writing {destination.name} shards", unit="image", disable=not progress)
    bar_lock = threading.Lock()

    def write_one(shard_index: int) -> tuple[int, list[str]]:
        written, unreadable = 0, []
        with files.atomic_path(destination / names[shard_index]) as temporary:
            with tf.io.TFRecordWriter(str(temporary)) as writer:
                for row in shard_rows[shard_index]:
                    box = boxes[row] if boxes[row, 2] > 0 else None
                    try:
                        image = load_image(paths[row], image_size, channels, box, face_margin, equalize_histogram)
                    except (OSError, ValueError, Image.DecompressionBombError) as error:
                        logger.warning("leaving unreadable image %s out of the shards: %s", paths[row], error)
                        unreadable.append(str(paths[row]))
                    else:
                        pixels = np.round(image).astype("uint8")
                        writer.write(_example_bytes(pixels, labels[row]))
                        written += 1
                    with bar_lock:
                        bar.update(1)
        return written, unreadable

    thread_count = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=thread_count) as pool:
        results = list(pool.map(write_one, range(shard_count)))
    bar.close()
    index = {
        "format_version": FORMAT_VERSION,
        "fingerprint": rows_fingerprint(frame, image_size, channels, face_margin, equalize_histogram),
        "equalize_histogram": bool(equalize_histogram),
        "image_size": int(image_size),
        "channels": int(channels),
        "face_margin": float(face_margin),
        "images": int(sum(written for written, _ in results)),
        "shards": [{"file": name, "images": written} for name, (written, _) in zip(names, results)],
        "unreadable_files": [path for _, unreadable in results for path in unreadable],
    }
    if index["images"] == 0:
        raise PipelineError(f"{destination}: none of the {len(frame)} images could be read")
    files.write_json(destination / INDEX_NAME, index)
    return index


def ensure_shards(config, model_config, frame: pd.DataFrame, split: str, progress: bool = True) -> tuple[Path, dict]:
    """The shard folder of ``split`` and its index, writing the shards first when out of date."""
    folder = shard_folder(config, model_config, split)
    generator = config.generator
    fingerprint = rows_fingerprint(frame, model_config.image_size, model_config.channels, generator.face_margin,
                                   model_config.equalize_histogram)
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        index = files.read_json(index_path)
        if index.get("fingerprint") == fingerprint and all(
            (folder / shard["file"]).is_file() for shard in index.get("shards", [])
        ):
            return folder, index
    print(f"writing {split} images as TFRecord shards in {folder}")
    index = write_shards(
        frame, config.paths.images_root, folder, model_config.image_size, model_config.channels,
        generator.face_margin, SHARD_IMAGES, WRITE_WORKERS,
        seed=WRITE_SEED, progress=progress, equalize_histogram=model_config.equalize_histogram,
    )
    return folder, index


def make_dataset(folder: str | Path, batch_size: int, training: bool, generator_config, seed: int = 0,
                 drop_remainder: bool = False):
    """``(images float32 [0, 255], labels int32)`` batches read from the shards in ``folder``.

    Training: the shard order is reshuffled every epoch, several shards are read at once
    (interleaved) and records are shuffled in a buffer. Records are parsed a batch at a time
    (one vectorised ``parse_example`` per batch instead of one call per image).
    ``drop_remainder`` leaves out each pass's last, partial batch (as in ``tf_dataset.make_dataset``).
    """
    import tensorflow as tf

    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise PipelineError(f"{index_path} not found: the TFRecord shards were not written (completely)")
    index = files.read_json(index_path)
    image_size, channels = int(index["image_size"]), int(index["channels"])
    shard_paths = [str(folder / shard["file"]) for shard in index["shards"]]

    dataset = tf.data.Dataset.from_tensor_slices(shard_paths)
    if training:
        dataset = dataset.shuffle(len(shard_paths), seed=seed, reshuffle_each_iteration=True)
    cycle_length = min(len(shard_paths), 8)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle_length,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )
    if generator_config.cache:
        dataset = dataset.cache()
    if training:
        buffer = max(1, min(SHUFFLE_BUFFER, int(index["images"])))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse_batch(serialized):
        parsed = tf.io.parse_example(serialized, features)
        pixels = tf.io.decode_raw(parsed["image"], tf.uint8)
        images = tf.reshape(pixels, [-1, image_size, image_size, channels])
        return tf.cast(images, tf.float32), tf.cast(parsed["label"], tf.int32)

    dataset = dataset.map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
    augmentation = build_augmentation(generator_config, seed) if training else None
    if augmentation is not None:
        dataset = dataset.map(
            lambda images, labels: (tf.clip_by_value(augmentation(images, training=True), 0.0, 255.0), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_dataset(config, model_config, frame: pd.DataFrame, split: str = "train",
                     drop_remainder: bool = False):
    """Shuffled, augmented training batches of ``split`` from its shards (written if needed)."""
    folder, _index = ensure_shards(config, model_config, frame, split)
    return make_dataset(folder, model_config.batch_size, True, config.generator, seed=model_config.seed,
                        drop_remainder=drop_remainder)


def evaluation_dataset(config, model_config, frame: pd.DataFrame, split: str = "valid"):
    """Batches of ``split`` from its shards, never augmented (written if needed)."""
    folder, _index = ensure_shards(config, model_config, frame, split)
    return make_dataset(folder, model_config.batch_size, False, config.generator)
