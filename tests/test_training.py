"""Tiny training runs: every run-folder file, both input modes, resume after SIGKILL, re-runs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_classifier import inputs, manifest, model_io, runs, training
from emotion_classifier.augmentation import AugmentationLayer
from emotion_classifier.errors import PipelineError
from split_fixtures import write_split_fixture

RUN_FILES = ("best.keras", "model_info.json", "config.json", "config.toml", "metrics.csv",
             "history.png", "code_version.txt", "training_summary.json")


def tiny_config(tmp_path: Path, input_mode: str = "tf_data", epochs: int = 2, per_class: int = 6):
    """Three FER classes, per_class - 3 training and 2 validation images each, a two-block CNN at 32x32."""
    config = write_split_fixture(tmp_path, per_class=per_class)
    section = config.model_4
    section.image_size = 32
    section.channels = 1
    section.batch_size = 4
    section.epochs = epochs
    section.patience = 10
    section.conv_filters = [4, 8]
    section.dense_units = [8]
    section.input_mode = input_mode
    section.class_balanced_beta = 0.9
    return config


def test_tiny_training_run_writes_every_run_file_and_the_model_loads(tmp_path):
    config = tiny_config(tmp_path)
    run_dir = training.train(config, "model_4")
    assert run_dir == Path(config.paths.models) / "model_4"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics.columns)
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert summary["best_val_loss"] == pytest.approx(metrics["val_loss"].min())
    assert summary["training_counts"] == [3, 3, 3]
    assert summary["class_weights"] == pytest.approx([1.0, 1.0, 1.0])
    assert json.loads((run_dir / "config.json").read_text())["model_4"]["image_size"] == 32
    assert "[model_4]" in (run_dir / "config.toml").read_text()
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert info["classes"] == ["happy", "sad", "angry"] and info["image_size"] == 32
    # tf.data augments its batches itself: the model holds no augmentation layer.
    assert not any(isinstance(layer, AugmentationLayer) for layer in model.layers)
    probabilities = model.predict(np.full((2, 32, 32, 1), 128.0, dtype="float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    # The same configuration again does nothing; a changed one is refused without force.
    best_mtime = (run_dir / "best.keras").stat().st_mtime_ns
    training.train(config, "model_4")
    assert (run_dir / "best.keras").stat().st_mtime_ns == best_mtime
    config.model_4.learning_rate = 0.01
    with pytest.raises(PipelineError, match="different configuration"):
        training.train(config, "model_4")
    training.train(config, "model_4", force=True)
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [0, 1]


def test_arrays_input_mode_trains_with_capped_steps(tmp_path):
    config = tiny_config(tmp_path, input_mode="arrays")
    config.model_4.max_steps_per_epoch = 2
    config.model_4.class_balanced_beta = 0.0
    run_dir = training.train(config, "model_4")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["input_mode"] == "arrays" and summary["epochs_run"] == 2
    assert summary["images_per_second"] > 0
    model, _ = model_io.load_trained_model(run_dir / "best.keras")
    assert model.output_shape == (None, 3)
    assert any(isinstance(layer, AugmentationLayer) for layer in model.layers)  # it augments the decoded files


def test_classes_without_training_images_are_reported(tmp_path):
    config = tiny_config(tmp_path)
    classes_path = Path(config.paths.processed) / "classes.json"
    classes_path.write_text(json.dumps({"classes": ["happy", "sad", "angry", "fear"]}))
    with pytest.raises(PipelineError, match="fear"):
        training.train(config, "model_4")


CHILD_SCRIPT = textwrap.dedent("""
    import sys, time
    from emotion_classifier import host_batches, training
    from emotion_classifier.config import load_config

    # Slow every batch down so that the parent's kill lands in the middle of an epoch.
    original = host_batches.ImageBatches.__getitem__
    def slow(self, index):
        time.sleep(float(sys.argv[2]))
        return original(self, index)
    host_batches.ImageBatches.__getitem__ = slow
    training.train(load_config(sys.argv[1]), "model_4")
