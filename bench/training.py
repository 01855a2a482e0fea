#!/usr/bin/env python3
"""Training images per second fed by our pipeline, by in-memory tensors and by the original loader.

For each configuration (``model_4``'s seed preset at its original 256x256 and at the default
training size, and ``model_6``'s ResNet50 at 224x224), training steps are timed with inputs:

- ``pipeline``: our tf.data pipeline reading FER2013 JPEGs (training mode, augmentation on);
- ``in_memory``: one decoded batch held in memory and fed again and again (no input cost);
- ``original_loader``: the original loader's Python generator (model_4 at 256 only, the size
  it produces).

``pipeline / in_memory`` is the share of training speed the input pipeline keeps. On a GPU the
runs are repeated with mixed precision. Validation and saving are left out: these are training
steps only.

    python bench/training.py             # real figures (several minutes on 2 CPU cores)
    python bench/training.py --quick     # a few steps of small models
    python bench/training.py --gpu-only  # on a machine with a GPU: the GPU figures only
    python bench/training.py --gpu-only --steps-per-execution 8  # several steps per compiled call

Without TensorFlow (``KERAS_BACKEND=jax``, as on a GPU machine that has JAX but no TensorFlow)
the inputs are the backend-neutral ones of ``input_mode = "memory"`` and ``"arrays"``:

- ``memory``: ``in_memory.ArrayBatches`` slicing batches from images decoded once (uint8);
- ``files``: ``host_batches.ImageBatches`` decoding the JPEGs with Pillow in threads every step;
- ``in_memory``: one batch fed again and again; ``original_loader`` as above.

No augmentation in any of them, so that every input trains the same model.

``--resize-in-model``: the models are built with ``resize_in_model = true`` and every input
hands FER2013's faces over at their own 48x48 (the enlargement runs in the model, on the device).

``--augmentation``: where the recipe's augmentation runs (config/fer2013_gpu.toml's [generator]),
on FER2013's 48-pixel faces held in memory as uint8, for ``fer_vgg`` (build_vgg's defaults):
``none`` (no augmentation, ArrayBatches), ``memory`` (AugmentationLayer inside the model's
training step, batches from ArrayBatches on the host), ``device`` (the same layer, batches
gathered on the device by DeviceBatches) and ``tf_data`` (BatchAugmentation in a tf.data map;
TensorFlow backend only).

Writes reports/bench/training.json (``--output`` names another).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import pandas as pd

import common

import keras  # noqa: E402  (after common, which sets the import path)
from emotion_classifier import distribute, host_batches, images, tf_dataset  # noqa: E402  (path set by common)
from emotion_classifier.config import Config, GeneratorConfig  # noqa: E402
from emotion_classifier.losses import WeightedCrossEntropy  # noqa: E402
from emotion_classifier.models import build_model  # noqa: E402

CLASSES = 7

# Training steps per call of the compiled step (``--steps-per-execution``; Keras' setting).
STEPS_PER_EXECUTION = 1


class StepTimer:
    """Times ``model.fit`` steps after the first ``skipped`` ones (tracing and warm-up)."""

    def __init__(self, skipped: int):
        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                # With several steps per call, batch callbacks see every that-many-th step only.
                if batch >= skipped and not timer.started:
                    timer.started = time.perf_counter()

            def on_train_end(self, logs=None):
                timer.finished = time.perf_counter()

        self.callback = Callback()
        self.started = self.finished = 0.0


def training_speed(section: str, image_size: int, data, steps: int, batch_size: int, mixed_precision: bool,
                   resize_in_model: bool = False) -> float:

    config = Config()
    model_config = getattr(config, section)
    model_config.image_size = image_size
    if section == "model_6":
        model_config.weights = "none"
    keras.utils.set_random_seed(0)
    with distribute.precision_policy(mixed_precision):
        model = build_model(section, model_config, CLASSES, resize_in_model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=WeightedCrossEntropy([1.0] * CLASSES),
                      metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION)
    # Two steps of warm-up, as whole calls of the compiled step.
    skipped = STEPS_PER_EXECUTION * math.ceil(2 / STEPS_PER_EXECUTION)
    timer = StepTimer(skipped)
    # A PyDataset may hold fewer batches than asked for: its own length is the epoch.
    is_py_dataset = isinstance(data, keras.utils.PyDataset)
    steps_per_epoch = None if is_py_dataset else steps + skipped
    if is_py_dataset:
        steps = min(steps, len(data) - skipped)
    model.fit(data, epochs=1, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[timer.callback])
    return steps * batch_size / (timer.finished - timer.started)


def original_loader(paths: list[str], batch_size: int, labels: np.ndarray):
    """The original loader as a Python generator of (images, labels) batches, forever."""
    import skimage.io
    import skimage.transform

    position = 0
    while True:
        batch = [paths[(position + offset) % len(paths)] for offset in range(batch_size)]
        images = np.array([skimage.transform.resize(skimage.io.imread(p), (256, 256, 3)) for p in batch]) / 255.0
        # The original divided by 255 twice (resize already returns [0, 1]); our models take [0, 255].
        yield (images * 255.0 * 255.0).astype("float32"), labels[:batch_size]
        position += batch_size


class RepeatedBatch(keras.utils.PyDataset):
    """One batch, returned for every step (the input costs nothing but the copy to the device)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, steps: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images, self.labels, self.steps = images, labels, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.images, self.labels


