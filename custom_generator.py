#!/usr/bin/env python3
"""The input pipeline: show one augmented batch and measure its speed.

Training and evaluation use this pipeline (tf.data: parallel read and decode, crop to the face box,
resize, augmentation for training only, batching, prefetch).
Reads:  data/processed/split_manifest.csv, data/interim/images/
Writes: reports/figures/augmented_batch.png, and prints images per second.

The work is done by emotion_classifier.input_pipeline.run.
"""

from emotion_classifier import cli, generator

if __name__ == "__main__":
    raise SystemExit(cli.main(generator.run, __doc__, section="generator"))
