"""The labels stage: every layout into one manifest, bad rows reported with file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fer_data import fer_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotion_classifier import affectnet_labels, files, labels
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config
from emotion_classifier.manifest import MANIFEST_COLUMNS, REJECTED_COLUMNS, read_manifest

HEADER = ",".join(affectnet_labels.AFFECTNET_CSV_COLUMNS)
IMAGE_SIZE = (120, 100)
LANDMARKS = ";".join(f"{value:.2f}" for value in np.linspace(20.0, 90.0, 136))


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    """Images read and checked in this process: the tests' few images need no process pool."""
    monkeypatch.setattr(labels, "WORKERS", 1)


def make_config(tmp_path: Path, **label_settings) -> Config:
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    config.paths.reports_dir = str(tmp_path / "reports")
    config.paths.models_dir = str(tmp_path / "models")
    for key, value in label_settings.items():
        setattr(config.labels, key, value)
    return config


def write_image(path: Path, size=IMAGE_SIZE, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, "JPEG")


def csv_row(filename, box=(10, 12, 60, 50), landmarks=LANDMARKS, expression=1, valence=0.5, arousal=-2):
    return ",".join(str(value) for value in (filename, *box, landmarks, expression, valence, arousal))


def write_csv(path: Path, rows: list[str], encoding="utf-8", newline="\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join([HEADER, *rows]) + newline).encode(encoding))


@pytest.fixture
def affectnet_csv_config(tmp_path):
    """AffectNet's original layout: every expression code 0..10, images larger than the boxes."""
    config = make_config(tmp_path)
    training_rows, validation_rows = [], []
    for code in range(11):
        filename = f"689/{code:02d}abcdef.jpg"
        write_image(config.paths.images_root / filename)
        training_rows.append(csv_row(filename, expression=code, valence=-2 if code % 2 else 0.25,
                                     arousal=-0.5))
    for code in (0, 1, 6):
        filename = f"1001/val{code}.jpg"
        write_image(config.paths.images_root / filename)
        validation_rows.append(csv_row(filename, expression=code))
    write_csv(config.paths.labels_root / "Manually_Annotated_file_lists" / "training.csv", training_rows)
    write_csv(config.paths.labels_root / "Manually_Annotated_file_lists" / "validation.csv", validation_rows)
    return config


def test_affectnet_csv_layout_builds_manifest_and_hand_offs(affectnet_csv_config, capsys):
    config = affectnet_csv_config
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest)
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert len(frame) == 14
    training = frame[frame["source_split"] == "train"]
    assert training["label_id"].tolist() == list(range(11))
    assert training["label"].tolist()[:3] == ["neutral", "happy", "sad"]
    assert training["label"].iloc[10] == "non_face"
    assert (frame[frame["source_split"] == "validation"]["label"].tolist() == ["neutral", "happy", "anger"])
    first = training.iloc[1]
    assert (first["face_x"], first["face_y"], first["face_width"], first["face_height"]) == (10, 12, 60, 50)
    assert np.isnan(first["valence"]) and first["arousal"] == -0.5  # -2 means not annotated
    assert training.iloc[0]["valence"] == 0.25
    assert first["landmarks"] == LANDMARKS
    assert (frame["image_width"] == IMAGE_SIZE[0]).all() and (frame["image_height"] == IMAGE_SIZE[1]).all()
    assert first["source_file"] == "Manually_Annotated_file_lists/training.csv:3"
    processed = config.paths.processed
    assert files.load_npy(processed / "filenames.npy").tolist() == frame["filename"].tolist()
    label_array = files.load_npy(processed / "labels.npy")
    assert label_array.dtype == np.int64 and label_array.tolist() == frame["label_id"].tolist()
    summary = files.read_json(config.paths.reports / "labels_summary.json")
    assert summary["layout"] == "affectnet_csv"
    assert summary["rows_read"] == 14 and summary["rows_rejected"] == 0
    assert summary["per_source_split"] == {"train": 11, "validation": 3}
    assert summary["per_class"]["happy"] == 2
    # An unchanged re-run does nothing.
    manifest_time = config.paths.manifest.stat().st_mtime_ns
    capsys.readouterr()
    assert labels.run(config) == 0
    assert "up to date" in capsys.readouterr().out
    assert config.paths.manifest.stat().st_mtime_ns == manifest_time


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    config = make_config(tmp_path)
    images_root = config.paths.images_root
    for name in ("good", "clip_left", "clip_right", "outside", "zero", "dup", "caf\u00e9"):
        write_image(images_root / f"7/{name}.jpg")
    write_image(images_root / "7/gray.jpg", mode="L")
    (images_root / "7/broken.jpg").write_bytes(b"not a jpeg at all")
    rows = [
        csv_row("7/good.jpg"),                                   # line 2
        csv_row("7/good.jpg", expression="abc"),                  # line 3
        csv_row("7/good.jpg", expression=12),                     # line 4
        csv_row("7/good.jpg", expression=1.5),                    # line 5
        csv_row("7/good.jpg", expression="NaN"),                  # line 6
        csv_row("7/good.jpg", valence=""),                        # line 7
        csv_row("7/good.jpg", valence=1.5),                       # line 8
        csv_row("7/clip_left.jpg", box=(-5, 10, 40, 40)),         # line 9
        csv_row("7/clip_right.jpg", box=(100, 10, 40, 40)),       # line 10
        csv_row("7/outside.jpg", box=(500, 10, 40, 40)),          # line 11
        csv_row("7/zero.jpg", box=(10, 10, 0, 40)),               # line 12
        csv_row("7/dup.jpg"),                                     # line 13
        csv_row("7/dup.jpg"),                                     # line 14
        csv_row("7/good.jpg") + ",extra",                         # line 15
        csv_row("7/missing.jpg"),                                 # line 16
        csv_row("7/broken.jpg"),                                  # line 17
        csv_row("7/gray.jpg", landmarks="1;2;3"),                 # line 18
        csv_row("7/caf\u00e9.jpg", arousal=-3),                   # line 19
        "7/good.jpg,1,2",                                         # line 20
        "",                                                       # line 21
    ]
    # Windows line endings and a Windows code page, as a spreadsheet program would write them.
    write_csv(config.paths.labels_root / "training.csv", rows, encoding="cp1252", newline="\r\n")
    write_csv(config.paths.labels_root / "validation.csv", [csv_row("7/caf\u00e9.jpg"), csv_row("7/good.jpg")])
    assert labels.run(config) == 0

    rejected = pd.read_csv(config.paths.processed / "rejected_files.csv", keep_default_na=False)
    assert list(rejected.columns) == list(REJECTED_COLUMNS)
    reason_by_line = {
        int(source.split(":")[1]): reason
        for source, reason in zip(rejected["source_file"], rejected["reason"])
        if source.startswith("training.csv:")
    }
    expected = {
        3: "expression is not a number: 'abc'",
        4: "expression is not a code 0..10: 12",
        5: "expression is not a code 0..10: 1.5",
        6: "expression is not a number: 'NaN'",
        7: "missing value: valence",
        8: "valence outside [-1, 1] and not the -2 'not annotated' marker: 1.5",
        11: "face box wholly outside the image",
        12: "face box has zero or negative size: 0x40",
        14: "duplicate row: first kept at training.csv:13",
        15: "wrong number of fields: expected 9 fields, saw 10",
        16: "missing file",
        17: "not an image or unknown format",
        19: "arousal outside [-1, 1] and not the -2 'not annotated' marker: -3",
        20: "missing value: expression",
        21: "empty line",
    }
    assert sorted(reason_by_line) == sorted(expected)
    for line, reason in expected.items():
        assert reason_by_line[line].startswith(reason), (line, reason_by_line[line])
    # A duplicate across files names the row that was kept; the encoding was read correctly.
    duplicate = rejected[rejected["source_file"] == "validation.csv:3"]
    assert duplicate["reason"].tolist() == ["duplicate row: first kept at training.csv:2"]

    frame = read_manifest(config.paths.manifest)
    assert sorted(frame["filename"]) == [
        "7/caf\u00e9.jpg", "7/clip_left.jpg", "7/clip_right.jpg", "7/dup.jpg", "7/good.jpg", "7/gray.jpg"
    ]
    boxes = frame.set_index("filename")[["face_x", "face_y", "face_width", "face_height"]]
    assert boxes.loc["7/clip_left.jpg"].tolist() == [0, 10, 35, 40]
    assert boxes.loc["7/clip_right.jpg"].tolist() == [100, 10, 20, 40]
    assert frame.set_index("filename").loc["7/gray.jpg", "landmarks"] == ""

    notes = pd.read_csv(config.paths.processed / "label_notes.csv", keep_default_na=False)
    note_by_line = dict(zip(notes["source_file"], notes["note"]))
    assert note_by_line["training.csv:9"].startswith("face box partly outside the image, clipped")
    assert note_by_line["training.csv:10"].startswith("face box partly outside the image, clipped")
    assert "training.csv:18" in set(notes["source_file"])  # grayscale and malformed landmarks
    summary = files.read_json(config.paths.reports / "labels_summary.json")
    assert summary["rows_read"] == 22  # 20 lines of training.csv, 2 of validation.csv
    assert summary["rows_accepted"] + summary["rows_rejected"] == summary["rows_read"]
    assert summary["rejected_by_reason"]["expression is not a number"] == 2
    assert summary["label_file_encodings"] == {"training.csv": "cp1252"}


