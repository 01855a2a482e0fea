"""Training runs for ``model_4.py`` and ``model_6.py``: one self-describing, resumable folder each.

A run folder ``models/<run_name>/`` holds:

- ``best.keras`` and ``model_info.json``: the model of the best epoch on the validation split
  (lowest loss, or highest accuracy with ``monitor = "val_accuracy"``);
- ``config.json`` and ``config.toml``: the resolved configuration the run used;
- ``metrics.csv``: one row per epoch (loss, accuracy, val_loss, val_accuracy);
- ``history.png``: loss and accuracy curves of the training and validation splits;
- ``code_version.txt``: the git commit of the code (and whether it had uncommitted changes);
- ``training_summary.json``: epochs run, best epoch and its metrics, time, speed, class weights;
- ``checkpoint/``: the model and optimizer after the last completed epoch and ``state.json``.

Resuming: after every epoch the full model (weights and optimizer state) is saved under a new
name and ``checkpoint/state.json`` is then rewritten to point at it, both atomically, so a run
killed at any moment (even with SIGKILL) finds a consistent checkpoint. Started again with the
same configuration, it drops the rows of ``metrics.csv`` that belong to epochs after that
checkpoint, restores early stopping's counters and continues with the next epoch. A finished
run with the same configuration does nothing; ``force`` starts over. A run folder that holds a
run of a different configuration is never overwritten silently.

Training code uses Keras only (no TensorFlow calls) except in ``input_mode = "tf_data"``, so with
``input_mode = "memory"`` (decoded once and kept in memory; see ``in_memory.py``) or
``"arrays"`` (decoded with Pillow every epoch) it runs on any Keras backend.

Several devices (``strategy``, see ``distribute.py``): the model is built and compiled inside
the strategy's scope; every worker trains, only the chief writes the run folder (which must be
on storage all workers see, for a multi-worker run to resume). ``mixed_precision`` is a setting
of the same section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd

from emotion_classifier import config as config_module
from emotion_classifier import calibration, distribute, files, in_memory, input_pipeline, model_io
from emotion_classifier.cli import PipelineError
from emotion_classifier.losses import WeightedCrossEntropy, class_balanced_weights
from emotion_classifier.models import build_model

logger = logging.getLogger(__name__)

BEST_MODEL_NAME = "best.keras"
METRICS_NAME = "metrics.csv"
SUMMARY_NAME = "training_summary.json"
CHECKPOINT_DIR_NAME = "checkpoint"
STATE_NAME = "state.json"
SKIPPED_LIST_NAME = "skipped_images.txt"
MODEL_SECTIONS = ("model_4", "model_6")


@dataclasses.dataclass
class SkippedImages:
    """What the input pipeline has skipped so far: a cumulative count and the files' names."""

    count: Callable[[], int]
    names: Callable[[], list[str]] = list


class SkippedImagesReport(keras.callbacks.Callback):
    """At the end of every epoch, reports the images that could not be decoded and were skipped.

    The epoch's share of ``skipped.count`` is printed when it is not zero and logged as
    ``skipped_images`` (a metrics.csv column); the files are named (the first few on the
    console, all of them in ``list_path``, rewritten whenever a new one appears).
    """

    SHOWN = 10

    def __init__(self, skipped: SkippedImages, list_path: Path | None = None):
        super().__init__()
        self.skipped = skipped
        self.list_path = list_path
        self.reported = 0
        # A resumed run keeps the names found before its interruption.
        known = list_path.read_text().split("\n") if list_path is not None and list_path.is_file() else []
        self.named: list[str] = [name for name in known if name]

    def on_epoch_end(self, epoch, logs=None):
        total = self.skipped.count()
        skipped, self.reported = total - self.reported, total
        if logs is not None:
            logs["skipped_images"] = skipped
        if not skipped:
            return
        print(f"epoch {epoch + 1}: {skipped} image(s) could not be decoded and were skipped "
              "(TensorFlow's warnings above name the error)")
        already = set(self.named)
        new = [name for name in self.skipped.names() if name not in already]
        if new:
            self.named.extend(new)
            listed = ", ".join(new[:self.SHOWN]) + (f" and {len(new) - self.SHOWN} more" if len(new) > self.SHOWN else "")
            where = f" (all in {self.list_path})" if self.list_path is not None else ""
            print(f"  unreadable: {listed}{where}")
            if self.list_path is not None:
                files.write_text(self.list_path, "\n".join(self.named) + "\n")


