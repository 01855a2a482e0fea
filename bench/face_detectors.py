#!/usr/bin/env python3
"""Face detectors side by side on real photos: faces found, boxes that are not faces, duplicate
boxes, and speed, for BlazeFace (the default), OpenCV's Haar cascade and MTCNN.

The photos are ../shared/datasets/photos (``--photos``; not part of the repository). Each
listed face is given by a point inside it (reference annotations below, checked by eye); a box
containing a listed face finds it, a second box on the same face is a duplicate, and a box
containing no face is "not a face". The partly visible girl at the right edge of
obama_and_biden.jpg is not listed, and a box on her counts neither way. Every detector
searches the same 640-pixel copy of each photo. Speed: detection alone per photo, and the whole
``predict`` (reading, detection, alignment, classification with the shipped model, writing)
on the photos three times over. MTCNN runs only when the ``mtcnn`` package is installed.
Writes reports/bench/face_detectors.json.

    python bench/face_detectors.py [--photos ../shared/datasets/photos]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from common import PROJECT_ROOT, REPORT_DIR, machine_description

from emotion_classifier import detectors, faces, files, predict, runs
from emotion_classifier.config import PredictConfig

# Photo -> a point inside each clearly visible face (the faces the photos' README lists).
REFERENCE_FACES: dict[str, list[tuple[int, int]]] = {
    "alex-lacamoire.png": [(258, 226)],
    "biden.jpg": [(585, 389)],
    "img2.jpg": [(298, 298)],
    "johnsnow_test1.jpg": [(361, 268)],
    "kit_with_rose.jpg": [(299, 149), (117, 165)],
    "lin-manuel-miranda.png": [(413, 327)],
    "obama-1080p.jpg": [(1000, 268)],
    "obama-240p.jpg": [(222, 60)],
    "obama_and_biden.jpg": [(839, 518), (1223, 499)],
    "obama_partial_face.jpg": [(112, 236)],
    "two_people.jpg": [(871, 154), (324, 139)],
}
# Faces that are only partly visible: a box on one is neither found nor wrong.
OPTIONAL_FACES: dict[str, list[tuple[int, int]]] = {"obama_and_biden.jpg": [(1706, 1130)]}
SPEED_REPEATS = 3


class MtcnnDetector:
    """MTCNN (``mtcnn`` 1.x, TensorFlow) on the same shrunk copy as the other detectors."""

    name = "mtcnn"
    landmark_names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

    def __init__(self, detection_max_side: int = 640):
        from mtcnn import MTCNN

        self.model = MTCNN(device="CPU:0")
        self.detection_max_side = detection_max_side

    def detect(self, photo):
        small, scale = detectors.shrink_for_detection(photo, self.detection_max_side)
        found = [detectors._box_in_photo(*result["box"], scale, result["confidence"], photo.shape)
                 for result in self.model.detect_faces(small) if result["confidence"] >= 0.5]
        return detectors.non_maximum_suppression(found)


def score(name: str, boxes: list[faces.FaceBox]) -> dict:
    """Faces found, duplicate boxes and boxes on no face, against the reference points."""
    def inside(box, point):
        return box.x <= point[0] <= box.x + box.width and box.y <= point[1] <= box.y + box.height

    reference = REFERENCE_FACES[name]
    hits = [sum(inside(box, point) for box in boxes) for point in reference]
    not_faces = sum(
        not any(inside(box, point) for point in reference + OPTIONAL_FACES.get(name, [])) for box in boxes
    )
    return {"faces": len(reference), "found": sum(hit > 0 for hit in hits),
            "duplicates": sum(max(0, hit - 1) for hit in hits), "not_faces": not_faces}


def compare(photos_dir: Path, detector_list: list) -> list[dict]:
    photos = {name: faces.load_photo(photos_dir / name) for name in REFERENCE_FACES}
    rows = []
    for detector in detector_list:
        detector.detect(next(iter(photos.values())))  # warm-up
        totals = {"detector": detector.name, "faces": 0, "found": 0, "duplicates": 0, "not_faces": 0}
        seconds = 0.0
        for name, photo in photos.items():
            start = time.perf_counter()
            boxes = detector.detect(photo)
            seconds += time.perf_counter() - start
            for key, value in score(name, boxes).items():
                totals[key] += value
            if score(name, boxes)["found"] < len(REFERENCE_FACES[name]) or score(name, boxes)["not_faces"]:
                totals.setdefault("problems", []).append(name)
        totals["milliseconds_per_photo"] = round(1000 * seconds / len(photos), 1)
        rows.append(totals)
        print(totals)
    return rows


def predict_speed(photos_dir: Path, work: Path) -> list[dict]:
    """``predict`` photos per second with each detector, the photos three times over."""
    folder = work / "photos"
    folder.mkdir()
    for repeat in range(SPEED_REPEATS):
        for name in REFERENCE_FACES:
            shutil.copy(photos_dir / name, folder / f"{repeat}_{name}")
    rows = []
    for detector_name in ("haar", "blazeface"):
        settings = dataclasses.replace(PredictConfig(), input=str(folder), output_dir=str(work / detector_name),
                                       model=str(runs.default_model_path(None)), detector=detector_name)
        predict.predict(dataclasses.replace(settings, input=str(photos_dir / "obama-240p.jpg"),
                                            output_dir=str(work / "warm_up")), show_progress=False)
        summary = predict.predict(settings, show_progress=False).summary
        row = {"detector": detector_name, "photos": summary["photos"], "faces": summary["faces"],
               "photos_per_second": summary["photos_per_second"],
               "seconds_by_activity": summary["seconds_by_activity"]}
        rows.append(row)
        print(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "photos")
    arguments = parser.parse_args()
    if not arguments.photos.is_dir():
        raise SystemExit(f"{arguments.photos} not found: give --photos")
    detector_list = [detectors.BlazeFaceDetector(), detectors.HaarFaceDetector()]
    try:
        detector_list.append(MtcnnDetector())
    except ImportError:
        print("mtcnn is not installed: MTCNN left out")
    report = {"machine": machine_description(), "photos": str(arguments.photos),
              "detection": compare(arguments.photos, detector_list)}
    with tempfile.TemporaryDirectory(prefix="face_detectors_") as temporary:
        report["predict"] = predict_speed(arguments.photos, Path(temporary))
    files.write_json(REPORT_DIR / "face_detectors.json", report)
    print(f"wrote {REPORT_DIR / 'face_detectors.json'}")


if __name__ == "__main__":
    main()
