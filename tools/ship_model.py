#!/usr/bin/env python3
"""Copy a finished training run into models/shipped/<name>/, the model the project ships.

The shipped folder holds the model without its optimizer state (a third of the size), its
model_info.json, the evaluation report of the run (evaluation.json, confusion_matrix.png) and a
README with the command, hardware, time and figures, all read from the run's own files:

    python tools/ship_model.py --run models/fer2013_vgg --report reports/fer2013/fer2013_vgg \\
        --config config/fer2013.toml --name fer2013
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

from emotion_classifier import files, model_io


def describe(run: Path, report: Path, config_path: str, name: str, hardware: str,
             chosen_on_test: str = "") -> str:
    summary = files.read_json(run / "training_summary.json")
    if "preset" not in summary and (run / "best.keras").is_file():
        preset = model_io.read_model_info(run / "best.keras").get("preset")
        if preset:
            summary = {**summary, "preset": preset}
    evaluation = files.read_json(report / "evaluation.json")
    metrics = evaluation["metrics"]
    recall_rows = "\n".join(
        f"| {class_name} | {values['precision']:.3f} | {values['recall']:.3f} | {values['f1']:.3f} | {values['support']} |"
        for class_name, values in evaluation["per_class"].items()
    )
    # A fine-tuned run: the time of the whole chain of runs that made it.
    minutes = summary.get("recipe_seconds", summary["seconds"]) / 60
    return _header(summary, evaluation, name, run, report, config_path, hardware, minutes, chosen_on_test) + \
        _calibration_section(run) + _evaluation_section(evaluation, metrics, recall_rows)


def _calibration_section(run: Path) -> str:
    """What the run's decision calibration did (calibration.calibrate_run's report), if it has one."""
    path = run / "decision_calibration.json"
    if not path.is_file():
        return ""
    report = files.read_json(path)
    if report["settings"]["method"] == "none":
        return ""
    before, after = report["validation_before"], report["validation_after"]
    offsets = ", ".join(f"{name} {value:+.3f}" for name, value in report["offsets"].items())
    recalls = ", ".join(f"{name} {before['recall'][name]:.3f} -> {after['recall'][name]:.3f}" for name in report["classes"])
    settings = report["settings"]
    views = f"{settings['validation_rows']} images, `{settings['test_time_augmentation']}` views"
    if settings["method"] == "recall_floor":
        purpose = (f"the smallest found that give every class a recall of at least {settings['recall_floor']} on the "
                   f"validation split held out of train/ ({views}); only the classes below it were pushed up")
    else:
        purpose = (f"so that, on the validation split held out of train/ ({views}, reweighted to the training "
                   "class frequencies), each class is predicted as often as it occurs")
    return f"""
## Decisions: {settings['method']}

After training, per-class offsets were added to the final layer's logits (they are in
`model.keras` itself, and listed in `model_info.json`), {purpose}. Offsets: {offsets}.
On that validation split: accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro F1
{before['macro_f1']:.4f} -> {after['macro_f1']:.4f}; recall {recalls}. The figures below are those of the
calibrated model (`decision_calibration.json` has the whole report).
"""


def _header(summary: dict, evaluation: dict, name: str, run: Path, report: Path, config_path: str, hardware: str,
            minutes: float, chosen_on_test: str = "") -> str:
    use = f"used to choose {chosen_on_test}" if chosen_on_test else "never used to choose anything"
    return f"""# The shipped model: {name}

`model.keras` classifies a face crop into {len(evaluation['model_classes'])} emotions
({', '.join(evaluation['model_classes'])}). Input: {summary.get('image_size', evaluation['image_size'])}x{evaluation['image_size']}
{'grayscale' if evaluation['channels'] == 1 else 'RGB'} float32 images with values in [0, 255]; the model rescales them itself, and
`model_info.json` beside it carries the class list and input size, so no caller has to know them.
It is the default model of the demo, `emotion-predict`, `emotion-export` and the evaluation scripts.

## How it was made

```bash
{_training_commands(summary, run, config_path)}
python tools/ship_model.py --run {run} --report {report} --config {config_path} --name {name}
```

The figures below, from this file alone (no training; `make evaluate-shipped` for FER2013):

```bash
python model_evaluation_4.py --config {config_path} model_evaluation_4.model='"models/shipped/{name}/model.keras"' \\
    model_evaluation_4.dataset='"<the dataset folder, e.g. ../shared/datasets/fer2013>"'
```

- Data: FER2013 train/ (learning; a class-balanced validation set held out of it chose the best
  epoch), val/ = PublicTest, {evaluation['images']} images (the figures below; {use}).
