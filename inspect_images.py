#!/usr/bin/env python3
"""Save PNGs to look at the data before training.

Reads:  data/processed/manifest.csv, data/interim/images/
Writes: reports/figures/sample_images.png (sample images per class with their labels and face
        boxes), reports/figures/class_distribution.png (class counts per split).

The work is done by emotion_classifier.inspect_images.run.
"""

from emotion_classifier import cli, inspect_images

if __name__ == "__main__":
    raise SystemExit(cli.main(inspect_images.run, __doc__, section=None))
