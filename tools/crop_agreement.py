#!/usr/bin/env python3
"""How closely the training crop (tf.data) and the evaluation crop (images.load_image) of the same
rows agree: FER2013 faces pasted at random places into generated photos of odd sizes, cropped
by both paths at 48 and 112 pixels; prints the mean absolute difference per photo (grey levels,
0-255), its mean and largest.

    python tools/crop_agreement.py [FER2013 folder, default ../shared/datasets/fer2013]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from emotion_classifier.config import GeneratorConfig  # noqa: E402  (path set above)
from emotion_classifier.images import load_image  # noqa: E402
from emotion_classifier.manifest import MANIFEST_COLUMNS  # noqa: E402
from emotion_classifier.tf_dataset import make_dataset  # noqa: E402

PHOTOS = 24
SIZES = (48, 112)


def write_photos(folder: Path, fer_root: Path, seed: int = 0) -> pd.DataFrame:
    """Photos of odd sides with a FER2013 face pasted at a known box, and their manifest rows."""
    random = np.random.default_rng(seed)
    rows = []
    for index, face_path in enumerate(sorted((fer_root / "val" / "happy").glob("*.jpg"))[:PHOTOS]):
        width, height = int(random.integers(240, 700)) | 1, int(random.integers(200, 600)) | 1
        ys, xs = np.mgrid[0:height, 0:width]
        background = (127 + 60 * np.sin(xs / random.uniform(7, 30)) * np.cos(ys / random.uniform(7, 30))
                      + random.normal(0, 20, (height, width)))
        photo = np.stack([np.clip(background + shift, 0, 255) for shift in (0, 30, -30)], axis=-1).astype("uint8")
        side = int(random.integers(100, min(width, height) - 10))
        x, y = int(random.integers(0, width - side)), int(random.integers(0, height - side))
        photo[y:y + side, x:x + side] = np.asarray(Image.open(face_path).convert("RGB").resize((side, side)))
        Image.fromarray(photo).save(folder / f"photo_{index:02d}.jpg", quality=92)
        row = {column: np.nan for column in MANIFEST_COLUMNS}
        row.update(filename=f"photo_{index:02d}.jpg", label="happy", class_index=0, split="test",
                   face_x=float(x), face_y=float(y), face_width=float(side), face_height=float(side))
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    fer_root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013"
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        frame = write_photos(folder, fer_root)
        for size in SIZES:
            dataset = make_dataset(frame, folder, size, 1, 8, training=False, generator_config=GeneratorConfig(augment=False))
            training_crops = np.concatenate([batch.numpy() for batch, _ in dataset])
            evaluation_crops = np.stack([load_image(folder / row.filename, size, 1,
                                                    (row.face_x, row.face_y, row.face_width, row.face_height))
                                         for row in frame.itertuples()])
            differences = np.abs(training_crops - evaluation_crops).mean(axis=(1, 2, 3))
            print(f"{size} px: mean {differences.mean():.2f}, largest {differences.max():.2f} grey levels "
                  f"over {len(frame)} photos")


if __name__ == "__main__":
    main()
