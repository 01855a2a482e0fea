#!/usr/bin/env python3
"""Gather every image of the extracted sources into one images root.

Reads:  data/raw/extracted/*/
Writes: data/interim/images/ (hard links where possible, else copies; relative paths kept so
        label files stay valid), data/interim/labels/ (label files: csv, npy, ...),
        data/interim/duplicates.csv, reports/consolidate_summary.json (images, non-image files
        skipped, duplicate names).

The work is done by emotion_classifier.consolidate.run.
"""

from emotion_classifier import cli, consolidate

if __name__ == "__main__":
    raise SystemExit(cli.main(consolidate.run, __doc__, section="consolidate"))
