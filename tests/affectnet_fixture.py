"""Generate a small dataset in AffectNet's original release layout, as its archives arrive.

Real faces come from the shipped FER2013 sample; each is pasted at a known place into a larger
noisy photo, so the CSV's face box is not the whole image, as in AffectNet. The archives mimic the
real ones: the images in a zip split into byte-wise pieces (``.zip.001``, ``.zip.002``), the
label files in a zip of their own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLE_ARCHIVE = REPOSITORY / "sample" / "fer2013_sample.tar.gz"

# FER folder name -> AffectNet expression code.
FER_TO_AFFECTNET = {"neutral": 0, "happy": 1, "sad": 2, "surprise": 3, "fear": 4, "disgust": 5, "angry": 6}
COLUMNS = [
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
]


def sample_faces() -> dict[str, list[bytes]]:
    """The sample's JPEG bytes per FER class folder name, in a fixed order."""
    faces: dict[str, list[bytes]] = {}
    with tarfile.open(SAMPLE_ARCHIVE) as archive:
        for member in sorted(archive.getmembers(), key=lambda member: member.name):
            if member.isfile() and member.name.endswith(".jpg"):
                class_name = member.name.split("/")[-2]
                faces.setdefault(class_name, []).append(archive.extractfile(member).read())
    return faces


def _photo_with_face(face_jpeg: bytes, random: np.random.Generator) -> tuple[bytes, tuple[int, int, int, int]]:
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    width, height = 96, 88
    background = random.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    photo = Image.fromarray(background)
    x, y = int(random.integers(0, width - face.width)), int(random.integers(0, height - face.height))
    photo.paste(face, (x, y))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), (x, y, face.width, face.height)


def _landmarks(box: tuple[int, int, int, int], random: np.random.Generator) -> str:
    x, y, width, height = box
    points = np.column_stack([random.uniform(x, x + width, 68), random.uniform(y, y + height, 68)])
    return ";".join(f"{value:.2f}" for value in points.ravel())


def build_affectnet_archives(folder: Path, train_per_class: int = 12, validation_per_class: int = 4,
                             extra_codes: tuple[int, ...] = (7, 8, 9, 10), seed: int = 0) -> list[Path]:
    """Write the archives into ``folder``; return their paths (what a user would download)."""
    random = np.random.default_rng(seed)
    faces = sample_faces()
    images_zip = io.BytesIO()
    tables: dict[str, list[list[object]]] = {"training.csv": [], "validation.csv": []}
    with zipfile.ZipFile(images_zip, "w") as archive:
        index = 0
        plan = [(name, code) for name, code in FER_TO_AFFECTNET.items()]
        plan += [("neutral", code) for code in extra_codes]  # None, Uncertain, Non-Face, Contempt rows
        for fer_name, code in plan:
            is_extra = code in extra_codes
            counts = {"training.csv": 2 if is_extra else train_per_class,
                      "validation.csv": 1 if is_extra else validation_per_class}
            for table, count in counts.items():
                for _ in range(count):
                    face = faces[fer_name][index % len(faces[fer_name])]
                    index += 1
                    photo, box = _photo_with_face(face, random)
                    subdirectory = str(100 + index % 7)
                    name = hashlib.sha1(photo).hexdigest()[:24] + ".jpg"
                    archive.writestr(f"Manually_Annotated_Images/{subdirectory}/{name}", photo)
                    valence, arousal = (-2.0, -2.0) if code >= 8 else (round(random.uniform(-1, 1), 4),
                                                                        round(random.uniform(-1, 1), 4))
                    tables[table].append([f"{subdirectory}/{name}", *box, _landmarks(box, random),
                                          code, valence, arousal])
    folder.mkdir(parents=True, exist_ok=True)
    data = images_zip.getvalue()
    middle = len(data) // 2
    pieces = [folder / "Manually_Annotated_Images.zip.001", folder / "Manually_Annotated_Images.zip.002"]
    pieces[0].write_bytes(data[:middle])
    pieces[1].write_bytes(data[middle:])

    lists_path = folder / "Manually_Annotated_file_lists.zip"
    with zipfile.ZipFile(lists_path, "w") as archive:
        for table, rows in tables.items():
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
            archive.writestr(f"Manually_Annotated_file_lists/{table}", text.getvalue())
    return [*pieces, lists_path]
