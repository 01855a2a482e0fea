#!/usr/bin/env python3
"""Read the labels of any supported layout into one manifest and the npy hand-offs.

Layouts: AffectNet's original release (training.csv, validation.csv), AffectNet's later release
(train_set/, val_set/ with annotations/*.npy), or a folder per class (optionally inside train/,
val/, test/ folders). Class names are made canonical (angry -> anger, ...).
Reads:  data/interim/images/, data/interim/labels/
Writes: data/processed/manifest.csv (one row per image: label, source split, face box, valence,
        arousal, landmarks, image size), data/processed/filenames.npy, data/processed/labels.npy
        (canonical ids = AffectNet codes), data/processed/rejected_files.csv (every left-out file
        or row with its reason), reports/labels_summary.json.

The work is done by emotion_classifier.labels.run.
"""

from emotion_classifier import cli, labels

if __name__ == "__main__":
    raise SystemExit(cli.main(labels.run, __doc__, section="labels"))
