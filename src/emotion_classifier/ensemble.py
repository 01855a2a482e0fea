"""Ensembles: several finished training runs combined into one model that averages their logits.

Networks trained alike from different random seeds make partly different mistakes; averaging
their outputs is the most dependable way to buy accuracy with compute that is spent in separate,
resumable runs (two 2-hour CPU runs instead of one run twice as long). The ensemble is an
ordinary run folder (``best.keras``, ``model_info.json``, ``training_summary.json``): the
calibration, evaluation, demo, predict and export code use it as they use a trained model.

The combined model feeds its input to every member's body (everything before the member's final
Dense layer, preprocessing included) and ends in one Dense softmax layer, named like a trained
model's, whose kernel stacks the members' final kernels divided by their number and whose bias is
the mean of their biases: its logits are exactly the mean of the members' logits (a geometric mean
of their probabilities). Each member's own decision offsets are taken off first, so the members
enter uncalibrated and the ensemble is calibrated as a whole (calibration.calibrate_run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from emotion_classifier import calibration, files, model_io, runs, split_files
from emotion_classifier.errors import PipelineError

ENSEMBLE_PRESET = "ensemble"
# The layer that concatenates the members' features (Grad-CAM finds ensembles by it).
MERGE_LAYER_NAME = "member_features"
# The keys of model_info.json that every member must share with the others (besides the classes,
# which must be the split's).
SHARED_INFO_KEYS = ("image_size", "channels", "equalize_histogram")


def build_ensemble(members: list, member_offsets: list[np.ndarray], name: str = "ensemble"):
    """One Keras model whose logits are the mean of ``members``' logits minus their ``member_offsets``.

    Every member must end in a Dense softmax layer named ``calibration.OUTPUT_LAYER_NAME`` and take
    inputs of the same shape.
    """
    import keras

    if len(members) < 2:
        raise ValueError(f"an ensemble needs two or more members, got {len(members)}")
    input_shape = tuple(members[0].inputs[0].shape[1:])
    for index, member in enumerate(members):
        if tuple(member.inputs[0].shape[1:]) != input_shape:
            raise PipelineError(f"ensemble member {index} ({member.name}) takes inputs of shape "
                                f"{tuple(member.inputs[0].shape[1:])}, member 0 takes {input_shape}")
    inputs = keras.Input(shape=input_shape, name="image")
    features, kernels, biases = [], [], []
    for index, (member, offsets) in enumerate(zip(members, member_offsets)):
        output_layer = calibration.output_layer(member)
        body = keras.Model(member.inputs, output_layer.input, name=f"member_{index}")
        features.append(body(inputs))
        kernel, bias = output_layer.get_weights()
        kernels.append(kernel.astype(np.float64))
        biases.append(bias.astype(np.float64) - np.asarray(offsets, dtype=np.float64))
    class_count = kernels[0].shape[1]
    if any(kernel.shape[1] != class_count for kernel in kernels):
        raise PipelineError("ensemble members predict different numbers of classes: "
                            f"{[kernel.shape[1] for kernel in kernels]}")
    merged = keras.layers.Concatenate(name=MERGE_LAYER_NAME)(features)
    output_layer = keras.layers.Dense(class_count, activation="softmax", dtype="float32",
                                      name=calibration.OUTPUT_LAYER_NAME)
    outputs = output_layer(merged)
    output_layer.set_weights([
        (np.concatenate(kernels, axis=0) / len(members)).astype(np.float32),
        np.mean(biases, axis=0).astype(np.float32),
    ])
    return keras.Model(inputs, outputs, name=name)


def _fingerprint(config, section_name: str, summaries: list[dict]) -> str:
    """What the ensemble depends on: its members' training summaries, in order, and the split.

    A summary holds the member's training fingerprint and its training time, so a member trained
    again (even with the same settings) changes it; a member's calibration, which the ensemble
    takes off, does not.
    """
    settings = {
        "section": section_name,
        "ensemble_runs": list(getattr(config, section_name).ensemble_runs),
        "member_summaries": [runs.summary_without_calibration(summary) for summary in summaries],
        "split_manifest": files.file_digest(config.paths.split_manifest),
        "classes": files.file_digest(Path(config.paths.processed) / split_files.CLASSES_FILE_NAME),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _checked_members(config, section_name: str, classes: list[str]) -> list[tuple[Path, dict, dict]]:
    """``(best model, model info, training summary)`` of each member, after checking that they
    predict the split's classes from the same inputs."""
    model_config = getattr(config, section_name)
    members = [runs.finished_run_files(Path(config.paths.models), name, f"{section_name}.ensemble_runs",
                                       section_name) for name in model_config.ensemble_runs]
    for name, (path, info, _summary) in zip(model_config.ensemble_runs, members):
        if [str(value) for value in info["classes"]] != list(classes):
            raise PipelineError(f"{section_name}.ensemble_runs: {path} predicts classes {info['classes']}, "
                                f"the split has {classes}")
        for key in SHARED_INFO_KEYS:
            if info.get(key, False) != members[0][1].get(key, False):
                raise PipelineError(f"{section_name}.ensemble_runs: {key} differs between members "
                                    f"{model_config.ensemble_runs[0]} ({members[0][1].get(key, False)}) and "
                                    f"{name} ({info.get(key, False)})")
    return members