def test_missing_columns_stop_with_one_clear_error(tmp_path):
    config = make_config(tmp_path, check_images=False)
    path = config.paths.labels_root / "training.csv"
    path.parent.mkdir(parents=True)
    path.write_text("subDirectory_filePath,face_x,face_y,face_width,face_height,expression\n1/a.jpg,1,1,5,5,1\n")
    with pytest.raises(PipelineError, match=r"training\.csv: missing column\(s\) facial_landmarks, valence, arousal"):
        labels.run(config)


def test_later_release_npy_layout(tmp_path):
    config = make_config(tmp_path)
    annotations = {
        ("train_set", "10"): (np.array("3"), np.array(0.2), np.array([-0.4]), np.arange(136, dtype="float32")),
        ("train_set", "11"): (np.array(6), np.array("-2"), np.array("0.1"), np.arange(136, dtype="float64")),
        ("train_set", "12"): (np.array("15"), np.array(0.0), np.array(0.0), np.arange(136, dtype="float64")),
        ("val_set", "20"): (np.array(["1"]), np.array(0.9), np.array(0.3), np.arange(10, dtype="float64")),
        ("val_set", "21"): (np.array("0"), np.array(0.0), np.array(0.0), np.arange(136, dtype="float64")),
    }
    for (set_name, image_id), values in annotations.items():
        folder = config.paths.labels_root / set_name / "annotations"
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, value in zip(("exp", "val", "aro", "lnd"), values):
            np.save(folder / f"{image_id}_{suffix}.npy", value)
        if image_id != "21":
            write_image(config.paths.images_root / set_name / "images" / f"{image_id}.jpg")
    write_image(config.paths.images_root / "val_set" / "images" / "99.jpg")
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest).set_index("filename")
    assert sorted(frame.index) == ["train_set/images/10.jpg", "train_set/images/11.jpg", "val_set/images/20.jpg"]
    assert frame.loc["train_set/images/10.jpg", "label"] == "surprise"
    assert frame.loc["train_set/images/10.jpg", "arousal"] == pytest.approx(-0.4)
    assert frame.loc["train_set/images/10.jpg", "landmarks"].split(";")[:3] == ["0", "1", "2"]
    assert np.isnan(frame.loc["train_set/images/11.jpg", "valence"])
    assert frame.loc["train_set/images/11.jpg", "label"] == "anger"
    assert frame.loc["val_set/images/20.jpg", "source_split"] == "validation"
    assert frame.loc["val_set/images/20.jpg", "landmarks"] == ""
    assert frame["face_x"].isna().all()
    rejected = pd.read_csv(config.paths.processed / "rejected_files.csv", keep_default_na=False)
    reasons = dict(zip(rejected["filename"], rejected["reason"]))
    assert reasons["train_set/images/12.jpg"] == "expression is not a code 0..10: 15"
    assert reasons["val_set/images/21.jpg"].startswith("missing file")
    assert reasons["val_set/images/99.jpg"] == "image without annotation"
    summary = files.read_json(config.paths.reports / "labels_summary.json")
    assert summary["layout"] == "affectnet_npy" and summary["rows_read"] == 6


