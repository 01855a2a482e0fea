#!/usr/bin/env python3
"""Drop unwanted classes and draw the train, validation and test splits.

Reads:  data/processed/manifest.csv
Writes: data/processed/split_manifest.csv, data/processed/classes.json,
        data/processed/X_{train,valid,test}_filenames.npy, data/processed/y_{train,valid,test}.npy,
        reports/split_summary.json; prints the per-class counts of each split.
Validation is class-balanced ([split] valid_per_class per class); test is the dataset's own
evaluation split when it has one, else a stratified [split] test_fraction. Fixed seed.

The work is done by emotion_classifier.splits.run.
"""

from emotion_classifier import cli, splits

if __name__ == "__main__":
    raise SystemExit(cli.main(splits.run, __doc__, section="split"))
