"""Ensembles of finished runs: one model averaging the members' uncalibrated logits."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from emotion_classifier import calibration, ensemble, model_io, training
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import ConfigError, validate
from test_training import tiny_config


def _logits(model, images: np.ndarray) -> np.ndarray:
    """A model's logits up to a constant per row (log of its softmax output)."""
    return np.log(np.clip(model.predict(images, verbose=0), 1e-30, 1.0))


def _dense_model(seed: int, name: str):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="relu")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def test_the_ensemble_logits_are_the_mean_of_the_members_uncalibrated_logits(tmp_path):
    members = [_dense_model(seed, f"m{seed}") for seed in (1, 2, 3)]
    images = np.random.default_rng(0).uniform(0, 255, size=(8, 6, 6, 1)).astype("float32")
    plain = [_logits(member, images) for member in members]
    # The second member carries decision offsets, which the ensemble takes off.
    offsets = [np.zeros(3), np.array([0.4, -0.1, -0.3]), np.zeros(3)]
    calibration.add_to_output_bias(members[1], offsets[1])
    model = ensemble.build_ensemble(members, offsets, name="three")
    expected = np.mean(plain, axis=0)
    got = _logits(model, images)
    # Logits are known up to a constant per row: compare centred.
    np.testing.assert_allclose(got - got.mean(axis=1, keepdims=True),
                               expected - expected.mean(axis=1, keepdims=True), atol=1e-4)
    # It keeps a final softmax Dense layer that calibration can shift, and survives saving.
    calibration.output_layer(model)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)

    with pytest.raises(ValueError, match="two or more"):
        ensemble.build_ensemble(members[:1], offsets[:1])
    wrong_input = keras.Sequential([keras.Input((7, 7, 1)), keras.layers.Flatten(),
                                    keras.layers.Dense(3, activation="softmax", name="probabilities")])
    with pytest.raises(PipelineError, match="shape"):
        ensemble.build_ensemble([members[0], wrong_input], offsets[:2])


def test_model_4_builds_and_calibrates_an_ensemble_of_finished_runs(tmp_path, capsys):
    config = tiny_config(tmp_path, epochs=1)
    for seed in (0, 1):
        config.model_4.run_name, config.model_4.seed = f"member_{seed}", seed
        training.train(config, "model_4")
    probe = np.random.default_rng(2).uniform(0, 255, size=(4, 32, 32, 1)).astype("float32")
    member_logits = [_logits(model_io.load_trained_model(Path(config.paths.models) / f"member_{seed}" / "best.keras")[0],
                             probe) for seed in (0, 1)]

    config.model_4.run_name = "both"
    config.model_4.ensemble_runs = ["member_0", "member_1"]
    config.model_4.decision_calibration = "prior_matching"
    run_dir = training.train(config, "model_4")
    model, info = model_io.load_trained_model(run_dir / "best.keras")
    assert info["preset"] == "ensemble" and info["ensemble_runs"] == ["member_0", "member_1"]
    assert info["classes"] == ["happy", "sad", "angry"] and info["image_size"] == 32
    assert info["decision_calibration"]["method"] == "prior_matching"
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert [member["run_name"] for member in summary["members"]] == ["member_0", "member_1"]
    assert summary["seconds"] == pytest.approx(sum(member["seconds"] for member in summary["members"]), abs=0.02)
    # Calibrated: the ensemble's logits are the members' mean plus the offsets it records.
    got = _logits(model, probe) - np.asarray(info["decision_offsets"])
    expected = np.mean(member_logits, axis=0)
    np.testing.assert_allclose(got - got.mean(axis=1, keepdims=True),
                               expected - expected.mean(axis=1, keepdims=True), atol=1e-3)

    # Re-running keeps it; other members are refused without force.
    model_mtime = (run_dir / "best.keras").stat().st_mtime_ns
    training.train(config, "model_4")
    assert (run_dir / "best.keras").stat().st_mtime_ns == model_mtime
    assert "already holds this ensemble" in capsys.readouterr().out
    config.model_4.ensemble_runs = ["member_1", "member_0"]
    with pytest.raises(PipelineError, match="different run or ensemble"):
        training.train(config, "model_4")
    training.train(config, "model_4", force=True)
    assert json.loads((run_dir / "training_summary.json").read_text())["ensemble_runs"] == ["member_1", "member_0"]

    config.model_4.run_name = "missing_member"
    config.model_4.ensemble_runs = ["member_0", "never_trained"]
    with pytest.raises(PipelineError, match="never_trained.*train it first"):
        training.train(config, "model_4")


@pytest.mark.parametrize("runs, message", [
    (["only_one"], "two or more"),
    (["a", "a"], "two or more different"),
    (["model_4", "b"], "none of them this section's run_name 'model_4'"),
    (["a", "../b"], r"run names \(folders under paths.models\).*got \['a', '../b'\]"),
])
def test_ensemble_runs_are_checked_with_the_configuration(tmp_path, runs, message):
    config = tiny_config(tmp_path)
    config.model_4.ensemble_runs = runs
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_an_ensemble_of_mixed_precision_members_exports_to_tflite(tmp_path):
    from emotion_classifier import export

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        members = [_dense_model(seed, f"m{seed}") for seed in (5, 6)]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = ensemble.build_ensemble(members, [np.zeros(3), np.zeros(3)])
    model_path = tmp_path / "ensemble" / "best.keras"
    model_path.parent.mkdir()
    model.save(model_path)
    model_io.save_model_info(model_path, ["a", "b", "c"], 6, 1, preset="ensemble")
    images = np.random.default_rng(3).uniform(0, 255, size=(16, 6, 6, 1)).astype("float32")
    report = export.export_model(model_path, tmp_path / "export", images[:8], images[8:], variants=["float32"])
    assert report["tflite"]["float32"]["meets_requirement"]
    exported = export.tflite_probabilities(tmp_path / "export" / export.tflite_name("float32"), images[8:])
    np.testing.assert_allclose(exported, model.predict(images[8:], verbose=0), atol=0.02)
