"""Keras callbacks of a training run: skipped images, resumable early stopping, checkpoints,
averaged weights.

They write into the run folder (runs.py names its files) after every epoch, so a run killed at
any moment resumes from a consistent state.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from emotion_classifier import files
from emotion_classifier.inputs import SkippedImages
from emotion_classifier.runs import BEST_MODEL_NAME, CHECKPOINT_DIR_NAME, STATE_NAME


class SkippedImagesReport(keras.callbacks.Callback):
    """At the end of every epoch, reports the images that could not be decoded and were skipped.

    A file that cannot be decoded is left out of every pass, so ``skipped_images`` (a metrics.csv
    column) is the number of files left out so far, one per unreadable file however often the
    input pipeline tried it. New files are named when they appear (the first few on the console,
    all of them in ``list_path``, rewritten whenever a new one appears).
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
        skipped = self.skipped.count()
        if logs is not None:
            logs["skipped_images"] = skipped
        if skipped > self.reported:
            print(f"epoch {epoch + 1}: {skipped} image(s) could not be decoded and were skipped "
                  "(TensorFlow's warnings above name the error)")
        self.reported = max(self.reported, skipped)
        already = set(self.named)
        new = [name for name in self.skipped.names() if name not in already]
        if new:
            self.named.extend(new)
            listed = ", ".join(new[:self.SHOWN]) + (f" and {len(new) - self.SHOWN} more" if len(new) > self.SHOWN else "")
            where = f" (all in {self.list_path})" if self.list_path is not None else ""
            print(f"  unreadable: {listed}{where}")
            if self.list_path is not None:
                files.write_text(self.list_path, "\n".join(self.named) + "\n")


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Validation, checkpoints and the best model get the weights' moving average
    (``weight_averaging``); training goes on with the trained weights.

    Keras' callback swaps the two sets of values at the end of every epoch (so the checkpoint
    saved after it holds the averaged weights as the model's and the trained ones in the
    optimizer) and back at the start of the next. A checkpoint therefore resumes with the
    averaged weights in the model: ``resumed`` says so, and the first epoch swaps them back.
    """

    def __init__(self, resumed: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


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


def _plain_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
