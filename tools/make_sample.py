#!/usr/bin/env python3
"""Rebuild the shipped sample archive from a FER2013 image-folder copy.

The sample is a deterministic subset of FER2013 that keeps the dataset's class proportions:
from each class folder, evenly spaced files in sorted order, as many as the class's share of
the split's total. It is packed as the kind of archive get_data.py receives, so that `make run`
exercises every stage, extraction included. Usage:

    python tools/make_sample.py --fer-root ../shared/datasets/fer2013
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from pathlib import Path

# Images drawn from each split of FER2013 (train/: "Training", val/: "PublicTest"). With about
# 1.5 kB per 48x48 JPEG, the archive stays under 10 MB.
IMAGES_PER_SPLIT = {"train": 5000, "val": 1000}
# Fixed archive metadata, so the archive's bytes do not depend on who built it or when.
ARCHIVE_MTIME = 1_600_000_000


def evenly_spaced(files: list[Path], count: int) -> list[Path]:
    """``count`` files spread evenly over ``files`` (which is sorted), first and last included."""
    if count >= len(files):
        return list(files)
    step = len(files) / count
    return [files[int(index * step)] for index in range(count)]


def files_per_class(split_root: Path, total: int) -> dict[str, list[Path]]:
    """Each class folder's share of ``total`` images, proportional to its size (at least one)."""
    classes = {folder.name: sorted(folder.glob("*.jpg")) for folder in sorted(split_root.iterdir()) if folder.is_dir()}
    if not classes:
        raise SystemExit(f"{split_root} has no class folders")
    available = sum(len(files) for files in classes.values())
    return {name: evenly_spaced(files, max(1, round(total * len(files) / available)))
            for name, files in classes.items()}


def build_archive(fer_root: Path) -> tuple[bytes, dict[str, int]]:
    """The sample as tar.gz bytes, and how many images each split holds."""
    counts: dict[str, int] = {}
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too, so rebuilding gives the same bytes.
    with io.BytesIO() as tar_bytes:
        with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for split, total in IMAGES_PER_SPLIT.items():
                chosen = files_per_class(fer_root / split, total)
                counts[split] = sum(len(files) for files in chosen.values())
                for class_name, files in chosen.items():
                    for image in files:
                        info = archive.gettarinfo(image, arcname=f"fer2013_sample/{split}/{class_name}/{image.name}")
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        info.mtime = ARCHIVE_MTIME
                        with open(image, "rb") as handle:
                            archive.addfile(info, handle)

        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as compressed:
            compressed.write(tar_bytes.getvalue())
    return buffer.getvalue(), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer-root", default="../shared/datasets/fer2013", type=Path)
    parser.add_argument("--archive", default="sample/fer2013_sample.tar.gz", type=Path)
    arguments = parser.parse_args()

    data, counts = build_archive(arguments.fer_root)
    arguments.archive.parent.mkdir(parents=True, exist_ok=True)
    partial = arguments.archive.with_name(arguments.archive.name + ".partial")
    partial.write_bytes(data)
    partial.replace(arguments.archive)
    print(f"wrote {arguments.archive}: {counts} images, {len(data) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
