"""Decision calibration: per-class offsets on a trained model's logits, fitted on the validation split.

A model trained with label smoothing and class weights can still predict a hard class less often
than it occurs: the GPU-trained FER2013 model predicts fear for 9% of the val images, which
hold 14% fear, and finds only 38% of them. Prior matching (as in Saerens et al. 2002's
adjustment of outputs to class priors, here on the decisions) adds one offset per class to the
logits so that, on the validation split reweighted to the training split's class frequencies,
each class is predicted as often as it occurs there. The offsets are fitted on the same views
that evaluation averages (test-time augmentation) and then added to the bias of the model's
final softmax layer, so that every caller (evaluation, the demo, predict, TFLite export) gets
the calibrated decisions from the ``.keras`` file alone. ``model_info.json`` records them.

Only the validation split (held out of training, chosen from the training data) is used: the
test split stays untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emotion_classifier import files, model_io
from emotion_classifier.cli import PipelineError

logger = logging.getLogger(__name__)

CALIBRATION_REPORT_NAME = "decision_calibration.json"
OUTPUT_LAYER_NAME = "probabilities"
METHODS = ("none", "prior_matching", "recall_floor")


def averaged_probabilities(log_probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean over views of softmax(log-probabilities + offsets): ``(rows, views, classes)`` -> ``(rows, classes)``.

    Log-probabilities differ from logits by a constant per view, which softmax ignores.
    """
    shifted = log_probabilities + offsets
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities.mean(axis=1)


