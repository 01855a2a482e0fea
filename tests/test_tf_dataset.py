"""The tf.data pipeline and its Pillow twin, on generated images and real FER2013 images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_classifier import augmentation, generator, images, tf_dataset
from emotion_classifier.config import Config, GeneratorConfig
from emotion_classifier.host_batches import ImageBatches, load_arrays
from emotion_classifier.images import crop_bounds, load_image
from emotion_classifier.split_files import read_split
from emotion_classifier.tf_dataset import make_dataset

from split_fixtures import copy_fer_images, manifest_frame, no_augmentation, write_split_fixture
BACKGROUND = (200, 30, 30)
FACE_COLOUR = (20, 40, 220)
FACE_BOX = (10, 20, 30, 16)  # x, y, width, height inside a 64x48 image


@pytest.fixture
def coloured_images(tmp_path) -> tuple[Path, pd.DataFrame]:
    """Lossless PNGs: a red background with a blue face box, in RGB, gray, RGBA and 16-bit gray."""
    root = tmp_path / "images"
    root.mkdir()
    pixels = np.zeros((48, 64, 3), dtype="uint8")
    pixels[:] = BACKGROUND
    x, y, width, height = FACE_BOX
    pixels[y:y + height, x:x + width] = FACE_COLOUR
    Image.fromarray(pixels).save(root / "rgb.png")
    Image.fromarray(pixels).convert("RGBA").save(root / "rgba.png")
    gray = np.full((48, 64), 100, dtype="uint16")
    gray[y:y + height, x:x + width] = 50_000
    Image.fromarray(gray).save(root / "gray16.png")
    frame = manifest_frame(
        ["rgb.png", "rgb.png", "rgba.png", "gray16.png"], [0, 1, 0, 1],
        boxes=[FACE_BOX, None, FACE_BOX, FACE_BOX],
    )
    return root, frame



def test_dataset_shapes_value_range_and_face_box_crop(coloured_images):
    root, frame = coloured_images
    dataset = make_dataset(frame, root, 32, 3, 4, training=False, generator_config=no_augmentation())
    images, labels = next(iter(dataset))
    images, labels = images.numpy(), labels.numpy()
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 0, 1]
    assert images.min() >= 0.0 and images.max() <= 255.0 and images.max() > 200.0
    # With its box, the crop is the blue face only; without one, the red background dominates.
    np.testing.assert_allclose(images[0].reshape(-1, 3).mean(axis=0), FACE_COLOUR, atol=1.0)
    np.testing.assert_allclose(images[2].reshape(-1, 3).mean(axis=0), FACE_COLOUR, atol=1.0)
    assert images[1][..., 0].mean() > 150.0
    # The 16-bit gray face (50000 of 65535) is scaled to 8 bits, not clipped to 255.
    assert images[3].mean() == pytest.approx(50_000 / 257, abs=2.0)


def test_face_margin_grows_the_crop_and_is_clamped_to_the_image(coloured_images):
    root, frame = coloured_images
    assert crop_bounds(FACE_BOX, 0.5, 64, 48) == (0, 12, 55, 44)
    assert crop_bounds((60, 40, 30, 30), 0.0, 64, 48) == (60, 40, 64, 48)
    assert crop_bounds((100, 100, 5, 5), 0.0, 64, 48) == (63, 47, 64, 48)
    generator_config = dataclasses.replace(no_augmentation(), face_margin=0.5)
    images, _ = next(iter(make_dataset(frame.iloc[:1], root, 32, 3, 1, False, generator_config)))
    red_share = (images.numpy()[0][..., 0] > 100).mean()
    assert 0.2 < red_share < 0.8, "a margin of half the box shows background around the face"
    pillow_images, _ = load_arrays(frame.iloc[:1], root, 32, 3, face_margin=0.5)
    assert np.abs(pillow_images - images.numpy()).mean() < 2.0


def test_tf_data_and_pillow_paths_agree_on_real_images(tmp_path):
    filenames, labels = copy_fer_images(tmp_path, per_class=4)
    boxes = [(5, 6, 30, 36) if position % 2 else None for position in range(len(filenames))]
    frame = manifest_frame(filenames, labels, boxes=boxes)
    for channels in (3, 1):
        dataset = make_dataset(frame, tmp_path, 40, channels, 64, False, no_augmentation())
        tf_images, tf_labels = next(iter(dataset))
        pillow_images, pillow_labels = load_arrays(frame, tmp_path, 40, channels)
        assert pillow_images.shape == tuple(tf_images.shape) == (12, 40, 40, channels)
        np.testing.assert_array_equal(pillow_labels, tf_labels.numpy())
        assert np.abs(pillow_images - tf_images.numpy()).mean() < 1.0
        assert 0.0 <= pillow_images.min() and pillow_images.max() <= 255.0 and pillow_images.max() > 100


def test_crops_of_one_size_are_resized_per_batch_as_pillow_resizes_them(tmp_path, monkeypatch):
    filenames, labels = copy_fer_images(tmp_path, per_class=4)
    paths = [str(tmp_path / name) for name in filenames]
    no_boxes = np.full((len(paths), 4), -1.0, dtype="float32")
    assert images.common_crop_shape(paths, no_boxes, 0.0) == (48, 48)
    face_boxes = [(5, 6, 30, 36)] * len(filenames)
    frames = {
        "whole 48x48 images": manifest_frame(filenames, labels),
        "JPEG face windows": manifest_frame(filenames, labels, boxes=face_boxes),
    }
    for name, frame in frames.items():
        for channels in (3, 1):
            batches = make_dataset(frame, tmp_path, 64, channels, 5, False, no_augmentation())
            tf_images = np.concatenate([images.numpy() for images, _ in batches])
            pillow_images, _ = load_arrays(frame, tmp_path, 64, channels)
            assert tf_images.shape == pillow_images.shape and tf_images.dtype == np.float32, name
            assert tf_images.min() >= 0.0 and tf_images.max() <= 255.0, name
            assert np.abs(pillow_images - tf_images).mean() < 1.0, name

    # An image of another size among them is resized to the common size first, not dropped
    # (a second resampling: a little further from Pillow's single one).
    Image.open(paths[0]).resize((60, 52)).save(tmp_path / "larger.jpg", quality=95)
    mixed = manifest_frame(filenames + ["larger.jpg"], labels + [0])
    assert images.common_crop_shape(paths + [str(tmp_path / "larger.jpg")], np.full((13, 4), -1.0), 0.0) is None
    monkeypatch.setattr(tf_dataset, "common_crop_shape", lambda *arguments: (48, 48))
    tf_images = np.concatenate([images.numpy() for images, _ in make_dataset(mixed, tmp_path, 64, 3, 5, False,
                                                                            no_augmentation())])
    pillow_images, _ = load_arrays(mixed, tmp_path, 64, 3)
    assert tf_images.shape == pillow_images.shape
    assert np.abs(pillow_images[:-1] - tf_images[:-1]).mean() < 1.0
    assert np.abs(pillow_images[-1] - tf_images[-1]).mean() < 5.0


def test_jpeg_scale_denominator_keeps_at_least_the_training_size():
    assert images.jpeg_scale_denominator(333, 307, 112) == 2
    assert images.jpeg_scale_denominator(223, 500, 112) == 1
    assert images.jpeg_scale_denominator(448, 460, 112) == 4
    assert images.jpeg_scale_denominator(4000, 3000, 112) == 8
    assert images.jpeg_scale_denominator(48, 48, 112) == 1


def test_large_jpegs_decode_at_reduced_scale_and_agree_with_pillow(tmp_path, monkeypatch):
    import tensorflow as tf

    random = np.random.default_rng(3)
    names, boxes = [], []
    for index, (height, width) in enumerate([(420, 380), (400, 400), (300, 520), (390, 410)]):
        coarse = random.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        name = f"photo_{index}.png" if index == 3 else f"photo_{index}.jpg"
        photo.save(tmp_path / name, **({} if name.endswith(".png") else {"quality": 92}))
        names.append(name)
        boxes.append(None if index == 1 else (37.4, 21.2, 0.7 * width, 0.72 * height))
    frame = manifest_frame(names, [0, 1, 0, 1], boxes=boxes)

    traced_ratios = []
    decode_and_crop_jpeg = tf.io.decode_and_crop_jpeg

    def recording(*arguments, **keywords):
        traced_ratios.append(keywords.get("ratio", 1))
        return decode_and_crop_jpeg(*arguments, **keywords)

    monkeypatch.setattr(tf.io, "decode_and_crop_jpeg", recording)
    for image_size, channels in ((48, 3), (96, 1)):
        traced_ratios.clear()
        tf_images, _ = next(iter(make_dataset(frame, tmp_path, image_size, channels, 4, False, no_augmentation())))
        # The smallest crop (210 pixels) allows 1/4 scale at 48 pixels; every scale is built.
        assert set(traced_ratios) == {1, 2, 4, 8}
        pillow_images, _ = load_arrays(frame, tmp_path, image_size, channels)
        assert tf_images.shape == pillow_images.shape == (4, image_size, image_size, channels)
        assert tf_images.numpy().min() >= 0.0 and tf_images.numpy().max() <= 255.0
        assert np.abs(pillow_images - tf_images.numpy()).mean(axis=(1, 2, 3)).max() < 1.0

    # Crops all under twice the training size (FER2013's faces) keep the full-scale decoder.
    traced_ratios.clear()
    next(iter(make_dataset(frame, tmp_path, 220, 3, 4, False, no_augmentation())))
    assert set(traced_ratios) <= {1}


@pytest.mark.parametrize("image_size", [48, 112])
def test_training_and_evaluation_crop_the_same_pixels_from_odd_sized_photos(tmp_path, image_size):
    """tf.data (training) and load_image (evaluation, prediction) take the same face window from
    photos with odd sides, whichever JPEG scale each decodes at, with faces anywhere in them."""
    random = np.random.default_rng(11)
    names, boxes = [], []
    for index in range(10):
        width, height = int(random.integers(121, 700)) | 1, int(random.integers(101, 600)) | 1
        rows, columns = np.mgrid[0:height, 0:width]
        background = 127 + 90 * np.sin(columns / random.uniform(6, 15)) * np.cos(rows / random.uniform(6, 15))
        photo = np.stack([background, background[::-1], 255 - background], axis=-1)
        side = int(random.integers(60, min(width, height)))
        x, y = int(random.integers(0, width - side + 1)), int(random.integers(0, height - side + 1))
        face = random.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        photo[y:y + side, x:x + side] = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC))
        names.append(f"photo_{index}.jpg")
        Image.fromarray(photo.astype("uint8")).save(tmp_path / names[-1], quality=92)
        boxes.append((float(x), float(y), float(side), float(side)))
    frame = manifest_frame(names, [0] * len(names), boxes=boxes)
    training_crops = np.concatenate([batch.numpy() for batch, _ in make_dataset(
        frame, tmp_path, image_size, 1, 4, False, no_augmentation())])
    evaluation_crops = np.stack([load_image(tmp_path / name, image_size, 1, box) for name, box in zip(names, boxes)])
    # Rounding only (under 0.01 measured): a crop one decoded pixel wider, decoded at another
    # scale or shrunk with another filter differs by 0.3 to 18 grey levels here.
    assert np.abs(training_crops - evaluation_crops).mean(axis=(1, 2, 3)).max() < 0.1


def test_pillow_path_decodes_large_jpegs_at_reduced_scale_with_exif_and_box(tmp_path, monkeypatch):
    from PIL import ImageOps, JpegImagePlugin

    random = np.random.default_rng(5)
    coarse = random.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    stored = Image.fromarray(coarse).resize((700, 500), Image.Resampling.BICUBIC)  # width 700, height 500
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 500 wide, 700 tall
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=92)
    box = (40.0, 120.0, 400.0, 430.0)  # in the upright image

    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording(self, mode, size):
        drafts.append(size)
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    reduced = load_image(tmp_path / "photo.jpg", 96, 3, box=box)
    assert drafts == [(700 // 4, 500 // 4)], "a 400-pixel crop at 96 pixels decodes at 1/4 scale"
    with Image.open(tmp_path / "photo.jpg") as opened:
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    reference = np.asarray(upright.crop(crop_bounds(box, 0.0, *upright.size)).resize((96, 96), Image.Resampling.BILINEAR),
                           dtype="float32")
    assert reduced.shape == reference.shape == (96, 96, 3)
    assert np.abs(reduced - reference).mean() < 2.0

    drafts.clear()
    load_image(tmp_path / "photo.jpg", 300, 3, box=box)
    assert drafts == [], "a crop under twice the size decodes at full scale"


def test_augmentation_only_for_training_and_values_stay_in_range(tmp_path):
    filenames, labels = copy_fer_images(tmp_path, per_class=4)
    frame = manifest_frame(filenames, labels)
    # FER2013 has a few blank images, which no augmentation changes: leave them out.
    textured = [index for index, image in enumerate(load_arrays(frame, tmp_path, 32, 3)[0]) if image.std() > 5]
    frame = frame.iloc[textured[:9]].reset_index(drop=True)
    labels = frame["class_index"].tolist()
    strong = GeneratorConfig(rotation_degrees=30.0, zoom=0.3, translation=0.2, contrast=0.5,
                             random_erasing=1.0)
    evaluation = [batch[0].numpy() for batch in make_dataset(frame, tmp_path, 32, 3, 9, False, strong)]
    again = [batch[0].numpy() for batch in make_dataset(frame, tmp_path, 32, 3, 9, False, strong)]
    np.testing.assert_array_equal(evaluation[0], again[0])
    reference, _ = load_arrays(frame, tmp_path, 32, 3)
    assert np.abs(evaluation[0] - reference).mean() < 1.5, "evaluation batches are not augmented"

    training = make_dataset(frame, tmp_path, 32, 3, 9, True, strong)
    images, batch_labels = next(iter(training))
    images = images.numpy()
    assert images.shape == (9, 32, 32, 3)
    assert images.min() >= 0.0 and images.max() <= 255.0 and images.max() > 100.0
    assert sorted(batch_labels.numpy().tolist()) == sorted(labels)
    # Match each augmented image to its unaugmented original through the order-free label set:
    # none may be pixel-identical to any original.
    differences = np.abs(images[:, None] - reference[None]).mean(axis=(2, 3, 4))
    assert differences.min() > 1.0


class FixedDraws:
    """Stands in for tf.random.Generator: every uniform draw at the same point of its range."""

    def __init__(self, fraction: float):
        self.fraction = fraction

    def uniform(self, shape, minval=0.0, maxval=1.0):
        import tensorflow as tf

        return tf.fill(shape, minval + self.fraction * (maxval - minval))


def test_tf_data_augmentation_applies_rotation_zoom_and_shift_as_one_affine_map_like_opencv(tmp_path):
    """The same draws give the same image as cv2.warpAffine with cv2.getRotationMatrix2D's matrix."""
    import cv2

    filenames, labels = copy_fer_images(tmp_path, per_class=1)
    images, _ = load_arrays(manifest_frame(filenames, labels), tmp_path, 48, 1)
    settings = GeneratorConfig(flip=False, rotation_degrees=20.0, zoom=0.2, translation=0.1, contrast=0.0)
    batch_augmentation = augmentation.build_augmentation(settings)
    batch_augmentation.random = FixedDraws(0.75)  # angle 10 degrees, scale 1.1, shift 5% of the size
    augmented = batch_augmentation(images).numpy()
    matrix = cv2.getRotationMatrix2D((48 / 2 - 0.5, 48 / 2 - 0.5), 10.0, 1.1)
    matrix[:, 2] += 0.05 * 48
    for image, result in zip(images, augmented):
        expected = cv2.warpAffine(image, matrix, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # Away from the reflected borders, where the two libraries' edge rules differ; OpenCV
        # interpolates at 1/32 pixel (fixed point), a few grey levels at sharp edges.
        interior = np.abs(expected[6:-6, 6:-6] - result[6:-6, 6:-6, 0])
        assert interior.mean() < 0.5 and interior.max() < 4.0
        assert np.abs(expected - result[..., 0]).mean() < 1.0
    # Flip and contrast as AugmentationLayer draws them: 0.25 < 0.5 flips; factor 1 - 0.5 * 0.5.
    settings = GeneratorConfig(flip=True, rotation_degrees=0.0, zoom=0.0, translation=0.0, contrast=0.5)
    batch_augmentation = augmentation.build_augmentation(settings)
    batch_augmentation.random = FixedDraws(0.25)
    flipped = images[:, :, ::-1]
    mean = flipped.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(batch_augmentation(images).numpy(), np.clip((flipped - mean) * 0.75 + mean, 0, 255),
                               atol=1e-3)
    assert augmentation.build_augmentation(GeneratorConfig(augment=False)) is None


def test_training_batches_of_one_crop_size_are_read_whole_and_each_pass_is_a_new_permutation(tmp_path, monkeypatch):
    filenames, _ = copy_fer_images(tmp_path, per_class=5)
    # Each row its own label, so that labels name the rows a batch holds.
    rows = list(range(len(filenames)))
    frame = manifest_frame(filenames, rows)
    calls = []
    read_whole = tf_dataset._training_batches_read_whole
    monkeypatch.setattr(tf_dataset, "_training_batches_read_whole",
                        lambda *arguments: calls.append(1) or read_whole(*arguments))
    # Pillow's images of each row, to compare what the batches hold with.
    expected, _ = load_arrays(frame, tmp_path, 40, 1)

    def passes(dataset, count):
        iterator = iter(dataset.repeat(count))
        return [(images.numpy(), labels.numpy()) for images, labels in iterator]

    dataset = make_dataset(frame, tmp_path, 40, 1, 4, True, no_augmentation(), seed=3)
    assert calls == [1]
    batches = passes(dataset, 2)
    # 15 rows in batches of 4: three full batches and one of 3 per pass.
    assert sorted(len(labels) for _, labels in batches) == [3, 3, 4, 4, 4, 4, 4, 4]
    first, second = [np.concatenate([labels for _, labels in half]) for half in (batches[:4], batches[4:])]
    assert sorted(first) == sorted(second) == rows  # every row once per pass
    assert list(first) != list(second)  # reshuffled
    for batch_images, labels in batches:
        assert np.abs(batch_images - expected[labels]).mean() < 1.0
    # The same seed draws the same batches (their order may vary: decoding is parallel).
    compositions = lambda batches: sorted(tuple(sorted(labels)) for _, labels in batches)
    again = passes(make_dataset(frame, tmp_path, 40, 1, 4, True, no_augmentation(), seed=3), 1)
    assert compositions(again) == compositions(batches[:4])
    # Several replicas need full batches: a pass then leaves out the rows of the last one.
    full = passes(make_dataset(frame, tmp_path, 40, 1, 4, True, no_augmentation(), drop_remainder=True), 2)
    assert [len(labels) for _, labels in full] == [4] * 6
    # The per-file path (read_whole_batches off) delivers the same images.
    per_file = passes(make_dataset(frame, tmp_path, 40, 1, 4, True, no_augmentation(), read_whole_batches=False), 1)
    assert len(calls) == 3
    assert sorted(np.concatenate([labels for _, labels in per_file])) == rows
    for batch_images, labels in per_file:
        assert np.abs(batch_images - expected[labels]).mean() < 1.0


def test_a_corrupt_file_in_a_batch_read_whole_costs_only_itself(tmp_path):
    """Its batch fails as a whole; the batch's other rows are read again one by one at the end of the pass."""
    filenames, _ = copy_fer_images(tmp_path, per_class=4)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows = list(range(len(filenames) + 1))
    frame = manifest_frame(filenames + ["broken.jpg"], rows)
    counter = tf_dataset.DecodeCounter()
    dataset = make_dataset(frame, tmp_path, 32, 1, 5, True, no_augmentation(), decode_counter=counter)
    for _pass in range(2):
        delivered = np.concatenate([labels.numpy() for _, labels in dataset])
        assert sorted(delivered) == rows[:-1]
        # One file is left out of each pass: it is counted once, however often it was tried.
        assert counter.skipped() == 1 and counter.skipped_files() == [str(tmp_path / "broken.jpg")]


def test_unreadable_file_is_skipped_not_fatal(tmp_path):
    filenames, labels = copy_fer_images(tmp_path, per_class=2)
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    frame = manifest_frame(filenames + ["broken.jpg"], labels + [0])
    counter = tf_dataset.DecodeCounter()
    dataset = make_dataset(frame, tmp_path, 32, 1, 4, True, no_augmentation(), decode_counter=counter)
    count = sum(int(images.shape[0]) for images, _ in dataset)
    assert count == len(filenames)
    assert counter.skipped() == 1 and counter.skipped_files() == [str(tmp_path / "broken.jpg")]
    # A second dataset counted by the same counter (validation) and a second pass, which read
    # ahead past each other, still count and name the file once.
    validation = make_dataset(frame.iloc[::-1], tmp_path, 32, 1, 4, False, no_augmentation(),
                              decode_counter=counter)
    assert sum(int(images.shape[0]) for images, _ in validation) == len(filenames)
    assert sum(int(images.shape[0]) for images, _ in dataset) == len(filenames)
    assert counter.skipped() == 1 and counter.skipped_files() == [str(tmp_path / "broken.jpg")]

    batches = ImageBatches(frame, tmp_path, 32, 1, 8, False)
    images, batch_labels = batches[0]
    assert images.shape == (6, 32, 32, 1) and batch_labels.shape == (6,)
    assert batches.unreadable_files == [str(tmp_path / "broken.jpg")]

    with pytest.raises(Exception, match="broken.jpg"):
        load_arrays(frame, tmp_path, 32, 1)
    images, kept_labels = load_arrays(frame, tmp_path, 32, 1, skip_unreadable=True)
    assert len(images) == len(kept_labels) == len(filenames)


def test_image_batches_shuffle_and_cap_plain_decoded_faces(tmp_path):
    filenames, labels = copy_fer_images(tmp_path, per_class=4)
    frame = manifest_frame(filenames, labels)
    batches = ImageBatches(frame, tmp_path, 32, 3, 5, True, seed=1, max_batches=2)
    assert len(batches) == 2
    first_order = batches._order.copy()
    images, batch_labels = batches[0]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    # The decoded pixels of the batch's rows, as load_arrays gives them: the model augments them.
    rows = frame.iloc[batches.batch_rows(0)]
    np.testing.assert_array_equal(images, load_arrays(rows, tmp_path, 32, 3)[0])
    np.testing.assert_array_equal(batch_labels, rows["class_index"].to_numpy())
    batches.on_epoch_end()
    assert not np.array_equal(first_order, batches._order)
    evaluation = ImageBatches(frame, tmp_path, 32, 3, 5, False)
    assert len(evaluation) == 3
    np.testing.assert_array_equal(evaluation[2][1], np.array(labels[10:], dtype="int32"))


def test_load_image_respects_exif_orientation_and_cmyk(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype="uint8")
    pixels[:, :20] = (255, 255, 255)  # white left half, black right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "rotated.jpg", 20, 1)
    # Rotated clockwise, the white left half becomes the top half.
    assert upright[:8].mean() > 200 and upright[12:].mean() < 50

    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = load_image(tmp_path / "cmyk.jpg", 20, 3)
    assert cmyk.shape == (20, 20, 3)
    assert cmyk[:, :8].mean() > 200 and cmyk[:, 12:].mean() < 50


def test_read_split_requires_the_split_stage_outputs(tmp_path):
    config = Config()
    config.paths.data_dir = str(tmp_path / "data")
    with pytest.raises(Exception, match="split stage"):
        read_split(config)
    config = write_split_fixture(tmp_path, per_class=4)
    frame, classes = read_split(config)
    assert classes == ["happy", "sad", "angry"]
    assert set(frame["split"]) == {"train", "valid", "test"}


@pytest.mark.parametrize("input_mode", ["tf_data", "device"])
def test_generator_stage_writes_preview_and_skips_when_up_to_date(tmp_path, capsys, input_mode):
    """The preview is built by training's own inputs, augmentation included (for "device" the
    model's augmentation layer)."""
    config = write_split_fixture(tmp_path, per_class=6)
    config.model_4.image_size = 32
    config.model_4.batch_size = 4
    config.model_4.input_mode = input_mode
    assert generator.run(config) == 0
    figure = Path(config.paths.reports) / "figures" / "augmented_batch.png"
    assert figure.is_file() and Image.open(figure).size[0] > 100
    printed = capsys.readouterr().out
    assert "images/s" in printed
    summary = json.loads(printed.splitlines()[0])
    assert summary["images_per_second"] > 0 and summary["value_range"][1] <= 255.0
    assert summary["input_mode"] == input_mode
    assert generator.run(config) == 0
    assert "up to date" in capsys.readouterr().out


def test_grey_images_load_as_their_rgb_copies_do(tmp_path):
    # load_image resizes an 8-bit grey image as its one channel; the pixels must be those of
    # the same image stored as RGB (the general route), in both channel counts.
    filenames, _ = copy_fer_images(tmp_path, per_class=2)
    for filename in filenames:
        grey_path = tmp_path / filename
        with Image.open(grey_path) as grey:
            assert grey.mode == "L"
            rgb_path = tmp_path / f"{filename}.rgb.png"
            grey.convert("RGB").save(rgb_path)
        for size, channels, box in ((40, 1, (5, 6, 30, 36)), (112, 3, None), (48, 1, None), (30, 3, (4, 4, 40, 40))):
            np.testing.assert_allclose(load_image(grey_path, size, channels, box, 0.1),
                                       load_image(rgb_path, size, channels, box, 0.1), atol=1e-4)


def test_resize_in_model_hands_small_crops_over_at_their_own_size(tmp_path):
    from emotion_classifier.models import ResizeImages

    config = write_split_fixture(tmp_path, per_class=4)
    frame = pd.read_csv(config.paths.split_manifest)
    root = config.paths.images_root
    plain = GeneratorConfig(augment=False)

    def first_images(image_size, generator_config=plain, training=False, **options):
        dataset = tf_dataset.make_dataset(frame, root, image_size, 1, 4, training=training,
                                              generator_config=generator_config, **options)
        return next(iter(dataset))[0].numpy()

    native = first_images(64, resize_in_model=True)
    host = first_images(64)
    assert native.shape == (4, 48, 48, 1) and host.shape == (4, 64, 64, 1)
    # The model's first layer turns the handed-over faces into the pixels the host would give.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ResizeImages(64, 64)(native)), host, atol=1e-3)
    # Training batches are augmented at the crops' size.
    augmented = first_images(64, GeneratorConfig(augment=True), training=True, resize_in_model=True)
    assert augmented.shape == (4, 48, 48, 1) and 0 <= augmented.min() and augmented.max() <= 255
    # Crops larger than the model's input are shrunk here (antialiased), and equalised images
    # are equalised on the model's grid, so both still leave at the input size.
    assert first_images(32, resize_in_model=True).shape == (4, 32, 32, 1)
    assert first_images(64, resize_in_model=True, equalize_histogram=True).shape == (4, 64, 64, 1)


def test_handover_size_is_the_faces_own_only_for_models_that_enlarge_them(tmp_path):
    config = write_split_fixture(tmp_path, per_class=3)
    frame = pd.read_csv(config.paths.split_manifest)
    root = config.paths.images_root
    assert images.handover_size(frame, root, 64, 0.0, resize_in_model=True) == 48
    assert images.handover_size(frame, root, 48, 0.0, resize_in_model=True) == 48
    assert images.handover_size(frame, root, 32, 0.0, resize_in_model=True) == 32  # shrunk on the host
    assert images.handover_size(frame, root, 64, 0.0, resize_in_model=False) == 64
    assert images.handover_size(frame, root, 64, 0.0, resize_in_model=True, equalize_histogram=True) == 64


def _photo(size=(300, 200), seed=0) -> Image.Image:
    """A smooth colour photo-like image (width, height), so JPEG keeps its structure."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def _pillow_only(monkeypatch):
    """Make load_image decode every file with Pillow (the route of files that are not plain JPEGs)."""
    monkeypatch.setattr(images, "_decode_plain_jpeg", lambda *arguments: None)


def test_plain_jpegs_decode_through_opencv_to_the_pixels_pillow_gives(tmp_path, monkeypatch):
    # FER2013's grey faces, colour photos with 4:2:0 and 4:4:4 chroma, a progressive one, and a
    # large photo whose face crop decodes at 1/4 scale: OpenCV must give Pillow's pixels exactly.
    filenames, _ = copy_fer_images(tmp_path, per_class=2)
    cases = [(tmp_path / name, size, channels, box)
             for name in filenames
             for size, channels, box in ((48, 1, None), (112, 3, None), (40, 3, (5, 6, 30, 36)), (64, 1, (4, 4, 40, 40)))]
    _photo().save(tmp_path / "subsampled.jpg", quality=90)
    _photo(seed=1).save(tmp_path / "full_chroma.jpg", quality=90, subsampling=0)
    _photo(seed=2).save(tmp_path / "progressive.jpg", quality=85, progressive=True)
    _photo((700, 500), seed=3).save(tmp_path / "large.jpg", quality=92)
    for name in ("subsampled.jpg", "full_chroma.jpg", "progressive.jpg"):
        cases += [(tmp_path / name, 64, 3, None), (tmp_path / name, 400, 3, None), (tmp_path / name, 32, 1, (20, 30, 150, 120))]
    cases += [(tmp_path / "large.jpg", 96, 3, (40.0, 60.0, 400.0, 420.0)), (tmp_path / "large.jpg", 48, 1, None)]

    for path, size, channels, box in cases:
        assert images.plain_jpeg_header(path.read_bytes()) is not None, path
        decoded = images._decode_plain_jpeg(path, size, box, 0.1)
        assert decoded is not None, path
        with Image.open(path) as opened:
            crop = crop_bounds(box, 0.1, *opened.size) if box is not None else (0, 0, *opened.size)
            denominator = images.jpeg_scale_denominator(crop[3] - crop[1], crop[2] - crop[0], size)
            if denominator > 1:
                opened.draft(None, (opened.size[0] // denominator, opened.size[1] // denominator))
            np.testing.assert_array_equal(decoded[0], np.asarray(opened), err_msg=str(path))
    assert images._decode_plain_jpeg(tmp_path / "large.jpg", 96, (40.0, 60.0, 400.0, 420.0), 0.1)[0].shape \
        == (125, 175, 3), "a 400-pixel crop at 96 pixels decodes at 1/4 scale"

    fast = [load_image(path, size, channels, box, 0.1) for path, size, channels, box in cases]
    _pillow_only(monkeypatch)
    for pixels, (path, size, channels, box) in zip(fast, cases):
        np.testing.assert_array_equal(pixels, load_image(path, size, channels, box, 0.1), err_msg=str(path))


def test_files_that_are_not_plain_jpegs_are_left_to_pillow(tmp_path):
    rotated_exif = Image.Exif()
    rotated_exif[0x0112] = 6
    _photo().save(tmp_path / "rotated.jpg", exif=rotated_exif)
    _photo().convert("CMYK").save(tmp_path / "cmyk.jpg")
    _photo().save(tmp_path / "photo.png")
    _photo().save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9")
    assert images.plain_jpeg_header(whole)[0:3] == (200, 300, 3)
    for name in ("rotated.jpg", "cmyk.jpg", "photo.png", "truncated.jpg", "garbage.jpg"):
        assert images.plain_jpeg_header((tmp_path / name).read_bytes()) is None, name
        assert images._decode_plain_jpeg(tmp_path / name, 64, None, 0.0) is None, name
    # Pillow then decodes what it can and reports what it cannot.
    assert load_image(tmp_path / "rotated.jpg", 20, 3).shape == (20, 20, 3)
    assert load_image(tmp_path / "photo.png", 20, 3).shape == (20, 20, 3)
    for name in ("truncated.jpg", "garbage.jpg"):
        with pytest.raises(OSError):
            load_image(tmp_path / name, 20, 3)


def test_enlarging_gives_the_tf_data_paths_bilinear_values_into_a_given_slot(tmp_path):
    import tensorflow as tf

    filenames, _ = copy_fer_images(tmp_path, per_class=1)
    with Image.open(tmp_path / filenames[0]) as opened:
        decoded = np.asarray(opened, dtype="float32")[np.newaxis, ..., np.newaxis]
    expected = tf.image.resize(decoded, [112, 112], method="bilinear").numpy()[0]
    batch = np.zeros((2, 112, 112, 3), dtype="float32")
    returned = load_image(tmp_path / filenames[0], 112, 3, out=batch[1])
    assert np.shares_memory(returned, batch) and not batch[0].any()
    np.testing.assert_allclose(batch[1], np.repeat(expected, 3, axis=-1), atol=1e-3)
    np.testing.assert_allclose(load_image(tmp_path / filenames[0], 112, 1)[..., 0],
                               expected[..., 0] * images.GRAY_WEIGHTS.sum(), atol=1e-3)
    with pytest.raises(ValueError, match="out must be"):
        load_image(tmp_path / filenames[0], 112, 3, out=np.zeros((112, 112, 1), dtype="float32"))
