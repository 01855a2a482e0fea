#!/usr/bin/env python3
"""Train model_4, the custom VGG-type CNN (preset "seed" = the original architecture).

Reads:  data/processed/split_manifest.csv, data/processed/classes.json, data/interim/images/
Writes: models/<run_name>/: best.keras, model_info.json, config.toml, metrics.csv, history.png,
        training_summary.json, code_version.txt. Class-balanced cross-entropy (Cui et al. 2019)
        with weights from the training split; early stopping; an interrupted run resumes.

The work is done by emotion_classifier.training.run_model_4.
"""

from emotion_classifier import cli, training

if __name__ == "__main__":
    raise SystemExit(cli.main(training.run_model_4, __doc__, section="model_4"))
