"""Each benchmark script runs in --quick mode and writes its JSON report (figures not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, report_name: str) -> dict:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    finished = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), "--quick", "--output", report_name],
        cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report_path = PROJECT_ROOT / "reports" / "bench" / f"{report_name}.json"
    report = json.loads(report_path.read_text())
    report_path.unlink()
    assert report["quick"] is True
    return report


def test_scale_benchmark_quick():
    report = run_quick("scale.py", "test_scale_quick")
    assert [result["method"] for result in report["results"]] == ["ours", "ours", "original"]
    assert all(result["seconds"] > 0 and result["peak_gb"] > 0 for result in report["results"])


@pytest.mark.slow
def test_input_pipeline_benchmark_quick():
    report = run_quick("input_pipeline.py", "test_input_pipeline_quick")
    variants = {row["variant"] for row in report["results"]}
    assert {"original", "ours_256", "ours_default", "decode_only", "tfrecords_default"} <= variants


@pytest.mark.slow
def test_training_benchmark_quick():
    report = run_quick("training.py", "test_training_quick")
    assert {row["configuration"] for row in report["results"]} == {
        "seed_original_size", "seed_default_size", "resnet50"}
    assert all(row["pipeline"] > 0 and row["in_memory"] > 0 for row in report["results"])
