"""Reading photos in every mode and finding faces with OpenCV, on real photographs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from emotion_classifier import faces
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

# A real photograph that ships with matplotlib: Grace Hopper, one frontal face.
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
from fer_data import fer_root
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to be seen upright.
ROTATE_CLOCKWISE_ON_DISPLAY = 6


def grace_hopper() -> np.ndarray:
    return np.asarray(Image.open(GRACE_HOPPER).convert("RGB"))


def overlaps(box: faces.FaceBox, left: int, top: int, right: int, bottom: int) -> float:
    """Intersection over union of a detected box with an expected one."""
    width = max(0, min(box.x + box.width, right) - max(box.x, left))
    height = max(0, min(box.y + box.height, bottom) - max(box.y, top))
    intersection = width * height
    union = box.width * box.height + (right - left) * (bottom - top) - intersection
    return intersection / union


def test_find_photos_recurses_filters_suffixes_and_skips_hidden(tmp_path):
    for name in ("a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.bmp", "notes.txt", ".hidden/e.jpg", ".f.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = [path.relative_to(tmp_path).as_posix() for path in faces.find_photos(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.bmp"]
    assert faces.find_photos(tmp_path / "a.jpg") == [tmp_path / "a.jpg"]
    with pytest.raises(PipelineError, match="input not found"):
        faces.find_photos(tmp_path / "missing")


def test_load_photo_applies_exif_orientation(tmp_path):
    upright = np.zeros((20, 40, 3), dtype=np.uint8)
    upright[:, :20] = (255, 0, 0)  # left half red
    # Stored turned a quarter counter-clockwise; the tag says to turn it back on display.
    stored = Image.fromarray(upright).rotate(90, expand=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_CLOCKWISE_ON_DISPLAY
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    assert Image.open(path).size == (20, 40)
    photo = faces.load_photo(path)
    assert photo.shape == (20, 40, 3)
    assert photo[10, 5, 0] > 200 and photo[10, 35, 0] < 60


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".bmp"])
def test_load_photo_reads_every_supported_format(tmp_path, suffix):
    pixels = np.full((12, 16, 3), (10, 120, 240), dtype=np.uint8)
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(pixels).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    photo = faces.load_photo(path)
    assert photo.dtype == np.uint8 and photo.shape == (12, 16, 3)
    assert np.abs(photo.astype(int) - pixels).max() <= 8


def test_load_photo_converts_gray_rgba_cmyk_and_16_bit(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "gray.png")
    assert (faces.load_photo(tmp_path / "gray.png") == 77).all()

    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (0, 0, 255, 255)  # opaque blue on the left, fully transparent on the right
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "transparent.png")
    photo = faces.load_photo(tmp_path / "transparent.png")
    assert tuple(photo[0, 0]) == (0, 0, 255)
    assert tuple(photo[0, 7]) == (255, 255, 255)

    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = faces.load_photo(tmp_path / "cmyk.jpg")
    assert red.shape == (6, 8, 3) and red[..., 0].min() > 200 and red[..., 1].max() < 60

    ramp = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = faces.load_photo(tmp_path / "deep.png")
    assert deep.shape == (6, 8, 3) and deep.min() == 0 and deep.max() == 255


def test_haar_finds_the_face_in_a_real_photo_with_a_confidence():
    detector = faces.build_detector(PredictConfig())
    found = detector.detect(grace_hopper())
    assert len(found) == 1
    # The face of the 512x600 portrait lies roughly in x 150..380, y 100..330.
    assert overlaps(found[0], 150, 100, 380, 330) > 0.6
    assert found[0].confidence > 0


def test_haar_finds_no_face_in_a_photo_of_coffee():
    skimage_data = pytest.importorskip("skimage.data")
    assert faces.build_detector(PredictConfig()).detect(skimage_data.coffee()) == []


def test_detection_on_a_shrunk_copy_maps_boxes_back_to_the_photo():
    photo = grace_hopper()
    large = np.asarray(Image.fromarray(photo).resize((photo.shape[1] * 2, photo.shape[0] * 2)))
    detector = faces.HaarFaceDetector(detection_max_side=640)
    (small_box,) = detector.detect(photo)
    (large_box,) = detector.detect(large)
    assert large_box.x == pytest.approx(2 * small_box.x, abs=24)
    assert large_box.width == pytest.approx(2 * small_box.width, abs=40)


def test_two_faces_side_by_side_are_both_found():
    photo = grace_hopper()
    pair = np.concatenate([photo, photo[:, ::-1]], axis=1)
    found = faces.HaarFaceDetector().detect(pair)
    assert len(found) == 2
    assert sorted(box.x < photo.shape[1] for box in found) == [False, True]


def test_yunet_needs_its_model_file(tmp_path):
    with pytest.raises(PipelineError, match="yunet_model is empty"):
        faces.build_detector(PredictConfig(detector="yunet"))
    with pytest.raises(PipelineError, match="YuNet model file not found: .*missing.onnx"):
        faces.build_detector(PredictConfig(detector="yunet", yunet_model=str(tmp_path / "missing.onnx")))
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model")
    with pytest.raises(PipelineError, match="cannot load it as a YuNet model"):
        faces.build_detector(PredictConfig(detector="yunet", yunet_model=str(bogus)))


def test_haar_cascade_file_must_exist(tmp_path):
    with pytest.raises(PipelineError, match="Haar cascade not found"):
        faces.HaarFaceDetector(tmp_path / "nothing.xml")
    with pytest.raises(ValueError, match="scale_factor"):
        faces.HaarFaceDetector(scale_factor=1.0)


def test_expand_box_makes_a_square_with_margin_clipped_to_the_photo():
    box = faces.FaceBox(x=40, y=50, width=20, height=30, confidence=1.0)
    assert faces.expand_box(box, 0.0, 200, 200) == (35, 50, 65, 80)
    assert faces.expand_box(box, 0.5, 200, 200) == (20, 35, 80, 95)
    assert faces.expand_box(faces.FaceBox(0, 0, 20, 20, 1.0), 0.5, 200, 200) == (0, 0, 30, 30)
    with pytest.raises(ValueError, match="margin"):
        faces.expand_box(box, -0.1, 200, 200)


def test_crop_face_gives_the_model_input():
    photo = grace_hopper()
    box = faces.FaceBox(150, 100, 230, 230, 1.0)
    rgb = faces.crop_face(photo, box, 0.2, 64, 3)
    gray = faces.crop_face(photo, box, 0.2, 64, 1)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.float32 and 0 <= rgb.min() and rgb.max() <= 255
    assert gray.shape == (64, 64, 1)
    tiny = faces.model_input(np.zeros((48, 48, 3), dtype=np.uint8) + 9, 96, 3)
    assert tiny.shape == (96, 96, 3) and (tiny == 9).all()
    with pytest.raises(ValueError, match="channels"):
        faces.model_input(photo, 64, 2)


def test_tight_fer_crops_are_mostly_missed_by_haar():
    """Why predict classifies small images whole: the cascade needs context around a face."""
    paths = sorted((fer_root() / "val" / "happy").glob("*.jpg"))[:20]
    detector = faces.HaarFaceDetector()
    found = sum(bool(detector.detect(faces.load_photo(path))) for path in paths)
    assert found <= len(paths) // 2
