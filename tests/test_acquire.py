"""The get_data stage: local archives and folders, and the Drive branch through a fake module."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

import emotion_classifier
from emotion_classifier import acquire, archives, files
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

REPOSITORY = Path(__file__).resolve().parents[1]


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


# -- bad archives: one FAILED line each, the rest extracted, never a traceback ---------------------


def damaged_zip(path: Path) -> Path:
    """A zip whose only entry fails its CRC check."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/a.jpg", b"x" * 4000)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def good_tar(path: Path, name: str = "fer/train/happy/x.jpg") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = 5
        archive.addfile(info, io.BytesIO(b"happy"))
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if ".partial" in path.name or ".old-" in path.name)


def test_damaged_archive_fails_alone_and_the_others_are_extracted(tmp_path, capsys):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    config = make_config(tmp_path, [str(damaged_zip(downloads / "damaged.zip")), str(good_tar(downloads / "fer.tar.gz"))])
    assert acquire.run(config) == 1
    extracted = tmp_path / "data" / "raw" / "extracted"
    assert (extracted / "fer" / "fer" / "train" / "happy" / "x.jpg").read_bytes() == b"happy"
    assert not (extracted / "damaged").exists() and leftovers(extracted) == []
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    ((failure),) = summary["failures"]
    assert failure["name"] == "damaged.zip" and "'images/a.jpg'" in failure["reason"]
    assert "FAILED damaged.zip: damaged.zip: entry 'images/a.jpg'" in capsys.readouterr().out
    # Nothing done at all is status 2.
    assert acquire.run(make_config(tmp_path / "only_bad", [str(downloads / "damaged.zip")])) == 2


