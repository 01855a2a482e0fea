"""Data trees as the split stage leaves them, built from real FER2013 faces, for the tests of the
stages after it (inputs, training, evaluation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import fer_data
from emotion_classifier.config import Config, GeneratorConfig
from emotion_classifier.manifest import MANIFEST_COLUMNS


def manifest_frame(filenames, class_indices, splits=None, boxes=None) -> pd.DataFrame:
    """A split manifest with every manifest column, as the split stage writes it."""
    rows = []
    for position, (filename, class_index) in enumerate(zip(filenames, class_indices)):
        box = boxes[position] if boxes is not None and boxes[position] is not None else (np.nan,) * 4
        row = {column: np.nan for column in MANIFEST_COLUMNS}
        row.update(filename=filename, label=f"class_{class_index}", label_id=int(class_index),
                   source_label=str(class_index), source_split="", source_file="fixture",
                   landmarks="", face_x=box[0], face_y=box[1], face_width=box[2], face_height=box[3])
        row["split"] = splits[position] if splits is not None else "train"
        row["class_index"] = int(class_index)
        rows.append(row)
    return pd.DataFrame(rows)


def copy_fer_images(destination: Path, per_class: int, classes=("happy", "sad", "angry"),
                    subset: str = "train") -> tuple[list[str], list[int]]:
    """Copy a few real FER2013 images per class under ``destination``; return names and labels."""
    filenames, labels = [], []
    for class_index, class_name in enumerate(classes):
        source_folder = fer_data.fer_root() / subset / class_name
        for source in sorted(source_folder.iterdir())[:per_class]:
            relative = f"{class_name}/{source.name}"
            (destination / class_name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination / relative)
            filenames.append(relative)
            labels.append(class_index)
    return filenames, labels


def write_split_fixture(data_dir: Path, per_class: int = 6, classes=("happy", "sad", "angry")) -> Config:
    """A data tree as the split stage leaves it: images, split_manifest.csv and classes.json."""
    config = Config()
    config.paths.data_dir = str(data_dir / "data")
    config.paths.models_dir = str(data_dir / "models")
    config.paths.reports_dir = str(data_dir / "reports")
    images_root = Path(config.paths.images_root)
    filenames, labels = copy_fer_images(images_root, per_class, classes)
    # Per class: the first two images are validation, one is test, the rest training.
    splits = []
    for position, label in enumerate(labels):
        rank = position - labels.index(label)
        splits.append("valid" if rank < 2 else "test" if rank == 2 else "train")
    frame = manifest_frame(filenames, labels, splits)
    Path(config.paths.processed).mkdir(parents=True, exist_ok=True)
    frame.to_csv(config.paths.split_manifest, index=False)
    (Path(config.paths.processed) / "classes.json").write_text(json.dumps({"classes": list(classes)}))
    return config


def no_augmentation() -> GeneratorConfig:
    return GeneratorConfig(augment=False)