def _copy_fer_images(source_split: str, source_class: str, destination: Path, count: int) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted((fer_root() / source_split / source_class).iterdir())[:count]:
        shutil.copy(path, destination / path.name)


def test_class_folders_inside_split_folders_with_real_fer2013_images(tmp_path):
    config = make_config(tmp_path)
    images_root = config.paths.images_root
    _copy_fer_images("train", "angry", images_root / "train" / "angry", 3)
    _copy_fer_images("train", "happy", images_root / "train" / "Happiness", 2)
    _copy_fer_images("train", "sad", images_root / "train" / "bored", 2)
    _copy_fer_images("val", "surprise", images_root / "val" / "surprise", 2)
    (images_root / "train" / "notes.txt").write_text("not an image")
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest)
    assert frame.groupby(["source_split", "label"]).size().to_dict() == {
        ("train", "anger"): 3, ("train", "happy"): 2, ("validation", "surprise"): 2,
    }
    assert set(frame["source_label"]) == {"angry", "Happiness", "surprise"}
    assert (frame["image_width"] == 48).all()
    rejected = pd.read_csv(config.paths.processed / "rejected_files.csv", keep_default_na=False)
    assert (rejected["reason"] == "unknown class folder: bored").sum() == 2
    assert "train/notes.txt" in set(rejected["filename"])
    summary = files.read_json(config.paths.reports / "labels_summary.json")
    assert summary["layout"] == "class_folders"
    assert summary["notes_by_kind"] == {"grayscale image, converted to the model's channels": 7}


