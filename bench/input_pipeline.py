#!/usr/bin/env python3
"""Images per second of the input pipeline, against the original loader and the decode ceiling.

Measured side by side, on real FER2013 images (48x48 grayscale JPEG) and on generated 512x512
RGB JPEGs with a face box (like AffectNet's photos):

1. ``original``: the original project's loader, one Python thread per batch:
   ``np.array([skimage.transform.resize(skimage.io.imread(p), (256, 256, 3)) for p in batch]) / 255.0``;
2. ``ours_256``: our tf.data pipeline producing the same tensors (256x256x3, no augmentation);
3. ``ours_default_augmented``: our pipeline at the default training size, with augmentation;
4. ``ours_default``: the same without augmentation;
5. ``decode_only``: parallel read and JPEG decode, nothing else (the ceiling of any file pipeline);
6. ``ours_default_cached``: the file pipeline with ``[generator] cache = true`` (decoded crops
   kept in memory after the first pass; timed from the second pass on);
7. ``tfrecords_default``: reading decoded, cropped images back from TFRecord shards
   (``[generator] source = "tfrecords"``), with the time it took to write them;
8. ``ours_default_resize_in_model`` and ``ours_default_augmented_resize_in_model``: rows 4 and 3
   for a model built with ``resize_in_model = true``, which enlarges its inputs itself: crops
   smaller than the training size (FER2013's) are batched and augmented at their own size;
   larger ones (the 512-pixel photos) are still shrunk here, so those rows repeat rows 4 and 3;
9. ``ours_default_per_file`` and ``ours_default_resize_in_model_per_file``: rows 4 and 8 with
   ``make_dataset(..., read_whole_batches=False)``, one file per tf.data element instead of one
   training batch (done only for crops of one size that are not decoded at reduced scale: the
   512-pixel photos are read one file per element either way, so there these rows repeat 4 and 8);
10. ``ours_default_auto``: row 8 or row 4, whichever the default configuration runs
   (``resize_in_model = "auto"``: row 8 for crops of one size smaller than the training size,
   FER2013's; row 4 otherwise, the 512-pixel photos); not timed again.
11. ``host_files_default`` and ``host_files_default_pillow``: the file path that needs no
   TensorFlow (``input_mode = "arrays"``, the GPU machine's): ``host_batches.ImageBatches``
   decoding and resizing every batch on the host, one thread per CPU core as Keras' PyDataset
   workers do, at the default size without augmentation; plain JPEGs decoded by OpenCV (the
   default) and, in the second row, by Pillow (``ImageBatches(..., use_opencv=False)``).

The decode-only ceiling decodes each file at its own size; at the default training size our
pipeline also resizes every image (FER2013's 48-pixel faces are enlarged to 112, a float
tensor 20 times the decoded bytes), so the cached and TFRecord rows show what the pipeline
delivers once that decoding is done once, not every epoch.

    python bench/input_pipeline.py            # real figures (a few minutes on 2 cores)
    python bench/input_pipeline.py --quick    # a small run that checks the script works

Writes reports/bench/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import itertools
import os
import tempfile
from pathlib import Path

import numpy as np

import common

from emotion_classifier import host_batches, tf_dataset, tfrecords  # noqa: E402
from emotion_classifier.images import crops_smaller_than_input  # noqa: E402
from emotion_classifier.config import GeneratorConfig  # noqa: E402

BATCH_SIZE = 64


def original_loader_batches(paths: list[str], batch_size: int):
    """The original project's loader, re-implemented faithfully (including its extra / 255)."""
    import skimage.io
    import skimage.transform

    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        yield np.array([skimage.transform.resize(skimage.io.imread(p), (256, 256, 3)) for p in batch]) / 255.0


def host_file_batches(frame, images_root: Path, image_size: int, opencv: bool):
    """ImageBatches' training batches made by one thread per core, as Keras' PyDataset workers do."""
    workers = os.cpu_count() or 1
    batches = host_batches.ImageBatches(frame, images_root, image_size, 3, BATCH_SIZE, training=True,
                                        workers=workers, use_opencv=opencv)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque(pool.submit(batches.__getitem__, index % len(batches))
                                    for index in range(2 * workers))
        for index in itertools.count(len(pending)):
            batch = pending.popleft().result()
            pending.append(pool.submit(batches.__getitem__, index % len(batches)))
            yield batch


