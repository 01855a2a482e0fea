"""Run folders: the files a training run writes, finished runs, and which model a stage uses by default.

A run folder ``models/<run_name>/`` holds:

- ``best.keras`` and ``model_info.json``: the model of the best epoch on the validation split
  (lowest loss, or highest accuracy with ``monitor = "val_accuracy"``);
- ``config.json`` and ``config.toml``: the resolved configuration the run used;
- ``metrics.csv``: one row per epoch (loss, accuracy, val_loss, val_accuracy, skipped_images);
- ``history.png``: loss and accuracy curves of the training and validation splits;
- ``code_version.txt``: the git commit of the code (and whether it had uncommitted changes);
- ``training_summary.json``: epochs run, best epoch and its metrics, time, speed, class weights;
- ``decision_calibration.json``: the decision offsets fitted after training, when calibrated;
- ``checkpoint/``: the model and optimizer after the last completed epoch and ``state.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pandas as pd

from emotion_classifier import config as config_module
from emotion_classifier import files, model_io, split_files
from emotion_classifier.errors import PipelineError

logger = logging.getLogger(__name__)

BEST_MODEL_NAME = "best.keras"
METRICS_NAME = "metrics.csv"
SUMMARY_NAME = "training_summary.json"
HISTORY_NAME = "history.png"
CHECKPOINT_DIR_NAME = "checkpoint"
STATE_NAME = "state.json"
SKIPPED_LIST_NAME = "skipped_images.txt"
CALIBRATION_REPORT_NAME = "decision_calibration.json"
# The training sections, and the evaluation section that goes with each.
MODEL_SECTIONS = ("model_4", "model_6")
EVALUATION_SECTIONS = {"model_4": "model_evaluation_4", "model_6": "model_evaluation_6"}


def best_model_path(config, section_name: str) -> Path:
    """The best model of the section's training run (which may not exist yet)."""
    return Path(config.paths.models) / getattr(config, section_name).run_name / BEST_MODEL_NAME


def default_model_path(config=None) -> Path:
    """The model the demo, predict and export use when no setting names one (and evaluation when
    its run does not exist): the shipped model, trained on all of FER2013 for faces from any
    source, when it is there; else the best model of model_4's run (of ``config``, or the defaults)."""
    if model_io.SHIPPED_MODEL_PATH.is_file():
        return model_io.SHIPPED_MODEL_PATH
    return best_model_path(config or config_module.Config(), "model_4")


def run_fingerprint(config, section_name: str, resize_in_model: bool) -> str:
    """What a run's result depends on: its resolved section, whether the model resizes its inputs
    (inputs.resolve_resize_in_model), the input pipeline and the split files.

    The strategy is left out: it changes where training runs, not what it computes, so a run
    interrupted on one GPU may resume on several; so is the decision calibration, which is
    applied to the finished run (calibration.calibrate_run).
    """
    model_settings = dict(config.to_dict()[section_name])
    for not_training in ("strategy", "decision_calibration", "decision_recall_floor"):
        model_settings.pop(not_training)
    settings = {
        "section": section_name,
        "model": model_settings,
        "resize_in_model": resize_in_model,
        "generator": config.to_dict()["generator"],
        "split_manifest": files.file_digest(config.paths.split_manifest),
        "classes": files.file_digest(Path(config.paths.processed) / split_files.CLASSES_FILE_NAME),
    }
    if model_settings.get("start_from_run"):
        # The starting weights: a source run trained again (even alike) makes this a new run.
        _path, _info, summary = finished_run_files(Path(config.paths.models), model_settings["start_from_run"],
                                                   f"{section_name}.start_from_run", section_name)
        settings["start_from_summary"] = summary_without_calibration(summary)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def prepare_run_folder(run_dir: Path, fingerprint: str, force: bool, may_write: bool = True) -> dict | None:
    """The state to resume from (None: start afresh), after clearing the folder when forced.

    A worker that is not the chief (``may_write`` false) only reads: it resumes from the chief's
    checkpoint when there is one, and never clears anything.
    """
    summary_path = run_dir / SUMMARY_NAME
    state_path = run_dir / CHECKPOINT_DIR_NAME / STATE_NAME
    if not may_write:
        if force or not state_path.is_file():
            return None
        state = files.read_json(state_path)
        usable = state.get("fingerprint") == fingerprint and (run_dir / CHECKPOINT_DIR_NAME / state["checkpoint"]).is_file()
        return state if usable else None
    if force:
        clear_run_folder(run_dir)
        return None
    if summary_path.is_file() and (run_dir / BEST_MODEL_NAME).is_file():
        summary = files.read_json(summary_path)
        if summary.get("fingerprint") == fingerprint:
            return {"finished": True}
        raise PipelineError(
            f"{run_dir} holds a finished run of a different configuration; use --force to replace "
            "it or set a new run_name"
        )
    if state_path.is_file():
        state = files.read_json(state_path)
        if state.get("fingerprint") != fingerprint:
            raise PipelineError(
                f"{run_dir} holds an unfinished run of a different configuration; use --force to "
                "start over or set a new run_name"
            )
        if (run_dir / CHECKPOINT_DIR_NAME / state["checkpoint"]).is_file():
            return state
        logger.warning("%s points at a missing checkpoint; starting over", state_path)
    clear_run_folder(run_dir)
    return None


