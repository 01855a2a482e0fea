"""input_mode = "memory": the decoded-array cache, host augmentation, batches, and training with it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_classifier import augmentation, generator, host_batches, in_memory, model_io, split_files, training
from emotion_classifier.config import ConfigError, validate
from jax_environment import run_folders_trained_without_tensorflow
from split_fixtures import write_split_fixture
from test_training import tiny_config


def split_rows(config, split: str) -> pd.DataFrame:
    frame, _ = split_files.read_split(config)
    return split_files.split_rows(frame, split)


def test_split_arrays_decode_once_match_pillow_and_are_reused(tmp_path, monkeypatch):
    config = write_split_fixture(tmp_path, per_class=6)
    rows = split_rows(config, "train")
    arguments = (rows, "train", config.paths.images_root, config.paths.processed, 32, 1, 0.0)
    images, labels, left_out = in_memory.split_arrays(*arguments)
    assert images.dtype == np.uint8 and images.shape == (len(rows), 32, 32, 1) and left_out == 0
    np.testing.assert_array_equal(labels, rows["class_index"].to_numpy())
    expected, _ = host_batches.load_arrays(rows, config.paths.images_root, 32, 1)
    np.testing.assert_array_equal(images, np.round(expected).astype("uint8"))
    cached = sorted(path.name for path in (Path(config.paths.processed) / "arrays").iterdir())
    assert len(cached) == 3 and any(name.endswith(".json") for name in cached)

    # Unchanged rows and settings: read back, never decoded again.
    monkeypatch.setattr(in_memory, "load_arrays", lambda *args, **kwargs: pytest.fail("decoded again"))
    again, again_labels, _ = in_memory.split_arrays(*arguments)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)


def test_a_changed_split_or_size_decodes_afresh_and_replaces_the_old_cache(tmp_path):
    config = write_split_fixture(tmp_path, per_class=6)
    rows = split_rows(config, "train")
    in_memory.split_arrays(rows, "train", config.paths.images_root, config.paths.processed, 32, 1, 0.0)
    smaller = rows.iloc[:-1]
    images, _, _ = in_memory.split_arrays(smaller, "train", config.paths.images_root, config.paths.processed,
                                          32, 1, 0.0)
    assert len(images) == len(smaller)
    images, _, _ = in_memory.split_arrays(smaller, "train", config.paths.images_root, config.paths.processed,
                                          40, 3, 0.0)
    assert images.shape[1:] == (40, 40, 3)
    # Only the newest cache of the split is kept.
    assert len(list((Path(config.paths.processed) / "arrays").glob("train_*.json"))) == 1


def test_an_unreadable_file_is_left_out_and_counted(tmp_path):
    config = write_split_fixture(tmp_path, per_class=6)
    rows = split_rows(config, "train")
    broken = Path(config.paths.images_root) / rows["filename"].iloc[0]
    broken.write_bytes(b"not a jpeg")
    images, labels, left_out = in_memory.split_arrays(rows, "train", config.paths.images_root,
                                                      config.paths.processed, 32, 1, 0.0)
    assert left_out == 1 and len(images) == len(labels) == len(rows) - 1


def test_array_batches_cover_every_image_once_per_epoch_and_reshuffle():
    images = np.arange(10, dtype="uint8").reshape(10, 1, 1, 1) * np.ones((1, 4, 4, 1), dtype="uint8")
    labels = np.arange(10, dtype="int32")
    batches = in_memory.ArrayBatches(images, labels, batch_size=4, training=True, seed=3)
    assert len(batches) == 3

    def one_epoch():
        seen = []
        for index in range(len(batches)):
            batch_images, batch_labels = batches[index]
            assert batch_images.dtype == np.float32
            # Images and labels stay paired.
            np.testing.assert_array_equal(batch_images[:, 0, 0, 0], batch_labels)
            seen.append(batch_labels)
        batches.on_epoch_end()
        return np.concatenate(seen)

    first, second = one_epoch(), one_epoch()
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    validation = in_memory.ArrayBatches(images, labels, batch_size=4, training=False)
    assert np.concatenate([validation[index][1] for index in range(3)]).tolist() == list(range(10))
    capped = in_memory.ArrayBatches(images, labels, batch_size=4, training=True, max_batches=2)
    assert len(capped) == 2
    with pytest.raises(ValueError, match="as many labels"):
        in_memory.ArrayBatches(images, labels[:3], batch_size=4, training=True)


def test_mixed_batches_do_not_depend_on_the_order_they_are_made_in():
    images = np.random.default_rng(0).integers(0, 256, size=(16, 12, 12, 1), dtype=np.uint8)
    labels = np.arange(16, dtype="int32") % 4
    forwards = in_memory.ArrayBatches(images, labels, 4, training=True, seed=1, num_classes=4, mixup=0.4)
    backwards = in_memory.ArrayBatches(images, labels, 4, training=True, seed=1, num_classes=4, mixup=0.4)
    made_forwards = [forwards[index] for index in range(4)]
    made_backwards = [backwards[index] for index in reversed(range(4))][::-1]
    for (images_one, targets_one), (images_other, targets_other) in zip(made_forwards, made_backwards):
        np.testing.assert_array_equal(images_one, images_other)
        np.testing.assert_array_equal(targets_one, targets_other)
    assert not np.isin(made_forwards[0][0], images).all()  # blended, not copied


def test_memory_input_mode_trains_and_monitor_val_accuracy_picks_the_best_epoch(tmp_path):
    config = tiny_config(tmp_path, input_mode="memory", epochs=3)
    config.model_4.monitor = "val_accuracy"
    config.generator.rotation_degrees = 10.0
    config.generator.random_erasing = 0.5
    run_dir = training.train(config, "model_4")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert summary["input_mode"] == "memory" and summary["monitor"] == "val_accuracy"
    assert summary["best_epoch"] == int(metrics["val_accuracy"].idxmax()) + 1
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["monitor"] == "val_accuracy" and state["best_value"] == pytest.approx(metrics["val_accuracy"].max())
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert model.input_shape == (None, 32, 32, 1) and info["classes"] == ["happy", "sad", "angry"]
    assert list((Path(config.paths.processed) / "arrays").glob("train_32px_1ch_*_images.npy"))
    # The host hands over plain batches; the model's first layer augments them, as configured.
    layer = next(layer for layer in model.layers if isinstance(layer, augmentation.AugmentationLayer))
    assert (layer.rotation_degrees, layer.random_erasing) == (10.0, 0.5)


JAX_CHILD = textwrap.dedent("""
    import sys
    import keras
    assert keras.backend.backend() == "jax"
    sys.path.insert(0, sys.argv[2])
    from test_training import tiny_config
    from emotion_classifier import training
    import pathlib
    config = tiny_config(pathlib.Path(sys.argv[1]) / "run", input_mode="memory", epochs=2)
    run_dir = training.train(config, "model_4")
    # A model that enlarges FER's 48-pixel faces itself, on JAX.
    resizing = tiny_config(pathlib.Path(sys.argv[1]) / "resizing", input_mode="memory", epochs=1)
    resizing.model_4.image_size = 64
    resizing_dir = training.train(resizing, "model_4")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("RUN", run_dir, resizing_dir)
