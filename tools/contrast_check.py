#!/usr/bin/env python3
"""How a grey model's accuracy moves when the contrast of its faces changes, raw and equalised.

The table of docs/predict.md ("Contrast of faces from other sources"): every face of a
folder-per-class dataset (default: FER2013's val/), at the model's input size, as it is and
after global contrast changes that stand in for other cameras and light, classified raw and
histogram-equalised first (emotion_classifier.equalization). One view per face.

    .venv/bin/python tools/contrast_check.py                     # the shipped model on ../shared val/
    .venv/bin/python tools/contrast_check.py --model models/<run>/best.keras --dataset <folder>

Writes reports/contrast_check.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "src"))

from emotion_classifier import classes as class_names, equalization, files, model_io  # noqa: E402
from emotion_classifier.images import load_image  # noqa: E402
from emotion_classifier.evaluation import compute_metrics  # noqa: E402

# Global changes of grey levels x in [0, 255]: a flatter, a darker, a brighter, a dim and flat face.
CHANGES = {
    "as distributed": lambda x: x,
    "contrast halved (x * 0.5 + 64)": lambda x: x * 0.5 + 64,
    "darker (gamma 1.8)": lambda x: 255 * (x / 255) ** 1.8,
    "brighter (gamma 0.6)": lambda x: 255 * (x / 255) ** 0.6,
    "dim and flat (x * 0.4 + 20)": lambda x: x * 0.4 + 20,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=model_io.SHIPPED_MODEL_PATH)
    parser.add_argument("--dataset", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "fer2013" / "val",
                        help="a folder per class")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "reports" / "contrast_check.json")
    arguments = parser.parse_args()

    model, info = model_io.load_trained_model(arguments.model)
    if int(info["channels"]) != 1:
        raise SystemExit(f"{arguments.model}: a grey model (channels = 1) is needed, it has {info['channels']}")
    model_classes = [str(name) for name in info["classes"]]
    paths, labels = [], []
    for folder in sorted(path for path in arguments.dataset.iterdir() if path.is_dir()):
        canonical = class_names.canonical_class(folder.name)
        if canonical not in model_classes:
            continue
        for path in sorted(folder.iterdir()):
            paths.append(path)
            labels.append(model_classes.index(canonical))
    if not paths:
        raise SystemExit(f"{arguments.dataset}: no folder of the model's classes ({', '.join(model_classes)})")
    size = int(info["image_size"])
    # The faces as the model's own input path reads them, before any equalisation.
    faces = np.stack([load_image(path, size, 1) for path in paths])
    labels = np.asarray(labels)

    rows = []
    for name, change in CHANGES.items():
        changed = np.clip(np.rint(change(faces)), 0, 255).astype(np.float32)
        row = {"change": name}
        for mode, images in (("raw", changed), ("equalised", equalization.equalize_histogram(changed))):
            predicted = model.predict(images, batch_size=256, verbose=0).argmax(axis=1)
            metrics = compute_metrics(labels, predicted, model_classes)
            row[f"{mode}_accuracy"] = round(float(metrics["accuracy"]), 4)
            row[f"{mode}_macro_f1"] = round(float(metrics["macro_f1"]), 4)
        rows.append(row)
        print(f"{name:34s} raw {row['raw_accuracy']:.4f} / {row['raw_macro_f1']:.4f}   "
              f"equalised {row['equalised_accuracy']:.4f} / {row['equalised_macro_f1']:.4f}", flush=True)
    files.write_json(arguments.output, {"model": str(arguments.model), "dataset": str(arguments.dataset),
                                        "images": len(paths), "model_equalizes": bool(info.get("equalize_histogram")),
                                        "results": rows})
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