def test_class_folders_without_split_folders(tmp_path):
    config = make_config(tmp_path, check_images=False, layout="class_folders")
    for name in ("neutral", "Sadness", "fearful"):
        for index in range(2):
            write_image(config.paths.images_root / name / f"{index}.jpg", size=(20, 20))
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest)
    assert sorted(frame["label"]) == ["fear", "fear", "neutral", "neutral", "sad", "sad"]
    assert (frame["source_split"] == "").all()
    assert frame["image_width"].isna().all()


def test_no_layout_found_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="no label layout found"):
        labels.run(make_config(tmp_path))


_FIELD_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=","), max_size=12
)
_GOOD_FIELDS = ["7/a.jpg", "1", "2", "30", "40", LANDMARKS, "3", "0.5", "-2"]


@st.composite
def _random_row(draw):
    fields = [draw(st.one_of(st.just(good), _FIELD_TEXT, st.sampled_from(["-2", "0", "11", "-1.5", "nan", ""])))
              for good in _GOOD_FIELDS]
    extra_or_fewer = draw(st.integers(min_value=-3, max_value=2))
    if extra_or_fewer > 0:
        fields += ["x"] * extra_or_fewer
    elif extra_or_fewer < 0:
        fields = fields[:extra_or_fewer]
    return ",".join(fields)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_random_row(), min_size=1, max_size=15))
def test_csv_parser_accepts_or_rejects_every_random_row(tmp_path, rows):
    path = tmp_path / "training.csv"
    write_csv(path, rows)
    table = affectnet_labels.read_affectnet_csv(path, "training.csv", "train")
    assert len(table.rows) + len(table.rejected) == len(rows) == table.rows_read
    assert (table.rejected["reason"] != "").all()
    lines = sorted(int(source.split(":")[1]) for source in table.rejected["source_file"])
    lines += [int(source.split(":")[1]) for source in table.rows["source_file"]]
    assert sorted(lines) == list(range(2, len(rows) + 2))
    assert table.rows["label_id"].between(0, 10).all()
    assert table.rows["valence"].dropna().between(-1, 1).all()


