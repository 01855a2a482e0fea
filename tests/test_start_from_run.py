"""Fine-tuning a finished run: ``start_from_run`` starts training from another run's best model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emotion_classifier import calibration, files, model_io, training
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import ConfigError, validate
from emotion_classifier.models import build_model
from test_training import tiny_config

OFFSETS = np.array([0.5, -0.2, -0.3])


def _calibrate_by_hand(run_dir: Path) -> None:
    """Give a finished run decision offsets, as the calibration does: in the final bias and in model_info.json."""
    model_path = run_dir / "best.keras"
    model, info = model_io.load_trained_model(model_path)
    calibration.add_to_output_bias(model, OFFSETS)
    model.save(model_path)
    info["decision_offsets"] = OFFSETS.tolist()
    files.write_json(model_io.model_info_path(model_path), info)


def _log_probabilities(model, images: np.ndarray) -> np.ndarray:
    logits = np.log(np.clip(model.predict(images, verbose=0), 1e-30, 1.0))
    return logits - logits.mean(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished one-epoch run ``first`` with hand-made decision offsets."""
    tmp_path = tmp_path_factory.mktemp("start_from")
    config = tiny_config(tmp_path, epochs=1)
    config.model_4.run_name = "first"
    run_dir = training.train(config, "model_4")
    _calibrate_by_hand(run_dir)
    return tmp_path, run_dir


def test_the_new_model_starts_as_the_source_without_its_decision_offsets(source_run):
    tmp_path, run_dir = source_run
    config = tiny_config(tmp_path, epochs=1)
    config.model_4.run_name, config.model_4.start_from_run = "second", "first"
    # As training builds it for these 48-pixel faces at 32 (no resizing layer).
    source, _info = model_io.load_trained_model(run_dir / "best.keras")
    model = build_model("model_4", config.model_4, 3)
    training.start_from_finished_run(model, config, "model_4", ["happy", "sad", "angry"])

    images = np.random.default_rng(0).uniform(0, 255, size=(6, 32, 32, 1)).astype("float32")
    # The same network and weights, less the offsets the calibration added to the source.
    np.testing.assert_allclose(_log_probabilities(model, images),
                               _log_probabilities(source, images) - (OFFSETS - OFFSETS.mean()), atol=1e-4)


def test_training_continues_from_the_source_and_depends_on_it(source_run):
    tmp_path, run_dir = source_run
    config = tiny_config(tmp_path, epochs=1)
    config.model_4.run_name, config.model_4.start_from_run = "second", "first"
    # Practically no step: the trained model must still hold the source's kernels.
    config.model_4.optimizer, config.model_4.learning_rate = "sgd", 1e-12
    second_dir = training.train(config, "model_4")
    trained, _info = model_io.load_trained_model(second_dir / "best.keras")
    source, _info = model_io.load_trained_model(run_dir / "best.keras")
    kernels = [(layer.name, layer.get_weights()[0]) for layer in source.layers
               if layer.get_weights() and "conv" in layer.name]
    assert kernels, "the tiny network has convolutions"
    for name, kernel in kernels:
        np.testing.assert_allclose(trained.get_layer(name).get_weights()[0], kernel, atol=1e-6)
    assert json.loads((second_dir / "config.json").read_text())["model_4"]["start_from_run"] == "first"
    summary = json.loads((second_dir / "training_summary.json").read_text())
    first_seconds = json.loads((run_dir / "training_summary.json").read_text())["seconds"]
    assert summary["started_from"]["run_name"] == "first"
    assert summary["recipe_runs"] == {"first": first_seconds, "second": summary["seconds"]}
    assert summary["recipe_seconds"] == pytest.approx(first_seconds + summary["seconds"], abs=0.02)

    # The same settings again: nothing to do. The source trained again: another run, refused
    # without force.
    training.train(config, "model_4")
    summary_path = run_dir / "training_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["seconds"] += 1.0
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(PipelineError, match="different"):
        training.train(config, "model_4")


def test_a_missing_or_different_source_is_named(source_run):
    tmp_path, _run_dir = source_run
    config = tiny_config(tmp_path, epochs=1)
    config.model_4.run_name, config.model_4.start_from_run = "third", "never_trained"
    with pytest.raises(PipelineError, match=r"start_from_run: .*never_trained holds no finished run"):
        training.train(config, "model_4")

    config.model_4.start_from_run = "first"
    config.model_4.conv_filters = [4, 16]
    with pytest.raises(PipelineError, match="different network"):
        training.train(config, "model_4")
    config.model_4.conv_filters = [4, 8]
    config.model_4.image_size = 40
    with pytest.raises(PipelineError, match="image_size 32, this run 40"):
        training.train(config, "model_4")


@pytest.mark.parametrize("run_name, start_from, ensemble_runs, message", [
    ("same", "same", [], "'same' is not the run name of another run"),
    ("new", "../other", [], "'../other' is not the run name of another run"),
    ("new", "first", ["a", "b"], "exclude each other"),
])
def test_start_from_run_is_checked_with_the_configuration(tmp_path, run_name, start_from, ensemble_runs, message):
    config = tiny_config(tmp_path)
    config.model_4.run_name, config.model_4.start_from_run = run_name, start_from
    config.model_4.ensemble_runs = ensemble_runs
    with pytest.raises(ConfigError, match=message):
        validate(config)
