"""TFRecord shards: what they hold, when they are rewritten, and training from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_classifier import split_files, tfrecords, training
from emotion_classifier.images import load_image
from emotion_classifier.config import GeneratorConfig
from split_fixtures import write_split_fixture
from test_training import tiny_config


def training_frame(config) -> pd.DataFrame:
    frame, _classes = split_files.read_split(config)
    return split_files.split_rows(frame, "train")


def test_shards_hold_the_pillow_pixels_and_labels_of_every_row(tmp_path):
    config = write_split_fixture(tmp_path, per_class=6)
    rows = training_frame(config)
    # A face box on one row: its shard image must be the crop, as the file path would feed it.
    rows.loc[0, ["face_x", "face_y", "face_width", "face_height"]] = [8.0, 10.0, 24.0, 20.0]
    folder = tmp_path / "shards"
    index = tfrecords.write_shards(rows, config.paths.images_root, folder, 32, 1, shard_images=4,
                                   workers=2, progress=False)
    assert index["images"] == len(rows) == 9
    assert [shard["images"] for shard in index["shards"]] == [3, 3, 3]
    assert sorted(path.name for path in folder.glob("shard-*.tfrecord")) == [shard["file"] for shard in index["shards"]]

    dataset = tfrecords.make_dataset(folder, batch_size=4, training=False, generator_config=GeneratorConfig())
    images = np.concatenate([batch[0].numpy() for batch in dataset])
    labels = np.concatenate([batch[1].numpy() for batch in dataset])
    assert images.shape == (9, 32, 32, 1) and images.dtype == np.float32 and labels.dtype == np.int32
    expected = {}
    boxes = split_files.face_boxes(rows)
    for position, filename in enumerate(rows["filename"]):
        box = boxes[position] if boxes[position, 2] > 0 else None
        pixels = load_image(Path(config.paths.images_root) / filename, 32, 1, box)
        expected[np.round(pixels).astype("uint8").tobytes()] = int(rows["class_index"][position])
    found = {image.astype("uint8").tobytes(): int(label) for image, label in zip(images, labels)}
    assert found == expected


def test_unreadable_images_are_left_out_and_listed(tmp_path):
    config = write_split_fixture(tmp_path, per_class=6)
    rows = training_frame(config)
    broken = Path(config.paths.images_root) / rows["filename"][2]
    broken.write_bytes(b"not a jpeg")
    index = tfrecords.write_shards(rows, config.paths.images_root, tmp_path / "shards", 32, 3, progress=False)
    assert index["images"] == len(rows) - 1
    assert index["unreadable_files"] == [str(broken)]


def test_shards_are_written_once_and_again_only_when_rows_change(tmp_path):
    config = tiny_config(tmp_path)
    rows = training_frame(config)
    folder, index = tfrecords.ensure_shards(config, config.model_4, rows, "train", progress=False)
    assert folder == Path(config.paths.processed) / "tfrecords" / "train_32x32x1"
    index_mtime = (folder / "index.json").stat().st_mtime_ns
    tfrecords.ensure_shards(config, config.model_4, rows, "train", progress=False)
    assert (folder / "index.json").stat().st_mtime_ns == index_mtime
    fewer = rows.iloc[:-1].reset_index(drop=True)
    _folder, rewritten = tfrecords.ensure_shards(config, config.model_4, fewer, "train", progress=False)
    assert rewritten["images"] == len(fewer) and rewritten["fingerprint"] != index["fingerprint"]


def test_training_from_tfrecords_matches_the_configured_source(tmp_path):
    config = tiny_config(tmp_path)
    config.generator.source = "tfrecords"
    run_dir = training.train(config, "model_4")
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["epochs_run"] == 2
    for split, count in (("train", 9), ("valid", 6)):
        index = json.loads((Path(config.paths.processed) / "tfrecords" / f"{split}_32x32x1" / "index.json").read_text())
        assert index["images"] == count


def test_missing_index_is_a_clear_error(tmp_path):
    from emotion_classifier.errors import PipelineError

    with pytest.raises(PipelineError, match="index.json not found"):
        tfrecords.make_dataset(tmp_path, 4, True, GeneratorConfig())