@pytest.mark.slow
def test_a_million_csv_rows_are_read_quickly(tmp_path):
    import time

    config = make_config(tmp_path, check_images=False)
    path = config.paths.labels_root / "training.csv"
    path.parent.mkdir(parents=True)
    line = csv_row("689/{}.jpg", expression="{}")
    with open(path, "w") as handle:
        handle.write(HEADER + "\n")
        handle.writelines(line.format(index, index % 11) + "\n" for index in range(1_000_000))
    start = time.perf_counter()
    labels.run(config)
    elapsed = time.perf_counter() - start
    assert json.loads((config.paths.reports / "labels_summary.json").read_text())["rows_accepted"] == 1_000_000
    assert elapsed < 60, elapsed


# ----------------------------------------------------------------------------------------------
# Hostile inputs: nothing outside the images root is read, special files are named, formulas quoted


def _rejections(config: Config) -> dict[str, str]:
    rejected = pd.read_csv(config.paths.processed / "rejected_files.csv", keep_default_na=False, dtype=str)
    return {files.restore_csv_text(name): reason for name, reason in zip(rejected["filename"], rejected["reason"])}


@pytest.mark.parametrize("check_images", [True, False])
def test_symbolic_links_out_of_the_images_root_are_rejected(tmp_path, check_images):
    config = make_config(tmp_path, check_images=check_images, layout="class_folders")
    images_root = config.paths.images_root
    outside = tmp_path / "elsewhere"
    write_image(outside / "private.jpg")
    write_image(outside / "folder" / "photo.jpg")
    write_image(images_root / "happy" / "kept.jpg")
    (images_root / "happy" / "linked_out.jpg").symlink_to(outside / "private.jpg")
    (images_root / "happy" / "linked_in.jpg").symlink_to(images_root / "happy" / "kept.jpg")
    (images_root / "sad").symlink_to(outside / "folder")
    (images_root / "happy" / "sub").mkdir()
    (images_root / "happy" / "sub" / "up.jpg").symlink_to("../../../../../elsewhere/private.jpg")
    if check_images:  # without image checks nothing tells a missing file
        (images_root / "happy" / "dangling.jpg").symlink_to(images_root / "happy" / "gone.jpg")
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest)
    assert sorted(frame["filename"]) == ["happy/kept.jpg", "happy/linked_in.jpg"]
    reasons = _rejections(config)
    assert reasons["happy/linked_out.jpg"] == f"path outside the images root: symbolic link to {outside / 'private.jpg'}"
    assert reasons["happy/sub/up.jpg"].startswith("path outside the images root: symbolic link")
    assert reasons["sad"] == "symbolic link to a folder, not followed"
    if check_images:
        assert reasons["happy/dangling.jpg"] == "missing file"