def _prior_weights(labels: np.ndarray, class_prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(prior, row weights)``: the prior normalised, and each row weighted by
    ``prior[label] / count[label]`` (summing to one), so that the rows stand for data
    distributed like the prior whatever their own class balance."""
    prior = np.asarray(class_prior, dtype=np.float64) / np.sum(class_prior)
    counts = np.bincount(labels, minlength=len(prior)).astype(np.float64)
    row_weights = prior[labels] / counts[labels]
    return prior, row_weights / row_weights.sum()


def _images_per_class(labels: np.ndarray, class_count: int) -> np.ndarray:
    """The validation images of each class; an error when a class has none (nothing to fit it on)."""
    counts = np.bincount(labels, minlength=class_count)
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        raise PipelineError("decision calibration needs validation images of every class; none of class(es) "
                            f"{[int(index) for index in missing]}")
    return counts


def fit_prior_matching(log_probabilities: np.ndarray, labels: np.ndarray, class_prior: np.ndarray,
                       iterations: int = 400) -> np.ndarray:
    """Offsets that make each class's share of the decisions match ``class_prior``.

    ``log_probabilities`` is ``(rows, views, classes)``; each row is weighted by
    ``class_prior[label] / count[label]``, so a class-balanced validation split stands for data
    distributed like the training split. Multiplicative updates of the offsets by the ratio of
    wanted to predicted share, with a decaying step; the offsets with the smallest total
    deviation from the prior are kept (decisions are discrete, so shares move in jumps).
    Returned centred on zero (a common shift changes nothing).
    """
    log_probabilities = np.asarray(log_probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    class_count = log_probabilities.shape[-1]
    _images_per_class(labels, class_count)
    class_prior, row_weights = _prior_weights(labels, class_prior)

    offsets = np.zeros(class_count)
    best_offsets, best_deviation = offsets.copy(), np.inf
    for iteration in range(iterations):
        decisions = averaged_probabilities(log_probabilities, offsets).argmax(axis=1)
        shares = np.bincount(decisions, weights=row_weights, minlength=class_count)
        deviation = float(np.abs(shares - class_prior).sum())
        if deviation < best_deviation - 1e-12:
            best_offsets, best_deviation = offsets.copy(), deviation
        step = 0.5 / (1.0 + iteration / 50.0)
        offsets = offsets + step * (np.log(class_prior) - np.log(np.maximum(shares, 1e-4)))
        offsets -= offsets.mean()
    return best_offsets - best_offsets.mean()


def fit_recall_floor(log_probabilities: np.ndarray, labels: np.ndarray, floor: float, step: float = 0.01,
                     max_steps: int = 4000) -> tuple[np.ndarray, bool]:
    """The smallest offsets found that give every class a recall of at least ``floor``.

    A milder adjustment than prior matching: classes the model already finds often enough keep
    their decisions, and only the classes below the floor are pushed up, so accuracy is given
    away only where a class would otherwise be neglected. Greedy: the offset of the class
    furthest below the floor rises by ``step`` until no class is below it (a rise can push
    another class down, which is then raised in turn). Recall does not depend on the class
    balance of the split, so the rows are not reweighted. Returns ``(offsets, reached)``:
    centred on zero; when the floor cannot be reached within ``max_steps``, the offsets with
    the smallest worst shortfall and False.
    """
    log_probabilities = np.asarray(log_probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    class_count = log_probabilities.shape[-1]
    counts = _images_per_class(labels, class_count)
    offsets = np.zeros(class_count)
    best_offsets, best_shortfall = offsets.copy(), np.inf
    for _ in range(max_steps):
        decisions = averaged_probabilities(log_probabilities, offsets).argmax(axis=1)
        recalls = np.bincount(labels, weights=(decisions == labels), minlength=class_count) / counts
        shortfall = floor - recalls
        worst = int(np.argmax(shortfall))
        if shortfall[worst] < best_shortfall - 1e-12:
            best_offsets, best_shortfall = offsets.copy(), float(shortfall[worst])
        if shortfall[worst] <= 0:
            return offsets - offsets.mean(), True
        offsets[worst] += step
    return best_offsets - best_offsets.mean(), False


def decision_summary(probabilities: np.ndarray, labels: np.ndarray, classes: list[str],
                     class_prior: np.ndarray) -> dict:
    """Accuracy, macro F1, recalls and the prior-weighted share of each class's decisions."""
    from sklearn.metrics import f1_score, recall_score

    decisions = probabilities.argmax(axis=1)
    _prior, row_weights = _prior_weights(labels, class_prior)
    shares = np.bincount(decisions, weights=row_weights, minlength=len(classes))
    recalls = recall_score(labels, decisions, labels=range(len(classes)), average=None, zero_division=0)
    return {
        "accuracy": round(float((decisions == labels).mean()), 4),
        "macro_f1": round(float(f1_score(labels, decisions, labels=range(len(classes)), average="macro",
                                         zero_division=0)), 4),
        "recall": {name: round(float(value), 4) for name, value in zip(classes, recalls)},
        "decision_share_at_training_prior": {name: round(float(value), 4) for name, value in zip(classes, shares)},
    }


def output_layer(model):
    """The model's final softmax Dense layer (with a bias), whose inputs times kernel plus bias are its logits."""
    import keras

    try:
        layer = model.get_layer(OUTPUT_LAYER_NAME)
    except ValueError:
        raise PipelineError(f"model {model.name!r} has no final Dense layer named {OUTPUT_LAYER_NAME!r}, which "
                            "decision calibration and ensembles work on") from None
    if not isinstance(layer, keras.layers.Dense) or not layer.use_bias or \
            layer.activation is not keras.activations.softmax:
        raise PipelineError(f"model {model.name!r}: decision calibration and ensembles need {OUTPUT_LAYER_NAME!r} "
                            "to be a Dense layer with a bias and a softmax activation")
    return layer


def add_to_output_bias(model, offsets: np.ndarray) -> None:
    """Add ``offsets`` to the bias of the model's final softmax Dense layer (its logits)."""
    layer = output_layer(model)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, (bias.astype(np.float64) + offsets).astype(bias.dtype)])


