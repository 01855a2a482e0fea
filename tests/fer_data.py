"""Where the tests find real FER2013 face images.

The project's data lives beside the checkout, in ``../shared/datasets/fer2013`` (train/ and val/
with a folder per class). Where that folder is absent, the tests fall back to the sample the
repository ships (the same layout, 5,001 training and 1,000 validation images), extracted
once into the temporary folder, so the suite runs on any fresh clone.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_FER_ROOT = REPOSITORY.parent / "shared" / "datasets" / "fer2013"
SAMPLE_ARCHIVE = REPOSITORY / "sample" / "fer2013_sample.tar.gz"


def fer_root() -> Path:
    if SHARED_FER_ROOT.is_dir():
        return SHARED_FER_ROOT
    target = Path(tempfile.gettempdir()) / "emotion_classifier_tests_fer_sample"
    root = target / "fer2013_sample"
    if not (root / "val").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SAMPLE_ARCHIVE) as archive:
            # The archive is the repository's own; the data filter still refuses anything unsafe.
            archive.extractall(target, filter="data")
    return root


FER_ROOT = fer_root()
# Some tests need more images than the sample's 15 validation images per class.
FULL_FER_AVAILABLE = FER_ROOT == SHARED_FER_ROOT