- Recipe: {_recipe(summary, config_path)}
- Hardware: {hardware}.
- Training time: {minutes:.0f} minutes{_speed(summary)}.
"""


def _training_commands(summary: dict, run: Path, config_path: str) -> str:
    """The commands that train the run: every stage, then a second run for a fine-tuned one."""
    source = summary.get("started_from")
    if not source:
        return f"make run CONFIG={config_path}          # or the stages one by one with --config {config_path}"
    return (f"make run CONFIG={config_path} ARGS=model_4.run_name={source['run_name']}   # every stage; the first run\n"
            f"python model_4.py --config {config_path} model_4.run_name='\"{run.name}\"' \\\n"
            f"    model_4.start_from_run='\"{source['run_name']}\"'           # the second, from the first's weights")


def _recipe(summary: dict, config_path: str) -> str:
    if "members" not in summary:
        preset = f"preset `{summary['preset']}`" if summary.get("preset") else "the run's preset"
        recipe = (f"{preset}, {summary['epochs_run']} epochs (best: epoch "
                  f"{summary['best_epoch']})")
        source = summary.get("started_from")
        if source:
            recipe += (f", fine-tuned (`start_from_run`) from the run `{source['run_name']}` "
                       f"({source['epochs_run']} epochs; the training time below counts both)")
        return f"{recipe}, see `{config_path}`."
    members = "; ".join(
        f"`{member['run_name']}`, {member['epochs_run']} epochs"
        + (f" fine-tuned from `{member['started_from']}`" if member.get("started_from") else "")
        + f" (best: epoch {member['best_epoch']}, {member['seconds'] / 60:.0f} minutes)"
        for member in summary["members"])
    return (f"an ensemble (`ensemble_runs`) that averages the logits of {len(summary['members'])} training runs, "
            f"trained one after another: {members}; the commands are in `{config_path}`.")


def _speed(summary: dict) -> str:
    if "members" in summary:
        return ", the members' training together"
    return f" ({summary['images_per_second']:.0f} images/s)"


def _evaluation_section(evaluation: dict, metrics: dict, recall_rows: str) -> str:
    return f"""
## Evaluation on FER2013 val (PublicTest), test-time augmentation `{evaluation.get('test_time_augmentation', 'none')}`

| metric | value |
|---|---:|
| accuracy | {metrics['accuracy']:.4f} |
| balanced accuracy | {metrics['balanced_accuracy']:.4f} |
| macro F1 | {metrics['macro_f1']:.4f} |
| weighted F1 | {metrics['weighted_f1']:.4f} |
| Cohen's kappa | {metrics['cohen_kappa']:.4f} |

| class | precision | recall | F1 | images |
|---|---:|---:|---:|---:|
{recall_rows}

`evaluation.json` has every figure and the confusion matrix; `confusion_matrix.png` shows it.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run folder")
    parser.add_argument("--report", type=Path, required=True, help="the evaluation report folder of the run")
    parser.add_argument("--config", required=True, help="the configuration the run was trained with")
    parser.add_argument("--name", default="fer2013")
    parser.add_argument("--hardware", default=f"{platform.machine()}, 2 CPU cores, no GPU; mixed bfloat16",
                        help="what the run was trained on (for the README)")
    parser.add_argument("--chosen-on-test", default="",
                        help="what was chosen by comparing figures on the evaluation data, if anything (for the README)")
    arguments = parser.parse_args()

    destination = model_io.SHIPPED_MODEL_PATH.parent.parent / arguments.name
    destination.mkdir(parents=True, exist_ok=True)
    model, info = model_io.load_trained_model(arguments.run / "best.keras")
    # float32 computation (trained under mixed precision) and no optimizer state (not compiled).
    model = model_io.as_float32(model)
    with files.atomic_path(destination / "model.keras") as temporary:
        model.save(temporary)
    model_io.save_model_info(destination / "model.keras", info["classes"], info["image_size"], info["channels"],
                             **{key: value for key, value in info.items()
                                if key not in ("classes", "image_size", "channels", "input")})
    for name in ("evaluation.json", "confusion_matrix.png"):
        shutil.copyfile(arguments.report / name, destination / name)
    (destination / "decision_calibration.json").unlink(missing_ok=True)
    if (arguments.run / "decision_calibration.json").is_file():
        shutil.copyfile(arguments.run / "decision_calibration.json", destination / "decision_calibration.json")
    files.write_text(destination / "README.md", describe(arguments.run, arguments.report, arguments.config, arguments.name, arguments.hardware,
                                                                  arguments.chosen_on_test))
    print(f"shipped {arguments.run} as {destination} "
          f"({(destination / 'model.keras').stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(files.read_json(destination / "evaluation.json")["metrics"], indent=2))


if __name__ == "__main__":
    main()