def monitor_mode(monitor: str) -> str:
    """"min" for a loss, "max" for an accuracy."""
    return "min" if monitor.endswith("loss") else "max"


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on a validation metric whose counters survive an interruption."""

    def __init__(self, patience: int, resumed_state: dict | None = None, monitor: str = "val_loss"):
        super().__init__(monitor=monitor, mode=monitor_mode(monitor), patience=patience)
        self.resumed_state = resumed_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed_state.get("early_stopping_best") is not None:
            self.best = float(self.resumed_state["early_stopping_best"])
            self.wait = int(self.resumed_state.get("early_stopping_wait", 0))


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: the best model so far, then the resumable checkpoint, both atomic.

    Placed after CSVLogger and EarlyStopping in the callback list, so that when its state is
    written the epoch's metrics row and early stopping's counters are already up to date.
    """

    def __init__(self, run_dir: Path, fingerprint: str, early_stopping: ResumableEarlyStopping,
                 images_per_epoch: int, resumed_state: dict | None = None, monitor: str = "val_loss"):
        super().__init__()
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / CHECKPOINT_DIR_NAME
        self.fingerprint = fingerprint
        self.early_stopping = early_stopping
        self.images_per_epoch = images_per_epoch
        state = resumed_state or {}
        self.monitor = monitor
        self.best_value = state.get("best_value")
        self.best_epoch = state.get("best_epoch")
        self.training_seconds = float(state.get("training_seconds", 0.0))
        self.images_seen = int(state.get("images_seen", 0))
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.training_seconds += time.perf_counter() - self._epoch_started
        self.images_seen += self.images_per_epoch
        value = logs.get(self.monitor)
        better = (lambda new, old: new < old) if monitor_mode(self.monitor) == "min" else (lambda new, old: new > old)
        if value is not None and np.isfinite(value) and (self.best_value is None or better(value, self.best_value)):
            self.best_value = float(value)
            self.best_epoch = int(epoch)
            with files.atomic_path(self.run_dir / BEST_MODEL_NAME) as temporary:
                self.model.save(temporary)
        # A new name per epoch: state.json always points at a complete file, even if the
        # process dies between the two writes.
        checkpoint_name = f"epoch_{epoch + 1:04d}.keras"
        with files.atomic_path(self.checkpoint_dir / checkpoint_name) as temporary:
            self.model.save(temporary)
        files.write_json(self.checkpoint_dir / STATE_NAME, {
            "fingerprint": self.fingerprint,
            "epochs_completed": int(epoch) + 1,
            "checkpoint": checkpoint_name,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "early_stopping_best": _plain_float(self.early_stopping.best),
            "early_stopping_wait": int(self.early_stopping.wait),
            "stopped_early": bool(self.model.stop_training),
            "training_seconds": self.training_seconds,
            "images_seen": self.images_seen,
        })
        for older in self.checkpoint_dir.glob("epoch_*.keras"):
            if older.name != checkpoint_name:
                older.unlink(missing_ok=True)


