#!/usr/bin/env python3
"""Which ``[predict] face_margin`` frames detected faces as the model's training faces were framed.

``predict`` crops each detected face square with ``face_margin`` of the box side added on every
side. A model sees faces best framed as in training. For a folder-per-class dataset of face crops
(default: FER2013's val/), each face is enlarged, surrounded by its own border carried outwards
(context without new content) and handed to ``predict`` (detector, crop, classifier) once per
margin; the report gives:

- how large the detector's box is against the training crop (crop side / box side, median and
  quartiles): 1.0 means the crops are about the detector's box, so a margin near 0 frames alike;
- the accuracy and macro F1 by margin, on the faces detected at every margin (one view per face),
  and of the same faces classified as the dataset gives them (no detector: the ceiling).

    .venv/bin/python tools/margin_check.py                         # the shipped model on ../shared val/
    .venv/bin/python tools/margin_check.py --model models/<run>/best.keras --dataset <folder> --faces 300

Writes reports/margin_check.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "src"))

from emotion_classifier import classes as class_names, faces, files, images, model_io, predict  # noqa: E402
from emotion_classifier.config import PredictConfig  # noqa: E402
from emotion_classifier.evaluation import compute_metrics  # noqa: E402

MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=model_io.SHIPPED_MODEL_PATH)
    parser.add_argument("--dataset", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "fer2013" / "val",
                        help="a folder per class of face crops")
    parser.add_argument("--faces", type=int, default=700, help="faces drawn at random from the dataset")
    parser.add_argument("--margins", type=float, nargs="+", default=list(MARGINS))
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "reports" / "margin_check.json")
    arguments = parser.parse_args()

    info = model_io.read_model_info(arguments.model)
    model_classes = [str(name) for name in info["classes"]]
    candidates = []
    for folder in sorted(path for path in arguments.dataset.iterdir() if path.is_dir()):
        canonical = class_names.canonical_class(folder.name)
        if canonical in model_classes:
            candidates += [(path, model_classes.index(canonical)) for path in sorted(folder.iterdir())]
    if not candidates:
        raise SystemExit(f"{arguments.dataset}: no folder of the model's classes ({', '.join(model_classes)})")
    generator = np.random.default_rng(0)
    chosen = [candidates[index] for index in
              sorted(generator.choice(len(candidates), min(arguments.faces, len(candidates)), replace=False))]

    with tempfile.TemporaryDirectory(prefix="margin_check_") as work:
        photos = Path(work) / "photos"
        photos.mkdir()
        truth, sources, ratios = {}, {}, []
        detector = faces.build_detector(PredictConfig())
        for number, (path, label) in enumerate(chosen):
            side = int(generator.integers(120, 200))
            face = np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
            pad = side // 2
            photo = np.pad(face, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            name = f"face_{number:04d}.png"
            Image.fromarray(photo).save(photos / name)
            truth[name], sources[name] = label, path
            boxes = detector.detect(photo)
            if boxes:
                ratios.append(side / max(boxes, key=lambda box: box.width * box.height).width)
        by_margin = {}
        for margin in arguments.margins:
            settings = PredictConfig(input=str(photos), model=str(arguments.model), output_dir=str(Path(work) / f"{margin}"),
                                     face_margin=margin, test_time_augmentation="none")
            table = predict.predict(settings, show_progress=False).table
            detected = table[table["status"] == predict.FACE]
            # One face per picture: the detector's most confident box.
            detected = detected.sort_values("detector_confidence", ascending=False).drop_duplicates("file")
            by_margin[margin] = dict(zip(detected["file"], detected["predicted"]))
    common = sorted(set.intersection(*(set(predictions) for predictions in by_margin.values())))
    if not common:
        raise SystemExit("the detector found no face at every margin")
    true_index = np.array([truth[name] for name in common])
    model, _ = model_io.load_trained_model(arguments.model)
    crops = np.stack([images.load_image(sources[name], int(info["image_size"]), int(info["channels"]),
                                                equalize_histogram=bool(info.get("equalize_histogram", False)))
                      for name in common])
    direct = compute_metrics(true_index, np.asarray(model.predict(crops, verbose=0)).argmax(axis=1), model_classes)
    results = [{"face_margin": None, "accuracy": round(float(direct["accuracy"]), 4),
                "macro_f1": round(float(direct["macro_f1"]), 4), "note": "the dataset's crops, no detector"}]
    print(f"the dataset's own crops: accuracy {direct['accuracy']:.4f}, macro F1 {direct['macro_f1']:.4f}")
    for margin, predictions in by_margin.items():
        predicted = np.array([model_classes.index(predictions[name]) for name in common])
        scores = compute_metrics(true_index, predicted, model_classes)
        results.append({"face_margin": margin, "accuracy": round(float(scores["accuracy"]), 4),
                        "macro_f1": round(float(scores["macro_f1"]), 4)})
        print(f"face_margin {margin:.2f}: accuracy {scores['accuracy']:.4f}, macro F1 {scores['macro_f1']:.4f}")
    ratio = np.array(ratios)
    print(f"crop side / detector box side: median {np.median(ratio):.3f} "
          f"(quartiles {np.percentile(ratio, 25):.3f}-{np.percentile(ratio, 75):.3f}), {len(ratio)} faces detected")
    files.write_json(arguments.output, {
        "model": str(arguments.model), "dataset": str(arguments.dataset), "faces": len(chosen),
        "faces_scored": len(common),
        "crop_to_box_ratio": {"median": round(float(np.median(ratio)), 3),
                              "quartiles": [round(float(value), 3) for value in np.percentile(ratio, [25, 75])],
                              "faces": len(ratio)},
        "results": results,
    })
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
