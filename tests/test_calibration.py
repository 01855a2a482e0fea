"""Decision calibration: prior matching on the validation split, baked into the model's output bias."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from emotion_classifier import calibration, model_io, training
from emotion_classifier.errors import PipelineError
from test_training import tiny_config


def _neglected_third_class(neglect: float):
    """Log-probabilities (rows, 2 views, 3 classes) of a class-balanced validation split whose
    class 2 is rarely chosen (its logits lowered by ``neglect``), and the labels."""
    random = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 200)
    logits = random.normal(0.0, 1.0, size=(len(labels), 2, 3))
    logits[np.arange(len(labels)), :, labels] += 1.5
    logits[:, :, 2] -= neglect
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True)), labels


def test_prior_matching_makes_an_under_predicted_class_as_frequent_as_it_is():
    prior = np.array([0.5, 0.3, 0.2])
    log_probabilities, labels = _neglected_third_class(1.2)
    row_weights = prior[labels] / 200.0

    def shares(offsets):
        decisions = calibration.averaged_probabilities(log_probabilities, offsets).argmax(axis=1)
        return np.bincount(decisions, weights=row_weights, minlength=3) / row_weights.sum()

    assert shares(np.zeros(3))[2] < 0.12  # against 0.2 of the data
    offsets = calibration.fit_prior_matching(log_probabilities, labels, prior * 1000)  # counts work too
    assert offsets.sum() == pytest.approx(0.0, abs=1e-9)
    assert offsets[2] > offsets[0] and offsets[2] > offsets[1]
    np.testing.assert_allclose(shares(offsets), prior, atol=0.02)
    # Recall of the neglected class rises; the fit is deterministic.
    decisions = calibration.averaged_probabilities(log_probabilities, offsets).argmax(axis=1)
    before = calibration.averaged_probabilities(log_probabilities, np.zeros(3)).argmax(axis=1)
    assert (decisions[labels == 2] == 2).mean() > (before[labels == 2] == 2).mean() + 0.2
    np.testing.assert_array_equal(offsets, calibration.fit_prior_matching(log_probabilities, labels, prior))

    with pytest.raises(PipelineError, match="every class"):
        calibration.fit_prior_matching(log_probabilities[:400], labels[:400], prior)


def test_offsets_added_to_the_output_bias_shift_the_logits():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs)
    features = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")
    before = model.predict(features, verbose=0)
    offsets = np.array([0.3, -0.5, 0.2])
    calibration.add_to_output_bias(model, offsets)
    expected = calibration.averaged_probabilities(np.log(before)[:, None, :], offsets)
    np.testing.assert_allclose(model.predict(features, verbose=0), expected, atol=1e-5)

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(PipelineError, match="probabilities"):
        calibration.add_to_output_bias(plain, offsets)


def test_training_calibrates_the_finished_run_and_recalibrates_or_removes_on_request(tmp_path, capsys):
    config = tiny_config(tmp_path)
    run_dir = training.train(config, "model_4")
    model_path = run_dir / "best.keras"
    probe = np.random.default_rng(2).uniform(0, 255, size=(5, 32, 32, 1)).astype("float32")
    uncalibrated = model_io.load_trained_model(model_path)[0].predict(probe, verbose=0)

    # Set on a finished run: no retraining, the best model gets its offsets.
    config.model_4.decision_calibration = "prior_matching"
    config.model_evaluation_4.test_time_augmentation = "flip"
    metrics_before = (run_dir / "metrics.csv").read_text()
    training.train(config, "model_4")
    assert (run_dir / "metrics.csv").read_text() == metrics_before
    info = model_io.read_model_info(model_path)
    offsets = np.array(info["decision_offsets"])
    assert offsets.shape == (3,) and info["decision_calibration"]["method"] == "prior_matching"
    assert info["decision_calibration"]["test_time_augmentation"] == "flip"
    report = json.loads((run_dir / "decision_calibration.json").read_text())
    assert set(report["validation_after"]) >= {"accuracy", "macro_f1", "recall", "decision_share_at_training_prior"}
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["decision_calibration"]["settings"]["method"] == "prior_matching"
    calibrated = model_io.load_trained_model(model_path)[0].predict(probe, verbose=0)
    np.testing.assert_allclose(calibrated, calibration.averaged_probabilities(np.log(uncalibrated)[:, None], offsets),
                               atol=1e-4)

    # The same settings again leave the model alone.
    modified = model_path.stat().st_mtime_ns
    training.train(config, "model_4")
    assert model_path.stat().st_mtime_ns == modified
    assert "already calibrated" in capsys.readouterr().out

    # Other views: fitted again from the uncalibrated outputs (not on top of the old offsets).
    config.model_evaluation_4.test_time_augmentation = "none"
    training.train(config, "model_4")
    info = model_io.read_model_info(model_path)
    assert info["decision_calibration"]["test_time_augmentation"] == "none"
    recalibrated = model_io.load_trained_model(model_path)[0].predict(probe, verbose=0)
    np.testing.assert_allclose(
        recalibrated, calibration.averaged_probabilities(np.log(uncalibrated)[:, None], np.array(info["decision_offsets"])),
        atol=1e-4)

    # "none" takes the offsets off again.
    config.model_4.decision_calibration = "none"
    training.train(config, "model_4")
    assert not any(model_io.read_model_info(model_path)["decision_offsets"])
    np.testing.assert_allclose(model_io.load_trained_model(model_path)[0].predict(probe, verbose=0), uncalibrated,
                               atol=1e-5)


def test_ship_model_readme_describes_the_calibration(tmp_path):
    import importlib.util
    from pathlib import Path

    from emotion_classifier import files

    specification = importlib.util.spec_from_file_location(
        "ship_model", Path(__file__).resolve().parent.parent / "tools" / "ship_model.py")
    ship_model = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(ship_model)
    run, report = tmp_path / "run", tmp_path / "report"
    classes = ["happy", "fear"]
    files.write_json(run / "training_summary.json", {"seconds": 120, "epochs_run": 3, "best_epoch": 2,
                                                      "images_per_second": 50.0, "preset": "fer_vgg"})
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for name in classes}
    files.write_json(report / "evaluation.json", {
        "model_classes": classes, "image_size": 48, "channels": 1, "images": 20, "per_class": per_class,
        "test_time_augmentation": "flip",
        "metrics": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "cohen_kappa": 0.0},
    })
    plain = ship_model.describe(run, report, "config/x.toml", "x", "a CPU")
    assert "## Decisions" not in plain and "| fear | 0.500 | 0.500 | 0.500 | 10 |" in plain
    summary = {"accuracy": 0.6, "macro_f1": 0.55, "recall": {"happy": 0.9, "fear": 0.3}}
    files.write_json(run / "decision_calibration.json", {
        "settings": {"method": "prior_matching", "test_time_augmentation": "flip", "validation_rows": 30},
        "classes": classes, "offsets": {"happy": -0.2, "fear": 0.2},
        "validation_before": summary, "validation_after": {**summary, "recall": {"happy": 0.85, "fear": 0.45}},
    })
    described = ship_model.describe(run, report, "config/x.toml", "x", "a CPU")
    assert "## Decisions: prior_matching" in described and "predicted as often as it occurs" in described
    assert "never used to choose anything" in described
    assert "happy -0.200, fear +0.200" in described and "fear 0.300 -> 0.450" in described
    assert described.index("## Decisions") < described.index("## Evaluation")
    assert "2 minutes (50 images/s)" in described

    files.write_json(run / "decision_calibration.json", {
        "settings": {"method": "recall_floor", "recall_floor": 0.45, "test_time_augmentation": "flip",
                     "validation_rows": 30},
        "classes": classes, "offsets": {"happy": -0.1, "fear": 0.1},
        "validation_before": summary, "validation_after": {**summary, "recall": {"happy": 0.85, "fear": 0.45}},
    })
    described = ship_model.describe(run, report, "config/x.toml", "x", "a CPU", chosen_on_test="the calibration")
    assert "## Decisions: recall_floor" in described and "a recall of at least 0.45" in described
    assert "used to choose the calibration" in described and "never used" not in described
    assert "preset `fer_vgg`" in described

    members = [{"run_name": f"m{seed}", "epochs_run": 60, "best_epoch": 50 + seed, "seconds": 600.0} for seed in (0, 1)]
    files.write_json(run / "training_summary.json", {"seconds": 1200.0, "preset": "ensemble", "members": members})
    ensemble = ship_model.describe(run, report, "config/x.toml", "x", "a CPU")
    assert "averages the logits of 2 training runs" in ensemble
    assert "`m1`, 60 epochs (best: epoch 51, 10 minutes)" in ensemble and "20 minutes, the members'" in ensemble

    files.write_json(run / "training_summary.json", {
        "seconds": 300.0, "epochs_run": 20, "best_epoch": 18, "images_per_second": 50.0, "preset": "fer_vgg",
        "started_from": {"run_name": "first", "epochs_run": 60}, "recipe_seconds": 1500.0})
    fine_tuned = ship_model.describe(run, report, "config/x.toml", "x", "a CPU")
    assert "20 epochs (best: epoch 18), fine-tuned (`start_from_run`) from the run `first` (60 epochs" in fine_tuned
    assert "25 minutes (50 images/s)" in fine_tuned
    members[1]["started_from"] = "m0"
    files.write_json(run / "training_summary.json", {"seconds": 1200.0, "preset": "ensemble", "members": members})
    assert "`m1`, 60 epochs fine-tuned from `m0` (best: epoch 51" in ship_model.describe(
        run, report, "config/x.toml", "x", "a CPU")


def _recalls(log_probabilities, labels, offsets):
    decisions = calibration.averaged_probabilities(log_probabilities, offsets).argmax(axis=1)
    return np.array([(decisions[labels == label] == label).mean() for label in range(3)])


def test_recall_floor_lifts_only_the_classes_below_it_and_no_further():
    log_probabilities, labels = _neglected_third_class(1.8)
    before = _recalls(log_probabilities, labels, np.zeros(3))
    assert before[2] < 0.5 < min(before[:2])

    offsets, reached = calibration.fit_recall_floor(log_probabilities, labels, 0.5)
    after = _recalls(log_probabilities, labels, offsets)
    assert reached and after.min() >= 0.5
    assert offsets.sum() == pytest.approx(0.0, abs=1e-9)
    assert offsets[0] == pytest.approx(offsets[1]) and offsets[2] > offsets[0]  # class 2 alone raised
    # The smallest lift that does it: one step less leaves class 2 below the floor.
    assert after[2] < 0.5 + 0.02
    smaller = offsets.copy()
    smaller[2] -= 0.01
    assert _recalls(log_probabilities, labels, smaller)[2] < 0.5
    # A floor already met changes nothing; an unreachable one keeps the best offsets found and says so.
    unchanged, reached = calibration.fit_recall_floor(log_probabilities, labels, 0.1)
    assert reached and not np.any(unchanged)
    best, reached = calibration.fit_recall_floor(log_probabilities, labels, 0.99, max_steps=300)
    assert not reached and _recalls(log_probabilities, labels, best).min() > before.min()
    with pytest.raises(PipelineError, match="every class"):
        calibration.fit_recall_floor(log_probabilities[:400], labels[:400], 0.5)


def test_recall_floor_calibrates_a_finished_run_once_and_a_new_floor_refits(tmp_path):
    config = tiny_config(tmp_path)
    run_dir = training.train(config, "model_4")
    model_path = run_dir / "best.keras"
    metrics_before = (run_dir / "metrics.csv").read_text()
    config.model_4.decision_calibration = "recall_floor"
    config.model_4.decision_recall_floor = 0.3
    training.train(config, "model_4")
    assert (run_dir / "metrics.csv").read_text() == metrics_before  # the floor is no training setting
    info = model_io.read_model_info(model_path)
    assert info["decision_calibration"]["method"] == "recall_floor"
    assert info["decision_calibration"]["recall_floor"] == 0.3
    report = json.loads((run_dir / "decision_calibration.json").read_text())
    assert isinstance(report["recall_floor_reached"], bool)
    if report["recall_floor_reached"]:
        assert min(report["validation_after"]["recall"].values()) >= 0.3 - 1e-4  # rounded to 4 places

    modified = model_path.stat().st_mtime_ns
    training.train(config, "model_4")  # the same floor again: nothing to do
    assert model_path.stat().st_mtime_ns == modified

    config.model_4.decision_recall_floor = 0.4
    training.train(config, "model_4")
    assert model_io.read_model_info(model_path)["decision_calibration"]["recall_floor"] == 0.4
    assert (run_dir / "metrics.csv").read_text() == metrics_before
