#!/usr/bin/env python3
"""The input pipeline: show one augmented training batch and measure its speed.

The batch is built exactly as training builds it for [model_4]'s input_mode (tf.data, arrays in
memory, host batches or batches on the accelerator), with [generator]'s augmentation.
Reads:  data/processed/split_manifest.csv, data/interim/images/
Writes: reports/figures/augmented_batch.png, and prints images per second.

The work is done by emotion_classifier.generator.run (inputs come from emotion_classifier.inputs).
"""

from emotion_classifier import cli, generator

if __name__ == "__main__":
    raise SystemExit(cli.main(generator.run, __doc__, section="generator"))
