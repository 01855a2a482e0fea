"""The training and validation inputs of a run, for the configured ``input_mode``.

``make_inputs`` is the one place that turns split rows into what ``model.fit`` reads: a tf.data
pipeline that also augments (``tf_dataset``, or TFRecord shards), arrays decoded once and held in
memory (``in_memory``; with ``input_mode = "device"`` the training arrays held on the accelerator),
or batches decoded on the host every epoch (``host_batches``). Outside tf.data the batches stay
plain and the model augments them itself (``model_augmentation``). Training and the generator
preview (``custom_generator.py``) both call it, so the preview shows what the model sees.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import pandas as pd

from emotion_classifier import distribute, in_memory, tfrecords
from emotion_classifier.augmentation import AugmentationLayer, mixup_alpha, one_hot_classes
from emotion_classifier.host_batches import ImageBatches
from emotion_classifier.images import crops_smaller_than_input, handover_size
from emotion_classifier.tf_dataset import DecodeCounter, make_dataset


@dataclasses.dataclass
class SkippedImages:
    """The images the inputs have left out so far because they could not be decoded."""

    count: Callable[[], int]
    names: Callable[[], list[str]] = list


@dataclasses.dataclass
class Inputs:
    training: object
    validation: object
    steps_per_epoch: int
    skipped: SkippedImages


def model_augmentation(config, model_config) -> AugmentationLayer | None:
    """The layer with which the model augments its own training batches, in its training step: in
    every input mode but tf_data, whose pipeline augments them; None there or with ``augment`` off."""
    if model_config.input_mode == "tf_data":
        return None
    return AugmentationLayer.from_config_section(config.generator, seed=model_config.seed)


def resolve_resize_in_model(config, model_config, training_rows: pd.DataFrame) -> bool:
    """Whether the model takes images of any size and enlarges them itself (its first layer).

    True when a sample of the face crops shares one size smaller than ``image_size`` (FER2013's
    48-pixel faces at 112): the host then hands them over at their own size and the model's first
    layer enlarges them, instead of the host enlarging every image of every epoch (measured on
    2 CPU cores: 0.91-1.17 of decoding alone, against 0.63-0.84 enlarging on the host). False for
    larger or mixed sizes, which the host shrinks with antialiasing anyway, for TFRecords (written
    at image_size) and for equalised faces (equalised on the model's grid, after resizing).
    """
    common_shape = None
    reads_tfrecords = model_config.input_mode == "tf_data" and config.generator.source == "tfrecords"
    if not reads_tfrecords and not model_config.equalize_histogram:
        common_shape = crops_smaller_than_input(training_rows, config.paths.images_root, model_config.image_size,
                                                config.generator.face_margin)
    if common_shape is not None:
        print(f"the face crops are {common_shape[0]}x{common_shape[1]}, smaller than image_size "
              f"{model_config.image_size}: the model enlarges them itself (its first layer)")
    return common_shape is not None


def make_inputs(config, model_config, training_rows: pd.DataFrame, validation_rows: pd.DataFrame,
                num_classes: int, resize_in_model: bool = False, strategy=None, first_epoch: int = 0) -> Inputs:
    """Training and validation inputs for ``model_config.input_mode``, and the steps per epoch;
    ``resize_in_model`` as resolve_resize_in_model decided it for the model. A run resumed after
    ``first_epoch`` epochs gets the batches of its next epoch, not those of epoch 0 again."""
    full_steps = math.ceil(len(training_rows) / model_config.batch_size)
    steps = min(full_steps, model_config.max_steps_per_epoch) if model_config.max_steps_per_epoch > 0 else full_steps
    if model_config.input_mode == "tf_data":
        # tf.data's shuffle and augmentation cannot skip epochs: they draw afresh from another seed.
        model_config = dataclasses.replace(model_config, seed=model_config.seed + first_epoch)
        return _tf_data_inputs(config, model_config, training_rows, validation_rows, steps, resize_in_model, strategy)
    host_size = {name: handover_size(rows, config.paths.images_root, model_config.image_size,
                                     config.generator.face_margin, resize_in_model, model_config.equalize_histogram)
                 for name, rows in (("train", training_rows), ("valid", validation_rows))}
    if model_config.input_mode == "memory":
        inputs = _memory_inputs(config, model_config, training_rows, validation_rows, num_classes, steps, host_size)
    elif model_config.input_mode == "device":
        inputs = _device_inputs(config, model_config, training_rows, validation_rows, host_size)
    else:
        inputs = _host_inputs(config, model_config, training_rows, validation_rows, steps, host_size)
    inputs.training.start_at_epoch(first_epoch)
    return inputs


def _tf_data_inputs(config, model_config, training_rows, validation_rows, steps: int, resize_in_model: bool,
                    strategy) -> Inputs:
    # Several replicas need full training batches (see make_dataset); one device keeps every image.
    drop_remainder = strategy is not None and len(training_rows) >= model_config.batch_size
    if config.generator.source == "tfrecords":
        training = tfrecords.training_dataset(config, model_config, training_rows, "train",
                                              drop_remainder=drop_remainder)
        validation = tfrecords.evaluation_dataset(config, model_config, validation_rows, "valid")
        # TFRecord shards were decoded when they were written: nothing is skipped while training.
        skipped = SkippedImages(lambda: 0)
    else:
        counter = DecodeCounter()
        shape = (config.paths.images_root, model_config.image_size, model_config.channels, model_config.batch_size)
        common = {"generator_config": config.generator, "decode_counter": counter,
                  "equalize_histogram": model_config.equalize_histogram,
                  "resize_in_model": resize_in_model}
        training = make_dataset(training_rows, *shape, training=True, seed=model_config.seed,
                                drop_remainder=drop_remainder, **common)
        validation = make_dataset(validation_rows, *shape, training=False, **common)
        skipped = SkippedImages(counter.skipped, counter.skipped_files)
    # Repeated, so that capped epochs keep drawing new batches instead of running dry.
    return Inputs(distribute.shard_for_workers(training.repeat(), strategy),
                  distribute.shard_for_workers(validation, strategy), steps, skipped)


def _split_arrays(config, model_config, training_rows, validation_rows, host_size: dict[str, int]) -> tuple[dict, int]:
    """Both splits as cached uint8 arrays, ``{"train": (images, labels), "valid": ...}``, and the files
    left out; ``host_size``: per split, the side the faces are decoded at (smaller than image_size
    when the model enlarges them itself)."""
    arrays = {}
    left_out = 0
    for split_name, rows in (("train", training_rows), ("valid", validation_rows)):
        images, labels, skipped = in_memory.split_arrays(
            rows, split_name, config.paths.images_root, config.paths.processed,
            host_size[split_name], model_config.channels, config.generator.face_margin,
            equalize_histogram=model_config.equalize_histogram,
        )
        arrays[split_name] = (images, labels)
        left_out += skipped
    return arrays, left_out


def _memory_inputs(config, model_config, training_rows, validation_rows, num_classes: int, steps: int,
                   host_size: dict[str, int]) -> Inputs:
    arrays, left_out = _split_arrays(config, model_config, training_rows, validation_rows, host_size)
    # With mixup, labels are class probabilities in training and (for one accuracy metric) validation.
    one_hot = one_hot_classes(config.generator, num_classes)
    training = in_memory.ArrayBatches(
        *arrays["train"], model_config.batch_size, training=True, seed=model_config.seed, max_batches=steps,
        workers=os.cpu_count() or 1, num_classes=one_hot, mixup=mixup_alpha(config.generator),
    )
    validation = in_memory.ArrayBatches(*arrays["valid"], model_config.batch_size, training=False,
                                        num_classes=one_hot)
    # Decoded once, when the arrays were cached: load_arrays logged the names then.
    return Inputs(training, validation, steps, SkippedImages(lambda: left_out))


def _device_inputs(config, model_config, training_rows, validation_rows, host_size: dict[str, int]) -> Inputs:
    """Training images on the accelerator; validation batches from host memory."""
    arrays, left_out = _split_arrays(config, model_config, training_rows, validation_rows, host_size)
    training = in_memory.DeviceBatches(*arrays["train"], model_config.batch_size, seed=model_config.seed,
                                       max_batches=model_config.max_steps_per_epoch)
    validation = in_memory.ArrayBatches(*arrays["valid"], model_config.batch_size, training=False)
    return Inputs(training, validation, len(training), SkippedImages(lambda: left_out))


def _host_inputs(config, model_config, training_rows, validation_rows, steps: int,
                 host_size: dict[str, int]) -> Inputs:
    workers = os.cpu_count() or 1
    common = {"channels": model_config.channels, "batch_size": model_config.batch_size,
              "face_margin": config.generator.face_margin, "workers": workers,
              "equalize_histogram": model_config.equalize_histogram}
    training = ImageBatches(training_rows, config.paths.images_root, host_size["train"], training=True,
                            seed=model_config.seed, max_batches=steps, **common)
    validation = ImageBatches(validation_rows, config.paths.images_root, host_size["valid"], training=False,
                              **common)

    def unreadable() -> list[str]:
        return sorted(set(training.unreadable_files + validation.unreadable_files))

    # A file that fails once fails in every epoch: the files, not the failed attempts, are counted.
    return Inputs(training, validation, steps, SkippedImages(lambda: len(unreadable()), unreadable))
