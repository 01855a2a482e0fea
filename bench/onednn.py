#!/usr/bin/env python3
"""Training and prediction speed with TensorFlow's oneDNN kernels on and off, on this CPU.

TensorFlow's x86 Linux wheels turn oneDNN on by default only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX; elsewhere (AVX2-only CPUs such as AMD EPYC before Zen 4) its
generic Eigen kernels run. ``import emotion_classifier`` asks for oneDNN on every x86-64 CPU
(``TF_ENABLE_ONEDNN_OPTS=1`` unless the user set it). TensorFlow reads that variable once, at
import, so each setting is measured in its own process: rounds of ``TF_ENABLE_ONEDNN_OPTS=0``
and ``=1`` interleaved, the median kept. Each process trains the FER presets on one batch of 128
random 48x48x1 faces again and again (float32, as on a CPU without bfloat16) and predicts
batches of 256 with them. A first process, with the variable unset and without this package,
reports what TensorFlow itself chooses on this CPU.

    python bench/onednn.py [--rounds 2] [--steps 6]
    python bench/onednn.py --quick     # a small run that checks the script works

Writes reports/bench/onednn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # puts src/ on the import path

PRESETS = ("fer_vgg", "fer_vgg_wide")
PREDICT_BATCH_SIZE = 256
SETTINGS = ("0", "1")


def measure_in_this_process(presets: tuple[str, ...], steps: int) -> dict:
    """Training and prediction images/s of each preset, with whatever oneDNN setting TensorFlow read."""
    import keras
    import numpy as np
    from tensorflow.python.util import _pywrap_util_port  # the only place TensorFlow says whether oneDNN is on

    from mixed_precision import BATCH_SIZE, INPUT_SHAPE, NUM_CLASSES, build_preset, images_per_second

    generator = np.random.default_rng(0)
    images = generator.random((BATCH_SIZE, *INPUT_SHAPE), dtype=np.float32)
    labels = keras.utils.to_categorical(generator.integers(0, NUM_CLASSES, BATCH_SIZE), NUM_CLASSES)
    predict_images = generator.random((PREDICT_BATCH_SIZE, *INPUT_SHAPE), dtype=np.float32)
    results = {}
    for preset in presets:
        training = images_per_second(preset, "float32", steps, images, labels)
        model = build_preset(preset)
        for _ in range(2):  # the first calls build the graph and oneDNN's kernels
            model.predict_on_batch(predict_images)
        start = time.perf_counter()
        for _ in range(steps):
            model.predict_on_batch(predict_images)
        predicting = steps * PREDICT_BATCH_SIZE / (time.perf_counter() - start)
        results[preset] = {"training": training, "predicting": predicting}
    return {"onednn_enabled": bool(_pywrap_util_port.IsMklEnabled()), "results": results}


def tensorflow_default() -> bool:
    """Whether TensorFlow turns oneDNN on by itself here (a Python that does not import this package)."""
    environment = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    finished = subprocess.run(
        [sys.executable, "-c", "from tensorflow.python.util import _pywrap_util_port; "
                               "print(_pywrap_util_port.IsMklEnabled())"],
        env=environment, capture_output=True, text=True, check=True,
    )
    return finished.stdout.strip().splitlines()[-1] == "True"


def run_child(setting: str, presets: tuple[str, ...], steps: int) -> dict:
    """``measure_in_this_process`` in a fresh Python with TF_ENABLE_ONEDNN_OPTS set to ``setting``."""
    environment = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
    finished = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--steps", str(steps), "--presets", *presets],
        env=environment, capture_output=True, text=True, check=False,
    )
    if finished.returncode != 0:
        raise SystemExit(f"the measuring process (TF_ENABLE_ONEDNN_OPTS={setting}) failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--quick", action="store_true", help="one round, two steps, one preset")
    parser.add_argument("--output", default="onednn", help="report name under reports/bench/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(measure_in_this_process(tuple(arguments.presets), arguments.steps)))
        return
    rounds, steps, presets = (1, 2, PRESETS[:1]) if arguments.quick else (arguments.rounds, arguments.steps, PRESETS)

    default_on = tensorflow_default()
    measured = {setting: [] for setting in SETTINGS}
    for _ in range(rounds):
        for setting in SETTINGS:
            child = run_child(setting, presets, steps)
            if child["onednn_enabled"] != (setting == "1"):
                raise SystemExit(f"TF_ENABLE_ONEDNN_OPTS={setting} but TensorFlow reports oneDNN "
                                 f"{'on' if child['onednn_enabled'] else 'off'}")
            measured[setting].append(child["results"])
    rows = []
    for preset in presets:
        for work in ("training", "predicting"):
            off, on = (statistics.median(result[preset][work] for result in measured[setting]) for setting in SETTINGS)
            rows.append({"preset": preset, "work": work, "onednn_off_images_per_s": round(off, 1),
                         "onednn_on_images_per_s": round(on, 1), "on_over_off": round(on / off, 2)})
    common.print_table(f"Images/s, float32, 48x48x1 (training batch 128, prediction batch {PREDICT_BATCH_SIZE}; "
                       f"median of {rounds} rounds)", rows, list(rows[0]))
    print(f"TensorFlow's own default on this CPU: oneDNN {'on' if default_on else 'off'}; "
          f"import emotion_classifier turns it on (x86-64) unless TF_ENABLE_ONEDNN_OPTS is set")
    common.write_report(arguments.output, {"machine": common.machine_description(),
                                           "quick": arguments.quick, "rounds": rounds, "steps": steps,
                                           "tensorflow_default_onednn": default_on, "results": rows})


if __name__ == "__main__":
    main()
