#!/usr/bin/env python3
"""How many video frames per second ``emotion-predict clip.mp4`` analyses, everything included.

Runs ``predict`` on a video (default ../shared/datasets/photos/short_hamilton_clip.mp4: 640x360,
29.97 frames/s, 275 frames, one or two faces) with the shipped model, analysing every frame and
then ``video_frames_per_second`` at its default, after a warm-up on the first frames. The time
counts reading, detection, tracking, classification, smoothing and writing every output (tables,
annotated MP4, timelines, summary). Writes reports/bench/video_speed.json.

    python bench/video_speed.py [--video PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import cv2
from common import PROJECT_ROOT, REPORT_DIR, machine_description

from emotion_classifier import files, predict, runs
from emotion_classifier.config import PredictConfig

WARM_UP_FRAMES = 20


def warm_up_clip(video: Path, path: Path) -> Path:
    """The video's first frames as a clip of their own (loads and traces the models)."""
    capture = cv2.VideoCapture(str(video))
    writer = None
    for _ in range(WARM_UP_FRAMES):
        ok, frame = capture.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, frame.shape[1::-1])
        writer.write(frame)
    capture.release()
    if writer is not None:
        writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path,
                        default=PROJECT_ROOT.parent / "shared" / "datasets" / "photos" / "short_hamilton_clip.mp4")
    parser.add_argument("--tflite", help="also time this .tflite export of the model")
    arguments = parser.parse_args()
    if not arguments.video.is_file():
        raise SystemExit(f"{arguments.video} not found: give --video")
    measured = []
    with tempfile.TemporaryDirectory(prefix="video_speed_") as temporary:
        work = Path(temporary)
        model = str(runs.default_model_path(None))
        variants = [("keras", {"model": model})]
        if arguments.tflite:
            variants.append(("tflite", {"tflite_model": arguments.tflite}))
        for runtime, models in variants:
            for rate in (0.0, PredictConfig().video_frames_per_second):
                settings = dataclasses.replace(PredictConfig(), input=str(arguments.video), **models,
                                               output_dir=str(work / f"{runtime}_{rate}"), video_frames_per_second=rate)
                predict.predict(dataclasses.replace(settings, input=str(warm_up_clip(arguments.video, work / "warm.mp4")),
                                                    output_dir=str(work / "warm_up")), show_progress=False)
                summary = predict.predict(settings, show_progress=False).videos[0]
                run = {"runtime": runtime, "video_frames_per_second": rate, "frames_read": summary["frames_read"],
                       "frames_analysed": summary["frames_analysed"], "seconds": summary["seconds"],
                       "analysed_frames_per_second": summary["analysed_frames_per_second"],
                       "faces_followed": len(summary["faces"]),
                       "seconds_by_activity": summary["seconds_by_activity"]}
                measured.append(run)
                print(run)
    files.write_json(REPORT_DIR / "video_speed.json",
                     {"machine": machine_description(), "video": str(arguments.video), "runs": measured})
    print(f"wrote {REPORT_DIR / 'video_speed.json'}")


if __name__ == "__main__":
    main()
