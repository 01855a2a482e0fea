"""The split stage: dropped classes, test from the source's evaluation split or a stratified
fraction, a class-balanced validation set, disjoint and reproducible splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emotion_classifier import files, splits
from emotion_classifier.classes import CANONICAL_CLASSES
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from emotion_classifier.manifest import MANIFEST_COLUMNS, read_manifest


def make_config(tmp_path, **split_settings) -> Config:
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    config.paths.reports_dir = str(tmp_path / "reports")
    for key, value in split_settings.items():
        setattr(config.split, key, value)
    return config


def write_manifest(config: Config, counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    """A manifest with ``counts[(label, source_split)]`` rows of each kind."""
    records = []
    for (label, source_split), count in counts.items():
        for index in range(count):
            records.append({
                "filename": f"{source_split or 'all'}/{label}/{index}.jpg",
                "label": label,
                "label_id": CANONICAL_CLASSES.index(label),
                "source_label": label,
                "source_split": source_split,
                "source_file": label,
                "landmarks": "",
            })
    frame = pd.DataFrame(records).reindex(columns=list(MANIFEST_COLUMNS))
    files.save_csv(config.paths.manifest, frame)
    return frame


def read_outputs(config: Config) -> pd.DataFrame:
    return pd.read_csv(config.paths.split_manifest, keep_default_na=False)


def test_source_evaluation_split_becomes_test_and_validation_is_balanced(tmp_path):
    config = make_config(tmp_path, valid_per_class=10, max_valid_fraction=0.5)
    write_manifest(config, {
        ("neutral", "train"): 60, ("happy", "train"): 100, ("sad", "train"): 14,
        ("contempt", "train"): 9, ("uncertain", "train"): 5,
        ("neutral", "validation"): 7, ("happy", "validation"): 8, ("sad", "validation"): 6,
    })
    assert splits.run(config) == 0
    processed = config.paths.processed
    assert files.read_json(processed / "classes.json") == {"classes": ["neutral", "happy", "sad"]}
    frame = read_outputs(config)
    assert set(frame["label"]) == {"neutral", "happy", "sad"}
    counts = frame.groupby(["split", "label"]).size()
    assert (frame[frame["split"] == "test"]["source_split"] == "validation").all()
    assert counts["test"].to_dict() == {"happy": 8, "neutral": 7, "sad": 6}
    # 10 per class, but sad has only 14 training rows and gives at most half of them.
    assert counts["valid"].to_dict() == {"happy": 10, "neutral": 10, "sad": 7}
    assert counts["train"].to_dict() == {"happy": 90, "neutral": 50, "sad": 7}
    assert (frame["class_index"] == frame["label"].map({"neutral": 0, "happy": 1, "sad": 2})).all()
    for split in splits.SPLITS:
        filenames = files.load_npy(processed / f"X_{split}_filenames.npy")
        indices = files.load_npy(processed / f"y_{split}.npy")
        chosen = frame[frame["split"] == split]
        assert filenames.tolist() == chosen["filename"].tolist()
        assert indices.dtype == np.int64 and indices.tolist() == chosen["class_index"].tolist()
    sets = [set(files.load_npy(processed / f"X_{split}_filenames.npy").tolist()) for split in splits.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    summary = files.read_json(config.paths.reports / "split_summary.json")
    assert summary["counts"]["valid"]["sad"] == 7 and summary["counts"]["total"]["total"] == 195
    assert summary["test_source"].startswith("source evaluation split")
    assert any("class sad" in warning for warning in summary["warnings"])
    assert summary["rows_dropped"] == 14


def test_stratified_test_fraction_without_an_evaluation_split(tmp_path):
    config = make_config(tmp_path, valid_per_class=5, test_fraction=0.1, drop_classes=[])
    write_manifest(config, {("anger", ""): 200, ("fear", ""): 50, ("disgust", ""): 30})
    splits.run(config)
    frame = read_outputs(config)
    counts = frame.groupby(["split", "label"]).size()
    assert counts["test"].to_dict() == {"anger": 20, "disgust": 3, "fear": 5}
    assert counts["valid"].to_dict() == {"anger": 5, "disgust": 5, "fear": 5}
    assert files.read_json(config.paths.processed / "classes.json")["classes"] == ["fear", "disgust", "anger"]


def test_evaluation_split_is_pooled_when_not_used(tmp_path):
    config = make_config(tmp_path, valid_per_class=2, test_fraction=0.5, use_source_evaluation_split=False)
    write_manifest(config, {("happy", "train"): 10, ("happy", "test"): 10})
    splits.run(config)
    frame = read_outputs(config)
    test = frame[frame["split"] == "test"]
    assert len(test) == 10 and set(test["source_split"]) == {"train", "test"}


def test_same_seed_same_splits_other_seed_other_splits(tmp_path):
    counts = {("neutral", ""): 80, ("happy", ""): 80}
    results = []
    for seed in (3, 3, 4):
        config = make_config(tmp_path / f"run{len(results)}", valid_per_class=10, test_fraction=0.2, seed=seed)
        write_manifest(config, counts)
        splits.run(config)
        results.append(read_outputs(config)["split"].tolist())
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_duplicate_images_in_two_splits_are_refused(tmp_path):
    config = make_config(tmp_path, valid_per_class=0)
    frame = write_manifest(config, {("happy", "train"): 3, ("happy", "validation"): 1})
    frame.loc[3, "filename"] = frame.loc[0, "filename"]
    files.save_csv(config.paths.manifest, frame)
    with pytest.raises(PipelineError, match="splits are not disjoint"):
        splits.run(config)


def test_unknown_drop_class_and_missing_manifest_are_pipeline_errors(tmp_path):
    config = make_config(tmp_path, drop_classes=["bored"])
    with pytest.raises(PipelineError, match="run get_filenames_and_labels.py first"):
        splits.run(config)
    write_manifest(config, {("happy", ""): 3})
    with pytest.raises(PipelineError, match="'bored' is not a class"):
        splits.run(config)


def test_unchanged_rerun_does_nothing(tmp_path, capsys):
    config = make_config(tmp_path, valid_per_class=1)
    write_manifest(config, {("happy", ""): 10, ("sad", ""): 10})
    splits.run(config)
    written = config.paths.split_manifest.stat().st_mtime_ns
    capsys.readouterr()
    splits.run(config)
    assert "up to date" in capsys.readouterr().out
    assert config.paths.split_manifest.stat().st_mtime_ns == written


def test_formula_like_names_stay_quoted_in_the_split_manifest_and_plain_in_the_hand_offs(tmp_path):
    config = make_config(tmp_path, valid_per_class=1, test_fraction=0.0, use_source_evaluation_split=False)
    names = ["=cmd.jpg", "+a.jpg", "-b.jpg", "@c.jpg", "plain.jpg", "'=quoted.jpg"]
    frame = pd.DataFrame({
        "filename": names, "label": "happy", "label_id": 1, "source_label": "-1", "source_split": "",
        "source_file": "@list.csv:2", "valence": -0.5, "arousal": 0.25, "affect_annotation": "annotated",
        "landmarks": ";".join(["-2.5"] * 136),
    }).reindex(columns=list(MANIFEST_COLUMNS))
    files.save_csv(config.paths.manifest, frame)
    assert splits.run(config) == 0
    as_written = read_outputs(config)
    assert sorted(as_written["filename"]) == sorted(["'=cmd.jpg", "'+a.jpg", "'-b.jpg", "'@c.jpg", "plain.jpg",
                                                     "''=quoted.jpg"])
    assert (as_written["valence"] == -0.5).all() and (as_written["source_label"] == "'-1").all()
    back = read_manifest(config.paths.split_manifest)
    assert sorted(back["filename"]) == sorted(names)
    assert (back["source_label"] == "-1").all() and (back["source_file"] == "@list.csv:2").all()
    assert (back["landmarks"] == ";".join(["-2.5"] * 136)).all()
    handed_off = [name for split in splits.SPLITS
                  for name in files.load_npy(config.paths.processed / f"X_{split}_filenames.npy").tolist()]
    assert sorted(handed_off) == sorted(names)
