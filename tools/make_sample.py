#!/usr/bin/env python3
"""Rebuild the shipped sample archive and demo images from a FER2013 image-folder copy.

The sample is a small, deterministic subset of FER2013 (every k-th file of each class, in sorted
order) packed as the kind of archive get_data.py receives, so that `make run` exercises every
stage, extraction included. Usage:

    python tools/make_sample.py --fer-root ../shared/datasets/fer2013
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
from pathlib import Path

TRAIN_PER_CLASS = 50
VAL_PER_CLASS = 15
DEMO_IMAGES_PER_CLASS = 1


def evenly_spaced(files: list[Path], count: int, offset: int = 0) -> list[Path]:
    step = max(1, len(files) // count)
    return files[offset::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer-root", default="../shared/datasets/fer2013", type=Path)
    parser.add_argument("--archive", default="sample/fer2013_sample.tar.gz", type=Path)
    parser.add_argument("--demo-dir", default="images", type=Path)
    arguments = parser.parse_args()

    archive_buffer = io.BytesIO()
    with tarfile.open(fileobj=archive_buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            for class_folder in sorted((arguments.fer_root / split).iterdir()):
                for image in evenly_spaced(sorted(class_folder.glob("*.jpg")), count):
                    info = archive.gettarinfo(image, arcname=f"fer2013_sample/{split}/{class_folder.name}/{image.name}")
                    # Fixed metadata so the archive's bytes do not depend on who built it or when.
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 1_600_000_000
                    with open(image, "rb") as handle:
                        archive.addfile(info, handle)
    arguments.archive.parent.mkdir(parents=True, exist_ok=True)
    arguments.archive.write_bytes(archive_buffer.getvalue())
    print(f"wrote {arguments.archive} ({len(archive_buffer.getvalue()) / 1e6:.2f} MB)")

    # Demo images: validation files that are not in the sample archive (offset 1 in the spacing).
    arguments.demo_dir.mkdir(exist_ok=True)
    for class_folder in sorted((arguments.fer_root / "val").iterdir()):
        for image in evenly_spaced(sorted(class_folder.glob("*.jpg")), VAL_PER_CLASS, offset=1)[:DEMO_IMAGES_PER_CLASS]:
            shutil.copyfile(image, arguments.demo_dir / f"{class_folder.name}_{image.name}")
    print(f"demo images in {arguments.demo_dir}/")


if __name__ == "__main__":
    main()
