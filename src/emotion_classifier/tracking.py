"""Following faces from frame to frame: a small IoU tracker and smoothed probabilities.

Each analysed frame's boxes are matched to the faces of the frames before by box overlap
(intersection over union), greedily, best overlap first. A box that matches no face starts a new
face with the next id; a face unseen for ``MAX_MISSED_FRAMES`` analysed frames is closed (a
scene cut, a person leaving). Each face's probabilities are smoothed over time by an exponential
moving average, which steadies the label without lagging far behind a real change of expression.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emotion_classifier.detectors import FaceBox, box_iou

# A box continues a face when it overlaps the face's last box at least this much.
MATCH_IOU = 0.3
# Weight of each new frame in a face's smoothed probabilities (an exponential moving average;
# 1: no smoothing): at 10 analysed frames per second, a change shows within a few tenths of a second.
SMOOTHING = 0.4
# Analysed frames a face may go undetected (a blink of the detector, a hand in front) and
# keep its id.
MAX_MISSED_FRAMES = 5


@dataclasses.dataclass
class Track:
    """One face followed through the video."""

    face_id: int
    box: FaceBox
    last_frame: int


class FaceTracker:
    """Gives each box of a frame a face id, stable while the face moves."""

    def __init__(self, smoothing: float = SMOOTHING, match_iou: float = MATCH_IOU,
                 max_missed: int = MAX_MISSED_FRAMES):
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.match_iou = match_iou
        self.max_missed = max_missed
        self.tracks: dict[int, Track] = {}
        # Kept apart from the open tracks: a block's faces are smoothed after the whole block
        # was tracked, when a face may already be closed.
        self.smoothed: dict[int, np.ndarray] = {}
        self.next_id = 0

    def assign(self, boxes: list[FaceBox], frame_number: int) -> list[int]:
        """The face id of each box of analysed frame ``frame_number`` (counted in analysed frames)."""
        self.tracks = {face_id: track for face_id, track in self.tracks.items()
                       if frame_number - track.last_frame <= self.max_missed}
        pairs = sorted(
            ((box_iou(box, track.box), box_index, face_id)
             for box_index, box in enumerate(boxes) for face_id, track in self.tracks.items()),
            reverse=True,
        )
        assigned: dict[int, int] = {}
        taken: set[int] = set()
        for overlap, box_index, face_id in pairs:
            if overlap < self.match_iou:
                break
            if box_index in assigned or face_id in taken:
                continue
            assigned[box_index] = face_id
            taken.add(face_id)
        ids = []
        for box_index, box in enumerate(boxes):
            face_id = assigned.get(box_index)
            if face_id is None:
                face_id = self.next_id
                self.next_id += 1
                self.tracks[face_id] = Track(face_id, box, frame_number)
            self.tracks[face_id].box = box
            self.tracks[face_id].last_frame = frame_number
            ids.append(face_id)
        return ids

    def smooth(self, face_id: int, probabilities: np.ndarray) -> np.ndarray:
        """The face's probabilities averaged over time: ``smoothing`` times this frame's plus the
        rest times the average so far (this frame's alone for a new face)."""
        previous = self.smoothed.get(face_id)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        self.smoothed[face_id] = probabilities if previous is None else (
            self.smoothing * probabilities + (1.0 - self.smoothing) * previous)
        return self.smoothed[face_id]
