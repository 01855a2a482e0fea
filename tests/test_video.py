"""Videos through ``emotion-predict``: faces followed with stable ids, smoothed, tabulated, drawn;
broken videos reported while the rest goes on; the tracker on its own."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import shared_photos
from model_fixtures import save_tiny_model

from emotion_classifier import demo, predict, runs, tracking, video
from emotion_classifier.config import PredictConfig
from emotion_classifier.detectors import FaceBox

CLASSES = ["neutral", "happy", "sad"]
CLIP_FPS = 10


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "run" / "best.keras", CLASSES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Two real portraits moving towards each other, one tilting: 2 s at 10 frames/s."""
    return demo.make_demo_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=2.0, fps=CLIP_FPS)


@pytest.fixture(scope="module")
def analysed(clip, model_path, tmp_path_factory) -> predict.PredictionResult:
    settings = PredictConfig(input=str(clip), model=str(model_path), output_dir=str(tmp_path_factory.mktemp("out")),
                             video_frames_per_second=0)
    return predict.predict(settings, show_progress=False)


def test_every_frame_is_tabulated_with_stable_face_ids(analysed):
    (summary,) = analysed.videos
    folder = Path(summary["output_dir"])
    assert folder == analysed.output_dir / predict.VIDEOS_FOLDER / "clip.mp4"
    table = pd.read_csv(folder / video.FRAMES_CSV_NAME)
    assert summary["frames_read"] == summary["frames_analysed"] == 2 * CLIP_FPS
    # Both faces in every frame, each keeping its id as it moves.
    assert table.groupby("frame")["face_id"].apply(sorted).map(tuple).unique().tolist() == [(0, 1)]
    left_face = table[table["face_id"] == table.loc[table["frame"] == 0].sort_values("x")["face_id"].iloc[0]]
    assert left_face["x"].is_monotonic_increasing and left_face["x"].iloc[-1] - left_face["x"].iloc[0] > 60
    assert table["time"].iloc[-1] == pytest.approx((2 * CLIP_FPS - 1) / CLIP_FPS, abs=1e-3)
    probabilities = table[[f"probability_{name}" for name in CLASSES]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (table["predicted"] == [CLASSES[index] for index in probabilities.argmax(axis=1)]).all()
    document = json.loads((folder / video.FRAMES_JSON_NAME).read_text())
    assert document["classes"] == CLASSES and len(document["frames"]) == len(table)
    assert document["frames"][3]["face_id"] == table["face_id"].iloc[3]


def test_annotated_video_timelines_and_summary_are_written(analysed):
    (summary,) = analysed.videos
    folder = Path(summary["output_dir"])
    capture = cv2.VideoCapture(str(folder / video.ANNOTATED_VIDEO_NAME))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames_analysed"]
    capture.release()
    assert summary["timelines"] == ["timeline_face_0.png", "timeline_face_1.png"]
    assert all((folder / name).stat().st_size > 5000 for name in summary["timelines"])
    written = json.loads((folder / video.SUMMARY_NAME).read_text())
    for face in written["faces"]:
        assert face["frames"] == 2 * CLIP_FPS and face["dominant_emotion"] in CLASSES
        assert sum(face["share_of_time"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["dominant_emotion"] == max(face["share_of_time"], key=face["share_of_time"].get)
    assert json.loads((analysed.output_dir / predict.SUMMARY_NAME).read_text())["videos"][0]["frames_analysed"] == 20
    # A video alone: no photo tables.
    assert not (analysed.output_dir / predict.CSV_NAME).exists()
    assert not (analysed.output_dir / predict.CONTACT_SHEET_NAME).exists()


def test_frames_are_analysed_at_the_configured_rate(clip, model_path, tmp_path):
    settings = PredictConfig(input=str(clip), model=str(model_path), output_dir=str(tmp_path), video_frames_per_second=4)
    (summary,) = predict.predict(settings, show_progress=False).videos
    assert summary["frames_read"] == 20 and summary["frames_analysed"] == 8
    table = pd.read_csv(Path(summary["output_dir"]) / video.FRAMES_CSV_NAME)
    # Every 2.5th frame, rounded to the nearest.
    assert sorted(table["frame"].unique()) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert video.analysis_step(30.0, 0) == 1.0 and video.analysis_step(30.0, 10) == 3.0


def test_broken_videos_are_reported_and_the_rest_goes_on(clip, model_path, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clip.read_bytes())
    (folder / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    data = clip.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(cv2.cvtColor(cv2.VideoCapture(str(clip)).read()[1], cv2.COLOR_BGR2RGB)).save(folder / "still.jpg")
    status = predict.main([str(folder), "--model", str(model_path), "--output", str(tmp_path / "out")])
    assert status == 0
    output = capsys.readouterr().out
    summaries = {Path(summary["video"]).name: summary for summary in
                 json.loads((tmp_path / "out" / predict.SUMMARY_NAME).read_text())["videos"]}
    for name in ("garbage.mp4", "cut.mp4", "empty.mp4"):
        assert summaries[name]["error"] and f"SKIPPED {folder / name}" in output
        assert not (tmp_path / "out" / predict.VIDEOS_FOLDER / name).exists()
    assert "error" not in summaries["good.mp4"] and summaries["good.mp4"]["frames_analysed"] > 0
    assert "4 videos (3 unreadable)" in output and "1 photos, 2 faces" in output
    assert len(pd.read_csv(tmp_path / "out" / predict.CSV_NAME)) == 2


def test_tracker_keeps_ids_while_faces_move_and_closes_lost_ones():
    tracker = tracking.FaceTracker(smoothing=0.5)
    first, second = FaceBox(10, 10, 50, 50, 0.9), FaceBox(200, 10, 50, 50, 0.9)
    assert tracker.assign([first, second], 0) == [0, 1]
    # Moved a little, listed in the other order: same ids.
    assert tracker.assign([FaceBox(212, 12, 50, 50, 0.9), FaceBox(18, 14, 50, 50, 0.9)], 1) == [1, 0]
    # A new face far away gets a new id; a face missing longer than allowed is closed.
    assert tracker.assign([FaceBox(400, 300, 40, 40, 0.9)], 2) == [2]
    assert tracker.assign([FaceBox(20, 14, 50, 50, 0.9)], 3 + tracking.MAX_MISSED_FRAMES) == [3]
    assert np.allclose(tracker.smooth(0, np.array([1.0, 0.0])), [1.0, 0.0])
    assert np.allclose(tracker.smooth(0, np.array([0.0, 1.0])), [0.5, 0.5])
    assert np.allclose(tracker.smooth(0, np.array([0.0, 1.0])), [0.25, 0.75])
    with pytest.raises(ValueError, match="smoothing"):
        tracking.FaceTracker(smoothing=0.0)


@shared_photos.needs_photos[0]
@shared_photos.needs_photos[1]
def test_the_real_clip_gives_every_output(tmp_path):
    settings = PredictConfig(input=str(shared_photos.CLIP), output_dir=str(tmp_path),
                             model=str(runs.default_model_path()))
    (summary,) = predict.predict(settings, show_progress=False).videos
    folder = Path(summary["output_dir"])
    assert summary["frames_read"] == 275 and "error" not in summary and "warning" not in summary
    table = pd.read_csv(folder / video.FRAMES_CSV_NAME)
    assert table["frame"].nunique() >= 0.9 * summary["frames_analysed"]
    # The audience scene at the end shows four people, each found.
    assert table.groupby("frame").size().max() <= 4 and (table["detector_confidence"] >= 0.5).all()
    assert (folder / video.ANNOTATED_VIDEO_NAME).stat().st_size > 100_000
    assert summary["timelines"] and all((folder / name).is_file() for name in summary["timelines"])
    assert {face["dominant_emotion"] for face in summary["faces"]} <= set(table["predicted"])
