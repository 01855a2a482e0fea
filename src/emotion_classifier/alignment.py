"""Faces turned upright by their eyes and framed as the training faces were.

FER2013's 48x48 crops frame a face the same way every time. Measured with the BlazeFace
detector on 277 FER2013 val faces (each enlarged to 160 px with its border carried outwards):
the midpoint of the eyes lies at 50% of the crop's width and 39.5% of its height, and the eyes
are 35.7% of the crop's side apart (median; quartiles 31.5%-38.2%). ``aligned_face`` rotates a
face so that its eyes are level and crops the square that puts them there, so a tilted head in
a photo reaches the model as the training faces did.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from emotion_classifier.detectors import FaceBox

# Where FER2013's crops put the eyes, as fractions of the crop's side (see the docstring).
EYES_CENTRE_X = 0.5
EYES_CENTRE_Y = 0.395
EYE_DISTANCE = 0.357
# The aligned crop is cut at the face's own resolution (then resized to the model's input with
# area averaging, which does not alias), at most this many pixels a side.
MAX_ALIGNED_SIDE = 256


def eye_points(box: FaceBox) -> tuple[np.ndarray, np.ndarray] | None:
    """The eye on the picture's left and the one on its right, or None without eye landmarks."""
    left, right = box.landmark("left_eye"), box.landmark("right_eye")
    if left is None or right is None:
        return None
    return np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64)


def roll_degrees(box: FaceBox) -> float | None:
    """How far the face is tilted: the angle of the line from its left to its right eye, in
    degrees, positive when the right eye is lower (clockwise in the picture)."""
    eyes = eye_points(box)
    if eyes is None:
        return None
    left, right = eyes
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def alignment_matrix(box: FaceBox, side: int) -> np.ndarray | None:
    """The 2x3 affine map from photo pixels to an upright ``side`` x ``side`` crop framed as
    FER2013's (eyes level, at ``EYES_CENTRE_*``, ``EYE_DISTANCE`` apart); None without eyes."""
    eyes = eye_points(box)
    if eyes is None:
        return None
    left, right = eyes
    distance = float(np.hypot(*(right - left)))
    if distance < 1.0:
        return None
    angle = math.atan2(right[1] - left[1], right[0] - left[0])
    scale = EYE_DISTANCE * side / distance
    cosine, sine = scale * math.cos(-angle), scale * math.sin(-angle)
    rotation = np.array([[cosine, -sine], [sine, cosine]])
    middle = (left + right) / 2.0
    target = np.array([EYES_CENTRE_X * side, EYES_CENTRE_Y * side])
    return np.hstack([rotation, (target - rotation @ middle)[:, np.newaxis]])


def aligned_side(box: FaceBox, minimum: int) -> int:
    """The side of the aligned crop: the face's own size in the photo, within [minimum, 256]."""
    eyes = eye_points(box)
    distance = float(np.hypot(*(eyes[1] - eyes[0]))) if eyes is not None else 0.0
    return int(min(MAX_ALIGNED_SIDE, max(minimum, round(distance / EYE_DISTANCE))))


def aligned_face(photo: np.ndarray, box: FaceBox, minimum_side: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The upright face as an RGB ``uint8`` square, and the matrix that cut it from ``photo``;
    None when the box has no eye landmarks. Pixels beyond the photo's edge repeat its border."""
    side = aligned_side(box, minimum_side)
    matrix = alignment_matrix(box, side)
    if matrix is None:
        return None
    face = cv2.warpAffine(photo, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return face, matrix
