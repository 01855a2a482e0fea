"""Each benchmark script runs in --quick mode and writes its JSON report (figures not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, report_name: str, *options: str) -> dict:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    finished = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), "--quick", "--output", report_name, *options],
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
    assert {"original", "ours_256", "ours_default", "decode_only", "tfrecords_default",
            "ours_default_resize_in_model", "ours_default_auto"} <= variants
    # The default configuration (resize_in_model = "auto") enlarges FER's 48 px faces in the
    # model and shrinks the 512 px photos on the host.
    by_dataset = {(row["dataset"], row["variant"]): row["images_per_second"] for row in report["results"]}
    for dataset, place, timed in (("fer2013_48px", "in the model", "ours_default_resize_in_model"),
                                  ("generated_512px", "on the host", "ours_default")):
        assert f"ratio ours_default_auto ({place}) / decode_only" in {v for d, v in by_dataset if d == dataset}
        assert by_dataset[(dataset, "ours_default_auto")] == by_dataset[(dataset, timed)]


@pytest.mark.slow
def test_training_benchmark_quick():
    report = run_quick("training.py", "test_training_quick")
    assert {row["configuration"] for row in report["results"]} == {
        "seed_original_size", "seed_default_size", "resnet50"}
    assert all(row["pipeline"] > 0 and row["in_memory"] > 0 for row in report["results"])


@pytest.mark.slow
def test_training_benchmark_quick_with_models_that_resize():
    report = run_quick("training.py", "test_training_quick_resize", "--resize-in-model")
    sizes = {row["configuration"]: (row["image_size"], row["input_size"]) for row in report["results"]}
    # FER's 48 px faces go in as they are; the model enlarges them to 64 (and 48 stays 48).
    assert sizes["seed_original_size"] == (64, 48) and sizes["seed_default_size"] == (48, 48)
    assert all(row["resize_in_model"] and row["pipeline"] > 0 for row in report["results"])


@pytest.mark.slow
def test_onednn_benchmark_quick():
    report = run_quick("onednn.py", "test_onednn_quick")
    assert [(row["preset"], row["work"]) for row in report["results"]] == [("fer_vgg", "training"),
                                                                           ("fer_vgg", "predicting")]
    assert all(row["onednn_off_images_per_s"] > 0 and row["onednn_on_images_per_s"] > 0 for row in report["results"])
    assert isinstance(report["tensorflow_default_onednn"], bool)
