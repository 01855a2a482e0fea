#!/usr/bin/env python3
"""Seconds and peak memory of label extraction plus splitting on a generated 1,000,000-row
AffectNet ``training.csv``, against the same work done the original way.

- ``ours``: ``labels.read_affectnet_csv`` (vectorised pandas checks of every field) and
  ``splits.assign_splits`` (seeded keys, ranks within classes), as the stages run them;
- ``original``: a Python loop over the CSV rows collecting file names and one-hot labels, then
  the dropped classes removed row by row with ``np.delete`` on the one-hot and file name arrays
  and the rows split with ``np.delete`` as well. That work grows with the square of the row
  count, so it is measured on fewer rows (``--original-rows``) and reported as measured.

Each side runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.

    python bench/scale.py             # 1,000,000 rows (about a minute)
    python bench/scale.py --quick     # 20,000 rows

Writes reports/bench/scale.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

TARGET_SECONDS = 60.0
TARGET_PEAK_GB = 4.0
HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal"]
DROPPED_CODES = (5, 7, 8, 9, 10)  # disgust, contempt, none, uncertain, non-face


def write_affectnet_csv(path: Path, rows: int, seed: int = 0) -> None:
    """An AffectNet-layout label list: AffectNet's columns, 68 landmarks, codes 0..10."""
    random = np.random.default_rng(seed)
    codes = random.choice(11, size=rows, p=[.25, .4, .08, .05, .02, .01, .01, .06, .04, .03, .05])
    landmarks = ";".join(f"{value:.2f}" for value in random.uniform(10, 200, size=136))
    with common.files.atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(HEADER)
        for index in range(rows):
            writer.writerow([f"{index % 1000}/{index:08d}.jpg", 20, 25, 180, 190, landmarks, int(codes[index]),
                             round(float(random.uniform(-1, 1)), 3), round(float(random.uniform(-1, 1)), 3)])


def run_ours(csv_path: Path) -> dict:
    from emotion_classifier import affectnet_labels, splits
    from emotion_classifier.config import Config

    started = time.perf_counter()
    table = affectnet_labels.read_affectnet_csv(csv_path, "training.csv", "train")
    read_seconds = time.perf_counter() - started
    result = splits.assign_splits(table.rows, Config())
    return {"rows_kept": int(len(result.rows)), "read_seconds": round(read_seconds, 2),
            "split_counts": {name: int((result.rows["split"] == name).sum()) for name in splits.SPLITS}}


def run_original(csv_path: Path, valid_per_class: int = 500, test_fraction: float = 0.01) -> dict:
    """The original approach: per-row loops, one-hot arrays, np.delete for every dropped row."""
    filenames, one_hot = [], []
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            label = np.zeros(11)
            label[int(row[6])] = 1
            filenames.append(row[0])
            one_hot.append(label)
    filenames, one_hot = np.array(filenames), np.array(one_hot)
    for index in range(len(one_hot) - 1, -1, -1):
        if int(np.argmax(one_hot[index])) in DROPPED_CODES:
            one_hot = np.delete(one_hot, index, axis=0)
            filenames = np.delete(filenames, index, axis=0)
    one_hot = np.delete(one_hot, list(DROPPED_CODES), axis=1)
    random = np.random.default_rng(42)
    valid_rows = []
    for class_column in range(one_hot.shape[1]):
        members = [index for index in range(len(one_hot)) if one_hot[index, class_column] == 1]
        valid_rows += list(random.permutation(members)[:min(valid_per_class, len(members) // 2)])
    valid_x, valid_y = filenames[valid_rows], one_hot[valid_rows]
    for index in sorted(valid_rows, reverse=True):
        filenames = np.delete(filenames, index, axis=0)
        one_hot = np.delete(one_hot, index, axis=0)
    test_rows = random.permutation(len(one_hot))[:int(len(one_hot) * test_fraction)]
    test_x = filenames[test_rows]
    return {"rows_kept": int(len(filenames) + len(valid_x)), "valid": int(len(valid_y)), "test": int(len(test_x))}


def worker(kind: str, csv_path: Path) -> None:
    """Runs in a child process: do one side's work and print its time and peak memory."""
    started = time.perf_counter()
    details = run_ours(csv_path) if kind == "ours" else run_original(csv_path)
    seconds = time.perf_counter() - started
    peak_kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({"seconds": round(seconds, 2), "peak_gb": round(peak_kilobytes / 1024 ** 2, 3),
                                  **details}))


def measure(kind: str, csv_path: Path) -> dict:
    finished = subprocess.run([sys.executable, __file__, "--worker", kind, str(csv_path)],
                              capture_output=True, text=True, check=False)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        raise SystemExit(f"{kind} failed:\n{finished.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 rows instead of 1,000,000")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--original-rows", type=int, default=50_000,
                        help="rows the original approach is measured on (its time grows with the square)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "CSV"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="scale", help="report name under reports/bench/")
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker[0], Path(arguments.worker[1]))
        return
    rows = 20_000 if arguments.quick else arguments.rows
    original_rows = min(rows, 5_000 if arguments.quick else arguments.original_rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as work:
        for kind, count in (("ours", rows), ("ours", original_rows), ("original", original_rows)):
            csv_path = Path(work) / f"training_{count}.csv"
            if not csv_path.is_file():
                _written, seconds = common.timed(lambda: write_affectnet_csv(csv_path, count))
                print(f"generated {csv_path.name} ({count} rows) in {seconds:.1f} s")
            results.append({"method": kind, "rows": count, **measure(kind, csv_path)})
    ours_full = results[0]
    same_size = {result["method"]: result for result in results[1:]}
    summary = {
        "ours_meets_target": ours_full["seconds"] < TARGET_SECONDS and ours_full["peak_gb"] < TARGET_PEAK_GB,
        f"speedup_at_{original_rows}_rows": round(same_size["original"]["seconds"] / same_size["ours"]["seconds"], 1),
    }
    table = [{key: result[key] for key in ("method", "rows", "seconds", "peak_gb")} for result in results]
    common.print_table("Label extraction + splitting: seconds and peak resident memory", table,
                       ["method", "rows", "seconds", "peak_gb"])
    print(json.dumps(summary))
    common.write_report(arguments.output, {"quick": arguments.quick, "targets": {"seconds": TARGET_SECONDS,
                        "peak_gb": TARGET_PEAK_GB}, "results": results, "summary": summary})


if __name__ == "__main__":
    main()