def train(config, section_name: str, force: bool = False) -> Path:
    """Train the model of ``section_name`` ("model_4" or "model_6"); return its run folder."""
    if section_name not in MODEL_SECTIONS:
        raise ValueError(f"unknown model section {section_name!r}; expected one of {MODEL_SECTIONS}")
    model_config = getattr(config, section_name)
    run_dir = Path(config.paths.models) / model_config.run_name
    frame, classes = input_pipeline.read_split(config)
    training_rows = input_pipeline.split_rows(frame, "train", config.paths.split_manifest)
    validation_rows = input_pipeline.split_rows(frame, "valid", config.paths.split_manifest)
    counts = np.bincount(training_rows["class_index"].to_numpy(), minlength=len(classes))
    missing = [name for name, count in zip(classes, counts) if count == 0]
    if missing:
        raise PipelineError(
            f"{config.paths.split_manifest}: no training images for class(es) {', '.join(missing)}; "
            "drop them in the split stage (split.drop_classes) or add images"
        )
    if model_config.ensemble_runs:
        from emotion_classifier import ensemble

        ensemble.build_run(config, section_name, classes, counts, force)
        _calibrate(config, section_name, run_dir, validation_rows, classes, counts)
        return run_dir
    class_weights = class_balanced_weights(counts, model_config.class_balanced_beta)
    resize_in_model = resolve_resize_in_model(config, model_config, training_rows)
    fingerprint = _run_fingerprint(config, section_name, resize_in_model)
    strategy = distribute.make_strategy(model_config.strategy)
    chief = distribute.is_chief(strategy)

    state = _prepare_run_folder(run_dir, fingerprint, force, may_write=chief)
    if state is not None and state.get("finished"):
        print(f"{run_dir} already holds a finished run of this configuration (use --force to retrain)")
        if chief:
            _calibrate(config, section_name, run_dir, validation_rows, classes, counts)
        return run_dir
    if chief:
        write_run_description(config, run_dir, classes, model_config.image_size, model_config.channels,
                              run_name=model_config.run_name, preset=model_config.preset,
                              equalize_histogram=model_config.equalize_histogram)

    initial_epoch = int(state["epochs_completed"]) if state else 0
    # A resumed run draws fresh random numbers for its remaining epochs rather than replaying
    # those of epoch 0.
    keras.utils.set_random_seed(model_config.seed + initial_epoch)
    with distribute.strategy_scope(strategy), distribute.precision_policy(model_config.mixed_precision):
        if state:
            checkpoint_path = run_dir / CHECKPOINT_DIR_NAME / state["checkpoint"]
            model = keras.saving.load_model(checkpoint_path, compile=True, safe_mode=True)
            if chief:
                _truncate_metrics(run_dir / METRICS_NAME, initial_epoch)
            print(f"resuming {run_dir} after epoch {initial_epoch} of {model_config.epochs}")
        else:
            model = build_model(section_name, model_config, len(classes), resize_in_model)
            model.compile(
                optimizer=make_optimizer(model_config, _steps_per_epoch(len(training_rows), model_config)),
                loss=WeightedCrossEntropy(class_weights, label_smoothing=model_config.label_smoothing),
                metrics=["accuracy"],
            )
            if model_config.start_from_run:
                start_from_finished_run(model, config, section_name, classes)


    training_data, validation_data, steps_per_epoch, skipped = _make_inputs(
        config, model_config, training_rows, validation_rows, len(classes), strategy, resize_in_model
    )
    early_stopping = ResumableEarlyStopping(model_config.patience, state, model_config.monitor)
    checkpoint = RunCheckpoint(
        run_dir, fingerprint, early_stopping,
        images_per_epoch=min(len(training_rows), steps_per_epoch * model_config.batch_size),
        resumed_state=state, monitor=model_config.monitor,
    )
    # Every worker stops early on the same (all-reduced) validation loss; only the chief logs
    # and saves.
    callbacks = [
        # Before the CSV logger, so that metrics.csv gets the skipped_images column.
        SkippedImagesReport(skipped, run_dir / SKIPPED_LIST_NAME),
        keras.callbacks.CSVLogger(str(run_dir / METRICS_NAME), append=True),
        early_stopping,
        checkpoint,
    ] if chief else [early_stopping]
    if distribute.is_multi_worker(strategy):
        _work_around_multi_worker_fit(model, strategy, model_config)
    if initial_epoch < model_config.epochs and not (state and state.get("stopped_early")):
        model.fit(
            training_data,
            validation_data=validation_data,
            epochs=model_config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch if model_config.input_mode == "tf_data" else None,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    if chief:
        _finish_run(run_dir, fingerprint, classes, counts, class_weights, model_config,
                    started_from=_source_description(config, section_name))
        _calibrate(config, section_name, run_dir, validation_rows, classes, counts)
    return run_dir


def _source_description(config, section_name: str) -> dict | None:
    """What a fine-tuning run started from (None: random weights), for its training summary."""
    model_config = getattr(config, section_name)
    if not model_config.start_from_run:
        return None
    _path, _info, summary = finished_run_files(Path(config.paths.models), model_config.start_from_run,
                                               f"{section_name}.start_from_run", section_name)
    return {
        "run_name": model_config.start_from_run,
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "seconds": summary.get("seconds"),
        # Every run of the chain that led to the source, with its training time.
        "recipe_runs": recipe_runs(summary),
    }


def recipe_runs(summary: dict) -> dict[str, float]:
    """``{run name: training seconds}`` of a finished run and of the runs it was fine-tuned from."""
    return dict(summary.get("recipe_runs") or {summary["run_name"]: float(summary.get("seconds") or 0.0)})


def resolve_resize_in_model(config, model_config, training_rows: pd.DataFrame) -> bool:
    """Whether the model takes images of any size and enlarges them itself (its first layer).

    True when a sample of the face crops shares one size smaller than ``image_size`` (FER2013's
    48-pixel faces at 112): the host then hands them over at their own size and the model's first
    layer enlarges them, instead of the host enlarging every image of every epoch (measured on
    2 CPU cores: 0.91-1.17 of decoding alone, against 0.63-0.84 enlarging on the host). False for
    larger or mixed sizes, which the host shrinks with antialiasing anyway, for TFRecords (written
    at image_size) and for equalised faces (equalised on the model's grid, after resizing).
    """
    common_shape = None
    reads_tfrecords = model_config.input_mode == "tf_data" and config.generator.source == "tfrecords"
    if not reads_tfrecords and not model_config.equalize_histogram:
        common_shape = input_pipeline.crops_smaller_than_input(
            training_rows, config.paths.images_root, model_config.image_size, config.generator.face_margin)
    if common_shape is not None:
        print(f"the face crops are {common_shape[0]}x{common_shape[1]}, smaller than image_size "
              f"{model_config.image_size}: the model enlarges them itself (its first layer)")
    return common_shape is not None


def _calibrate(config, section_name: str, run_dir: Path, validation_rows: pd.DataFrame, classes: list[str],
               counts: np.ndarray) -> None:
    """Apply the decision calibration setting to the best model; note it in the run's summary."""
    report = calibration.calibrate_run(config, section_name, run_dir, validation_rows, classes, counts)
    if report is None:
        return
    summary_path = run_dir / SUMMARY_NAME
    summary = files.read_json(summary_path)
    summary["decision_calibration"] = {key: report[key] for key in ("settings", "offsets") if key in report}
    files.write_json(summary_path, summary)


def _work_around_multi_worker_fit(model: keras.Model, strategy, model_config) -> None:
    """Let Keras 3's fit run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Two steps of fit fail there. First, under any strategy fit builds the model's metrics,
    loss and optimizer from one input batch averaged over the replicas, which it cannot do with
    a multi-worker distributed batch: they are built here from a batch of zeros of the same
    shapes, and fit's step is skipped for this model. Second, fit averages each step's logged
    values over the workers along axis 0, which fails for scalars: the steps return them as
    one-element vectors, which average to the same scalars. The methods replaced are private
    in Keras 3.15; tests/test_distribute.py trains with two workers and would catch a change.
    """
    shape = (model_config.batch_size, model_config.image_size, model_config.image_size, model_config.channels)
    with distribute.strategy_scope(strategy):
        model._symbolic_build(data_batch=(np.zeros(shape, "float32"), np.zeros(shape[:1], "int32")))
    # Instance attributes, set past Keras' attribute tracking: only this model is affected.
    object.__setattr__(model, "_maybe_symbolic_build", lambda iterator=None, data_batch=None: None)

    def as_vectors(step):
        def vector_step(data):
            logs = step(data)
            return {name: keras.ops.reshape(value, (1,)) if len(keras.ops.shape(value)) == 0 else value
                    for name, value in logs.items()}
        return vector_step

    object.__setattr__(model, "train_step", as_vectors(model.train_step))
    object.__setattr__(model, "test_step", as_vectors(model.test_step))


def _steps_per_epoch(training_images: int, model_config) -> int:
    steps = max(1, math.ceil(training_images / model_config.batch_size))
    if model_config.max_steps_per_epoch > 0:
        steps = min(steps, model_config.max_steps_per_epoch)
    return steps


def make_optimizer(model_config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer and learning-rate schedule a model section asks for.

    "constant" keeps ``learning_rate`` (the original project's Adam 1e-3); "cosine" warms up
    linearly from a tenth of it over ``warmup_epochs`` and then decays it to zero along a cosine
    over the remaining epochs, which lets a short CPU budget end at a well-settled minimum.
    Built-in Keras schedules and optimizers serialise with the checkpoint, so a resumed run
    continues the same schedule from its saved step count.
    """
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = model_config.learning_rate
    if model_config.learning_rate_schedule == "cosine":
        warmup_steps = model_config.warmup_epochs * steps_per_epoch
        total_steps = model_config.epochs * steps_per_epoch
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=model_config.learning_rate / 10 if warmup_steps else model_config.learning_rate,
            decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=model_config.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if model_config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=model_config.weight_decay)
    if model_config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=model_config.weight_decay or None)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def run_model_4(config, force: bool = False) -> int:
    """The ``model_4.py`` stage: train the custom CNN."""
    train(config, "model_4", force)
    return 0


def run_model_6(config, force: bool = False) -> int:
    """The ``model_6.py`` stage: fine-tune ResNet50."""
    train(config, "model_6", force)
    return 0


def _run_fingerprint(config, section_name: str, resize_in_model: bool) -> str:
    """What a run's result depends on: its resolved section (training keys included), whether the
    model resizes its inputs, the input pipeline and the split files.

    The strategy is left out: it changes where training runs, not what it computes, so a run
    interrupted on one GPU may resume on several; so is the decision calibration, which is
    applied to the finished run (calibration.calibrate_run).
    """
    model_settings = dict(config.to_dict()[section_name])
    model_settings.pop("strategy")
    # Calibration is applied to a finished run's best model; it does not change training.
    model_settings.pop("decision_calibration")
    model_settings.pop("decision_recall_floor")
    settings = {
        "section": section_name,
        "model": model_settings,
        "resize_in_model": resize_in_model,
        "generator": config.to_dict()["generator"],
        "split_manifest": files.file_digest(config.paths.split_manifest),
        "classes": files.file_digest(Path(config.paths.processed) / input_pipeline.CLASSES_FILE_NAME),
    }
    if model_settings.get("start_from_run"):
        # The starting weights: a source run trained again (even alike) makes this a new run.
        _path, _info, summary = finished_run_files(Path(config.paths.models), model_settings["start_from_run"],
                                                   f"{section_name}.start_from_run", section_name)
        settings["start_from_summary"] = summary_without_calibration(summary)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _prepare_run_folder(run_dir: Path, fingerprint: str, force: bool, may_write: bool = True) -> dict | None:
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


def start_from_finished_run(model: keras.Model, config, section_name: str, classes: list[str]) -> None:
    """Set ``model``'s weights to those of the best model of ``<section>.start_from_run``.

    The source must be the same network: same classes, input and preprocessing (model_info.json)
    and the same weight shapes, layer by layer. Its decision offsets, added to the final bias by
    the calibration, are taken off, so training continues from the uncalibrated model.
    """
    model_config = getattr(config, section_name)
    setting = f"{section_name}.start_from_run"
    source_path, info, _summary = finished_run_files(Path(config.paths.models), model_config.start_from_run,
                                                     setting, section_name)
    wanted = {"classes": list(classes), "image_size": model_config.image_size, "channels": model_config.channels,
              "equalize_histogram": bool(model_config.equalize_histogram)}
    found = {"classes": [str(name) for name in info["classes"]], "image_size": int(info["image_size"]),
             "channels": int(info["channels"]), "equalize_histogram": bool(info.get("equalize_histogram", False))}
    for key, value in wanted.items():
        if found[key] != value:
            raise PipelineError(f"{setting}: {source_path} has {key} {found[key]}, this run {value}")
    source, _source_info = model_io.load_trained_model(source_path)
    source_weights, own_weights = source.get_weights(), model.get_weights()
    shapes = [tuple(weight.shape) for weight in source_weights]
    if shapes != [tuple(weight.shape) for weight in own_weights]:
        raise PipelineError(f"{setting}: {source_path} is a different network ({len(shapes)} weight arrays) from "
                            f"this run's {section_name}.preset = {model_config.preset!r} ({len(own_weights)}); "
                            "start from a run of the same preset and settings")
    model.set_weights(source_weights)
    offsets = np.asarray(info.get("decision_offsets", [0.0] * len(classes)), dtype=np.float64)
    if np.any(offsets):
        output_layer = calibration.output_layer(model)
        kernel, bias = output_layer.get_weights()
        output_layer.set_weights([kernel, (bias.astype(np.float64) - offsets).astype(bias.dtype)])
    print(f"starting from the weights of {source_path}")


def clear_run_folder(run_dir: Path) -> None:
    """Remove what a previous run wrote (only the files this module writes)."""
    for name in (BEST_MODEL_NAME, METRICS_NAME, SUMMARY_NAME, "history.png", model_io.MODEL_INFO_NAME,
                 calibration.CALIBRATION_REPORT_NAME, SKIPPED_LIST_NAME):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CHECKPOINT_DIR_NAME, ignore_errors=True)


def write_run_description(config, run_dir: Path, classes: list[str], image_size: int, channels: int,
                          **model_info: object) -> None:
    """The run's configuration, code version and model info (written before its model)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(run_dir / "config.json", config.to_dict())
    files.write_text(run_dir / "config.toml", config_module.to_toml(config))
    files.write_text(run_dir / "code_version.txt", _code_version() + "\n")
    model_io.save_model_info(run_dir / BEST_MODEL_NAME, classes, image_size, channels, **model_info)


def _code_version() -> str:
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


def _make_inputs(config, model_config, training_rows: pd.DataFrame, validation_rows: pd.DataFrame,
                 num_classes: int, strategy=None, resize_in_model: bool = False):
    """Training and validation inputs for the configured input mode, and the steps per epoch."""
    full_steps = math.ceil(len(training_rows) / model_config.batch_size)
    steps = min(full_steps, model_config.max_steps_per_epoch) if model_config.max_steps_per_epoch > 0 else full_steps
    shape = (config.paths.images_root, model_config.image_size, model_config.channels, model_config.batch_size)
    if model_config.input_mode == "tf_data":
        counter = None
        # Several replicas need full training batches (see make_dataset); one device keeps every image.
        drop_remainder = strategy is not None and len(training_rows) >= model_config.batch_size
        if config.generator.source == "tfrecords":
            from emotion_classifier import tfrecords

            training_data = tfrecords.training_dataset(config, model_config, training_rows, "train",
                                                       drop_remainder=drop_remainder)
            validation_data = tfrecords.evaluation_dataset(config, model_config, validation_rows, "valid")
        else:
            counter = input_pipeline.DecodeCounter()
            training_data = input_pipeline.make_dataset(
                training_rows, *shape, training=True, generator_config=config.generator, seed=model_config.seed,
                drop_remainder=drop_remainder, decode_counter=counter,
                equalize_histogram=model_config.equalize_histogram, resize_in_model=resize_in_model,
            )
            validation_data = input_pipeline.make_dataset(
                validation_rows, *shape, training=False, generator_config=config.generator,
                decode_counter=counter, equalize_histogram=model_config.equalize_histogram,
                resize_in_model=resize_in_model,
            )
        # Repeated, so that capped epochs keep drawing new batches instead of running dry.
        training_data = distribute.shard_for_workers(training_data.repeat(), strategy)
        validation_data = distribute.shard_for_workers(validation_data, strategy)
        # TFRecord shards were decoded when they were written: nothing is skipped while training.
        return training_data, validation_data, steps, (
            SkippedImages(counter.skipped, counter.skipped_files) if counter else SkippedImages(lambda: 0))

    def host_size(rows: pd.DataFrame) -> int:
        # Smaller than image_size when the model enlarges the faces itself (resize_in_model).
        return input_pipeline.handover_size(rows, config.paths.images_root, model_config.image_size,
                                            config.generator.face_margin, resize_in_model,
                                            model_config.equalize_histogram)

    if model_config.input_mode == "memory":
        arrays = {}
        left_out = 0
        for split_name, rows in (("train", training_rows), ("valid", validation_rows)):
            images, labels, skipped = in_memory.split_arrays(
                rows, split_name, config.paths.images_root, config.paths.processed,
                host_size(rows), model_config.channels, config.generator.face_margin,
                equalize_histogram=model_config.equalize_histogram,
            )
            arrays[split_name] = (images, labels)
            left_out += skipped
        augmentation = in_memory.FaceAugmentation.from_config(config.generator)
        # With mixup, labels are class probabilities in training and (for one accuracy metric) validation.
        one_hot = one_hot_classes(config.generator, num_classes)
        training_data = in_memory.ArrayBatches(
            *arrays["train"], model_config.batch_size, training=True, seed=model_config.seed, max_batches=steps,
            augmentation=augmentation, workers=os.cpu_count() or 1,
            num_classes=one_hot, mixup=mixup_alpha(config.generator),
        )
        validation_data = in_memory.ArrayBatches(*arrays["valid"], model_config.batch_size, training=False,
                                                 num_classes=one_hot)
        # Decoded once, when the arrays were cached: load_arrays logged the names then.
        return training_data, validation_data, steps, SkippedImages(lambda: left_out)
    workers = os.cpu_count() or 1
    training_data = input_pipeline.ImageBatches(
        training_rows, config.paths.images_root, host_size(training_rows), model_config.channels,
        model_config.batch_size, training=True, generator_config=config.generator,
        seed=model_config.seed, max_batches=steps, workers=workers,
        equalize_histogram=model_config.equalize_histogram,
    )
    validation_data = input_pipeline.ImageBatches(
        validation_rows, config.paths.images_root, host_size(validation_rows), model_config.channels,
        model_config.batch_size, training=False, generator_config=config.generator, workers=workers,
        equalize_histogram=model_config.equalize_histogram,
    )
    return training_data, validation_data, steps, SkippedImages(
        lambda: len(training_data.unreadable_files) + len(validation_data.unreadable_files),
        lambda: sorted(set(training_data.unreadable_files + validation_data.unreadable_files)))


def mixup_alpha(generator_config) -> float:
    """The mixup setting in force: mixup is an augmentation, so ``augment = false`` turns it off."""
    return float(generator_config.mixup) if generator_config.augment else 0.0


def one_hot_classes(generator_config, num_classes: int) -> int | None:
    """``num_classes`` when mixup is on (labels become one-hot rows), else None."""
    return num_classes if mixup_alpha(generator_config) > 0 else None


def _truncate_metrics(metrics_path: Path, epochs_completed: int) -> None:
    """Keep only the rows of epochs the checkpoint covers, so every epoch appears once."""
    if not metrics_path.is_file():
        return
    metrics = pd.read_csv(metrics_path)
    kept = metrics[metrics["epoch"] < epochs_completed]
    if len(kept) != len(metrics):
        files.save_csv(metrics_path, kept)


def _finish_run(run_dir: Path, fingerprint: str, classes: list[str], counts: np.ndarray,
                class_weights: np.ndarray, model_config, started_from: dict | None = None) -> None:
    """Write history.png and training_summary.json from the complete metrics and state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    state = files.read_json(run_dir / CHECKPOINT_DIR_NAME / STATE_NAME)
    metrics = pd.read_csv(run_dir / METRICS_NAME)
    if metrics.empty or not (run_dir / BEST_MODEL_NAME).is_file():
        raise PipelineError(f"{run_dir}: training ended without a completed epoch")
    figure, (loss_axis, accuracy_axis) = pyplot.subplots(1, 2, figsize=(11, 4))
    epochs = metrics["epoch"] + 1
    for axis, metric, title in ((loss_axis, "loss", "Loss"), (accuracy_axis, "accuracy", "Accuracy")):
        axis.plot(epochs, metrics[metric], marker="o", label="train")
        if f"val_{metric}" in metrics:
            axis.plot(epochs, metrics[f"val_{metric}"], marker="o", label="valid")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{model_config.run_name}: training history")
    files.save_figure(run_dir / "history.png", figure)

    monitored = metrics[model_config.monitor]
    best_row = metrics.loc[monitored.idxmin() if monitor_mode(model_config.monitor) == "min" else monitored.idxmax()]
    seconds = float(state["training_seconds"])
    started = {}
    if started_from is not None:
        chain = {**started_from["recipe_runs"], model_config.run_name: round(seconds, 2)}
        started = {"started_from": started_from, "recipe_runs": chain,
                   "recipe_seconds": round(sum(chain.values()), 2)}
    files.write_json(run_dir / SUMMARY_NAME, {
        "run_name": model_config.run_name,
        "fingerprint": fingerprint,
        "epochs_run": int(len(metrics)),
        "epochs_configured": model_config.epochs,
        "stopped_early": bool(state.get("stopped_early")),
        "monitor": model_config.monitor,
        "best_epoch": int(best_row["epoch"]) + 1,
        "best_val_loss": float(best_row["val_loss"]),
        "best_val_accuracy": float(best_row.get("val_accuracy", float("nan"))),
        "seconds": round(seconds, 2),
        # Training images per second of epoch time (validation included).
        "images_per_second": round(state["images_seen"] / seconds, 1) if seconds > 0 else None,
        "input_mode": model_config.input_mode,
        "keras_backend": keras.backend.backend(),
        "classes": classes,
        "training_counts": [int(count) for count in counts],
        "class_balanced_beta": model_config.class_balanced_beta,
        "class_weights": [round(float(weight), 6) for weight in class_weights],
        **started,
    })
    print(f"finished {run_dir}: best epoch {int(best_row['epoch']) + 1}, "
          f"val_loss {float(best_row['val_loss']):.4f}, val_accuracy {float(best_row.get('val_accuracy', float('nan'))):.3f}")


def _plain_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
