"""Emotions of the faces in a video, frame by frame: what ``emotion-predict clip.mp4`` does.

Frames are read as a stream (OpenCV's FFmpeg reader) and analysed ``video_frames_per_second``
times per second of video (0: every frame). In each analysed frame the detector finds the faces,
``tracking.FaceTracker`` gives each a stable id, and the faces of ``FRAMES_PER_BLOCK`` frames
are classified together; each face's probabilities are smoothed over time. Only one block of
frames is held at a time, and rows go to disk as they are made, so memory stays flat whatever
the video's length. ``analyse_video`` writes into its output folder:

- ``frames.csv`` and ``frames.json``: one row per face per analysed frame: time, frame, face
  id, box, detector confidence, every (smoothed) class probability, the top emotion;
- ``annotated.mp4``: the analysed frames with each face's box, id and emotion;
- ``timeline_face_<id>.png``: each face's probability of every emotion over time;
- ``summary.json``: per face its first and last time, its dominant emotion and the share of its
  time in each emotion.

A video that cannot be opened, or has no frame, gives a summary with ``error`` and nothing else;
one that ends early (a truncated file) keeps what was read and says so in ``warning``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from emotion_classifier import annotate, classifiers, faces, files
from emotion_classifier.config import PredictConfig
from emotion_classifier.timing import Stopwatch
from emotion_classifier.tracking import FaceTracker

LOGGER = logging.getLogger(__name__)

FRAMES_CSV_NAME = "frames.csv"
FRAMES_JSON_NAME = "frames.json"
ANNOTATED_VIDEO_NAME = "annotated.mp4"
SUMMARY_NAME = "summary.json"
TIMELINE_PATTERN = "timeline_face_{}.png"
# Analysed frames whose faces are classified together (a few megabytes of 640x360 frames).
FRAMES_PER_BLOCK = 16
# MPEG-4 part 2, which every OpenCV wheel can write and every player reads.
VIDEO_CODEC = "mp4v"
# FFmpeg's log level "quiet".
FFMPEG_QUIET = "-8"
# A video whose header promises more frames than could be read, beyond this many, was cut short.
MISSING_FRAMES_TOLERANCE = 2


def analysis_step(video_fps: float, frames_per_second: float) -> float:
    """Video frames per analysed frame (1: every frame)."""
    if frames_per_second <= 0 or video_fps <= 0 or frames_per_second >= video_fps:
        return 1.0
    return video_fps / frames_per_second


def analyse_video(path: Path, output_dir: Path, detector, classifier: classifiers.FaceClassifier,
                  settings: PredictConfig, views: tuple[str, float], show_progress: bool = True) -> dict:
    """Analyse one video (see the module's docstring); return its summary (also written as
    ``summary.json``). Problems with the file are reported in the summary, never raised."""
    # FFmpeg's own messages about a damaged file would add lines to the one that reports it.
    # OpenCV reads this when it first opens a video; a value the user set stays.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    capture = cv2.VideoCapture(str(path))
    summary: dict = {"video": str(path), "output_dir": str(output_dir)}
    if not capture.isOpened():
        capture.release()
        return _failed(summary, f"{path}: not a video OpenCV can open (unreadable or truncated file)")
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        declared_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        summary.update(frames_per_second=round(fps, 3), declared_frames=declared_frames)
        analysis = _Analysis(output_dir, detector, classifier, settings, views, fps)
        start = time.perf_counter()
        with analysis.open_outputs():
            frames_read = analysis.run(capture, declared_frames, show_progress, path.name)
            if analysis.frames_analysed == 0:
                raise _NoFrames()
    except _NoFrames:
        return _failed(summary, f"{path}: no frame could be read (an empty or damaged video)")
    finally:
        capture.release()
    elapsed = time.perf_counter() - start
    summary.update(frames_read=frames_read, frames_analysed=analysis.frames_analysed,
                   seconds=round(elapsed, 3),
                   analysed_frames_per_second=round(analysis.frames_analysed / elapsed, 2) if elapsed > 0 else None,
                   seconds_by_activity={name: round(value, 3) for name, value in sorted(analysis.stopwatch.seconds.items())})
    if declared_frames and frames_read < declared_frames - MISSING_FRAMES_TOLERANCE:
        summary["warning"] = f"{path}: ended after {frames_read} of {declared_frames} frames (truncated?)"
        LOGGER.warning(summary["warning"])
    summary["faces"] = analysis.face_summaries()
    summary["timelines"] = analysis.write_timelines()
    files.write_json(output_dir / SUMMARY_NAME, summary)
    return summary


class _NoFrames(Exception):
    """Raised inside the outputs' context, so their temporary files are removed."""


