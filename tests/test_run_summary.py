"""The closing summary of ``make run``: figures read from the stages' reports, missing ones named."""

from __future__ import annotations

import json

from emotion_classifier import run_summary
from emotion_classifier.config import load_config


def test_summary_gives_each_models_figures_and_names_what_is_missing(tmp_path, capsys):
    config = load_config(None, [f"paths.reports_dir={tmp_path / 'reports'}",
                                f"paths.models_dir={tmp_path / 'models'}"])
    report_dir = tmp_path / "reports" / "model_4"
    report_dir.mkdir(parents=True)
    report = {"metrics": {"accuracy": 0.4712, "macro_f1": 0.4031}, "images": 1000,
              "dataset_description": "the test split"}
    (report_dir / "evaluation.json").write_text(json.dumps(report))
    run_dir = tmp_path / "models" / "model_4"
    run_dir.mkdir(parents=True)
    (run_dir / "training_summary.json").write_text(json.dumps({"seconds": 95.4, "epochs_run": 8}))

    assert run_summary.run(config) == 0
    printed = capsys.readouterr().out
    assert "model_4 (model_4): accuracy 47.1%, macro F1 0.403 on 1000 images of the test split" in printed
    assert "trained 8 epochs in 95 s" in printed
    assert "model_6 (model_6): no evaluation report; run model_6.py, then model_evaluation_6.py" in printed
    assert str(tmp_path / "reports" / "comparison.md") in printed
