"""The inspection stage draws both figures from a manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_classifier import files, inspect_images
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from emotion_classifier.manifest import MANIFEST_COLUMNS


def make_config(tmp_path) -> Config:
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    config.paths.reports_dir = str(tmp_path / "reports")
    return config


def test_inspect_writes_sample_grid_and_distribution_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inspect_images, "SAMPLES_PER_CLASS", 3)
    config = make_config(tmp_path)
    records = []
    rng = np.random.default_rng(1)
    for label, label_id, split, count in (("happy", 1, "train", 4), ("happy", 1, "validation", 1),
                                         ("sad", 2, "train", 2), ("anger", 6, "", 1)):
        for index in range(count):
            filename = f"{label}/{split or 'none'}_{index}.jpg"
            path = config.paths.images_root / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
            with_box = label != "anger"
            records.append({
                "filename": filename, "label": label, "label_id": label_id, "source_label": label,
                "source_split": split, "source_file": "training.csv",
                "face_x": 10 if with_box else np.nan, "face_y": 5 if with_box else np.nan,
                "face_width": 40 if with_box else np.nan, "face_height": 30 if with_box else np.nan,
                "landmarks": "",
            })
    files.save_csv(config.paths.manifest, pd.DataFrame(records).reindex(columns=list(MANIFEST_COLUMNS)))

    assert inspect_images.run(config) == 0
    figures = config.paths.reports / "figures"
    for name in ("sample_images.png", "class_distribution.png"):
        with Image.open(figures / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 200
    # Three class rows of three images: taller than wide by roughly the grid's shape.
    with Image.open(figures / "sample_images.png") as image:
        assert image.height > 0.8 * image.width
    capsys.readouterr()
    assert inspect_images.run(config) == 0
    assert "up to date" in capsys.readouterr().out


def test_sample_rows_draws_at_most_the_requested_count_per_class():
    frame = pd.DataFrame({"label": ["happy"] * 10 + ["sad"] * 2, "filename": [str(i) for i in range(12)]})
    first = inspect_images.sample_rows(frame, 4, seed=5)
    assert first["label"].value_counts().to_dict() == {"happy": 4, "sad": 2}
    assert first["filename"].tolist() == inspect_images.sample_rows(frame, 4, seed=5)["filename"].tolist()


def test_inspect_without_manifest_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="run get_filenames_and_labels.py first"):
        inspect_images.run(make_config(tmp_path))


def test_inspect_never_opens_paths_outside_the_images_root_or_pipes(tmp_path, monkeypatch):
    import os

    config = make_config(tmp_path)
    images_root = config.paths.images_root
    (images_root / "happy").mkdir(parents=True)
    os.mkfifo(images_root / "happy" / "pipe.jpg")
    Image.new("RGB", (20, 20)).save(tmp_path / "outside.jpg")
    names = ["happy/pipe.jpg", "../../outside.jpg", str(tmp_path / "outside.jpg")]
    records = [{"filename": name, "label": "happy", "label_id": 1, "source_label": "happy", "source_split": "train",
                "source_file": "hand-edited", "landmarks": ""} for name in names]
    files.save_csv(config.paths.manifest, pd.DataFrame(records).reindex(columns=list(MANIFEST_COLUMNS)))
    opened = []
    real_open = inspect_images.Image.open
    monkeypatch.setattr(inspect_images.Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    # Opening the pipe would wait forever: run in a daemon thread that the test does not wait for.
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(inspect_images.run(config)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "inspect_images opened the named pipe"
    assert results == [0] and opened == []


def test_the_stage_has_no_section_of_its_own_so_overrides_name_theirs(capsys):
    from pathlib import Path

    from emotion_classifier import cli

    sample = Path(__file__).resolve().parents[1] / "config" / "sample.toml"
    assert cli.main(inspect_images.run, "inspect", None, ["--config", str(sample), "samples=3"]) == 2
    assert "needs a section: write SECTION.KEY=VALUE" in capsys.readouterr().err