def test_bad_inputs_never_end_in_a_traceback(tmp_path):
    """get_data.py itself, on one good archive and one of every kind of bad one."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    damaged_zip(downloads / "damaged.zip")
    good_tar(downloads / "good.tar.gz")
    (downloads / "random.tar.xz").write_bytes(bytes(range(256)) * 8)
    with zipfile.ZipFile(downloads / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(40 << 20))
    with tarfile.open(downloads / "latin1.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        info = tarfile.TarInfo(b"caf\xe9.jpg".decode("utf-8", "surrogateescape"))
        archive.addfile(info, io.BytesIO(b""))
    with tarfile.open(downloads / "twice.tar", "w") as archive:
        for content in (b"first", b"second"):
            info = tarfile.TarInfo("a.jpg")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    (downloads / "lone.zip.001").write_bytes((downloads / "damaged.zip").read_bytes()[:50])
    sources = json.dumps([str(path) for path in sorted(downloads.iterdir())])
    result = subprocess.run(
        [sys.executable, "get_data.py", f"paths.data_dir={tmp_path / 'data'}",
         f"paths.reports_dir={tmp_path / 'reports'}", f"get_data.sources={sources}"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(emotion_classifier.__file__).parents[1])},
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr
    failed = sorted(line.split()[1].rstrip(":") for line in result.stdout.splitlines() if "FAILED" in line)
    assert failed == ["bomb.zip", "damaged.zip", "latin1.tar", "lone.zip.001", "random.tar.xz", "twice.tar"]
    assert "data/raw/extracted/good: extracted" in result.stdout
    assert leftovers(tmp_path / "data" / "raw" / "extracted") == []


def test_names_that_are_not_utf8_in_a_folder_source_are_skipped(tmp_path):
    folder = tmp_path / "downloads" / "fer"
    (folder / "train" / "happy").mkdir(parents=True)
    (folder / "train" / "happy" / "ok.jpg").write_bytes(b"fine")
    with open(os.fsencode(folder / "train" / "happy") + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(b"named in Latin-1")
    config = make_config(tmp_path, [str(folder)])
    assert acquire.run(config) == 0
    mirrored = tmp_path / "data" / "raw" / "extracted" / "fer" / "train" / "happy"
    assert sorted(os.listdir(mirrored)) == ["ok.jpg"]


# -- folder sources holding archives, as AffectNet arrives ---------------------------------------


def test_archives_inside_a_folder_source_are_extracted_and_loose_images_linked(tmp_path):
    folder = tmp_path / "downloads" / "affectnet"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as archive:
        archive.writestr("Manually_Annotated_Images/101/a.jpg", b"a" * 3000)
    whole = (tmp_path / "whole.zip").read_bytes()
    for index, start in enumerate(range(0, len(whole), 1200)):
        (folder / f"Manually_Annotated_Images.zip.{index + 1:03d}").write_bytes(whole[start:start + 1200])
    with zipfile.ZipFile(folder / "Manually_Annotated_file_lists.zip", "w") as archive:
        archive.writestr("Manually_Annotated_file_lists/training.csv", "subDirectory_filePath,expression\n")
    (folder / "extra").mkdir()
    good_tar(folder / "extra" / "more.tar.gz")
    (folder / "loose" / "102").mkdir(parents=True)
    (folder / "loose" / "102" / "b.JPG").write_bytes(b"loose image")
    config = make_config(tmp_path, [str(folder)])

    assert acquire.run(config) == 0
    extracted = tmp_path / "data" / "raw" / "extracted"
    assert (extracted / "Manually_Annotated_Images" / "Manually_Annotated_Images" / "101" / "a.jpg").read_bytes() == b"a" * 3000
    assert (extracted / "Manually_Annotated_file_lists" / "Manually_Annotated_file_lists" / "training.csv").is_file()
    assert (extracted / "more" / "fer" / "train" / "happy" / "x.jpg").read_bytes() == b"happy"
    mirrored = sorted(path.relative_to(extracted / "affectnet").as_posix()
                      for path in (extracted / "affectnet").rglob("*") if path.is_file())
    assert mirrored == [archives.MARKER_NAME, "loose/102/b.JPG"]
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert len(summary["archive_sets"]) == 3 and summary["failures"] == []

    before = snapshot(tmp_path / "data" / "raw")
    assert acquire.run(config) == 0
    assert snapshot(tmp_path / "data" / "raw") == before


# -- Google Drive through the fake server: each archive set on its own ---------------------------


def split(data: bytes, pieces: int) -> list[bytes]:
    size = len(data) // pieces + 1
    return [data[index * size:(index + 1) * size] for index in range(pieces)]


def zip_of(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def drive_config(tmp_path, monkeypatch):
    """A configuration for the fake Drive server; credentials are a test token."""
    import google.oauth2.credentials
    from drive_server import FakeDriveServer

    from emotion_classifier import drive

    monkeypatch.setattr(drive, "load_credentials",
                        lambda settings, authorize=None: google.oauth2.credentials.Credentials(token="test-token"))
    with FakeDriveServer(page_size=10) as server:
        monkeypatch.setattr(drive, "API_ENDPOINT", server.api_endpoint)
        monkeypatch.setattr(drive, "MAX_RETRIES", 0)
        config = make_config(tmp_path, [], source_kind="drive")
        config.get_data = dataclasses.replace(config.get_data, drive_folder_id=server.add_folder("AffectNet"))
        yield server, config


def test_drive_piece_that_fails_fails_its_set_only(tmp_path, drive_config, capsys):
    server, config = drive_config
    root = config.get_data.drive_folder_id
    for index, piece in enumerate(split(zip_of("images/a.jpg", b"a" * 5000), 3)):
        file_id = server.add_file(f"Images.zip.{index + 1:03d}", piece, parent=root)
    server.fail_next(file_id, 404)  # the last piece of the set
    for index, piece in enumerate(split(zip_of("labels/training.csv", b"path,label\n"), 2)):
        server.add_file(f"Lists.zip.{index + 1:03d}", piece, parent=root)
    server.add_file("Lone.zip.001", split(zip_of("x.jpg", b"x" * 3000), 2)[0], parent=root)
    server.add_file("fer.tar.gz", good_tar(tmp_path / "fer.tar.gz").read_bytes(), parent=root)

    assert acquire.run(config) == 1
    extracted = tmp_path / "data" / "raw" / "extracted"
    assert sorted(path.name for path in extracted.iterdir() if not path.name.startswith(".")) == ["Lists", "fer"]
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    reasons = {failure["name"]: failure["reason"] for failure in summary["failures"]}
    assert "HTTP 404" in reasons["Images.zip.003"]
    assert "the piece Images.zip.003 was not brought in" in reasons["Images.zip.001"]
    assert "Lone.zip.002 is missing" in reasons["Lone.zip.001"]
    output = capsys.readouterr().out
    assert "FAILED Images.zip.003" in output and "FAILED Images.zip.001" in output
    # The 404 left no empty partial download behind.
    assert not list((tmp_path / "data" / "raw" / "archives").glob("*.partial*"))


def test_drive_rerun_that_downloads_nothing_says_so(tmp_path, drive_config, capsys):
    server, config = drive_config
    server.add_file("fer.tar.gz", good_tar(tmp_path / "fer.tar.gz").read_bytes(), parent=config.get_data.drive_folder_id)
    server.add_file("training.csv", b"path,label\n", parent=config.get_data.drive_folder_id)
    assert acquire.run(config) == 0
    assert "get_data: 2 brought in, 0 already present" in capsys.readouterr().out
    assert acquire.run(config) == 0
    assert "get_data: 0 brought in, 2 already present" in capsys.readouterr().out
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert summary["files_brought_in"] == [] and len(summary["files_already_present"]) == 2


def test_summary_is_written_when_a_problem_stops_the_run(tmp_path, drive_config):
    server, config = drive_config
    config.get_data = dataclasses.replace(config.get_data, drive_folder_id="folder9999")
    with pytest.raises(PipelineError, match="drive_folder_id"):
        acquire.run(config)
    summary = files.read_json(tmp_path / "reports" / "get_data_summary.json")
    assert "HTTP 404" in summary["failures"][0]["reason"]


def test_folder_holding_an_archive_of_its_own_name_keeps_both(tmp_path):
    folder = tmp_path / "downloads" / "fer"
    folder.mkdir(parents=True)
    good_tar(folder / "fer.tar.gz")
    (folder / "README.txt").write_text("FER2013")
    assert acquire.run(make_config(tmp_path, [str(folder)])) == 0
    extracted = tmp_path / "data" / "raw" / "extracted"
    assert (extracted / "fer" / "fer" / "train" / "happy" / "x.jpg").read_bytes() == b"happy"
    assert (extracted / "fer_loose_files" / "README.txt").read_text() == "FER2013"
