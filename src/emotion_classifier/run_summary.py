"""The closing lines of ``make run``: each model's headline figures and where to look next.

It reads what the earlier stages wrote (each model's training summary and evaluation report) and
computes nothing itself, so a model that was not trained or evaluated is named with the stage
that makes it instead of failing the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from emotion_classifier import evaluation, runs
from emotion_classifier.config import Config



def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_line(config: Config, model_section: str) -> str:
    """One line of figures for one model section: accuracy, macro F1, images, training time."""
    run_name = getattr(config, model_section).run_name
    report_name = getattr(config, runs.EVALUATION_SECTIONS[model_section]).name or run_name
    report = _read_json(config.paths.reports / report_name / evaluation.EVALUATION_NAME)
    if report is None:
        return f"{model_section} ({run_name}): no evaluation report; run {model_section}.py, then " \
               f"{runs.EVALUATION_SECTIONS[model_section]}.py"
    scores = report["metrics"]
    line = (f"{model_section} ({run_name}): accuracy {scores['accuracy']:.1%}, macro F1 "
            f"{scores['macro_f1']:.3f} on {report['images']} images of {report['dataset_description']}")
    summary = _read_json(config.paths.models / run_name / runs.SUMMARY_NAME)
    if summary and summary.get("seconds") is not None:
        epochs = summary.get("epochs_run", "?")
        line += f"; trained {epochs} epoch{'' if epochs == 1 else 's'} in {float(summary['seconds']):.0f} s"
    return line


def summary_lines(config: Config) -> list[str]:
    """The figures of both models, then the files a person looks at first."""
    reports, models = config.paths.reports, config.paths.models
    demo_dir = reports / "demo"
    lines = ["", "Results", *(f"  {model_line(config, section)}" for section in runs.MODEL_SECTIONS), "",
             "Where to look"]
    lines += [
        f"  {reports / evaluation.COMPARISON_NAME}: every evaluated model side by side",
        f"  {reports}/<model>/{evaluation.CONFUSION_NAME}, {evaluation.EVALUATION_NAME}: per-class figures",
        f"  {models}/<model>/history.png, {runs.METRICS_NAME}: the training curves",
        f"  {reports / 'figures'}/: sample images, class distribution, an augmented batch",
        f"  {demo_dir}/: the demo's faces found and classified (demo.executed.ipynb, faces.csv)",
    ]
    return lines


def run(config: Config, force: bool = False) -> int:
    """Print the summary; ``force`` is accepted like every stage's and changes nothing."""
    print("\n".join(summary_lines(config)))
    return 0


if __name__ == "__main__":
    import sys

    from emotion_classifier import cli

    sys.exit(cli.main(run, "Print each model's accuracy and macro F1 on its evaluation split, and "
                      "where the run's reports, curves and demo outputs are.", section="paths"))
