"""Training runs for ``model_4.py`` and ``model_6.py``: one self-describing, resumable folder each.

The run folder (see runs.py for its files) is written as training goes. Resuming: after every
epoch the full model (weights and optimizer state) is saved under a new name and
``checkpoint/state.json`` is then rewritten to point at it, both atomically, so a run killed at
any moment (even with SIGKILL) finds a consistent checkpoint. Started again with the same
configuration, it drops the rows of ``metrics.csv`` that belong to epochs after that checkpoint,
restores early stopping's counters and continues with the next epoch. A finished run with the
same configuration does nothing; ``force`` starts over. A run folder that holds a run of a
different configuration is never overwritten silently.

Training code uses Keras only (no TensorFlow calls) except in ``input_mode = "tf_data"``, so with
``input_mode = "memory"``, ``"device"`` or ``"arrays"`` it runs on any Keras backend.

Several devices (``strategy``, see ``distribute.py``): the model is built and compiled inside
the strategy's scope; every worker trains, only the chief writes the run folder (which must be
on storage all workers see, for a multi-worker run to resume).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from emotion_classifier import calibration, distribute, ensemble, files, model_io, runs, split_files
from emotion_classifier.callbacks import AveragedWeights, ResumableEarlyStopping, RunCheckpoint, SkippedImagesReport, monitor_mode
from emotion_classifier.errors import PipelineError
from emotion_classifier.inputs import make_inputs, model_augmentation, resolve_resize_in_model
from emotion_classifier.losses import WeightedCrossEntropy, class_balanced_weights
from emotion_classifier.models import build_model

# With input_mode = "device" the batches are already on the accelerator: several training steps
# per call of the compiled step save the host's per-step work (dispatch, callbacks), which
# counts for small models on 48-pixel faces; the progress bar then moves that many at a time.
DEVICE_STEPS_PER_EXECUTION = 8


def train(config, section_name: str, force: bool = False) -> Path:
    """Train the model of ``section_name`` ("model_4" or "model_6"); return its run folder."""
    if section_name not in runs.MODEL_SECTIONS:
        raise ValueError(f"unknown model section {section_name!r}; expected one of {runs.MODEL_SECTIONS}")
    model_config = getattr(config, section_name)
    run_dir = Path(config.paths.models) / model_config.run_name
    frame, classes = split_files.read_split(config)
    training_rows = split_files.split_rows(frame, "train", config.paths.split_manifest)
    validation_rows = split_files.split_rows(frame, "valid", config.paths.split_manifest)
    counts = np.bincount(training_rows["class_index"].to_numpy(), minlength=len(classes))
    missing = [name for name, count in zip(classes, counts) if count == 0]
    if missing:
        raise PipelineError(
            f"{config.paths.split_manifest}: no training images for class(es) {', '.join(missing)}; "
            "drop them in the split stage (split.drop_classes) or add images"
        )
    if model_config.ensemble_runs:
        ensemble.build_run(config, section_name, classes, counts, force)
        writes_run_folder = True
    else:
        writes_run_folder = _train_run(config, section_name, run_dir, training_rows, validation_rows, classes,
                                       counts, force)
    if writes_run_folder:
        _calibrate(config, section_name, run_dir, validation_rows, classes, counts)
    return run_dir


def _train_run(config, section_name: str, run_dir: Path, training_rows: pd.DataFrame,
               validation_rows: pd.DataFrame, classes: list[str], counts: np.ndarray, force: bool) -> bool:
    """Train (or resume, or find finished) the run of ``section_name`` in ``run_dir``; True when this
    process writes the run folder (the chief of several workers, or the only one)."""
    model_config = getattr(config, section_name)
    class_weights = class_balanced_weights(counts, model_config.class_balanced_beta)
    resize_in_model = resolve_resize_in_model(config, model_config, training_rows)
    fingerprint = runs.run_fingerprint(config, section_name, resize_in_model)
    strategy = distribute.make_strategy(model_config.strategy)
    chief = distribute.is_chief(strategy)
    state = runs.prepare_run_folder(run_dir, fingerprint, force, may_write=chief)
    if state is not None and state.get("finished"):
        print(f"{run_dir} already holds a finished run of this configuration (use --force to retrain)")
        return chief
    if chief:
        runs.write_run_description(config, run_dir, classes, model_config.image_size, model_config.channels,
                                   run_name=model_config.run_name, preset=model_config.preset,
                                   equalize_histogram=model_config.equalize_histogram)
    initial_epoch = int(state["epochs_completed"]) if state else 0
    # A resumed run draws fresh random numbers for its remaining epochs rather than replaying
    # those of epoch 0 (the model's augmentation layer restores its own from the checkpoint, and
    # make_inputs starts the batches at the next epoch).
    keras.utils.set_random_seed(model_config.seed + initial_epoch)
    with distribute.strategy_scope(strategy), distribute.precision_policy(model_config.mixed_precision):
        model = _resumed_or_new_model(config, section_name, run_dir, state, len(training_rows), classes,
                                      class_weights, chief, resize_in_model)
    inputs = make_inputs(config, model_config, training_rows, validation_rows, len(classes), resize_in_model,
                         strategy, first_epoch=initial_epoch)
    early_stopping = ResumableEarlyStopping(model_config.patience, state, model_config.monitor)
    checkpoint = RunCheckpoint(
        run_dir, fingerprint, early_stopping,
        images_per_epoch=min(len(training_rows), inputs.steps_per_epoch * model_config.batch_size),
        resumed_state=state, monitor=model_config.monitor,
    )
    # Every worker stops early on the same (all-reduced) validation loss; only the chief logs
    # and saves.
    callbacks = [
        # Before the CSV logger, so that metrics.csv gets the skipped_images column.
        SkippedImagesReport(inputs.skipped, run_dir / runs.SKIPPED_LIST_NAME),
        keras.callbacks.CSVLogger(str(run_dir / runs.METRICS_NAME), append=True),
        early_stopping,
        checkpoint,
    ] if chief else [early_stopping]
    if model_config.weight_averaging:
        # First, so that the checkpoint saves the averaged weights (a resumed checkpoint holds them).
        callbacks.insert(0, AveragedWeights(resumed=state is not None))
    if distribute.is_multi_worker(strategy):
        _work_around_multi_worker_fit(model, strategy, model_config)
    if initial_epoch < model_config.epochs and not (state and state.get("stopped_early")):
        model.fit(
            inputs.training,
            validation_data=inputs.validation,
            epochs=model_config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=inputs.steps_per_epoch if model_config.input_mode == "tf_data" else None,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    if chief:
        _finish_run(run_dir, fingerprint, classes, counts, class_weights, model_config,
                    started_from=_source_description(config, section_name))
    return chief


def _resumed_or_new_model(config, section_name: str, run_dir: Path, state: dict | None, training_images: int,
                          classes: list[str], class_weights: np.ndarray, chief: bool,
                          resize_in_model: bool) -> keras.Model:
    """The checkpointed model of an interrupted run, or a new compiled one (from random weights or
    from ``start_from_run``); called inside the strategy's and precision policy's scope."""
    model_config = getattr(config, section_name)
    if state:
        checkpoint_path = run_dir / runs.CHECKPOINT_DIR_NAME / state["checkpoint"]
        model = keras.saving.load_model(checkpoint_path, compile=True, safe_mode=True)
        if chief:
            runs.truncate_metrics(run_dir / runs.METRICS_NAME, int(state["epochs_completed"]))
        print(f"resuming {run_dir} after epoch {state['epochs_completed']} of {model_config.epochs}")
        return model
    # Every input mode but tf_data (which augments in its own pipeline) hands over plain batches:
    # the model augments them itself, in its training step.
    model = build_model(section_name, model_config, len(classes), resize_in_model,
                        training_augmentation=model_augmentation(config, model_config))
    model.compile(
        optimizer=make_optimizer(model_config, _steps_per_epoch(training_images, model_config)),
        loss=WeightedCrossEntropy(class_weights, label_smoothing=model_config.label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=DEVICE_STEPS_PER_EXECUTION if model_config.input_mode == "device" else 1,
    )
    if model_config.start_from_run:
        start_from_finished_run(model, config, section_name, classes)
    return model


def _source_description(config, section_name: str) -> dict | None:
    """What a fine-tuning run started from (None: random weights), for its training summary."""
    model_config = getattr(config, section_name)
    if not model_config.start_from_run:
        return None
    _path, _info, summary = runs.finished_run_files(Path(config.paths.models), model_config.start_from_run,
                                               f"{section_name}.start_from_run", section_name)
    return {
        "run_name": model_config.start_from_run,
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "seconds": summary.get("seconds"),
        # Every run of the chain that led to the source, with its training time.
        "recipe_runs": runs.recipe_runs(summary),
    }



def _calibrate(config, section_name: str, run_dir: Path, validation_rows: pd.DataFrame, classes: list[str],
               counts: np.ndarray) -> None:
    """Apply the decision calibration setting to the best model; note it in the run's summary."""
    report = calibration.calibrate_run(config, section_name, run_dir, validation_rows, classes, counts)
    if report is None:
        return
    summary_path = run_dir / runs.SUMMARY_NAME
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
    # input_mode = "device" keeps every batch full (in_memory.DeviceBatches).
    rounding = math.floor if model_config.input_mode == "device" else math.ceil
    steps = max(1, rounding(training_images / model_config.batch_size))
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
    # Keras keeps the averaged weights as optimizer variables (saved with the checkpoint);
    # callbacks.AveragedWeights swaps them in for validation and saving.
    averaging = dict(use_ema=model_config.weight_averaging > 0, ema_momentum=model_config.weight_averaging)
    if model_config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=model_config.weight_decay, **averaging)
    if model_config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=model_config.weight_decay or None, **averaging)
    return keras.optimizers.Adam(learning_rate=learning_rate, **averaging)




