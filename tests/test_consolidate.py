"""The consolidation stage: extracted trees into one images root and one labels root."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_classifier import consolidate, files
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import Config

SAMPLE_ARCHIVE = Path(__file__).resolve().parents[1] / "sample" / "fer2013_sample.tar.gz"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_config(tmp_path: Path, link_mode: str = "auto") -> Config:
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    config.paths.reports_dir = str(tmp_path / "reports")
    config.consolidate.link_mode = link_mode
    return config


@pytest.fixture
def extracted(tmp_path) -> Path:
    """Two extracted sources shaped like AffectNet, one label-file folder and a FER tarball."""
    root = tmp_path / "data" / "raw" / "extracted"
    affectnet = root / "AffectNet"
    write(affectnet / ".extracted.json", b"{}")
    write(affectnet / "Manually_Annotated_Images" / "689" / "a.jpg", b"face a")
    write(affectnet / "Manually_Annotated_Images" / "689" / "b.JPG", b"face b")
    write(affectnet / "Manually_Annotated_Images" / "readme.pdf", b"%PDF")
    write(affectnet / "Manually_Annotated_Images" / ".DS_Store", b"hidden")
    labels = root / "files"
    write(labels / "training.csv", b"subDirectory_filePath,expression\n689/a.jpg,1\n")
    with files.atomic_path(labels / "training.npy") as temporary:
        np.save(temporary, np.arange(3), allow_pickle=False)
    # A second copy of the AffectNet images: one identical file and one that differs.
    again = root / "AffectNet_again"
    write(again / "images" / "689" / "a.jpg", b"face a")
    write(again / "images" / "689" / "b.JPG", b"a different face b")
    write(again / "__MACOSX" / "._a.jpg", b"resource fork")
    fer = root / "fer_sample"
    write(fer / "fer_sample" / "train" / "happy" / "x.png", b"happy x")
    write(fer / "fer_sample" / "val" / "sad" / "y.png", b"sad y")
    return root


def test_consolidates_images_and_labels(tmp_path, extracted, capsys):
    config = make_config(tmp_path)
    assert consolidate.run(config) == 0
    images = tmp_path / "data" / "interim" / "images"
    labels = tmp_path / "data" / "interim" / "labels"
    assert sorted(path.relative_to(images).as_posix() for path in images.rglob("*") if path.is_file()) == [
        "689/a.jpg", "689/b.JPG", "train/happy/x.png", "val/sad/y.png",
    ]
    assert (images / "689" / "b.JPG").read_bytes() == b"face b"  # the first source wins a conflict
    assert sorted(path.name for path in labels.iterdir()) == ["training.csv", "training.npy"]
    # Hard links: the consolidated image is the extracted file itself.
    source = extracted / "AffectNet" / "Manually_Annotated_Images" / "689" / "a.jpg"
    assert (images / "689" / "a.jpg").stat().st_ino == source.stat().st_ino

    summary = files.read_json(tmp_path / "reports" / "consolidate_summary.json")
    assert summary["images"] == 4
    assert summary["label_files"] == 2
    assert summary["non_image_files_skipped"] == 1
    assert summary["duplicate_names"] == 1
    assert summary["conflicts"] == 1
    assert summary["link_mode"] == "hardlink"
    duplicates = pd.read_csv(tmp_path / "data" / "interim" / "duplicates.csv")
    assert duplicates[["relative_path", "status"]].values.tolist() == [
        ["689/a.jpg", "duplicate"], ["689/b.JPG", "conflict"],
    ]
    assert "4 images, 2 label files, 1 non-image files skipped" in capsys.readouterr().out


def test_unchanged_rerun_does_nothing_and_changes_are_picked_up(tmp_path, extracted, capsys):
    config = make_config(tmp_path)
    consolidate.run(config)
    images = tmp_path / "data" / "interim" / "images"
    inode = images.stat().st_ino
    capsys.readouterr()
    assert consolidate.run(config) == 0
    assert "up to date" in capsys.readouterr().out
    assert images.stat().st_ino == inode
    write(extracted / "fer_sample" / "fer_sample" / "train" / "happy" / "z.png", b"happy z")
    consolidate.run(config)
    assert (images / "train" / "happy" / "z.png").read_bytes() == b"happy z"
    assert consolidate.run(config, force=True) == 0
    assert "up to date" not in capsys.readouterr().out


def test_copy_mode_makes_independent_files(tmp_path, extracted):
    config = make_config(tmp_path, link_mode="copy")
    config.consolidate.strip_single_top_folder = False
    consolidate.run(config)
    images = tmp_path / "data" / "interim" / "images"
    copied = images / "Manually_Annotated_Images" / "689" / "a.jpg"
    assert copied.read_bytes() == b"face a"
    assert copied.stat().st_nlink == 1
    assert (images / "fer_sample" / "train" / "happy" / "x.png").is_file()
    assert files.read_json(tmp_path / "reports" / "consolidate_summary.json")["link_mode"] == "copy"


def test_interrupted_rebuild_keeps_the_previous_tree(tmp_path, extracted, monkeypatch):
    config = make_config(tmp_path)
    consolidate.run(config)
    images = tmp_path / "data" / "interim" / "images"
    before = sorted(path.relative_to(images) for path in images.rglob("*"))
    write(extracted / "AffectNet" / "Manually_Annotated_Images" / "690" / "c.jpg", b"face c")

    def interrupted(self, source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(consolidate._Linker, "place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        consolidate.run(config)
    assert sorted(path.relative_to(images) for path in images.rglob("*")) == before
    assert [path.name for path in images.parent.iterdir() if ".partial-" in path.name] == []


def test_missing_extracted_data_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="run get_data.py first"):
        consolidate.run(make_config(tmp_path))


def test_real_fer_images_are_consolidated(tmp_path):
    """Real face images: a few of the shipped sample's, extracted under an extra top folder."""
    source = tmp_path / "data" / "raw" / "extracted" / "fer2013" / "fer2013"
    with tarfile.open(SAMPLE_ARCHIVE) as archive:
        chosen = [member for member in sorted(archive.getmembers(), key=lambda member: member.name)
                  if member.isfile() and member.name.split("/")[-2] in ("angry", "happy")]
        by_split: dict[str, list[tarfile.TarInfo]] = {}
        for member in chosen:
            by_split.setdefault(member.name.split("/")[-3], []).append(member)
        for split_name, members in by_split.items():
            for member in members[:3] + members[-3:]:
                target = source / split_name / member.name.split("/")[-2] / Path(member.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    consolidate.run(make_config(tmp_path))
    images = tmp_path / "data" / "interim" / "images"
    found = sorted(path.relative_to(images) for path in images.rglob("*.jpg"))
    assert len(found) == 12
    assert {relative.parts[0] for relative in found} == {"train", "val"}
    # The single top folder "fer2013" was stripped and every image is a hard link to its source.
    assert all(os.path.samefile(images / relative, source / relative) for relative in found)


def test_names_that_are_not_utf8_are_skipped_and_counted(tmp_path, extracted):
    folder = os.fsencode(extracted / "AffectNet" / "Manually_Annotated_Images" / "689")
    with open(folder + b"/caf\xe9.jpg", "wb") as handle:
        handle.write(b"named in Latin-1")
    os.mkdir(folder + b"/\xff")
    with open(folder + b"/\xff/inside.jpg", "wb") as handle:
        handle.write(b"in a folder named in no encoding")
    config = make_config(tmp_path)
    assert consolidate.run(config) == 0
    summary = files.read_json(tmp_path / "reports" / "consolidate_summary.json")
    assert summary["images"] == 4 and summary["invalid_names_skipped"] == 2
    assert consolidate.run(config) == 0


@pytest.mark.parametrize("link_mode", ["auto", "copy"])
def test_links_out_of_the_dataset_and_fifos_are_skipped_unopened(tmp_path, extracted, link_mode):
    folder = extracted / "AffectNet" / "Manually_Annotated_Images" / "689"
    outside = write(tmp_path / "elsewhere" / "private.jpg", b"not part of the dataset")
    (folder / "escape.jpg").symlink_to(outside)
    (folder / "inside.jpg").symlink_to(folder / "a.jpg")
    os.mkfifo(folder / "pipe.jpg")
    config = make_config(tmp_path, link_mode=link_mode)
    assert consolidate.run(config) == 0  # a FIFO copied or opened would block here
    images = tmp_path / "data" / "interim" / "images" / "689"
    assert not (images / "escape.jpg").exists() and not (images / "pipe.jpg").exists()
    assert (images / "inside.jpg").read_bytes() == b"face a"
    summary = files.read_json(tmp_path / "reports" / "consolidate_summary.json")
    assert summary["special_files_skipped"] == 2
