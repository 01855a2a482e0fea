"""Reading photos in every mode, finding faces (BlazeFace, Haar) and aligning them, on real photographs."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image

from emotion_classifier import alignment, detectors, faces
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import PredictConfig

# A real photograph that ships with matplotlib: Grace Hopper, one frontal face.
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
import shared_photos
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
    detector = faces.build_detector(PredictConfig(detector="haar", min_confidence=0.0))
    found = detector.detect(grace_hopper())
    assert len(found) == 1
    # The face of the 512x600 portrait lies roughly in x 150..380, y 100..330.
    assert overlaps(found[0], 150, 100, 380, 330) > 0.6
    assert found[0].confidence > 0


def test_haar_finds_no_face_in_a_photo_of_coffee():
    skimage_data = pytest.importorskip("skimage.data")
    assert faces.build_detector(PredictConfig(detector="haar")).detect(skimage_data.coffee()) == []
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
    with pytest.raises(PipelineError, match="not one of blazeface, haar, yunet"):
        faces.build_detector(PredictConfig(detector="retina"))
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


# --- BlazeFace, non-maximum suppression, alignment, large photos ---------------------------------

ASTRONAUT_FACE_CENTRE = (223, 117)  # in scikit-image's 512x512 astronaut photo


def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def no_two_boxes_overlap(boxes: list[faces.FaceBox]) -> bool:
    return all(detectors.box_iou(first, second) < detectors.NMS_IOU
               for index, first in enumerate(boxes) for second in boxes[index + 1:])


def test_blazeface_finds_the_face_with_its_landmarks():
    found = faces.build_detector(PredictConfig()).detect(grace_hopper())
    assert len(found) == 1
    box = found[0]
    assert overlaps(box, 150, 100, 380, 330) > 0.5 and 0.5 <= box.confidence <= 1.0
    assert [name for name, _x, _y in box.landmarks] == list(detectors.BLAZEFACE_LANDMARKS)
    (left_x, left_y), (right_x, right_y) = box.landmark("left_eye"), box.landmark("right_eye")
    assert box.x < left_x < right_x < box.x + box.width
    assert box.y < left_y < box.y + box.height / 2 and box.y < right_y < box.y + box.height / 2


def group_photo(columns: int) -> np.ndarray:
    """Real portraits side by side, (2 x 2 when columns is 2): four faces."""
    portraits = [np.asarray(Image.fromarray(picture).resize((256, 300))) for picture in
                 (grace_hopper(), astronaut(), grace_hopper()[:, ::-1], astronaut()[:, ::-1])]
    rows = [np.concatenate(portraits[start:start + columns], axis=1) for start in range(0, 4, columns)]
    return np.concatenate(rows, axis=0)


@pytest.mark.parametrize("columns", [2, 4])
def test_every_face_of_a_group_photo_is_found_once(columns):
    """A 2 x 2 grid and a wide row of four portraits (searched in tiles too): four boxes."""
    photo = group_photo(columns)
    found = faces.build_detector(PredictConfig()).detect(photo)
    assert len(found) == 4 and no_two_boxes_overlap(found)
    cells = sorted((box.y + box.height // 2) // 300 * columns + (box.x + box.width // 2) // 256 for box in found)
    assert cells == [0, 1, 2, 3]


def test_non_maximum_suppression_keeps_one_box_per_face():
    strong = faces.FaceBox(100, 100, 50, 50, 0.9)
    shifted = faces.FaceBox(105, 102, 50, 50, 0.8)
    inner = faces.FaceBox(110, 110, 25, 25, 0.95)
    elsewhere = faces.FaceBox(300, 100, 50, 50, 0.6)
    kept = detectors.non_maximum_suppression([shifted, strong, elsewhere, inner])
    # The inner box is the most confident: the larger boxes around it go.
    assert kept == [inner, elsewhere]
    assert detectors.non_maximum_suppression([shifted, strong, elsewhere]) == [strong, elsewhere]


def test_min_confidence_drops_weaker_boxes():
    photo = group_photo(2)
    every = faces.build_detector(PredictConfig(min_confidence=0.3)).detect(photo)
    threshold = sorted(box.confidence for box in every)[1] + 1e-3
    sure = faces.build_detector(PredictConfig(min_confidence=threshold)).detect(photo)
    assert 0 < len(sure) < len(every) and all(box.confidence >= threshold for box in sure)
    haar_boxes = faces.build_detector(PredictConfig(detector="haar", min_confidence=0.0)).detect(photo)
    strong = faces.build_detector(PredictConfig(detector="haar", min_confidence=5.0)).detect(photo)
    assert all(box.confidence >= 5.0 for box in strong) and len(strong) <= len(haar_boxes)


def turned(photo: np.ndarray, degrees: float) -> np.ndarray:
    """The photo on a canvas twice its size (border carried outwards), turned about its centre."""
    height, width = photo.shape[:2]
    canvas = np.pad(photo, ((height // 2,) * 2, (width // 2,) * 2, (0, 0)), mode="edge")
    rotation = cv2.getRotationMatrix2D((canvas.shape[1] / 2, canvas.shape[0] / 2), degrees, 1.0)
    return cv2.warpAffine(canvas, rotation, canvas.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def test_alignment_turns_a_tilted_face_upright_and_frames_it_like_fer():
    detector = faces.build_detector(PredictConfig())
    (upright,) = detector.detect(grace_hopper())
    # Turned 25 degrees counter-clockwise: the right eye rises above the left one.
    (tilted,) = detector.detect(turned(grace_hopper(), 25))
    assert alignment.roll_degrees(upright) == pytest.approx(0, abs=6)
    # BlazeFace's eye points are coarse: within 8 degrees.
    assert alignment.roll_degrees(tilted) == pytest.approx(alignment.roll_degrees(upright) - 25, abs=8)
    face = faces.face_picture(turned(grace_hopper(), 25), tilted, 0.05, True, 48)
    assert face.aligned and face.picture.shape[0] == face.picture.shape[1] >= 48
    # Found again in the aligned picture (given some border), the eyes are level, where FER's are.
    side = face.picture.shape[0]
    (again,) = detector.detect(np.pad(face.picture, ((side // 2,) * 2, (side // 2,) * 2, (0, 0)), mode="edge"))
    # Within the detector's landmark error (up to about 8 degrees at these angles).
    assert abs(alignment.roll_degrees(again)) < 10
    left, right = alignment.eye_points(again)
    middle = ((left + right) / 2 - side // 2) / side
    assert middle == pytest.approx([alignment.EYES_CENTRE_X, alignment.EYES_CENTRE_Y], abs=0.06)
    # Without eye landmarks (Haar) or with alignment off: the square box with its margin.
    plain = faces.face_picture(grace_hopper(), upright, 0.05, False, 48)
    assert not plain.aligned and plain.region == faces.expand_box(upright, 0.05, 512, 600)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    """Pillow's draft makes the JPEG codec itself decode at 1/2, 1/4 or 1/8 of the size."""
    from PIL import JpegImagePlugin

    large = np.asarray(Image.fromarray(grace_hopper()).resize((2048, 2400)))
    Image.fromarray(large).save(tmp_path / "large.jpg", quality=90)
    Image.fromarray(large).save(tmp_path / "large.png")
    decoded_sizes = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(image, mode, size):
        result = original_draft(image, mode, size)
        decoded_sizes.append(image.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    photo, scale = faces.read_photo(tmp_path / "large.jpg", 600)
    assert decoded_sizes == [(512, 600)]  # a quarter of each side, never the full 2048 x 2400
    assert photo.shape == (600, 512, 3) and scale == pytest.approx(0.25)
    png, png_scale = faces.read_photo(tmp_path / "large.png", 600)
    assert png.shape == (600, 512, 3) and png_scale == pytest.approx(0.25)
    assert faces.read_photo(tmp_path / "large.jpg", 0)[0].shape == (2400, 2048, 3)


def test_small_faces_of_a_reduced_photo_are_cut_from_the_full_photo(tmp_path):
    path = tmp_path / "portrait.png"
    Image.fromarray(grace_hopper()).save(path)
    reduced, scale = faces.read_photo(path, 200)
    (box,) = faces.build_detector(PredictConfig()).detect(reduced)
    assert max(box.width, box.height) < faces.FULL_RESOLUTION_FACE_SIDE
    (picture,) = faces.face_pictures(path, reduced, scale, [box], 0.05, False, 48)
    from_reduced = faces.face_picture(reduced, box, 0.05, False, 48)
    assert picture.picture.shape[0] > 2 * from_reduced.picture.shape[0]
    # Its region stays in the reduced copy's pixels, where its box is drawn.
    assert picture.region == from_reduced.region


def test_photos_are_read_a_bounded_number_of_pixels_at_a_time(tmp_path):
    side = faces.WORKING_MAX_SIDE
    for number in range(12):
        Image.new("RGB", (side * 2, side * 2), (number, 0, 0)).save(tmp_path / f"{number:02d}.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    chunks = list(faces.photo_chunks(sorted(tmp_path.iterdir())))
    pixels = [sum(faces.working_pixels(path) for path in chunk) for chunk in chunks]
    assert sum(len(chunk) for chunk in chunks) == 13 and len(chunks) > 1
    assert max(pixels) <= faces.PIXELS_PER_CHUNK
    assert faces.working_pixels(tmp_path / "00.jpg") == side * side


@shared_photos.needs_photos[0]
@shared_photos.needs_photos[1]
def test_every_listed_face_of_the_real_photos_is_found_once_and_nothing_else():
    bench = shared_photos.reference_faces()
    detector = faces.build_detector(PredictConfig())
    for name in bench.REFERENCE_FACES:
        boxes = detector.detect(faces.load_photo(shared_photos.PHOTOS / name))
        score = bench.score(name, boxes)
        assert score["found"] == score["faces"] and score["duplicates"] == 0 and score["not_faces"] == 0, name
        assert all(len(box.landmarks) == 6 for box in boxes)


def test_gradcam_of_an_aligned_face_is_laid_over_the_turned_square_it_came_from():
    from emotion_classifier import gradcam

    photo = turned(grace_hopper(), 25)
    (box,) = faces.build_detector(PredictConfig()).detect(photo)
    face = faces.face_picture(photo, box, 0.05, True, 48)
    explained = gradcam.overlay_aligned_heatmap(photo, np.ones((6, 6)), face.matrix, face.picture.shape[0])
    changed = np.abs(explained.astype(int) - photo).sum(axis=2) > 0
    left, right = alignment.eye_points(box)
    middle_x, middle_y = ((left + right) / 2).round().astype(int)
    assert changed[middle_y, middle_x] and not changed[0, 0] and not changed[-1, -1]
    # The covered area is the aligned square, scaled back to the photo's pixels.
    scale = np.sqrt(abs(np.linalg.det(face.matrix[:, :2])))
    assert changed.sum() == pytest.approx((face.picture.shape[0] / scale) ** 2, rel=0.1)