def _failed(summary: dict, message: str) -> dict:
    """Report an unusable video in one line; the summary carries the reason."""
    print(f"SKIPPED {message}")
    summary["error"] = message
    summary["frames_analysed"] = 0
    return summary


class _Analysis:
    """The state of one video's analysis: tracker, open outputs and each face's timeline."""

    def __init__(self, output_dir: Path, detector, classifier, settings: PredictConfig,
                 views: tuple[str, float], fps: float):
        self.output_dir = output_dir
        self.detector = detector
        self.classifier = classifier
        self.settings = settings
        self.views = views
        self.fps = fps if fps > 0 else 25.0
        self.step = analysis_step(fps, settings.video_frames_per_second)
        self.tracker = FaceTracker()
        self.stopwatch = Stopwatch()
        self.frames_analysed = 0
        # Per face id: analysed times and smoothed probabilities (a few numbers per frame).
        self.timelines: dict[int, tuple[list[float], list[np.ndarray]]] = {}
        self.writer: cv2.VideoWriter | None = None
        self.rows_written = 0

    @contextlib.contextmanager
    def open_outputs(self):
        """The table files and the annotated video, each written to a temporary name and renamed
        into place only when the whole video was analysed."""
        with contextlib.ExitStack() as stack:
            csv_path = stack.enter_context(files.atomic_path(self.output_dir / FRAMES_CSV_NAME))
            json_path = stack.enter_context(files.atomic_path(self.output_dir / FRAMES_JSON_NAME))
            self.video_path = stack.enter_context(files.atomic_path(self.output_dir / ANNOTATED_VIDEO_NAME))
            self.csv_file = stack.enter_context(open(csv_path, "w", newline="", encoding="utf-8"))
            self.json_file = stack.enter_context(open(json_path, "w", encoding="utf-8"))
            self.csv_writer = csv.writer(self.csv_file)
            self.csv_writer.writerow(self._columns())
            self.json_file.write(json.dumps({"classes": self.classifier.classes})[:-1] + ', "frames": [\n')
            try:
                yield
            finally:
                self.json_file.write("\n]}\n")
                if self.writer is not None:
                    self.writer.release()

    def _columns(self) -> list[str]:
        return ["time", "frame", "face_id", "x", "y", "width", "height", "detector_confidence",
                *(classifiers.PROBABILITY_PREFIX + name for name in self.classifier.classes), "predicted"]

    def run(self, capture: cv2.VideoCapture, declared_frames: int, show_progress: bool, name: str) -> int:
        """Read every frame, analyse the chosen ones block by block; return the frames read."""
        progress = tqdm(total=declared_frames or None, desc=name, unit="frame", disable=not show_progress)
        block: list[tuple[int, np.ndarray]] = []
        frame_index, next_analysed = 0, 0.0
        while True:
            with self.stopwatch.measure("reading"):
                # Frames that are not analysed are only grabbed, never decoded into an image.
                if frame_index + 0.5 < next_analysed:
                    ok, frame = capture.grab(), None
                else:
                    ok, frame = capture.read()
            if not ok:
                break
            if frame is not None:
                block.append((frame_index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
                next_analysed += self.step
            frame_index += 1
            progress.update(1)
            if len(block) >= FRAMES_PER_BLOCK:
                self._analyse_block(block)
                block = []
        if block:
            self._analyse_block(block)
        progress.close()
        return frame_index

    def _analyse_block(self, block: list[tuple[int, np.ndarray]]) -> None:
        """Detect and track the faces of a block of frames, classify them together, write them."""
        detected = []
        crops = []
        for frame_index, frame in block:
            with self.stopwatch.measure("detector"):
                boxes = self.detector.detect(frame)
            ids = self.tracker.assign(boxes, self.frames_analysed)
            self.frames_analysed += 1
            with self.stopwatch.measure("cropping"):
                for box in boxes:
                    picture = faces.face_picture(frame, box, self.settings.face_margin, self.settings.align_faces,
                                                 self.classifier.image_size).picture
                    crops.append(faces.model_input(picture, self.classifier.image_size, self.classifier.channels,
                                                   self.classifier.equalize_histogram))
            detected.append((frame_index, frame, boxes, ids))
        with self.stopwatch.measure("classifier"):
            probabilities = classifiers.classify_faces(crops, self.classifier, classifiers.BATCH_SIZE, self.views)
        position = 0
        with self.stopwatch.measure("writing"):
            for frame_index, frame, boxes, ids in detected:
                frame_probabilities = probabilities[position:position + len(boxes)]
                position += len(boxes)
                self._write_frame(frame_index, frame, boxes, ids, frame_probabilities)

    def _write_frame(self, frame_index: int, frame: np.ndarray, boxes, ids, probabilities) -> None:
        """One analysed frame: its rows in both tables, its annotated copy in the video."""
        seconds = frame_index / self.fps
        labels = []
        for box, face_id, face_probabilities in zip(boxes, ids, probabilities):
            smoothed = self.tracker.smooth(face_id, face_probabilities)
            name, probability, index = annotate.top_class(self.classifier.classes, smoothed)
            times, series = self.timelines.setdefault(face_id, ([], []))
            times.append(seconds)
            series.append(smoothed.astype(np.float32))
            self._write_row(seconds, frame_index, face_id, box, smoothed, name)
            labels.append((box, f"#{face_id} {name} {probability:.0%}", index))
        image = annotate.draw_faces(Image.fromarray(frame), labels)
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODEC)
            self.writer = cv2.VideoWriter(str(self.video_path), fourcc, self.fps / self.step, image.size)
        self.writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))

    def _write_row(self, seconds: float, frame_index: int, face_id: int, box, smoothed: np.ndarray,
                   name: str) -> None:
        values = [round(float(value), 6) for value in smoothed]
        self.csv_writer.writerow([round(seconds, 3), frame_index, face_id, box.x, box.y, box.width, box.height,
                                  round(box.confidence, 4), *values, name])
        row = {"time": round(seconds, 3), "frame": frame_index, "face_id": face_id,
               "box": {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
               "detector_confidence": round(box.confidence, 4),
               "probabilities": dict(zip(self.classifier.classes, values)), "predicted": name}
        self.json_file.write(("" if self.rows_written == 0 else ",\n") + json.dumps(row))
        self.rows_written += 1

    def face_summaries(self) -> list[dict]:
        """Per face: when it was seen, its dominant emotion and its share of time in each emotion."""
        classes = self.classifier.classes
        summaries = []
        for face_id, (times, series) in sorted(self.timelines.items()):
            top = np.argmax(np.stack(series), axis=1)
            shares = np.bincount(top, minlength=len(classes)) / len(top)
            summaries.append({
                "face_id": face_id, "first_time": round(times[0], 3), "last_time": round(times[-1], 3),
                "frames": len(times), "dominant_emotion": classes[int(np.argmax(shares))],
                "share_of_time": {name: round(float(share), 4) for name, share in zip(classes, shares)},
            })
        return summaries

    def write_timelines(self) -> list[str]:
        """One PNG per face: the probability of each emotion over the video's time."""
        from matplotlib.figure import Figure

        written = []
        for face_id, (times, series) in sorted(self.timelines.items()):
            figure = Figure(figsize=(8, 3.2))
            axis = figure.subplots()
            values = np.stack(series)
            for index, name in enumerate(self.classifier.classes):
                colour = np.array(annotate.BOX_COLOURS[index % len(annotate.BOX_COLOURS)]) / 255.0
                axis.plot(times, values[:, index], label=name, color=colour, marker="." if len(times) < 3 else None)
            axis.set_xlabel("time (s)")
            axis.set_ylabel("probability (smoothed)")
            axis.set_ylim(0, 1)
            axis.set_title(f"face {face_id}: {len(times)} analysed frames")
            axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
            figure.tight_layout()
            path = self.output_dir / TIMELINE_PATTERN.format(face_id)
            files.save_figure(path, figure)
            written.append(path.name)
        return written