# The augmentation of config/fer2013_gpu.toml.
RECIPE_AUGMENTATION = {"rotation_degrees": 10.0, "zoom": 0.2, "translation": 0.1, "contrast": 0.2,
                       "random_erasing": 0.5}


def augmentation_speeds(arguments) -> None:
    """Training images per second with the augmentation in the model and in tf.data."""
    from emotion_classifier import augmentation, in_memory
    from emotion_classifier.models import build_vgg

    batch_size, steps, count = (16, 3, 64) if arguments.quick else (64, 12, 2048)
    root, frame = common.fer_images(count)
    faces, labels = host_batches.load_arrays(frame, root, 48, 1, 0.0, dtype="uint8")
    labels = labels % CLASSES
    generator_config = GeneratorConfig(**RECIPE_AUGMENTATION)
    places = ["none", "memory", "device"] + (["tf_data"] if keras.backend.backend() == "tensorflow" else [])
    rows = []
    for place in places:
        in_model = place in ("memory", "device")
        layer = augmentation.AugmentationLayer.from_config_section(generator_config) if in_model else None
        keras.utils.set_random_seed(0)
        model = build_vgg((48, 48, 1), CLASSES, training_augmentation=layer)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                      loss=WeightedCrossEntropy([1.0] * CLASSES), metrics=["accuracy"])
        if place == "device":
            data = in_memory.DeviceBatches(faces, labels, batch_size)
        elif place == "tf_data":
            import tensorflow as tf

            batch_augmentation = augmentation.BatchAugmentation(generator_config)
            data = (tf.data.Dataset.from_tensor_slices((faces, labels)).repeat().shuffle(1024).batch(batch_size)
                    .map(lambda images, targets: (batch_augmentation(tf.cast(images, tf.float32)), targets),
                         num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
        else:
            data = in_memory.ArrayBatches(faces, labels, batch_size, training=True, workers=os.cpu_count() or 1)
        timer = StepTimer(2)
        model.fit(data, epochs=1, steps_per_epoch=None if isinstance(data, keras.utils.PyDataset) else steps + 2,
                  verbose=0, callbacks=[timer.callback])
        timed_steps = min(steps, len(data) - 2) if isinstance(data, keras.utils.PyDataset) else steps
        row = {"augmentation": place, "backend": keras.backend.backend(), "batch_size": batch_size,
               "images_per_second": round(timed_steps * batch_size / (timer.finished - timer.started), 1)}
        rows.append(row)
        print(row, flush=True)
    common.print_table("fer_vgg training images per second by where the augmentation runs", rows,
                       ["augmentation", "backend", "batch_size", "images_per_second"])
    common.write_report(arguments.output, {"quick": arguments.quick, "timed_steps": steps,
                                           "machine": common.machine_description(), "results": rows})


def backend_neutral_main(arguments) -> None:
    """The figures without TensorFlow: memory- and file-fed PyDatasets against one repeated batch."""
    from emotion_classifier import in_memory

    gpu = any("gpu" in str(device).lower() or "cuda" in str(device).lower()
              for device in keras.distribution.list_devices())
    if arguments.gpu_only and not gpu:
        raise SystemExit("--gpu-only: no GPU found")
    if arguments.quick:
        batch_size, steps, count = 8, 3, 64
        configurations = [("model_4", "seed_original_size", 64), ("model_4", "seed_default_size", 48),
                          ("model_6", "resnet50", 32)]
    else:
        batch_size, steps, count = (128, 60, 2048) if gpu else (32, 6, 512)
        configurations = [("model_4", "seed_original_size", common.ORIGINAL_SIZE),
                          ("model_4", "seed_default_size", common.DEFAULT_TRAINING_SIZE),
                          ("model_6", "resnet50", 224)]
    if arguments.only:
        configurations = [entry for entry in configurations if entry[1] in arguments.only]
    precisions = [False, True] if gpu else [False]
    root, frame = common.fer_images(count)
    # Full batches only, repeated to cover every timed step: a last, smaller batch would make
    # JAX compile the training step again inside the timed window.
    frame = frame.iloc[:max(batch_size, len(frame) // batch_size * batch_size)]
    frame = pd.concat([frame] * math.ceil((steps + 2) * batch_size / len(frame)), ignore_index=True)
    paths = [str(root / name) for name in frame["filename"]]
    labels = frame["class_index"].to_numpy(dtype="int32") % CLASSES
    frame["class_index"] = labels
    workers = os.cpu_count() or 1

    rows = []
    resize = arguments.resize_in_model
    for section, name, size in configurations:
        host_size = images.handover_size(frame, root, size, 0.0, resize)
        decoded, decoded_labels = host_batches.load_arrays(frame, root, host_size, 3, dtype="uint8")
        for mixed in precisions:
            total = steps + 2
            inputs = {
                "memory": in_memory.ArrayBatches(decoded, decoded_labels, batch_size, training=True, workers=workers),
                "files": host_batches.ImageBatches(frame, root, host_size, 3, batch_size, training=True,
                                                     workers=workers),
                "in_memory": RepeatedBatch(decoded[:batch_size].astype("float32"), decoded_labels[:batch_size], total),
            }
            speeds = {key: training_speed(section, size, data, steps, batch_size, mixed, resize)
                      for key, data in inputs.items()}
            if name == "seed_original_size" and not arguments.quick:
                speeds["original_loader"] = training_speed(
                    section, size, original_loader(paths, batch_size, labels), max(2, steps // 6), batch_size, mixed,
                    resize)
            row = {"model": section, "configuration": name, "image_size": size, "resize_in_model": resize,
                   "input_size": host_size, "device": "GPU" if gpu else "CPU",
                   "mixed_precision": mixed, "steps_per_execution": STEPS_PER_EXECUTION,
                   **{key: round(value, 1) for key, value in speeds.items()},
                   "memory_share": round(speeds["memory"] / speeds["in_memory"], 3),
                   "files_share": round(speeds["files"] / speeds["in_memory"], 3)}
            if "original_loader" in speeds:
                row["memory_over_original"] = round(speeds["memory"] / speeds["original_loader"], 1)
                row["files_over_original"] = round(speeds["files"] / speeds["original_loader"], 1)
            rows.append(row)
            print(row, flush=True)
    columns = ["model", "configuration", "image_size", "input_size", "device", "mixed_precision", "memory", "files",
               "in_memory", "original_loader", "memory_share", "files_share", "memory_over_original", "files_over_original"]
    common.print_table("Training images per second by input (shares: input / in_memory), without TensorFlow",
                       rows, columns)
    common.write_report(arguments.output, {"quick": arguments.quick, "batch_size": batch_size, "timed_steps": steps,
                                           "inputs": "backend-neutral (no TensorFlow)",
                                           "machine": common.machine_description(), "results": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps at small sizes (seconds)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU-only figures' repeat without a GPU")
    parser.add_argument("--output", default="training", help="report name under reports/bench/")
    parser.add_argument("--resize-in-model", action="store_true",
                        help="models that enlarge the faces themselves; inputs at the faces' own size")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="training steps per call of the compiled step (Keras' steps_per_execution)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="configurations to run (seed_original_size, seed_default_size, resnet50)")
    parser.add_argument("--augmentation", action="store_true",
                        help="fer_vgg's speed with the augmentation in the model (host or device batches) and in tf.data")
    arguments = parser.parse_args()
    if arguments.augmentation:
        augmentation_speeds(arguments)
        return
    global STEPS_PER_EXECUTION
    STEPS_PER_EXECUTION = max(1, arguments.steps_per_execution)
    if keras.backend.backend() != "tensorflow":
        backend_neutral_main(arguments)
        return
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if arguments.gpu_only and not gpu:
        raise SystemExit("--gpu-only: no GPU found")
    if arguments.quick:
        batch_size, steps = 8, 3
        configurations = [("model_4", "seed_original_size", 64), ("model_4", "seed_default_size", 48),
                          ("model_6", "resnet50", 32)]
    else:
        batch_size = 64 if gpu else 32
        steps = 40 if gpu else 6
        configurations = [("model_4", "seed_original_size", common.ORIGINAL_SIZE),
                          ("model_4", "seed_default_size", common.DEFAULT_TRAINING_SIZE),
                          ("model_6", "resnet50", 224)]
    precisions = [False, True] if gpu else [False]
    root, frame = common.fer_images(2000 if not arguments.quick else 64)
    paths = [str(root / name) for name in frame["filename"]]
    labels = frame["class_index"].to_numpy(dtype="int32") % CLASSES
    frame["class_index"] = labels

    rows = []
    for section, name, size in configurations:
        for mixed in precisions:
            pipeline = tf_dataset.make_dataset(frame, root, size, 3, batch_size, training=True,
                                                   generator_config=GeneratorConfig(),
                                                   resize_in_model=arguments.resize_in_model).repeat()
            first_images, first_labels = next(iter(pipeline))
            in_memory = tf.data.Dataset.from_tensors((first_images, first_labels)).repeat()
            speeds = {
                "pipeline": training_speed(section, size, pipeline, steps, batch_size, mixed, arguments.resize_in_model),
                "in_memory": training_speed(section, size, in_memory, steps, batch_size, mixed,
                                            arguments.resize_in_model),
            }
            if name == "seed_original_size" and not arguments.quick:
                generator = original_loader(paths, batch_size, labels)
                signature = (tf.TensorSpec((batch_size, 256, 256, 3), tf.float32), tf.TensorSpec((batch_size,), tf.int32))
                original = tf.data.Dataset.from_generator(lambda: generator, output_signature=signature)
                speeds["original_loader"] = training_speed(section, size, original, max(2, steps // 3), batch_size,
                                                           mixed, arguments.resize_in_model)
            row = {"model": section, "configuration": name, "image_size": size,
                   "resize_in_model": arguments.resize_in_model, "input_size": int(first_images.shape[1]),
                   "device": "GPU" if gpu else "CPU",
                   "mixed_precision": mixed, "steps_per_execution": STEPS_PER_EXECUTION,
                   **{key: round(value, 1) for key, value in speeds.items()},
                   "pipeline_share": round(speeds["pipeline"] / speeds["in_memory"], 3)}
            if "original_loader" in speeds:
                row["pipeline_over_original"] = round(speeds["pipeline"] / speeds["original_loader"], 1)
            rows.append(row)
            print(row, flush=True)
    columns = ["model", "configuration", "image_size", "input_size", "device", "mixed_precision", "pipeline",
               "in_memory", "original_loader", "pipeline_share", "pipeline_over_original"]
    common.print_table("Training images per second by input (pipeline_share = pipeline / in_memory)", rows, columns)
    common.write_report(arguments.output, {"quick": arguments.quick, "batch_size": batch_size, "timed_steps": steps,
                                           "machine": common.machine_description(), "results": rows})


if __name__ == "__main__":
    main()
