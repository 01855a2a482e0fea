#!/usr/bin/env python3
"""Does turning faces upright by their eyes help? FER2013 val faces, tilted, with and without.

Each of ``--faces`` FER2013 validation faces is enlarged to 160 px, surrounded by its own border
carried outwards (so the detector sees a face in a larger picture) and turned by a random angle
in [-``--max-angle``, ``--max-angle``] degrees (and, as a control, not turned). ``predict`` then
finds and classifies every face twice, with ``align_faces`` on and off (detector and model as
configured, the shipped model by default). Scores count the faces found in both runs. Writes
reports/bench/face_alignment.json.

    python bench/face_alignment.py [--faces 600] [--max-angle 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import cv2
import numpy as np
from common import FER_ROOT, REPORT_DIR, machine_description
from PIL import Image

from emotion_classifier import classes as class_names
from emotion_classifier import files, model_io, predict
from emotion_classifier.config import PredictConfig
from emotion_classifier.evaluation import compute_metrics

FACE_SIDE = 160


def make_photos(folder: Path, paths: list[Path], angles: np.ndarray) -> None:
    """One picture per face: enlarged, border carried outwards, turned by its angle."""
    folder.mkdir(parents=True)
    for number, (path, angle) in enumerate(zip(paths, angles)):
        face = np.asarray(Image.open(path).convert("RGB").resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC))
        photo = np.pad(face, ((FACE_SIDE // 2,) * 2, (FACE_SIDE // 2,) * 2, (0, 0)), mode="edge")
        centre = (photo.shape[1] / 2, photo.shape[0] / 2)
        rotation = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
        photo = cv2.warpAffine(photo, rotation, photo.shape[1::-1], flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        Image.fromarray(photo).save(folder / f"face_{number:04d}.png")


def predictions(photos: Path, output: Path, align: bool, model: Path) -> dict[str, str]:
    """File -> predicted class of the most confident face ``predict`` found in it."""
    settings = dataclasses.replace(PredictConfig(), input=str(photos), output_dir=str(output), model=str(model),
                                   align_faces=align)
    table = predict.predict(settings, show_progress=False).table
    found = table[table["status"] == predict.FACE].sort_values("detector_confidence", ascending=False)
    found = found.drop_duplicates("file")
    return dict(zip(found["file"], found["predicted"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--max-angle", type=float, default=30.0)
    parser.add_argument("--model", type=Path, default=model_io.SHIPPED_MODEL_PATH)
    arguments = parser.parse_args()
    info = model_io.read_model_info(arguments.model)
    model_classes = [str(name) for name in info["classes"]]
    candidates = [(path, model_classes.index(class_names.canonical_class(folder.name)))
                  for folder in sorted((FER_ROOT / "val").iterdir()) if folder.is_dir()
                  and class_names.canonical_class(folder.name) in model_classes
                  for path in sorted(folder.glob("*.jpg"))]
    generator = np.random.default_rng(0)
    chosen = [candidates[index] for index in generator.choice(len(candidates), arguments.faces, replace=False)]
    report = {"machine": machine_description(), "faces": arguments.faces, "max_angle": arguments.max_angle,
              "detector": PredictConfig().detector, "model": str(arguments.model), "results": []}
    with tempfile.TemporaryDirectory(prefix="face_alignment_") as temporary:
        work = Path(temporary)
        for tilt in ("upright", "tilted"):
            angles = (generator.uniform(-arguments.max_angle, arguments.max_angle, len(chosen))
                      if tilt == "tilted" else np.zeros(len(chosen)))
            make_photos(work / tilt, [path for path, _ in chosen], angles)
            truth = {f"face_{number:04d}.png": label for number, (_, label) in enumerate(chosen)}
            by_mode = {align: predictions(work / tilt, work / f"{tilt}_{align}", align, arguments.model)
                       for align in (False, True)}
            common = sorted(set(by_mode[False]) & set(by_mode[True]))
            for align, predicted in by_mode.items():
                scores = compute_metrics(np.array([truth[name] for name in common]),
                                         np.array([model_classes.index(predicted[name]) for name in common]),
                                         model_classes)
                row = {"faces": tilt, "align_faces": align, "found": len(common),
                       "accuracy": round(float(scores["accuracy"]), 4), "macro_f1": round(float(scores["macro_f1"]), 4)}
                report["results"].append(row)
                print(row)
    files.write_json(REPORT_DIR / "face_alignment.json", report)
    print(f"wrote {REPORT_DIR / 'face_alignment.json'}")


if __name__ == "__main__":
    main()
