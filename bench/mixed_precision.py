#!/usr/bin/env python3
"""Training speed of the FER presets in float32 and under mixed_bfloat16, side by side.

Whether bfloat16 pays on a CPU depends on the CPU: with bfloat16 instructions (AVX512-BF16,
AMX) oneDNN runs the convolutions in bfloat16 and training is faster; without them bfloat16 is
emulated and training is slower. ``distribute.mixed_precision_policy_name`` decides from
/proc/cpuinfo; this script measures both policies on the machine at hand (one batch of 128
random 48x48x1 faces trained again and again, the two policies interleaved over rounds), and
prints what the pipeline chooses here.

    python bench/mixed_precision.py [--rounds 2] [--steps 6] [--presets fer_vgg fer_vgg_wide]

Writes reports/bench/mixed_precision.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import common  # puts src/ on the import path
import keras  # noqa: E402  (after common, which sets the import path)
import numpy as np  # noqa: E402

from emotion_classifier import distribute, models  # noqa: E402
from emotion_classifier.config import MODEL_PRESETS, Model4Config  # noqa: E402

PRESETS = ("fer_vgg", "fer_vgg_cpu")
BATCH_SIZE = 128
INPUT_SHAPE = (48, 48, 1)
NUM_CLASSES = 7


def build_preset(preset: str) -> keras.Model:
    """model_4 with the preset's settings at 48x48x1, 7 classes, under the current dtype policy
    (built as training builds it, from a Model4Config)."""
    height, _width, channels = INPUT_SHAPE
    model_config = Model4Config(**copy.deepcopy(MODEL_PRESETS[preset]), image_size=height, channels=channels)
    return models.build_model("model_4", model_config, NUM_CLASSES)


def images_per_second(preset: str, policy: str, steps: int, images: np.ndarray, labels: np.ndarray) -> float:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_preset(preset)
        model.compile(optimizer="sgd", loss="categorical_crossentropy")
        for _ in range(2):  # compilation and oneDNN's first-call set-up are not training speed
            model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        return steps * BATCH_SIZE / (time.perf_counter() - start)
    finally:
        keras.config.set_dtype_policy(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per measurement")
    parser.add_argument("--output", default="mixed_precision", help="report name under reports/bench/")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=[name for name in MODEL_PRESETS
                                                                                if name.startswith("fer_vgg")],
                        help="model_4 presets to measure (default: %(default)s)")
    arguments = parser.parse_args()
    generator = np.random.default_rng(0)
    images = generator.random((BATCH_SIZE, *INPUT_SHAPE), dtype=np.float32)
    labels = keras.utils.to_categorical(generator.integers(0, NUM_CLASSES, BATCH_SIZE), NUM_CLASSES)
    rows = []
    for preset in arguments.presets:
        measured = {"float32": [], "mixed_bfloat16": []}
        for _ in range(arguments.rounds):
            for policy in measured:
                measured[policy].append(images_per_second(preset, policy, arguments.steps, images, labels))
        float32, bfloat16 = (statistics.median(measured[policy]) for policy in measured)
        rows.append({"preset": preset, "float32_images_per_s": round(float32, 1),
                     "mixed_bfloat16_images_per_s": round(bfloat16, 1), "bfloat16_over_float32": round(bfloat16 / float32, 2)})
    common.print_table("Training images/s, batch 128, 48x48x1 (median of rounds)", rows, list(rows[0]))
    chosen = distribute.mixed_precision_policy_name()
    has_bfloat16 = distribute.cpu_has_bfloat16()
    print(f"CPU bfloat16 instructions: {has_bfloat16}; mixed_precision = true computes in: {chosen}")
    common.write_report(arguments.output, {"machine": common.machine_description(), "rounds": arguments.rounds,
                                           "steps": arguments.steps, "cpu_has_bfloat16": has_bfloat16,
                                           "policy_chosen_for_mixed_precision": chosen, "results": rows})


if __name__ == "__main__":
    main()
