"""The get_data stage: local archives and folders, and the Drive branch through a fake module."""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

import emotion_classifier
from emotion_classifier import acquire, archives, files
from emotion_classifier.cli import PipelineError
from emotion_classifier.config import Config


def make_config(tmp_path: Path, sources: list[str], source_kind: str = "local") -> Config:
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    config.paths.reports_dir = str(tmp_path / "reports")
    config.get_data.source_kind = source_kind
    config.get_data.sources = sources
    return config


@pytest.fixture
def local_sources(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "AffectNet.zip", "w") as archive:
        archive.writestr("Manually_Annotated_Images/689/a.jpg", b"face a")
        archive.writestr("Manually_Annotated_Images/689/b.jpg", b"face b")
    fer = downloads / "fer_sample"
    (fer / "train" / "happy").mkdir(parents=True)
    (fer / "train" / "happy" / "x.jpg").write_bytes(b"happy x")
    (downloads / "training.csv").write_text("subDirectory_filePath,expression\n689/a.jpg,1\n")
    return downloads


def snapshot(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*")}


def test_local_archive_folder_and_file_are_brought_in_and_extracted(tmp_path, local_sources, capsys):
    config = make_config(
        tmp_path,
        [str(local_sources / "AffectNet.zip"), str(local_sources / "fer_sample"), str(local_sources / "*.csv")],
    )
    assert acquire.run(config) == 0
    raw = tmp_path / "data" / "raw"
    assert (raw / "archives" / "AffectNet.zip").read_bytes() == (local_sources / "AffectNet.zip").read_bytes()
    assert (raw / "folders" / "fer_sample" / "train" / "happy" / "x.jpg").read_bytes() == b"happy x"
    extracted = raw / "extracted"
    assert (extracted / "AffectNet" / "Manually_Annotated_Images" / "689" / "b.jpg").read_bytes() == b"face b"
    assert (extracted / "fer_sample" / "train" / "happy" / "x.jpg").read_bytes() == b"happy x"
    assert (extracted / "files" / "training.csv").read_text().startswith("subDirectory_filePath")
    # The source is never touched and the folder is shared through hard links, not copied.
    assert (local_sources / "fer_sample" / "train" / "happy" / "x.jpg").stat().st_nlink == 3
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert len(summary["files_brought_in"]) == 3
    assert {item["name"]: item["status"] for item in summary["extracted"]} == {
        "AffectNet": "extracted", "fer_sample": "linked", "files": "linked",
    }
    assert "data/raw/extracted/AffectNet: extracted" in capsys.readouterr().out

    before = snapshot(raw)
    assert acquire.run(config) == 0
    assert snapshot(raw) == before
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert summary["files_brought_in"] == [] and len(summary["files_already_present"]) == 3
    assert {item["status"] for item in summary["extracted"]} == {"already extracted", "already linked"}


def test_changed_archive_is_copied_and_extracted_again(tmp_path, local_sources):
    source = local_sources / "AffectNet.zip"
    config = make_config(tmp_path, [str(source)])
    acquire.run(config)
    # A new download replaces the file (a new inode, so the raw copy keeps the old bytes).
    source.unlink()
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("Manually_Annotated_Images/700/c.jpg", b"face c")
    acquire.run(config)
    extracted = tmp_path / "data" / "raw" / "extracted" / "AffectNet" / "Manually_Annotated_Images"
    assert sorted(path.name for path in extracted.iterdir()) == ["700"]


def test_split_zip_pieces_given_by_pattern(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as archive:
        archive.writestr("images/a.jpg", b"a" * 500)
    whole = (tmp_path / "whole.zip").read_bytes()
    (downloads / "Set.zip.001").write_bytes(whole[:300])
    (downloads / "Set.zip.002").write_bytes(whole[300:])
    assert acquire.run(make_config(tmp_path, [str(downloads / "Set.zip.*")])) == 0
    assert (tmp_path / "data" / "raw" / "extracted" / "Set" / "images" / "a.jpg").read_bytes() == b"a" * 500


def test_missing_source_names_the_key_and_path(tmp_path):
    with pytest.raises(PipelineError, match=r"get_data\.sources.*nowhere\.zip"):
        acquire.run(make_config(tmp_path, [str(tmp_path / "nowhere.zip")]))
    with pytest.raises(PipelineError, match=r"get_data\.sources is empty"):
        acquire.run(make_config(tmp_path, []))


def test_two_sources_with_one_extracted_name_are_refused(tmp_path, local_sources):
    with tarfile.open(local_sources / "AffectNet.tar.gz", "w:gz") as archive:
        archive.add(local_sources / "training.csv", arcname="training.csv")
    config = make_config(tmp_path, [str(local_sources / "AffectNet.zip"), str(local_sources / "AffectNet.tar.gz")])
    with pytest.raises(PipelineError, match="rename one"):
        acquire.run(config)


def test_drive_branch_extracts_downloads_and_reports_failures(tmp_path, monkeypatch):
    calls = []

    def download(settings, destination):
        calls.append((settings.drive_folder_id, destination))
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(destination / "fer.tar.gz", "w:gz") as archive:
            info = tarfile.TarInfo("fer/train/sad/y.jpg")
            payload = b"sad y"
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        return types.SimpleNamespace(files=[destination / "fer.tar.gz"], fetched=[destination / "fer.tar.gz"],
                                     failures=[("broken.zip", "md5 mismatch")])

    fake_drive = types.ModuleType("emotion_classifier.drive")
    fake_drive.download = download
    monkeypatch.setitem(sys.modules, "emotion_classifier.drive", fake_drive)
    monkeypatch.setattr(emotion_classifier, "drive", fake_drive, raising=False)
    config = make_config(tmp_path, [], source_kind="drive")
    config.get_data = dataclasses.replace(config.get_data, drive_folder_id="folder123")

    assert acquire.run(config) == 1
    assert calls == [("folder123", Path(config.paths.raw) / "archives")]
    extracted = tmp_path / "data" / "raw" / "extracted" / "fer"
    assert (extracted / "fer" / "train" / "sad" / "y.jpg").read_bytes() == b"sad y"
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert summary["failures"] == [{"name": "broken.zip", "reason": "md5 mismatch"}]
    assert archives.is_extracted(Path(config.paths.raw) / "archives" / "fer.tar.gz", extracted)
