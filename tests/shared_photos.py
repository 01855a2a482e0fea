"""Where the tests find the real photos and video of ../shared/datasets/photos (not in the repository).

Tests that read them carry ``@pytest.mark.shared_data`` and skip where the folder is absent.
``EMOTION_SHARED_DIR`` names another place for ``shared/``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_SHARED_DIR", REPOSITORY.parent / "shared"))
PHOTOS = SHARED / "datasets" / "photos"
CLIP = PHOTOS / "short_hamilton_clip.mp4"

needs_photos = [pytest.mark.shared_data,
                pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"{PHOTOS} not available")]


def reference_faces():
    """The benchmark's reference annotations of the photos (bench/face_detectors.py)."""
    # The benchmark imports its neighbour common.py.
    if str(REPOSITORY / "bench") not in sys.path:
        sys.path.insert(0, str(REPOSITORY / "bench"))
    spec = importlib.util.spec_from_file_location("face_detectors_bench", REPOSITORY / "bench" / "face_detectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