def calibrate_run(config, section_name: str, run_dir: Path, validation_rows, classes: list[str],
                  training_counts: np.ndarray) -> dict | None:
    """Apply ``<section>.decision_calibration`` to the run's best model (idempotent).

    The offsets are fitted to the uncalibrated model's outputs (offsets already applied are
    taken off first), so re-running with other settings replaces them, and "none" removes
    them. Returns the calibration report, or None when there is nothing to do.
    """
    from emotion_classifier import evaluation
    from emotion_classifier.training import BEST_MODEL_NAME

    model_config = getattr(config, section_name)
    evaluation_config = getattr(config, evaluation.EVALUATION_SECTIONS[section_name])
    method = model_config.decision_calibration
    model_path = run_dir / BEST_MODEL_NAME
    info = model_io.read_model_info(model_path)
    applied = np.asarray(info.get("decision_offsets", [0.0] * len(classes)), dtype=np.float64)
    wanted = {
        "method": method,
        "test_time_augmentation": evaluation_config.test_time_augmentation,
        "crop_fraction": evaluation.CROP_FRACTION,
        "validation_rows": int(len(validation_rows)),
        "split_manifest": files.file_digest(config.paths.split_manifest),
    }
    if method == "recall_floor":
        wanted["recall_floor"] = model_config.decision_recall_floor
    if method == "none":
        if not np.any(applied):
            return None
        wanted = {"method": "none"}
    elif info.get("decision_calibration") == wanted:
        print(f"{model_path}: decisions already calibrated ({method}, {wanted['test_time_augmentation']} views)")
        return None

    model, _info = model_io.load_trained_model(model_path)
    report: dict = {"settings": wanted, "classes": list(classes)}
    if method in ("prior_matching", "recall_floor"):
        class_prior = np.asarray(training_counts, dtype=np.float64)
        print(f"calibrating decisions on {len(validation_rows)} validation images "
              f"({evaluation_config.test_time_augmentation} views) ...")
        probabilities, unreadable = evaluation.predict(
            model, validation_rows, config.paths.images_root, info["image_size"], info["channels"],
            evaluation.BATCH_SIZE, face_margin=config.generator.face_margin,
            test_time_augmentation=evaluation_config.test_time_augmentation,
            crop_fraction=evaluation.CROP_FRACTION, per_view=True,
            equalize_histogram=bool(info.get("equalize_histogram", False)),
        )
        readable = ~np.isnan(probabilities).any(axis=(1, 2))
        labels = validation_rows["class_index"].to_numpy()[readable]
        # Outputs of the model without the offsets it already carries (up to a constant per view).
        log_probabilities = np.log(np.clip(probabilities[readable], 1e-12, 1.0)) - applied
        if method == "prior_matching":
            offsets = fit_prior_matching(log_probabilities, labels, class_prior)
        else:
            offsets, reached = fit_recall_floor(log_probabilities, labels, model_config.decision_recall_floor)
            report["recall_floor_reached"] = reached
            if not reached:
                logger.warning("decision calibration: no offsets give every class a validation recall of %s; "
                               "kept those with the smallest shortfall", model_config.decision_recall_floor)
        report.update({
            "unreadable_files": len(unreadable),
            "training_prior": {name: round(float(value), 4)
                               for name, value in zip(classes, class_prior / class_prior.sum())},
            "offsets": {name: round(float(value), 4) for name, value in zip(classes, offsets)},
            "validation_before": decision_summary(averaged_probabilities(log_probabilities, 0.0), labels,
                                                  classes, class_prior),
            "validation_after": decision_summary(averaged_probabilities(log_probabilities, offsets), labels,
                                                 classes, class_prior),
        })
    else:
        offsets = np.zeros(len(classes))
        report["offsets"] = {name: 0.0 for name in classes}
    add_to_output_bias(model, offsets - applied)
    info.update(decision_offsets=[float(value) for value in offsets], decision_calibration=wanted)
    with files.atomic_path(model_path) as temporary:
        model.save(temporary)
        # The record of the offsets goes in just before the model that carries them replaces
        # the old one: a later run subtracts exactly what the model holds.
        files.write_json(model_io.model_info_path(model_path), info)
    files.write_json(run_dir / CALIBRATION_REPORT_NAME, report)
    if method != "none":
        before, after = report["validation_before"], report["validation_after"]
        print(f"calibrated {model_path}: offsets {report['offsets']}; validation accuracy "
              f"{before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro F1 {before['macro_f1']:.4f} -> "
              f"{after['macro_f1']:.4f}")
    else:
        print(f"{model_path}: decision offsets removed")
    return report