def decode_only(paths: list[str], batch_size: int):
    """Read and decode each JPEG in parallel; the fastest a pipeline reading files can be."""
    import tensorflow as tf

    def read_decode(path):
        return tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")

    dataset = tf.data.Dataset.from_tensor_slices(paths).repeat()
    return dataset.map(read_decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def measure(name: str, images_root: Path, frame, work_dir: Path, images_wanted: int, original_images: int,
            rounds: int = 1) -> list[dict]:
    paths = [str(images_root / filename) for filename in frame["filename"]]
    plain = GeneratorConfig(augment=False)
    augmented = GeneratorConfig(augment=True)
    size = common.DEFAULT_TRAINING_SIZE
    results: dict[str, float] = {}

    def ours(image_size: int, generator_config, resize_in_model: bool = False, whole_batches: bool = True):
        dataset = tf_dataset.make_dataset(frame, images_root, image_size, 3, BATCH_SIZE, training=True,
                                          generator_config=generator_config, resize_in_model=resize_in_model,
                                          read_whole_batches=whole_batches)
        return dataset.repeat()

    results["original"] = common.time_batches(original_loader_batches(paths * 4, BATCH_SIZE // 4), original_images)
    # The file pipelines, each a function giving a fresh batch iterator. They are timed in
    # ``rounds`` interleaved rounds and the median kept: on a shared machine the speed moves
    # by up to half between runs, and a variant measured alone after another can look faster
    # or slower by that much.
    file_pipelines = {
        "ours_256": lambda: ours(common.ORIGINAL_SIZE, plain),
        "ours_default_augmented": lambda: ours(size, augmented),
        "ours_default": lambda: ours(size, plain),
        "decode_only": lambda: decode_only(paths, BATCH_SIZE),
        # For a model that enlarges its inputs itself (resize_in_model): crops smaller than the
        # training size leave the pipeline at their own size (larger ones are resized as above).
        "ours_default_resize_in_model": lambda: ours(size, plain, True),
        "ours_default_augmented_resize_in_model": lambda: ours(size, augmented, True),
        # Rows 4 and 8 reading one file per tf.data element instead of a whole batch per element.
        "ours_default_per_file": lambda: ours(size, plain, whole_batches=False),
        "ours_default_resize_in_model_per_file": lambda: ours(size, plain, True, whole_batches=False),
        "host_files_default": lambda: host_file_batches(frame, images_root, size, opencv=True),
        "host_files_default_pillow": lambda: host_file_batches(frame, images_root, size, opencv=False),
    }
    timings: dict[str, list[float]] = {variant: [] for variant in file_pipelines}
    for _round in range(rounds):
        for variant, batches in file_pipelines.items():
            timings[variant].append(common.time_batches(batches(), images_wanted))
    results.update({variant: float(np.median(values)) for variant, values in timings.items()})
    # What the default configuration runs (resize_in_model = "auto", inputs.resolve_resize_in_model):
    # the model's own enlargement for crops smaller than the training size, host resizing otherwise.
    enlarged_in_model = crops_smaller_than_input(frame, images_root, size, 0.0) is not None
    results["ours_default_auto"] = results["ours_default_resize_in_model" if enlarged_in_model else "ours_default"]
    cached = iter(ours(size, dataclasses.replace(plain, cache=True)))
    for _ in range(len(frame) // BATCH_SIZE + 2):  # the first pass, which fills the cache
        next(cached)
    results["ours_default_cached"] = common.time_batches(cached, images_wanted)

    shard_folder = work_dir / f"{name}_shards"
    _index, write_seconds = common.timed(lambda: tfrecords.write_shards(
        frame, images_root, shard_folder, size, 3, shard_images=max(1, len(frame) // 8), progress=False))
    results["tfrecords_default"] = common.time_batches(
        tfrecords.make_dataset(shard_folder, BATCH_SIZE, True, plain).repeat(), images_wanted)
    results["tfrecords_write"] = len(frame) / write_seconds

    rows = [{"dataset": name, "variant": variant, "images_per_second": round(value, 1)} for variant, value in results.items()]
    # (row name, numerator, denominator, decimals)
    ratios = [
        ("ours_256 / original", "ours_256", "original", 1),
        (f"ours_default_auto ({'in the model' if enlarged_in_model else 'on the host'}) / decode_only",
         "ours_default_auto", "decode_only", 3),
        ("ours_default / decode_only", "ours_default", "decode_only", 3),
        ("ours_default_resize_in_model / decode_only", "ours_default_resize_in_model", "decode_only", 3),
        ("ours_default_per_file / decode_only", "ours_default_per_file", "decode_only", 3),
        ("ours_default_resize_in_model_per_file / decode_only", "ours_default_resize_in_model_per_file",
         "decode_only", 3),
        ("ours_default / ours_default_per_file", "ours_default", "ours_default_per_file", 2),
        ("augmented_resize_in_model / augmented", "ours_default_augmented_resize_in_model",
         "ours_default_augmented", 2),
        ("ours_default_cached / decode_only", "ours_default_cached", "decode_only", 3),
        ("tfrecords_default / decode_only", "tfrecords_default", "decode_only", 3),
        ("tfrecords_default / ours_default", "tfrecords_default", "ours_default", 2),
        ("host_files_default / decode_only", "host_files_default", "decode_only", 3),
        ("host_files_default / host_files_default_pillow", "host_files_default", "host_files_default_pillow", 2),
    ]
    rows += [{"dataset": name, "variant": f"ratio {label}",
              "images_per_second": round(results[numerator] / results[denominator], decimals)}
             for label, numerator, denominator, decimals in ratios]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run (seconds) that checks the script works")
    parser.add_argument("--output", default="input_pipeline", help="report name under reports/bench/")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the file pipelines; the median is reported (default 3)")
    arguments = parser.parse_args()
    fer_count, large_count = (64, 32) if arguments.quick else (4000, 600)
    images_wanted = 128 if arguments.quick else 6000
    rounds = 1 if arguments.quick else max(1, arguments.rounds)
    original_images = 32 if arguments.quick else 384

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_input_") as work:
        work_dir = Path(work)
        fer_root, fer_frame = common.fer_images(fer_count)
        rows += measure("fer2013_48px", fer_root, fer_frame, work_dir, images_wanted, original_images, rounds)
        large_root, large_frame = common.generated_images(work_dir, large_count)
        rows += measure("generated_512px", large_root, large_frame, work_dir,
                        images_wanted // 4, original_images // 2, rounds)
    common.print_table("Input pipeline, images per second (ratios in the last rows)", rows,
                       ["dataset", "variant", "images_per_second"])
    common.write_report(arguments.output, {
        "quick": arguments.quick,
        "batch_size": BATCH_SIZE,
        "default_training_size": common.DEFAULT_TRAINING_SIZE,
        "original_size": common.ORIGINAL_SIZE,
        "rounds": rounds,
        "machine": common.machine_description(),
        "results": rows,
    })


if __name__ == "__main__":
    main()
