#!/usr/bin/env python3
"""Evaluate a saved model_4 (or any saved model) on the test split or on any dataset.

Reads:  [model_evaluation_4] model (default: models/model_4/best.keras) and dataset ("test",
        "valid", or a path to a dataset folder, e.g. a folder per class).
Writes: reports/<name>/evaluation.json (accuracy, balanced accuracy, macro and weighted F1,
        per-class precision and recall, Cohen's kappa, classification report),
        reports/<name>/confusion_matrix.png, reports/<name>/predictions.csv,
        reports/comparison.md (every evaluated model side by side).

The work is done by emotion_classifier.evaluation.run_model_evaluation_4.
"""

from emotion_classifier import cli, evaluation

if __name__ == "__main__":
    raise SystemExit(cli.main(evaluation.run_model_evaluation_4, __doc__, section="model_evaluation_4"))