""")


@pytest.mark.slow  # tests/test_augmentation_layer.py trains on JAX without TensorFlow by default
def test_memory_training_runs_on_the_jax_backend_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    # As on a GPU machine without TensorFlow.
    run_dir, resizing_dir = run_folders_trained_without_tensorflow(JAX_CHILD, tmp_path)
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["keras_backend"] == "jax" and summary["epochs_run"] == 2
    # The model a JAX run saves loads and predicts with this process's TensorFlow backend.
    model, _ = model_io.load_trained_model(run_dir / "best.keras")
    probabilities = model.predict(np.full((2, 32, 32, 1), 100.0, dtype="float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Trained on 48-pixel arrays under JAX; faces at its input size give the same answers here.
    import tensorflow as tf

    model, info = model_io.load_trained_model(resizing_dir / "best.keras")
    assert info["image_size"] == 64 and model.input_shape == (None, None, None, 1)
    faces = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    enlarged = tf.image.resize(faces, (64, 64), method="bilinear").numpy()
    np.testing.assert_allclose(model.predict(faces, verbose=0), model.predict(enlarged, verbose=0), atol=1e-5)


def test_mixup_blends_images_and_labels_alike_and_only_in_training():
    # One class per image, each image a distinct constant: a blended pixel must equal the same
    # blend of the class values as its label.
    values = np.array([0, 50, 100, 150, 200, 250], dtype="float32")
    images = np.stack([np.full((4, 4, 1), value, dtype="uint8") for value in values])
    labels = np.arange(6, dtype="int32")
    batches = in_memory.ArrayBatches(images, labels, batch_size=6, training=True, seed=2,
                                     num_classes=6, mixup=0.4)
    mixed_images, targets = batches[0]
    assert targets.shape == (6, 6) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed_images[:, 0, 0, 0], targets @ values, rtol=1e-4, atol=1e-3)
    assert (mixed_images.min(axis=(1, 2, 3)) == mixed_images.max(axis=(1, 2, 3))).all()
    assert (targets.max(axis=1) < 0.999).any()  # something was mixed
    validation = in_memory.ArrayBatches(images, labels, batch_size=6, training=False, num_classes=6, mixup=0.4)
    np.testing.assert_array_equal(validation[0][1], np.eye(6, dtype="float32"))
    with pytest.raises(ValueError, match="num_classes"):
        in_memory.ArrayBatches(images, labels, batch_size=4, training=True, mixup=0.4)


def test_weighted_cross_entropy_takes_class_probabilities_as_well_as_indices():
    from emotion_classifier.losses import WeightedCrossEntropy

    loss = WeightedCrossEntropy([1.0, 2.0, 0.5], label_smoothing=0.1)
    predictions = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype="float32")
    sparse = float(loss(np.array([0, 2]), predictions))
    one_hot = float(loss(np.eye(3, dtype="float32")[[0, 2]], predictions))
    assert one_hot == pytest.approx(sparse, rel=1e-6)
    # A half-and-half label: its weight is the mean of the two class weights (1.5).
    plain = WeightedCrossEntropy([1.0, 2.0, 0.5])
    assert float(plain(np.array([[0.5, 0.5, 0.0]], dtype="float32"), predictions[:1])) == pytest.approx(
        1.5 * -(0.5 * np.log(0.7) + 0.5 * np.log(0.2)), rel=1e-5)


def test_training_with_mixup_in_memory_mode_and_its_refusal_elsewhere(tmp_path):
    config = tiny_config(tmp_path, input_mode="memory", epochs=2)
    config.generator.mixup = 0.2
    run_dir = training.train(config, "model_4")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert len(metrics) == 2 and metrics["accuracy"].between(0, 1).all() and metrics["val_accuracy"].between(0, 1).all()
    # Elsewhere it stops the program at start-up, naming both keys.
    config.model_4.input_mode = "arrays"
    with pytest.raises(ConfigError, match="generator.mixup = 0.2 needs model_4.input_mode = \"memory\""):
        validate(config)


def test_augment_false_turns_mixup_off_too(tmp_path):
    # Mixup is an augmentation: with augment = false the labels stay class indices and the
    # images unblended, in every input mode (it used to fail inside ArrayBatches).
    config = tiny_config(tmp_path, input_mode="memory", epochs=1)
    config.generator.mixup = 0.2
    config.generator.augment = False
    assert augmentation.mixup_alpha(config.generator) == 0.0
    assert augmentation.one_hot_classes(config.generator, 3) is None
    run_dir = training.train(config, "model_4")
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1
    config.model_4.input_mode = "arrays"
    config.model_4.run_name = "files"
    assert (training.train(config, "model_4") / "metrics.csv").exists()


def test_the_generator_stage_previews_what_memory_mode_trains_on(tmp_path, capsys):
    config = tiny_config(tmp_path, input_mode="memory")
    config.generator.mixup = 0.3
    assert generator.run(config) == 0
    figure = Path(config.paths.reports) / "figures" / "augmented_batch.png"
    assert figure.stat().st_size > 1000
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert 0.0 <= summary["value_range"][0] <= summary["value_range"][1] <= 255.0
    # The decoded arrays were cached on the way, for training to reuse.
    assert list((Path(config.paths.processed) / "arrays").glob("train_32px_1ch_*_images.npy"))