def run_model_4(config, force: bool = False) -> int:
    """The ``model_4.py`` stage: train the custom CNN."""
    train(config, "model_4", force)
    return 0


def run_model_6(config, force: bool = False) -> int:
    """The ``model_6.py`` stage: fine-tune ResNet50."""
    train(config, "model_6", force)
    return 0


def start_from_finished_run(model: keras.Model, config, section_name: str, classes: list[str]) -> None:
    """Set ``model``'s weights to those of the best model of ``<section>.start_from_run``.

    The source must be the same network: same classes, input and preprocessing (model_info.json)
    and the same weight shapes, layer by layer. Its decision offsets, added to the final bias by
    the calibration, are taken off, so training continues from the uncalibrated model.
    """
    model_config = getattr(config, section_name)
    setting = f"{section_name}.start_from_run"
    source_path, info, _summary = runs.finished_run_files(Path(config.paths.models), model_config.start_from_run,
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




def _finish_run(run_dir: Path, fingerprint: str, classes: list[str], counts: np.ndarray,
                class_weights: np.ndarray, model_config, started_from: dict | None = None) -> None:
    """Write history.png and training_summary.json from the complete metrics and state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    state = files.read_json(run_dir / runs.CHECKPOINT_DIR_NAME / runs.STATE_NAME)
    metrics = pd.read_csv(run_dir / runs.METRICS_NAME)
    if metrics.empty or not (run_dir / runs.BEST_MODEL_NAME).is_file():
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
    files.save_figure(run_dir / runs.HISTORY_NAME, figure)

    monitored = metrics[model_config.monitor]
    best_row = metrics.loc[monitored.idxmin() if monitor_mode(model_config.monitor) == "min" else monitored.idxmax()]
    seconds = float(state["training_seconds"])
    started = {}
    if started_from is not None:
        chain = {**started_from["recipe_runs"], model_config.run_name: round(seconds, 2)}
        started = {"started_from": started_from, "recipe_runs": chain,
                   "recipe_seconds": round(sum(chain.values()), 2)}
    files.write_json(run_dir / runs.SUMMARY_NAME, {
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