def build_run(config, section_name: str, classes: list[str], counts: np.ndarray, force: bool = False) -> Path:
    """Build ``<section>.ensemble_runs`` into the run folder ``<paths.models>/<section>.run_name``.

    Safe to re-run: an ensemble of the same members is kept (and only re-calibrated when the
    calibration settings changed); one of other members is replaced only with ``force``.
    Returns the run folder; the caller applies the decision calibration.
    """
    model_config = getattr(config, section_name)
    run_dir = Path(config.paths.models) / model_config.run_name
    members = _checked_members(config, section_name, classes)
    summaries = [summary for _path, _info, summary in members]
    fingerprint = _fingerprint(config, section_name, summaries)

    model_path, summary_path = run_dir / runs.BEST_MODEL_NAME, run_dir / runs.SUMMARY_NAME
    if summary_path.is_file() and model_path.is_file() and not force:
        if files.read_json(summary_path).get("fingerprint") == fingerprint:
            print(f"{run_dir} already holds this ensemble of {', '.join(model_config.ensemble_runs)}")
            return run_dir
        raise PipelineError(f"{run_dir} holds a different run or ensemble; use --force to replace it or set a "
                            f"new {section_name}.run_name")
    if (run_dir / runs.CHECKPOINT_DIR_NAME).exists() and not force:
        raise PipelineError(f"{run_dir} holds an unfinished training run; use --force to replace it or set a new "
                            f"{section_name}.run_name")
    # Whatever an unfinished or replaced build left (a finished ensemble is only replaced with force).
    runs.clear_run_folder(run_dir)

    print(f"building the ensemble {run_dir} of {', '.join(model_config.ensemble_runs)}")
    loaded = [model_io.load_trained_model(path) for path, _info, _summary in members]
    model = build_ensemble(
        [member for member, _info in loaded],
        [np.asarray(info.get("decision_offsets", [0.0] * len(classes))) for _member, info in loaded],
        name=model_config.run_name,
    )
    first_info = members[0][1]
    runs.write_run_description(
        config, run_dir, classes, int(first_info["image_size"]), int(first_info["channels"]),
        run_name=model_config.run_name, preset=ENSEMBLE_PRESET,
        equalize_histogram=bool(first_info.get("equalize_histogram", False)),
        ensemble_runs=list(model_config.ensemble_runs),
    )
    with files.atomic_path(model_path) as temporary:
        model.save(temporary)
    member_rows = [
        {key: summary.get(key) for key in ("run_name", "epochs_run", "best_epoch", "best_val_accuracy", "seconds",
                                           "images_per_second", "keras_backend")}
        # A member fine-tuned from another run names it.
        | ({"started_from": summary["started_from"]["run_name"]} if summary.get("started_from") else {})
        for summary in summaries
    ]
    # Last: its presence marks the ensemble as complete.
    files.write_json(summary_path, {
        "run_name": model_config.run_name,
        "fingerprint": fingerprint,
        "preset": ENSEMBLE_PRESET,
        "ensemble_runs": list(model_config.ensemble_runs),
        "members": member_rows,
        # Training time of the whole recipe: the members' and that of the runs they were
        # fine-tuned from (each counted once), one after another.
        "seconds": round(sum({name: seconds for summary in summaries
                              for name, seconds in runs.recipe_runs(summary).items()}.values()), 2),
        "parameters": int(model.count_params()),
        "classes": list(classes),
        "training_counts": [int(count) for count in counts],
    })
    print(f"built {model_path}: {len(members)} members, {model.count_params():,} parameters")
    return run_dir

