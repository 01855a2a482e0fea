"""tools/gpu_recipe.py --quick: the GPU recipe's every stage on the shipped sample, as on the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jax_environment import jax_environment

REPOSITORY = Path(__file__).resolve().parents[1]
# Packages of requirements.txt that the GPU machine lacks: the recipe must not need them.
ABSENT_ON_THE_DEVICE = ["tensorflow", "rarfile", "googleapiclient", "google_auth_oauthlib", "ai_edge_litert",
                        "nbclient", "nbformat"]


@pytest.mark.slow
def test_quick_recipe_runs_every_stage_on_jax_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    environment = jax_environment(tmp_path, ABSENT_ON_THE_DEVICE)
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPOSITORY / "tools" / "gpu_recipe.py"), "--quick",
                             "--work", str(tmp_path / "work"), "--output", str(output)],
                            capture_output=True, text=True, env=environment, timeout=900, cwd=REPOSITORY)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    assert sorted(path.name for path in output.iterdir()) == sorted(
        ["best.keras", "model_info.json", "training_summary.json", "metrics.csv", "history.png",
         "evaluation.json", "confusion_matrix.png"])
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["input_mode"] == "device" and summary["keras_backend"] == "jax"
    assert summary["epochs_run"] == 1 and summary["run_name"] == "fer2013_vgg_gpu"
    evaluation = json.loads((output / "evaluation.json").read_text())
    assert evaluation["images"] > 0 and 0.0 <= evaluation["metrics"]["accuracy"] <= 1.0
