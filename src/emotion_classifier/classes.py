"""Canonical class names shared by every dataset layout.

The canonical ids are AffectNet's expression codes, so an AffectNet label needs no table and
every other dataset maps its folder names onto the same names. A model trained on one dataset
can then be evaluated on another: classes are matched by name, never by position.
"""

from __future__ import annotations

# Index = AffectNet expression code. The last three are not emotions; the split stage drops them
# by default.
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
    "none",
    "uncertain",
    "non_face",
)

AFFECTNET_CODE_TO_CLASS: dict[int, str] = dict(enumerate(CANONICAL_CLASSES))

# Common spellings of the same classes in other datasets (FER2013 says "angry", RAF-DB
# "happiness", CK+ "sadness", ...). Keys are lower case with spaces and dashes as underscores.
SYNONYMS: dict[str, str] = {
    "neutrality": "neutral",
    "calm": "neutral",
    "happiness": "happy",
    "joy": "happy",
    "smile": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "disgusted": "disgust",
    "angry": "anger",
    "anger": "anger",
    "contemptuous": "contempt",
    "nonface": "non_face",
    "non_faces": "non_face",
    "no_face": "non_face",
}


def canonical_class(name: str) -> str | None:
    """Map a dataset's class name to its canonical name; None if it is not a known class."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in CANONICAL_CLASSES:
        return key
    return SYNONYMS.get(key)


def class_id(name: str) -> int:
    """The canonical id (AffectNet code) of a canonical class name."""
    return CANONICAL_CLASSES.index(name)
