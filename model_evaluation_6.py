#!/usr/bin/env python3
"""Evaluate a saved model_6 (or any saved model) on the test split or on any dataset.

Reads:  [model_evaluation_6] model (default: models/model_6/best.keras) and dataset.
Writes: as model_evaluation_4.py, in reports/<name>/ and reports/comparison.md.

The work is done by emotion_classifier.evaluation.run_model_evaluation_6.
"""

from emotion_classifier import cli, evaluation

if __name__ == "__main__":
    raise SystemExit(cli.main(evaluation.run_model_evaluation_6, __doc__, section="model_evaluation_6"))
