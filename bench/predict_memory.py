#!/usr/bin/env python3
"""Peak memory of ``predict`` on a folder of large photos.

Makes ``--photos`` JPEGs of ``--megapixels`` megapixels (7360x4912 for 36: a full-frame camera's
photo), each a smooth background with a real face (Grace Hopper's portrait, shipped with
matplotlib) enlarged onto it, then runs ``emotion-predict`` on the folder in a separate process
with the shipped model and reports that process's peak resident memory (``ru_maxrss``) and its
time. Writes reports/bench/<--output, default predict_memory>.json.

    python bench/predict_memory.py [--photos 32] [--megapixels 36] [--output NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
from common import PROJECT_ROOT, REPORT_DIR, machine_description
from PIL import Image

from emotion_classifier import files

PORTRAIT = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
ASPECT = 3 / 2


def make_photos(folder: Path, count: int, megapixels: float) -> tuple[int, int]:
    """``count`` large JPEGs with one face each; returns their size."""
    height = int(math.sqrt(megapixels * 1e6 / ASPECT))
    width = int(height * ASPECT)
    generator = np.random.default_rng(0)
    portrait = Image.open(PORTRAIT).convert("RGB")
    folder.mkdir(parents=True)
    for number in range(count):
        coarse = generator.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        face_width = int(width * generator.uniform(0.15, 0.3))
        face = portrait.resize((face_width, int(face_width * portrait.height / portrait.width)))
        photo.paste(face, (int(generator.integers(0, width - face.width)), int(generator.integers(0, height - face.height))))
        photo.save(folder / f"large_{number:02d}.jpg", quality=90)
        del photo
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--megapixels", type=float, default=36.0)
    parser.add_argument("--output", default="predict_memory", help="report name in reports/bench/")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict_memory_") as temporary:
        work = Path(temporary)
        width, height = make_photos(work / "photos", arguments.photos, arguments.megapixels)
        command = [sys.executable, "-m", "emotion_classifier.predict", str(work / "photos"),
                   "--output", str(work / "out"), "--force"]
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="2")
        start = time.perf_counter()
        finished = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
        seconds = time.perf_counter() - start
        if finished.returncode != 0:
            raise SystemExit(finished.stderr[-3000:])
        # Linux reports ru_maxrss in kilobytes; the largest child so far is predict.
        peak_megabytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads((work / "out" / "summary.json").read_text())
    report = {"machine": machine_description(), "photos": arguments.photos, "photo_size": f"{width}x{height}",
              "faces_found": summary["faces"], "peak_resident_megabytes": round(peak_megabytes, 1),
              "seconds": round(seconds, 1), "command": "emotion-predict <folder> --output <out>"}
    files.write_json(REPORT_DIR / f"{arguments.output}.json", report)
    print(f"{arguments.photos} photos of {width}x{height}: {summary['faces']} faces, peak memory "
          f"{peak_megabytes:.0f} MB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