""")


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_and_logs_each_epoch_once(tmp_path):
    config = tiny_config(tmp_path, input_mode="arrays", epochs=3)
    config_path = tmp_path / "tiny.toml"
    from emotion_classifier.config import to_toml

    config_path.write_text(to_toml(config))
    run_dir = Path(config.paths.models) / "model_4"
    state_path = run_dir / "checkpoint" / "state.json"
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    child = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, str(config_path), "0.6"],
                             env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not state_path.is_file():
            assert child.poll() is None, "the training subprocess ended before its first epoch"
            assert time.monotonic() < deadline, "no epoch completed within two minutes"
            time.sleep(0.1)
        # Epoch 2 has 3 training batches of 0.6 s each: one second in, it is half done.
        time.sleep(1.0)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert json.loads(state_path.read_text())["epochs_completed"] == 1
    assert not (run_dir / "training_summary.json").exists()

    resumed = subprocess.run([sys.executable, "-c", CHILD_SCRIPT, str(config_path), "0"],
                             env=environment, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1, 2]
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["epochs_run"] == 3
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert model.output_shape == (None, 3) and info["channels"] == 1


def test_an_image_that_fails_to_decode_during_training_is_skipped_counted_and_reported(tmp_path, capsys):
    """A file that passed the manifest checks but is corrupt by training time costs one image, not the run."""
    config = tiny_config(tmp_path)
    config.model_4.epochs = 2
    frame = manifest.read_manifest(config.paths.split_manifest)
    corrupt = frame[frame["split"] == "train"].iloc[0]["filename"]
    (Path(config.paths.images_root) / corrupt).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    run_dir = training.train(config, "model_4")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # One file left out of every epoch, even where tf.data read ahead into the next pass.
    assert metrics["skipped_images"].tolist() == [1, 1]
    output = capsys.readouterr().out
    assert "could not be decoded and were skipped" in output
    # Named on the console and in the run folder, once however often it was met.
    corrupt_path = str(Path(config.paths.images_root) / corrupt)
    assert f"unreadable: {corrupt_path}" in output
    assert (run_dir / runs.SKIPPED_LIST_NAME).read_text().split() == [corrupt_path]
    model_io.load_trained_model(run_dir / "best.keras")


def test_a_model_that_resizes_its_inputs_trains_on_faces_at_their_own_size(tmp_path, capsys):
    config = tiny_config(tmp_path)
    config.model_4.image_size = 64  # FER's 48-pixel faces are enlarged by the model
    run_dir = training.train(config, "model_4")
    assert "the face crops are 48x48, smaller than image_size 64" in capsys.readouterr().out
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1] and np.isfinite(metrics["val_loss"]).all()
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert info["image_size"] == 64 and model.input_shape == (None, None, None, 1)
    # What evaluation and prediction feed (the model's input size) and the faces' own size agree.
    faces = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    import tensorflow as tf

    enlarged = tf.image.resize(faces, (64, 64), method="bilinear").numpy()
    np.testing.assert_allclose(model.predict(faces, verbose=0), model.predict(enlarged, verbose=0), atol=1e-5)


def test_the_model_resizes_its_inputs_only_for_crops_smaller_than_the_input(tmp_path):
    config = tiny_config(tmp_path)  # 48x48 faces
    rows = pd.read_csv(config.paths.split_manifest).query("split == 'train'")

    def resolved(image_size: int, **settings) -> bool:
        section = dataclasses.replace(config.model_4, image_size=image_size, **settings)
        return inputs.resolve_resize_in_model(config, section, rows)

    assert resolved(64) is True and resolved(112) is True
    assert resolved(48) is False  # already the model's size: nothing to enlarge
    assert resolved(32) is False  # shrinking stays on the host, antialiased
    assert resolved(64, equalize_histogram=True) is False  # equalised on the model's grid
    config.generator.source = "tfrecords"  # written at image_size
    assert resolved(64) is False and resolved(64, input_mode="memory") is True
    config.generator.source = "files"
    # Faces of several sizes (an image of another size in the sample): no common size, no layer.
    for filename in rows["filename"].iloc[::2]:
        with Image.open(Path(config.paths.images_root) / filename) as face:
            face.resize((40, 40)).save(Path(config.paths.images_root) / filename)
    assert resolved(64) is False


def test_run_fingerprint_follows_what_changes_training_and_nothing_else(tmp_path):
    config = tiny_config(tmp_path)
    before = runs.run_fingerprint(config, "model_4", resize_in_model=False)
    assert runs.run_fingerprint(config, "model_4", resize_in_model=True) != before
    # The resolved section holds the training keys: one set in [training] or in [model_4] counts.
    config.model_4.label_smoothing = 0.1
    assert runs.run_fingerprint(config, "model_4", resize_in_model=False) != before
    config.model_4.label_smoothing = 0.0
    # Where training runs, and the calibration applied to the finished run, do not count;
    # neither do the other model's settings.
    config.model_4.strategy = "none"
    config.model_4.decision_calibration = "prior_matching"
    config.model_6.epochs = 40
    assert runs.run_fingerprint(config, "model_4", resize_in_model=False) == before


@pytest.mark.parametrize("input_mode", ["memory", "arrays"])
def test_host_side_inputs_keep_small_faces_at_their_size_for_a_model_that_resizes(tmp_path, input_mode):
    config = tiny_config(tmp_path, input_mode=input_mode, epochs=1)
    config.model_4.image_size = 64
    config.generator.augment = True
    training_rows = pd.read_csv(config.paths.split_manifest).query("split == 'train'")
    made = inputs.make_inputs(config, config.model_4, training_rows, training_rows, num_classes=3,
                              resize_in_model=True)
    assert made.training[0][0].shape[1:] == (48, 48, 1) and made.validation[0][0].shape[1:] == (48, 48, 1)
    run_dir = training.train(config, "model_4")
    assert np.isfinite(pd.read_csv(run_dir / "metrics.csv")["val_loss"]).all()
    if input_mode == "memory":
        cached = sorted(path.name for path in (Path(config.paths.processed) / "arrays").glob("*_images.npy"))
        assert cached and all("_48px_" in name for name in cached)


@pytest.mark.parametrize("input_mode", ["memory", "device", "arrays"])
def test_a_resumed_run_gets_the_batches_of_its_next_epoch_not_those_of_epoch_0(tmp_path, input_mode):
    config = tiny_config(tmp_path, input_mode=input_mode)
    training_rows = pd.read_csv(config.paths.split_manifest).query("split == 'train'")

    def training_batches(first_epoch: int = 0):
        return inputs.make_inputs(config, config.model_4, training_rows, training_rows, num_classes=3,
                                  first_epoch=first_epoch).training

    uninterrupted = training_batches()
    orders = [uninterrupted.batch_rows(0)]
    for _ in range(2):
        uninterrupted.on_epoch_end()
        orders.append(uninterrupted.batch_rows(0))
    assert any(not np.array_equal(order, orders[0]) for order in orders[1:])
    # A run resumed after two epochs sees the third epoch's order, as if it had never stopped.
    np.testing.assert_array_equal(training_batches(first_epoch=2).batch_rows(0), orders[2])


def test_a_resumed_tf_data_run_shuffles_and_augments_from_another_seed(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    training_rows = pd.read_csv(config.paths.split_manifest).query("split == 'train'")
    seeds = []
    original = inputs.make_dataset

    def recording(*arguments, **keywords):
        if keywords.get("training"):
            seeds.append(keywords["seed"])
        return original(*arguments, **keywords)

    monkeypatch.setattr(inputs, "make_dataset", recording)
    for first_epoch in (0, 3):
        inputs.make_inputs(config, config.model_4, training_rows, training_rows, num_classes=3, first_epoch=first_epoch)
    # tf.data cannot skip epochs (and reads in parallel, in no fixed order): it draws afresh.
    assert seeds == [config.model_4.seed, config.model_4.seed + 3]
