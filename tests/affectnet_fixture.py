"""Generate small datasets in AffectNet's release layouts, as their users receive them.

Real faces come from the shipped FER2013 sample. The original release: each face is pasted at a
known place into a larger noisy photo, so the CSV's face box is not the whole image; the images
arrive in a zip split into byte-wise pieces (``.zip.001``, ``.002``, ``.003``) and the label
files in a zip of their own, all in one download folder; image names carry upper-case and
non-JPEG extensions (``.JPG``, ``.Png``, ``.png``, ``.jpeg``) as AffectNet's do. The later
release: ``train_set`` and ``val_set`` folders of face images and ``annotations/<id>_exp.npy``
(with ``_val``, ``_aro``, ``_lnd``) in one archive.
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


# Image file names cycle through these extensions and the formats they stand for.
EXTENSIONS = ((".jpg", "JPEG"), (".JPG", "JPEG"), (".Png", "PNG"), (".jpeg", "JPEG"), (".png", "PNG"))


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 92} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def _photo_with_face(face_jpeg: bytes, random: np.random.Generator,
                     image_format: str = "JPEG") -> tuple[bytes, tuple[int, int, int, int]]:
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    width, height = 96, 88
    background = random.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    photo = Image.fromarray(background)
    x, y = int(random.integers(0, width - face.width)), int(random.integers(0, height - face.height))
    photo.paste(face, (x, y))
    return _encode(photo, image_format), (x, y, face.width, face.height)


def _landmarks(box: tuple[int, int, int, int], random: np.random.Generator) -> str:
    x, y, width, height = box
    points = np.column_stack([random.uniform(x, x + width, 68), random.uniform(y, y + height, 68)])
    return ";".join(f"{value:.2f}" for value in points.ravel())


def _release_plan(train_per_class: int, validation_per_class: int,
                  extra_codes: tuple[int, ...]) -> list[tuple[str, int, str, int]]:
    """(FER class, AffectNet code, table, row count) for every group of rows of the release."""
    plan = [(name, code) for name, code in FER_TO_AFFECTNET.items()]
    plan += [("neutral", code) for code in extra_codes]  # None, Uncertain, Non-Face, Contempt rows
    groups = []
    for fer_name, code in plan:
        is_extra = code in extra_codes
        groups.append((fer_name, code, "training.csv", 2 if is_extra else train_per_class))
        groups.append((fer_name, code, "validation.csv", 1 if is_extra else validation_per_class))
    return groups


def _split_into_pieces(data: bytes, folder: Path, name: str, pieces: int) -> list[Path]:
    """Byte-wise pieces ``name.001``, ``name.002``..., as a splitting tool writes them."""
    size = len(data) // pieces + 1
    paths = []
    for index in range(pieces):
        path = folder / f"{name}.{index + 1:03d}"
        path.write_bytes(data[index * size:(index + 1) * size])
        paths.append(path)
    return paths


def build_affectnet_archives(folder: Path, train_per_class: int = 12, validation_per_class: int = 4,
                             extra_codes: tuple[int, ...] = (7, 8, 9, 10), seed: int = 0) -> list[Path]:
    """Write the original release into the download folder ``folder``; return its archives."""
    random = np.random.default_rng(seed)
    faces = sample_faces()
    images_zip = io.BytesIO()
    tables: dict[str, list[list[object]]] = {"training.csv": [], "validation.csv": []}
    index = 0
    with zipfile.ZipFile(images_zip, "w") as archive:
        for fer_name, code, table, count in _release_plan(train_per_class, validation_per_class, extra_codes):
            for _ in range(count):
                face = faces[fer_name][index % len(faces[fer_name])]
                extension, image_format = EXTENSIONS[index % len(EXTENSIONS)]
                index += 1
                photo, box = _photo_with_face(face, random, image_format)
                subdirectory = str(100 + index % 7)
                name = hashlib.sha1(photo).hexdigest()[:24] + extension
                archive.writestr(f"Manually_Annotated_Images/{subdirectory}/{name}", photo)
                valence, arousal = (-2.0, -2.0) if code >= 8 else (round(random.uniform(-1, 1), 4),
                                                                    round(random.uniform(-1, 1), 4))
                tables[table].append([f"{subdirectory}/{name}", *box, _landmarks(box, random),
                                      code, valence, arousal])
    folder.mkdir(parents=True, exist_ok=True)
    pieces = _split_into_pieces(images_zip.getvalue(), folder, "Manually_Annotated_Images.zip", 3)
    lists_path = folder / "Manually_Annotated_file_lists.zip"
    with zipfile.ZipFile(lists_path, "w") as archive:
        for table, rows in tables.items():
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
            archive.writestr(f"Manually_Annotated_file_lists/{table}", text.getvalue())
    # Download folders hold more than the archives; such files are used as they are.
    (folder / "README.txt").write_text("AffectNet: see the license agreement.\n")
    return [*pieces, lists_path]


def _npy_bytes(value) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


def build_affectnet_npy_release(folder: Path, per_class: dict[str, int] | None = None,
                                seed: int = 0) -> Path:
    """Write the later release (face crops and .npy annotations) as one zip in ``folder``."""
    per_class = per_class or {"train_set": 10, "val_set": 4}
    random = np.random.default_rng(seed)
    faces = sample_faces()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "AffectNet.zip"
    index = 0
    with zipfile.ZipFile(path, "w") as archive:
        for set_name, count in per_class.items():
            for fer_name, code in FER_TO_AFFECTNET.items():
                for _ in range(count):
                    face = Image.open(io.BytesIO(faces[fer_name][index % len(faces[fer_name])])).convert("RGB")
                    extension, image_format = EXTENSIONS[index % len(EXTENSIONS)]
                    index += 1
                    image_id = str(index)
                    archive.writestr(f"{set_name}/images/{image_id}{extension}", _encode(face, image_format))
                    annotations = {
                        "exp": np.array(str(code)),
                        "val": np.array(f"{random.uniform(-1, 1):.4f}"),
                        "aro": np.array(f"{random.uniform(-1, 1):.4f}"),
                        "lnd": random.uniform(0, face.width, 2 * 68),
                    }
                    for kind, value in annotations.items():
                        archive.writestr(f"{set_name}/annotations/{image_id}_{kind}.npy", _npy_bytes(value))
    return path
