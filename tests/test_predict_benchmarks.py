"""The predict memory benchmark runs on a few small photos and reports the peak memory (figures not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_predict_memory_benchmark_reports_peak_memory():
    finished = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "predict_memory.py"), "--photos", "2", "--megapixels", "3",
         "--output", "test_predict_memory"],
        cwd=PROJECT_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report_path = PROJECT_ROOT / "reports" / "bench" / "test_predict_memory.json"
    report = json.loads(report_path.read_text())
    report_path.unlink()
    assert report["photos"] == 2 and report["photo_size"] == "2121x1414"
    assert report["faces_found"] >= 2 and report["peak_resident_megabytes"] > 100
