#!/usr/bin/env python3
"""Bring the dataset into data/raw/ and extract it.

Reads:  [get_data] sources (local archives or folders) or, with source_kind = "drive", a Google
        Drive folder ID or file IDs (see docs/google_drive.md).
Writes: data/raw/archives/ (the archives as received, never edited), data/raw/folders/ (folder
        sources), data/raw/extracted/<name>/ (each archive extracted once; a marker records it),
        reports/get_data_summary.json.
Extraction handles zip, tar, tar.gz (and RAR where a backend is installed) and refuses entries
that would land outside their folder (absolute paths, "..", links pointing outside).

The work is done by emotion_classifier.acquire.run.
"""

from emotion_classifier import cli, acquire

if __name__ == "__main__":
    raise SystemExit(cli.main(acquire.run, __doc__, section="get_data"))