def finished_run_files(models_dir: Path, run_name: str, setting: str, section_name: str) -> tuple[Path, dict, dict]:
    """``(best model path, model info, training summary)`` of the finished run ``run_name``.

    ``setting`` names the setting that asked for it, for the error when it is not there.
    """
    run_dir = models_dir / run_name
    model_path, summary_path = run_dir / BEST_MODEL_NAME, run_dir / SUMMARY_NAME
    if not (model_path.is_file() and summary_path.is_file()):
        raise PipelineError(
            f"{setting}: {run_dir} holds no finished run ({BEST_MODEL_NAME} and {SUMMARY_NAME}); train it "
            f"first (python {section_name}.py with {section_name}.run_name = \"{run_name}\")"
        )
    try:
        info = model_io.read_model_info(model_path)
    except (FileNotFoundError, ValueError) as error:
        raise PipelineError(f"{setting}: {error}") from error
    return model_path, info, files.read_json(summary_path)


def summary_without_calibration(summary: dict) -> dict:
    """A training summary less its decision calibration, which changes no weight that training
    or an ensemble uses (both take the offsets off)."""
    return {key: value for key, value in summary.items() if key != "decision_calibration"}


def clear_run_folder(run_dir: Path) -> None:
    """Remove what a previous run wrote (only the files this module writes)."""
    for name in (BEST_MODEL_NAME, METRICS_NAME, SUMMARY_NAME, HISTORY_NAME, model_io.MODEL_INFO_NAME,
                 CALIBRATION_REPORT_NAME, SKIPPED_LIST_NAME):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CHECKPOINT_DIR_NAME, ignore_errors=True)


def write_run_description(config, run_dir: Path, classes: list[str], image_size: int, channels: int,
                          **model_info: object) -> None:
    """The run's configuration, code version and model info (written before its model)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(run_dir / "config.json", config.to_dict())
    files.write_text(run_dir / "config.toml", config_module.to_toml(config))
    files.write_text(run_dir / "code_version.txt", code_version() + "\n")
    model_io.save_model_info(run_dir / BEST_MODEL_NAME, classes, image_size, channels, **model_info)



def code_version() -> str:
    """The git commit of this code, marked when the working tree has uncommitted changes."""
    source_dir = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown (not a git checkout, or no commit yet)"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source_dir,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"
    dirty = " with uncommitted changes" if status.stdout.strip() else ""
    return f"git commit {commit.stdout.strip()}{dirty}"



def recipe_runs(summary: dict) -> dict[str, float]:
    """``{run name: training seconds}`` of a finished run and of the runs it was fine-tuned from."""
    return dict(summary.get("recipe_runs") or {summary["run_name"]: float(summary.get("seconds") or 0.0)})



def truncate_metrics(metrics_path: Path, epochs_completed: int) -> None:
    """Keep only the rows of epochs the checkpoint covers, so every epoch appears once."""
    if not metrics_path.is_file():
        return
    metrics = pd.read_csv(metrics_path)
    kept = metrics[metrics["epoch"] < epochs_completed]
    if len(kept) != len(metrics):
        files.save_csv(metrics_path, kept)
