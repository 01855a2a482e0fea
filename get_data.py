#!/usr/bin/env python3
"""Bring the dataset into data/raw/ and extract it.

Reads:  [get_data] sources (local archives or folders) or, with source_kind = "drive", a Google
        Drive folder ID or file IDs (see docs/google_drive.md).
Writes: data/raw/archives/ (the archives as received, never edited), data/raw/folders/ (folder
        sources), data/raw/extracted/<name>/ (each archive set extracted once, those inside
        folder sources too; a marker records it), reports/get_data_summary.json.
Extraction handles zip, tar, tar.gz, split zips (and RAR where a backend is installed). It
refuses entries that would land outside their folder (absolute paths, "..", links pointing
outside), duplicate names and decompression bombs (get_data.max_expansion_ratio,
max_extracted_gb); a damaged, unsafe or incomplete archive set fails on its own with one FAILED
line while the others are extracted (exit status 1; 2 when nothing could be done).

The work is done by emotion_classifier.acquire.run.
"""

from emotion_classifier import cli, acquire

if __name__ == "__main__":
    raise SystemExit(cli.main(acquire.run, __doc__, section="get_data"))
