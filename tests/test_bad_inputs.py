"""Each stage's command on generated bad inputs: bad items are left out with their reason, fatal
problems stop with one line naming the file, row or key (exit status 2), never a traceback.

The stages run as a user runs them (``python get_filenames_and_labels.py --config ...``) in a
subprocess; none of these stages imports TensorFlow, so each run takes a second or two. A run
that opened a named pipe would wait forever: the subprocess timeout turns that into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_classifier import files
from emotion_classifier.affectnet_labels import AFFECTNET_CSV_COLUMNS
from emotion_classifier.manifest import MANIFEST_COLUMNS, read_manifest

REPOSITORY = Path(__file__).resolve().parents[1]
STAGE_TIMEOUT_SECONDS = 120


def run_stage(script: str, config_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY / "src"))
    return subprocess.run(
        [sys.executable, str(REPOSITORY / script), "--config", str(config_path), *overrides],
        cwd=config_path.parent, env=environment, capture_output=True, text=True, timeout=STAGE_TIMEOUT_SECONDS,
        check=False,
    )


def assert_status(result: subprocess.CompletedProcess, status: int) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == status, output


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert_status(result, 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def write_config(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.toml"
    path.write_text(
        f'[paths]\ndata_dir = "{folder / "data"}"\nmodels_dir = "{folder / "models"}"\n'
        f'reports_dir = "{folder / "reports"}"\n'
        f'[split]\nvalid_per_class = 1\ntest_fraction = 0.3\n{extra}'
    )
    return path


def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def rejections(config_folder: Path) -> dict[str, str]:
    rejected = pd.read_csv(config_folder / "data" / "processed" / "rejected_files.csv", dtype=str,
                           keep_default_na=False)
    return dict(zip(rejected["filename"], rejected["reason"]))


def test_class_folders_with_links_out_pipes_and_formula_names_through_every_stage(tmp_path):
    config_path = write_config(tmp_path)
    images = tmp_path / "data" / "interim" / "images"
    for index in range(4):
        write_image(images / "happy" / f"{index}.jpg", index)
        write_image(images / "sad" / f"{index}.jpg", 10 + index)
    write_image(tmp_path / "secret" / "photo.jpg")
    (images / "happy" / "linked.jpg").symlink_to(tmp_path / "secret" / "photo.jpg")
    (images / "fear").symlink_to(tmp_path / "secret")
    os.mkfifo(images / "sad" / "pipe.jpg")
    write_image(images / "=HYPERLINK(1).jpg")
    write_image(images / "@evil" / "x.jpg")

    labels_run = run_stage("get_filenames_and_labels.py", config_path)
    assert_status(labels_run, 0)
    reasons = rejections(tmp_path)
    assert reasons["happy/linked.jpg"].startswith("path outside the images root: symbolic link to")
    assert reasons["fear"] == "symbolic link to a folder, not followed"
    assert reasons["sad/pipe.jpg"] == "not an image file: a named pipe (FIFO), never opened"
    assert reasons["'=HYPERLINK(1).jpg"] == "image not inside a class folder"
    assert reasons["'@evil/x.jpg"] == "unknown class folder: @evil"
    assert len(read_manifest(tmp_path / "data" / "processed" / "manifest.csv")) == 8

    assert_status(run_stage("train_valid_test_clean.py", config_path), 0)
    assert_status(run_stage("inspect_images.py", config_path), 0)


def test_affectnet_label_file_in_utf16_with_escaping_rows_and_a_pipe(tmp_path):
    config_path = write_config(tmp_path)
    images = tmp_path / "data" / "interim" / "images"
    labels_root = tmp_path / "data" / "interim" / "labels"
    write_image(images / "689" / "good.jpg")
    write_image(tmp_path / "data" / "interim" / "outside.jpg")
    os.mkfifo(images / "689" / "pipe.jpg")
    landmarks = ";".join(["-1.5"] * 136)
    rows = [f"{name},1,1,10,10,{landmarks},1,-0.5,0.25" for name in
            ("689/good.jpg", "../outside.jpg", "/etc/passwd", "689/pipe.jpg", "-cmd.jpg")]
    labels_root.mkdir(parents=True)
    (labels_root / "training.csv").write_text("\n".join([",".join(AFFECTNET_CSV_COLUMNS), *rows]) + "\n",
                                              encoding="utf-16")
    assert_status(run_stage("get_filenames_and_labels.py", config_path), 0)
    reasons = rejections(tmp_path)
    assert reasons["../outside.jpg"] == "path outside the images root: climbs out with '..'"
    assert reasons["/etc/passwd"] == "path outside the images root: absolute path"
    assert reasons["689/pipe.jpg"] == "not an image file: a named pipe (FIFO), never opened"
    assert reasons["'-cmd.jpg"] == "missing file"
    frame = read_manifest(tmp_path / "data" / "processed" / "manifest.csv")
    assert frame["filename"].tolist() == ["689/good.jpg"]
    assert frame["landmarks"].tolist() == [landmarks] and frame["valence"].tolist() == [-0.5]
    summary = files.read_json(tmp_path / "reports" / "labels_summary.json")
    assert summary["label_file_encodings"] == {"training.csv": "utf-16"}

    # Every row bad: nothing to hand on, one line saying so.
    (labels_root / "training.csv").write_text(",".join(AFFECTNET_CSV_COLUMNS) + "\n" + rows[1] + "\n")
    assert_one_line_error(run_stage("get_filenames_and_labels.py", config_path), "no usable rows")


def test_inspect_on_a_hand_edited_manifest_never_opens_a_pipe_or_a_path_out(tmp_path):
    config_path = write_config(tmp_path)
    images = tmp_path / "data" / "interim" / "images"
    (images / "happy").mkdir(parents=True)
    os.mkfifo(images / "happy" / "pipe.jpg")
    write_image(tmp_path / "outside.jpg")
    records = [{"filename": name, "label": "happy", "label_id": 1, "source_label": "happy", "source_split": "",
                "source_file": "edited", "landmarks": ""}
               for name in ("happy/pipe.jpg", "../../../outside.jpg", str(tmp_path / "outside.jpg"))]
    files.save_csv(tmp_path / "data" / "processed" / "manifest.csv",
                   pd.DataFrame(records).reindex(columns=list(MANIFEST_COLUMNS)))
    assert_status(run_stage("inspect_images.py", config_path), 0)


@pytest.mark.parametrize(
    "script, config_text, overrides, expected",
    [
        ("get_filenames_and_labels.py", "[split]\nvalid_per_class = -1\n", [], ["split.valid_per_class", "[0, inf)"]),
        ("get_filenames_and_labels.py", "", ["generator.zoom=1.0"], ["generator.zoom"]),
        ("train_valid_test_clean.py", b"[split]\n# caf\xe9\nseed = 1\n", [], ["run.toml", "not UTF-8"]),
        ("inspect_images.py", "[model_6]\nconv_filters = [8]\n", [], ["unknown key model_6.conv_filters"]),
        ("inspect_images.py", "[training]\nwarmup_epochs = 2\n", [], ["training.warmup_epochs", "cosine"]),
        ("consolidate_data.py", "[consolidate\nlink_mode = 1\n", [], ["run.toml", "not valid TOML"]),
        ("consolidate_data.py", "DATA_IS_A_FILE", [], ["paths.data_dir", "is not a folder"]),
        ("train_valid_test_clean.py", "DATA_IS_A_FILE", [], ["paths.data_dir", "is not a folder"]),
    ],
)
def test_bad_configuration_stops_every_stage_with_one_line(tmp_path, script, config_text, overrides, expected):
    config_path = tmp_path / "run.toml"
    if config_text == "DATA_IS_A_FILE":
        (tmp_path / "data").write_text("a file where the data folder belongs")
        config_path.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n')
    elif isinstance(config_text, bytes):
        config_path.write_bytes(config_text)
    else:
        config_path.write_text(config_text)
    assert_one_line_error(run_stage(script, config_path, *overrides), *expected)
