"""The stage chain end to end: the shipped sample, and an AffectNet-layout dataset never seen before.

Stages are called through the same command-line entry (``cli.main``) as the scripts, in-process
to save the interpreter start-ups, with every path moved into a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from affectnet_fixture import build_affectnet_archives, build_affectnet_npy_release
from emotion_classifier import cli, demo
from emotion_classifier.stages import DATA_STAGES, STAGES
from emotion_classifier.manifest import read_manifest

REPOSITORY = Path(__file__).resolve().parents[1]



def tmp_paths(tmp_path: Path) -> list[str]:
    return [
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.models_dir={tmp_path / 'models'}",
        f"paths.reports_dir={tmp_path / 'reports'}",
    ]


def run_chain(config_path: str, overrides: list[str]) -> None:
    for script, function, section in STAGES:
        status = cli.main(function, script, section, ["--config", config_path, *overrides])
        assert status == 0, f"{script} exited with {status}"


def test_every_script_explains_itself():
    """``--help`` of every stage script names what it reads and writes."""
    code = (
        "import runpy, sys, io, contextlib\n"
        "for script in sys.argv[1:]:\n"
        "    sys.argv = [script, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_path(script, run_name='__main__')\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    text = out.getvalue()\n"
        "    assert 'Reads' in text or 'reads' in text, script\n"
        "    assert '--config' in text and 'KEY=VALUE' in text, script\n"
        "    print(script, 'ok')\n"
    )
    scripts = [script for script, _, _ in STAGES]
    result = subprocess.run([sys.executable, "-c", code, *scripts], cwd=REPOSITORY,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok") == len(scripts)


def test_sample_chain_runs_and_reruns_as_no_ops(tmp_path, monkeypatch):
    monkeypatch.chdir(REPOSITORY)
    overrides = tmp_paths(tmp_path) + [
        "model_4.epochs=1", "model_6.epochs=1", "model_6.image_size=32", "model_4.max_steps_per_epoch=3",
        "model_6.max_steps_per_epoch=2",
    ]
    run_chain("config/sample.toml", overrides)

    processed = tmp_path / "data" / "processed"
    manifest = read_manifest(processed / "manifest.csv")
    assert len(manifest) == 6001
    assert set(manifest["source_split"]) == {"train", "validation"}
    split_manifest = read_manifest(processed / "split_manifest.csv")
    assert json.loads((processed / "classes.json").read_text())["classes"] == [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    counts = split_manifest.groupby("split").size().to_dict()
    # 50 validation faces per class, disgust's capped at 15% of its 76.
    assert counts == {"train": 4690, "valid": 6 * 50 + 11, "test": 1000}
    assert len(np.load(processed / "X_train_filenames.npy", allow_pickle=False)) == counts["train"]

    reports = tmp_path / "reports"
    for figure in ("sample_images.png", "class_distribution.png", "augmented_batch.png"):
        assert (reports / "figures" / figure).stat().st_size > 1000
    for run_name in ("model_4", "model_6"):
        run_folder = tmp_path / "models" / run_name
        for name in ("best.keras", "model_info.json", "metrics.csv", "history.png"):
            assert (run_folder / name).is_file(), (run_name, name)
        report = json.loads((reports / run_name / "evaluation.json").read_text())
        assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
        assert report["images"] == 1000
        assert (reports / run_name / "confusion_matrix.png").is_file()
    comparison = (reports / "comparison.md").read_text()
    assert "model_4" in comparison and "model_6" in comparison

    # The demo notebook, executed headless on images/ with the model just trained.
    demo_model = f"demo.model={tmp_path / 'models' / 'model_4' / 'best.keras'}"
    assert cli.main(demo.run, "demo", "demo", ["--config", "config/sample.toml", *overrides, demo_model]) == 0
    predictions = pd.read_csv(reports / "demo" / "faces.csv")
    # A row per face (a photo of two people gives two), one for each picture of a single face.
    assert {path.name for path in (REPOSITORY / "images").glob("*.jpg")} <= set(predictions["file"])
    assert predictions["predicted"].isin(["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]).all()
    assert (reports / "demo" / "demo.executed.ipynb").is_file()

    # Unchanged inputs: the data stages do nothing the second time (files keep their mtime).
    manifest_mtime = (processed / "manifest.csv").stat().st_mtime_ns
    for script, function, section in DATA_STAGES:
        assert cli.main(function, script, section, ["--config", "config/sample.toml", *overrides]) == 0
    assert (processed / "manifest.csv").stat().st_mtime_ns == manifest_mtime


def test_unseen_affectnet_layout_runs_unchanged(tmp_path, monkeypatch):
    """AffectNet's original release as users receive it: a download folder of archives (split zip
    pieces, a zip of label files, a readme), through config/affectnet.toml as shipped."""
    monkeypatch.chdir(tmp_path)  # the shipped sources = ["downloads/affectnet"] is relative to it
    build_affectnet_archives(tmp_path / "downloads" / "affectnet")
    overrides = tmp_paths(tmp_path) + [
        "split.valid_per_class=3",
        "model_4.image_size=32", "model_4.epochs=1", "model_4.batch_size=16",
        "model_6.image_size=32", "model_6.epochs=1", "model_6.weights=\"none\"", "model_6.batch_size=16",
    ]
    run_chain(str(REPOSITORY / "config" / "affectnet.toml"), overrides)

    summary = json.loads((tmp_path / "reports" / "get_data_summary.json").read_text())
    assert summary["archive_sets"] == [["Manually_Annotated_Images.zip.001", "Manually_Annotated_Images.zip.002",
                                        "Manually_Annotated_Images.zip.003"], ["Manually_Annotated_file_lists.zip"]]
    processed = tmp_path / "data" / "processed"
    manifest = read_manifest(processed / "manifest.csv")
    # 7 emotions x (12 + 4) rows, plus 2 + 1 rows for each of the codes 7, 8, 9, 10.
    assert len(manifest) == 7 * 16 + 4 * 3
    assert {Path(name).suffix for name in manifest["filename"]} == {".jpg", ".JPG", ".Png", ".jpeg", ".png"}
    assert set(manifest["label_id"]) == set(range(11))
    assert manifest["face_width"].notna().all()
    assert (manifest["face_width"] < manifest["image_width"]).all()
    assert manifest["landmarks"].str.count(";").eq(135).all()

    split_manifest = read_manifest(processed / "split_manifest.csv")
    test_rows = split_manifest[split_manifest["split"] == "test"]
    # AffectNet's validation.csv is the test split; dropped classes never reach a split.
    assert set(test_rows["source_split"]) == {"validation"}
    assert len(test_rows) == 6 * 4
    assert set(split_manifest["label"]) == {"neutral", "happy", "sad", "surprise", "fear", "anger"}
    valid_counts = split_manifest[split_manifest["split"] == "valid"].groupby("label").size()
    assert (valid_counts == 3).all()
    report = json.loads((tmp_path / "reports" / "model_4" / "evaluation.json").read_text())
    assert report["images"] == 6 * 4
    assert report["model_classes"] == ["neutral", "happy", "sad", "surprise", "fear", "anger"]


def test_later_affectnet_npy_release_runs_through_the_data_stages(tmp_path, monkeypatch):
    """The later release (face crops, .npy annotations) in the download folder, same config."""
    monkeypatch.chdir(tmp_path)
    build_affectnet_npy_release(tmp_path / "downloads" / "affectnet")
    overrides = tmp_paths(tmp_path) + ["labels.layout=\"affectnet_npy\"", "split.valid_per_class=3"]
    for script, function, section in DATA_STAGES:
        status = cli.main(function, script, section, ["--config", str(REPOSITORY / "config" / "affectnet.toml"),
                                                      *overrides])
        assert status == 0, f"{script} exited with {status}"

    manifest = read_manifest(tmp_path / "data" / "processed" / "manifest.csv")
    assert len(manifest) == 7 * (10 + 4)
    assert {Path(name).suffix for name in manifest["filename"]} == {".jpg", ".JPG", ".Png", ".jpeg", ".png"}
    assert manifest.groupby("source_split").size().to_dict() == {"train": 70, "validation": 28}
    assert manifest["valence"].notna().all() and manifest["landmarks"].str.count(";").eq(135).all()
    split_manifest = read_manifest(tmp_path / "data" / "processed" / "split_manifest.csv")
    assert set(split_manifest.loc[split_manifest["split"] == "test", "source_split"]) == {"validation"}
