"""Where the tests find real FER2013 face images.

The project's data lives beside the checkout, in ``../shared/datasets/fer2013`` (train/ and val/
with a folder per class). Where that folder is absent, the tests use the sample the repository
ships (the same layout), which conftest.py extracts once per test session into pytest's
temporary folder. Tests that need the full dataset carry the ``shared_data`` marker.
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_ROOT = REPOSITORY.parent / "shared" / "datasets"
SHARED_FER_ROOT = SHARED_ROOT / "fer2013"
SAMPLE_ARCHIVE = REPOSITORY / "sample" / "fer2013_sample.tar.gz"
FULL_FER_AVAILABLE = SHARED_FER_ROOT.is_dir()

# Set by conftest.py when the session starts (SHARED_FER_ROOT, or the extracted sample), and
# inherited by the Python processes that tests start.
ROOT_VARIABLE = "EMOTION_TESTS_FER_ROOT"


def fer_root() -> Path:
    """The FER2013 folder of this test session (train/ and val/ with a folder per class)."""
    if ROOT_VARIABLE not in os.environ:
        raise RuntimeError(f"{ROOT_VARIABLE} is set by tests/conftest.py when the test session starts")
    return Path(os.environ[ROOT_VARIABLE])
