#!/usr/bin/env python3
"""How fast ``predict`` labels a folder of photos, and where the time goes.

Builds 200 photos of faces (FER2013 validation faces, enlarged and placed on a 256x256 noisy
background, so the detector has to find them), then runs ``predict`` on them with the Keras
model and, with ``--tflite``, with float32 and int8 TFLite exports of the same model. The model
is ``--model`` or, by default, an untrained model_4 of the configured architecture and input
size (speed does not depend on the weights). The Keras model runs with each test-time
augmentation: one view per face, the face and its mirror (``predict``'s default), and the
views the model was calibrated with (for the shipped model the face, four corner crops and the
centre crop, each mirrored: 12 views); the TFLite exports with the default.
Prints photos per second and the split between detector and classifier; writes
reports/bench/predict_speed.json.

    python bench/predict_speed.py [--photos 200] [--model PATH] [--tflite]
    python bench/predict_speed.py --model models/shipped/fer2013/model.keras
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from emotion_classifier import export, faces, files, model_io, predict
from emotion_classifier.config import Config

FER_VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "val"
OUTPUT = Path("reports") / "bench" / "predict_speed.json"
PHOTO_SIDE = 256
FACE_SIDE = 150
WARM_UP_PHOTOS = 8


def make_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` photos, each one FER face enlarged onto a noisy background at a random place."""
    paths = sorted(FER_VALIDATION.rglob("*.jpg"))
    if len(paths) < count:
        raise SystemExit(f"need {count} FER2013 validation images under {FER_VALIDATION}, found {len(paths)}")
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number, index in enumerate(generator.choice(len(paths), size=count, replace=False)):
        background = generator.normal(128, 30, size=(PHOTO_SIDE, PHOTO_SIDE)).clip(0, 255).astype(np.uint8)
        photo = Image.fromarray(background).convert("RGB")
        face = Image.open(paths[index]).convert("RGB").resize((FACE_SIDE, FACE_SIDE), Image.Resampling.BICUBIC)
        left, top = (int(value) for value in generator.integers(0, PHOTO_SIDE - FACE_SIDE, size=2))
        photo.paste(face, (left, top))
        photo.save(folder / f"photo_{number:04d}.jpg", quality=92)
    return folder


def untrained_model(folder: Path, config: Config) -> Path:
    """model_4 as configured, with random weights, saved with its model_info.json."""
    from emotion_classifier import models

    settings = config.model_4
    classes = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    model = models.build_model_4(
        (settings.image_size, settings.image_size, settings.channels), len(classes),
        settings.conv_filters, settings.dense_units, settings.conv_dropout, settings.dense_dropout,
    )
    path = folder / "model_4_untrained" / "best.keras"
    path.parent.mkdir(parents=True)
    model.save(path)
    model_io.save_model_info(path, classes, settings.image_size, settings.channels)
    return path


def timed_run(settings: predict.PredictConfig, photos: Path, output: Path) -> dict:
    """Warm up on a few photos (model loading, tracing), then time the whole folder."""
    warm_up = output.parent / f"{output.name}_warm_up_photos"
    warm_up.mkdir(parents=True)
    for path in sorted(photos.glob("*.jpg"))[:WARM_UP_PHOTOS]:
        (warm_up / path.name).write_bytes(path.read_bytes())
    predict.predict(dataclasses.replace(settings, input=str(warm_up), output_dir=str(output) + "_warm_up"),
                    show_progress=False)
    summary = predict.predict(dataclasses.replace(settings, input=str(photos), output_dir=str(output)),
                              show_progress=False).summary
    activity = summary["seconds_by_activity"]
    return {
        "runtime": summary["runtime"],
        "model": summary["model"],
        "test_time_augmentation": summary["test_time_augmentation"],
        "photos": summary["photos"],
        "faces": summary["faces"],
        "photos_classified_whole": summary["photos_classified_whole"],
        "photos_without_faces": summary["photos_without_faces"],
        "seconds_without_model_loading": round(summary["seconds"], 2),
        "photos_per_second": summary["photos_per_second"],
        "detector_seconds": activity.get("detector", 0.0),
        "classifier_seconds": activity.get("classifier", 0.0),
        "other_seconds": round(
            summary["seconds"] - activity.get("detector", 0.0) - activity.get("classifier", 0.0), 3
        ),
        "seconds_by_activity": activity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="photos to label (default 200)")
    parser.add_argument("--model", help="trained .keras model (default: an untrained model_4)")
    parser.add_argument("--tflite", action="store_true", help="also time float32 and int8 TFLite exports")
    arguments = parser.parse_args()
    config = Config()
    results = []
    with tempfile.TemporaryDirectory(prefix="predict_speed_") as temporary:
        work = Path(temporary)
        photos = make_photos(work / "photos", arguments.photos)
        model_path = Path(arguments.model) if arguments.model else untrained_model(work, config)
        settings = dataclasses.replace(config.predict, model=str(model_path))
        for views in ("none", "flip", "model"):
            results.append(timed_run(dataclasses.replace(settings, test_time_augmentation=views), photos,
                                     work / f"keras_{views}"))
        if arguments.tflite:
            info = model_io.read_model_info(model_path)
            calibration = np.stack([
                faces.model_input(faces.load_photo(path), int(info["image_size"]), int(info["channels"]))
                for path in sorted(photos.glob("*.jpg"))[:50]
            ])
            export.export_model(model_path, work / "export", calibration, calibration[:20],
                                variants=["float32", "int8"], image_source="benchmark photos")
            for variant in ("float32", "int8"):
                tflite_settings = dataclasses.replace(
                    settings, model="", tflite_model=str(work / "export" / export.tflite_name(variant))
                )
                results.append({"variant": variant, **timed_run(tflite_settings, photos, work / variant)})
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "photo_size": f"{PHOTO_SIDE}x{PHOTO_SIDE}, one {FACE_SIDE}-pixel FER2013 face each",
        "detector": config.predict.detector,
        "model_input": f"{config.model_4.image_size}x{config.model_4.image_size}x{config.model_4.channels}"
        if not arguments.model else "see model_info.json",
        "runs": results,
    }
    files.write_json(OUTPUT, report)
    for run in results:
        print(
            f"{run['runtime']:6} {run.get('variant', ''):7} {run['test_time_augmentation']:10} "
            f"{run['photos_per_second']:6.1f} photos/s; "
            f"detector {run['detector_seconds']:.2f} s, classifier {run['classifier_seconds']:.2f} s, "
            f"other {run['other_seconds']:.2f} s; {run['faces']} faces found in {run['photos']} photos"
        )
    print(f"wrote {OUTPUT}")
    print(json.dumps(report["runs"][0]["seconds_by_activity"]))


if __name__ == "__main__":
    main()