def test_affectnet_paths_climbing_out_or_absolute_are_rejected_unopened(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    images_root = config.paths.images_root
    write_image(images_root / "689" / "good.jpg")
    write_image(tmp_path / "data" / "interim" / "outside.jpg")
    npy_images = images_root / "train_set" / "images"
    npy_images.mkdir(parents=True)
    write_csv(config.paths.labels_root / "training.csv", [
        csv_row("689/good.jpg"),
        csv_row("../outside.jpg"),
        csv_row("689/../../outside.jpg"),
        csv_row("..\\other.jpg"),
        csv_row("/etc/passwd"),
        csv_row(str(tmp_path / "data" / "interim" / "outside.jpg")),
    ])
    opened = []
    real_check = labels.image_checks.check_image
    monkeypatch.setattr(labels.image_checks, "check_image",
                        lambda path, max_pixels: opened.append(str(path)) or real_check(path, max_pixels))
    assert labels.run(config) == 0
    assert read_manifest(config.paths.manifest)["filename"].tolist() == ["689/good.jpg"]
    reasons = _rejections(config)
    assert reasons["../outside.jpg"] == "path outside the images root: climbs out with '..'"
    assert reasons["689/../../outside.jpg"] == "path outside the images root: climbs out with '..'"
    assert reasons["../other.jpg"] == "path outside the images root: climbs out with '..'"
    assert reasons["/etc/passwd"] == "path outside the images root: absolute path"
    assert reasons[str(tmp_path / "data" / "interim" / "outside.jpg")] == "path outside the images root: absolute path"
    assert opened == [str(images_root / "689" / "good.jpg")]


def test_named_pipes_and_sockets_among_images_are_named_and_never_opened(tmp_path):
    import os
    import socket
    import tempfile
    import threading

    # A socket path must be short (about 100 bytes), shorter than pytest's temporary folders.
    short_root = Path(tempfile.mkdtemp(prefix="ec", dir="/tmp"))
    try:
        config = make_config(short_root)
        images_root = config.paths.images_root
        write_image(images_root / "happy" / "kept.jpg")
        os.mkfifo(images_root / "happy" / "pipe.jpg")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(images_root / "happy" / "socket.png"))
        (images_root / "happy" / "device.jpg").symlink_to(images_root / "happy" / "pipe.jpg")
        # Opening the pipe would wait forever: run in a daemon thread that the test does not wait for.
        results = []
        worker = threading.Thread(target=lambda: results.append(labels.run(config)), daemon=True)
        worker.start()
        worker.join(timeout=60)
        listener.close()
        assert not worker.is_alive(), "the labels stage opened the named pipe"
        assert results == [0]
        reasons = _rejections(config)
        assert reasons["happy/pipe.jpg"] == "not an image file: a named pipe (FIFO), never opened"
        assert reasons["happy/device.jpg"] == "not an image file: a named pipe (FIFO), never opened"
        assert reasons["happy/socket.png"] == "not an image file: a socket, never opened"
        assert read_manifest(config.paths.manifest)["filename"].tolist() == ["happy/kept.jpg"]
    finally:
        shutil.rmtree(short_root)


def test_formula_like_names_are_quoted_in_every_csv_and_read_back_unchanged(tmp_path):
    config = make_config(tmp_path)
    images_root = config.paths.images_root
    names = ["=HYPERLINK(\"http://x\").jpg", "+1.jpg", "-2.jpg", "@SUM(A1).jpg"]
    for name in names:
        write_image(images_root / name)
    negative_landmarks = ";".join(["-1.5"] * 136)
    write_csv(config.paths.labels_root / "training.csv", [
        *(csv_row(name, landmarks=negative_landmarks, valence=-0.5) for name in names),
        csv_row("=missing.jpg"),
    ])
    assert labels.run(config) == 0
    as_written = pd.read_csv(config.paths.manifest, dtype=str, keep_default_na=False)
    assert sorted(as_written["filename"]) == sorted("'" + name for name in names)
    assert (as_written["valence"] == "-0.5").all() and (as_written["landmarks"] == "'" + negative_landmarks).all()
    frame = read_manifest(config.paths.manifest)
    assert sorted(frame["filename"]) == sorted(names)
    assert (frame["valence"] == -0.5).all() and (frame["landmarks"] == negative_landmarks).all()
    assert files.load_npy(config.paths.processed / "filenames.npy").tolist() == frame["filename"].tolist()
    rejected_text = (config.paths.processed / "rejected_files.csv").read_text()
    assert rejected_text.splitlines()[1].startswith("'=missing.jpg,")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be", "utf-8-sig"])
def test_label_files_in_utf16_and_utf32_are_read_by_their_byte_order_mark(tmp_path, encoding):
    config = make_config(tmp_path, check_images=False)
    bom = {"utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}.get(encoding, b"")
    path = config.paths.labels_root / "training.csv"
    path.parent.mkdir(parents=True)
    text = "\n".join([HEADER, csv_row("689/é.jpg", expression=3), csv_row("689/b.jpg", expression=11)]) + "\n"
    path.write_bytes(bom + text.encode(encoding))
    table = affectnet_labels.read_affectnet_csv(path, "training.csv", "train")
    assert table.rows["filename"].tolist() == ["689/é.jpg"]
    assert table.rows["label"].tolist() == ["surprise"]
    assert table.rejected["source_file"].tolist() == ["training.csv:3"]
    assert table.encodings == {"training.csv": {"utf-16-be": "utf-16", "utf-32-be": "utf-32"}.get(encoding, encoding)}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_label_files_in_utf16_without_byte_order_mark_are_read_by_their_nul_bytes(tmp_path, encoding):
    path = tmp_path / "training.csv"
    path.write_bytes(("\n".join([HEADER, csv_row("689/a.jpg")]) + "\n").encode(encoding))
    table = affectnet_labels.read_affectnet_csv(path, "training.csv", "train")
    assert table.rows["filename"].tolist() == ["689/a.jpg"]
    assert table.encodings == {"training.csv": encoding}


def test_undecodable_utf16_label_file_names_the_encoding(tmp_path):
    path = tmp_path / "training.csv"
    path.write_bytes(b"\xff\xfe" + HEADER.encode("utf-16-le") + b"\x00\xd8\x41")  # a lone surrogate
    with pytest.raises(PipelineError, match=r"training\.csv: cannot be decoded as utf-16"):
        affectnet_labels.read_affectnet_csv(path, "training.csv", "train")


def test_not_annotated_valence_stays_apart_from_absent_valence(tmp_path):
    config = make_config(tmp_path, check_images=False)
    write_csv(config.paths.labels_root / "training.csv", [
        csv_row("689/a.jpg", valence=0.25, arousal=-0.5),
        csv_row("689/b.jpg", expression=9, valence=-2, arousal=-2),
    ])
    for name in ("a", "b"):
        write_image(config.paths.images_root / "689" / f"{name}.jpg")
    assert labels.run(config) == 0
    frame = read_manifest(config.paths.manifest).set_index("filename")
    assert frame.loc["689/a.jpg", "affect_annotation"] == "annotated"
    assert frame.loc["689/b.jpg", "affect_annotation"] == "not annotated"
    assert np.isnan(frame.loc["689/b.jpg", "valence"])
    # The later release without its valence and arousal files: absent, not "not annotated".
    npy_config = make_config(tmp_path / "npy", check_images=False)
    folder = npy_config.paths.labels_root / "train_set" / "annotations"
    folder.mkdir(parents=True)
    np.save(folder / "5_exp.npy", np.array(3))
    np.save(folder / "6_exp.npy", np.array(8))
    np.save(folder / "6_val.npy", np.array(-2.0))
    np.save(folder / "6_aro.npy", np.array(-2.0))
    for image_id in ("5", "6"):
        write_image(npy_config.paths.images_root / "train_set" / "images" / f"{image_id}.jpg")
    assert labels.run(npy_config) == 0
    npy_frame = read_manifest(npy_config.paths.manifest).set_index("filename")
    assert npy_frame.loc["train_set/images/5.jpg", "affect_annotation"] == ""
    assert npy_frame.loc["train_set/images/6.jpg", "affect_annotation"] == "not annotated"
    assert npy_frame["valence"].isna().all()
    notes = pd.read_csv(npy_config.paths.processed / "label_notes.csv", keep_default_na=False)
    assert "5_val.npy missing, valence left empty" in notes["note"].iloc[0]


def test_symbolic_link_in_an_affectnet_images_folder_leading_out_is_rejected(tmp_path):
    config = make_config(tmp_path)
    folder = config.paths.labels_root / "train_set" / "annotations"
    folder.mkdir(parents=True)
    images = config.paths.images_root / "train_set" / "images"
    for image_id in ("1", "2"):
        np.save(folder / f"{image_id}_exp.npy", np.array(3))
        np.save(folder / f"{image_id}_val.npy", np.array(0.1))
        np.save(folder / f"{image_id}_aro.npy", np.array(0.2))
    write_image(images / "1.jpg")
    write_image(tmp_path / "private" / "photo.jpg")
    (images / "2.jpg").symlink_to(tmp_path / "private" / "photo.jpg")
    assert labels.run(config) == 0
    assert read_manifest(config.paths.manifest)["filename"].tolist() == ["train_set/images/1.jpg"]
    assert _rejections(config)["train_set/images/2.jpg"] == (
        f"path outside the images root: symbolic link to {tmp_path / 'private' / 'photo.jpg'}")
