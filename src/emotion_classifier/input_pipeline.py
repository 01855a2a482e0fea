"""Reading images for training and evaluation: a parallel tf.data pipeline and its host twin.

Both paths produce the same thing from a split manifest: float32 images with values in
[0, 255] (the model does its own scaling), cropped to the face box when the row has one,
resized to a square, with the class index as label.

- ``make_dataset`` is the fast path (TensorFlow only): parallel read and decode, shuffling,
  batching, augmentation of training batches, prefetching.
- ``load_image``, ``load_arrays`` and ``ImageBatches`` decode with OpenCV (plain JPEGs) or Pillow
  (everything else) and numpy, so the same images reach models on any Keras backend (JAX,
  PyTorch), in evaluation and in the demo.

Augmentation means the same in both paths: ``BatchAugmentation`` in tf.data and
``in_memory.FaceAugmentation`` on the host draw flips, one affine map (rotation, zoom,
translation), contrast and erasing from the same ``[generator]`` settings.

Unreadable files: tf.data cannot catch an exception per element, so ``make_dataset`` drops any
element whose read or decode fails (``Dataset.ignore_errors(log_warning=True)``): TensorFlow logs
a warning with the decoder's message for each dropped image and the run goes on (where a
whole training batch is read in one call, the failed batch's other files are read again at the
end of the pass, so only the bad file is lost). The labels
stage opens every image beforehand (``labels.check_images``), so this is a safety net. The host
path knows which file failed: ``ImageBatches`` drops it from its batch, logs its name and counts
it in ``unreadable_files``.

TensorFlow's decoders ignore the EXIF orientation tag while ``load_image`` applies it; face
datasets (AffectNet, FER2013) are stored upright, so the two paths agree on them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from emotion_classifier import equalization, files
from emotion_classifier.cli import PipelineError
from emotion_classifier.manifest import FACE_BOX_COLUMNS, has_face_box, read_manifest

logger = logging.getLogger(__name__)

# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale uses them; load_image uses the same.
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype="float32")

CLASSES_FILE_NAME = "classes.json"
# Training rows held for shuffling: file names, or decoded images with ``[generator] cache``
# (small datasets only). 30,000 holds all of FER2013's training faces.
SHUFFLE_BUFFER = 30_000
# Images of the augmented batch that the custom_generator.py stage saves as a PNG.
PREVIEW_IMAGES = 16

# Rows whose image headers make_dataset reads to find whether all face crops share one size.
CROP_SHAPE_SAMPLE = 32

# Training batches of one crop size are read a whole batch per tf.data element
# (_training_batches_read_whole); False reads one file per element, as evaluation does (the
# benchmark times both).
READ_WHOLE_BATCHES = True

# load_image decodes plain JPEGs with OpenCV (_decode_plain_jpeg); False decodes every file with
# Pillow (the same pixels, slower; the benchmark times both).
DECODE_PLAIN_JPEGS_WITH_OPENCV = True


# --- Reading the split stage's outputs -------------------------------------------------------


def read_split(config) -> tuple[pd.DataFrame, list[str]]:
    """The split manifest and the kept class names (in ``class_index`` order)."""
    manifest_path = Path(config.paths.split_manifest)
    classes_path = Path(config.paths.processed) / CLASSES_FILE_NAME
    for path in (manifest_path, classes_path):
        if not path.is_file():
            raise PipelineError(f"{path} not found: run the split stage (train_valid_test_clean.py) first")
    frame = read_manifest(manifest_path)
    for column in ("split", "class_index"):
        if column not in frame.columns:
            raise PipelineError(f"{manifest_path}: column {column!r} missing; re-run the split stage")
    try:
        classes = list(files.read_json(classes_path)["classes"])
    except (ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{classes_path}: expected {{\"classes\": [...]}}: {error}") from error
    indices = frame["class_index"].to_numpy()
    if len(frame) and (indices.min() < 0 or indices.max() >= len(classes)):
        raise PipelineError(
            f"{manifest_path}: class_index outside 0..{len(classes) - 1} (the classes of {classes_path})"
        )
    frame["class_index"] = frame["class_index"].astype("int32")
    return frame, classes


def split_rows(frame: pd.DataFrame, split: str, source: str | Path = "split manifest") -> pd.DataFrame:
    """The rows of one split; an empty split is an error that names the split."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise PipelineError(f"{source}: the {split!r} split has no rows")
    return rows


# --- Shared helpers --------------------------------------------------------------------------


def _image_paths(frame: pd.DataFrame, images_root: str | Path) -> list[str]:
    root = Path(images_root)
    return [str(root / name) for name in frame["filename"]]


def _face_boxes(frame: pd.DataFrame) -> np.ndarray:
    """Face boxes as float32 ``(x, y, width, height)``; rows without a box get width -1."""
    boxes = np.full((len(frame), 4), -1.0, dtype="float32")
    if all(column in frame.columns for column in FACE_BOX_COLUMNS):
        usable = has_face_box(frame)
        boxes[usable] = frame.loc[usable, list(FACE_BOX_COLUMNS)].to_numpy(dtype="float32")
    return boxes


def crop_bounds(box: Sequence[float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel bounds ``(left, top, right, bottom)`` of a face box grown by ``margin``, in the image.

    The margin is a fraction of the box's size on every side. Bounds are clamped to the image
    and at least one pixel wide, so a box partly or wholly outside the image still crops.
    The tf.data path computes exactly the same bounds with TensorFlow ops.
    """
    x, y, box_width, box_height = (float(value) for value in box)
    left = min(max(0, math.floor(x - margin * box_width)), width - 1)
    top = min(max(0, math.floor(y - margin * box_height)), height - 1)
    right = max(min(width, math.ceil(x + box_width + margin * box_width)), left + 1)
    bottom = max(min(height, math.ceil(y + box_height + margin * box_height)), top + 1)
    return left, top, right, bottom


def build_augmentation(generator_config, seed: int = 0) -> BatchAugmentation | None:
    """The augmentation of training batches in tf.data, or None when augmentation is off."""
    if not generator_config.augment:
        return None
    augmentation = BatchAugmentation(generator_config, seed)
    return augmentation if augmentation.changes_anything else None


class BatchAugmentation:
    """``[generator]``'s augmentation of a batch inside tf.data, as ``in_memory.FaceAugmentation``
    does it on the host: a horizontal flip with probability 1/2; rotation of up to
    ``rotation_degrees``, zoom by a factor in ``1 +- zoom`` and translation of up to
    ``translation`` of the size, drawn per image and applied together as one affine resampling
    (bilinear, borders filled by reflection; the host's reflection leaves out the edge pixel,
    cv2.BORDER_REFLECT_101, a one-pixel difference at the borders); a contrast factor in
    ``1 +- contrast`` around each image's mean; and Keras' ``RandomErasing`` with probability
    ``random_erasing``.

    Keras' RandomRotation, RandomZoom and RandomTranslation resample a batch once each; one
    resampling made augmented 112-pixel batches 1.8x faster (docs/performance.md) and softens
    the faces less. Values stay in [0, 255]. TensorFlow only (it runs in tf.data maps); the random numbers
    come from a ``tf.random.Generator`` seeded by ``seed``.
    """

    def __init__(self, generator_config, seed: int = 0):
        import tensorflow as tf

        self.flip = bool(generator_config.flip)
        self.rotation_degrees = float(generator_config.rotation_degrees)
        self.zoom = float(generator_config.zoom)
        self.translation = float(generator_config.translation)
        self.contrast = float(generator_config.contrast)
        self.erasing = (keras.layers.RandomErasing(factor=generator_config.random_erasing, value_range=(0, 255),
                                                   seed=seed + 5)
                        if generator_config.random_erasing > 0 else None)
        self.geometric = self.rotation_degrees > 0 or self.zoom > 0 or self.translation > 0
        self.changes_anything = self.flip or self.geometric or self.contrast > 0 or self.erasing is not None
        self.random = tf.random.Generator.from_seed(seed)

    def __call__(self, images, training: bool = True):
        import tensorflow as tf

        if not training:
            return images
        static_shape = images.shape
        shape = tf.shape(images)
        batch = shape[0]
        if self.flip:
            flipped = self.random.uniform([batch]) < 0.5
            images = tf.where(flipped[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, axis=[2]), images)
        if self.geometric:
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=self._inverse_transforms(batch, shape[1], shape[2]),
                output_shape=shape[1:3], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
            # The op's output has no static size; RandomErasing needs it.
            images.set_shape(static_shape)
        if self.contrast > 0:
            factor = 1.0 + self.random.uniform([batch, 1, 1, 1], -self.contrast, self.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
            images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)
        if self.erasing is not None:
            images = self.erasing(images, training=True)
        return images

    def _inverse_transforms(self, batch, height, width):
        """Per image, the 8 parameters mapping output pixels to input pixels (TensorFlow's form)
        of the forward map ``out = scale * R(angle) (in - centre) + centre + shift``, with
        cv2.getRotationMatrix2D's conventions (pixel centres at integers, positive angles
        anticlockwise on screen), as FaceAugmentation builds it."""
        import tensorflow as tf

        height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        angle = self.random.uniform([batch], -self.rotation_degrees, self.rotation_degrees) * (math.pi / 180.0)
        scale = 1.0 + self.random.uniform([batch], -self.zoom, self.zoom)
        shift_x = self.random.uniform([batch], -self.translation, self.translation) * width
        shift_y = self.random.uniform([batch], -self.translation, self.translation) * height
        centre_x, centre_y = width / 2.0 - 0.5, height / 2.0 - 0.5
        # The inverse of scale * [[cos, sin], [-sin, cos]] is [[cos, -sin], [sin, cos]] / scale.
        cosine, sine = tf.cos(angle) / scale, tf.sin(angle) / scale
        moved_x, moved_y = centre_x + shift_x, centre_y + shift_y
        offset_x = centre_x - (cosine * moved_x - sine * moved_y)
        offset_y = centre_y - (sine * moved_x + cosine * moved_y)
        zeros = tf.zeros_like(cosine)
        return tf.stack([cosine, -sine, offset_x, sine, cosine, offset_y, zeros, zeros], axis=1)


# --- tf.data ---------------------------------------------------------------------------------


class DecodeCounter:
    """Counts the images a tf.data pipeline tried to decode and those it decoded, and which.

    The pipeline skips a file that fails to decode (``ignore_errors``) instead of stopping a
    run of days; the difference between the two counts is the number of files skipped, which
    training reports at the end of every epoch. TensorFlow logs each skipped file's error but
    not its name: per-row flags of each dataset counted (``track``) give the names.
    """

    def __init__(self):
        import tensorflow as tf

        self.attempted = tf.Variable(0, dtype=tf.int64, trainable=False, name="images_attempted")
        self.decoded = tf.Variable(0, dtype=tf.int64, trainable=False, name="images_decoded")
        # Per dataset: its paths (in the dataset's row order) and two flags per row.
        self._tracked: list[tuple[np.ndarray, object, object]] = []

    def track(self, paths: np.ndarray):
        """Flags ``(attempted, decoded)``, one per row of ``paths``, for a dataset to set."""
        import tensorflow as tf

        flags = tuple(tf.Variable(tf.zeros([len(paths)], tf.bool), trainable=False, name=name)
                      for name in ("rows_attempted", "rows_decoded"))
        self._tracked.append((np.asarray(paths), *flags))
        return flags

    def skipped(self) -> int:
        """Files skipped so far (exact whenever the pipeline is not in the middle of a decode)."""
        return int(self.attempted.numpy()) - int(self.decoded.numpy())

    def skipped_files(self) -> list[str]:
        """The files tried and never decoded so far, each named once."""
        names: dict[str, None] = {}  # ordered; a file in two datasets (splits) is named once
        for paths, attempted, decoded in self._tracked:
            failed = attempted.numpy() & ~decoded.numpy()
            names.update(dict.fromkeys(str(path) for path in paths[failed]))
        return list(names)


def _sampled_crop_shapes(paths: Sequence[str], boxes: np.ndarray, margin: float) -> list[tuple[int, int]]:
    """The ``(height, width)`` of the face crops of up to ``CROP_SHAPE_SAMPLE`` rows spread over the rows.

    Reads only the headers of the files (milliseconds); unreadable files are left out
    (``make_dataset`` skips and counts them itself).
    """
    rows = np.random.default_rng(0).permutation(len(paths))[:CROP_SHAPE_SAMPLE]
    shapes: list[tuple[int, int]] = []
    for row in rows:
        try:
            with Image.open(paths[row]) as opened:
                width, height = opened.size
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        if boxes[row, 2] > 0:
            left, top, right, bottom = crop_bounds(boxes[row], margin, width, height)
            shapes.append((bottom - top, right - left))
        else:
            shapes.append((height, width))
    return shapes


def _common_crop_shape(paths: Sequence[str], boxes: np.ndarray, margin: float,
                       sampled: list[tuple[int, int]] | None = None) -> tuple[int, int] | None:
    """The ``(height, width)`` shared by the face crops of a sample of rows, or None.

    Face datasets are often all one size (FER2013's 48x48 faces, aligned crops), and then
    ``make_dataset`` resizes whole batches instead of single images. ``sampled`` is
    ``_sampled_crop_shapes``' answer when the caller already has it.
    """
    shapes = set(_sampled_crop_shapes(paths, boxes, margin) if sampled is None else sampled)
    return shapes.pop() if len(shapes) == 1 else None


def _handed_over_unresized(common_shape: tuple[int, int] | None, image_size: int, resize_in_model: bool,
                           equalize_histogram: bool) -> bool:
    """Whether crops of ``common_shape`` leave the host at that size, for the model to enlarge.

    Only for models that resize their inputs (``resize_in_model``), only crops no larger than the
    model's input (shrinking needs antialiasing, which the model's layer does not do), and not
    for equalised images (equalised on the model's grid, after resizing).
    """
    return (resize_in_model and not equalize_histogram and common_shape is not None
            and common_shape[0] <= image_size and common_shape[1] <= image_size)


def crops_smaller_than_input(frame: pd.DataFrame, images_root: str | Path, image_size: int,
                             face_margin: float) -> tuple[int, int] | None:
    """The common ``(height, width)`` of a sample of the face crops when it is smaller than the
    model's ``image_size`` square (no side larger, not both equal), else None.

    Such crops would be enlarged on the host for every image of every epoch, 5 or more times
    their decoded bytes for FER2013's 48-pixel faces at 112; ``resize_in_model = "auto"`` builds
    the model with its own resizing layer for them (training.resolve_resize_in_model).
    """
    if len(frame) == 0:
        return None
    common_shape = _common_crop_shape(_image_paths(frame, images_root), _face_boxes(frame), float(face_margin))
    if common_shape == (image_size, image_size) or not _handed_over_unresized(common_shape, image_size, True, False):
        return None
    return common_shape


def handover_size(frame: pd.DataFrame, images_root: str | Path, image_size: int, face_margin: float,
                  resize_in_model: bool, equalize_histogram: bool = False) -> int:
    """The square size the host-side inputs (``load_arrays``, ``ImageBatches``) prepare images at.

    ``image_size``, or, for a model that resizes its own inputs, the side of the face crops when
    a sample of them shares one square size smaller than ``image_size`` (FER2013's 48 pixels):
    then those arrays are 5 or more times smaller and augmenting them as much cheaper.
    """
    if not resize_in_model or equalize_histogram:
        return image_size
    common_shape = crops_smaller_than_input(frame, images_root, image_size, face_margin)
    # Square crops only: these arrays are square (crops equal to image_size are that size anyway).
    return common_shape[0] if common_shape is not None and common_shape[0] == common_shape[1] else image_size


def jpeg_scale_denominator(crop_height: int, crop_width: int, image_size: int) -> int:
    """The largest of 1, 2, 4 and 8 that leaves a crop of at least ``image_size`` on each side.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale, computing a smaller inverse DCT per block
    (a good low-pass reduction) instead of every pixel: a 512-pixel AffectNet photo's face
    decodes in about 60% of the time at 1/2 and the later resize has a quarter of the pixels.
    Never below ``image_size``: the final resize always shrinks, so no detail is invented.
    """
    denominator = 1
    while denominator < 8 and min(crop_height, crop_width) >= image_size * denominator * 2:
        denominator *= 2
    return denominator


def make_dataset(frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                 batch_size: int, training: bool, generator_config, seed: int = 0,
                 drop_remainder: bool = False, decode_counter: DecodeCounter | None = None,
                 equalize_histogram: bool = False, resize_in_model: bool = False):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches for the rows of ``frame``.

    Images are float32 ``(batch, image_size, image_size, channels)`` with values in [0, 255];
    labels are the int32 ``class_index`` column. Training datasets are shuffled every epoch
    and augmented; evaluation datasets keep the frame's order and are never augmented. The
    dataset is finite (one pass over the rows); training repeats it as it needs.
    ``drop_remainder`` leaves out the last, partial batch of each pass (training on several
    replicas needs full batches: a replica handed no image fails in BatchNormalization).
    A file that fails to decode is skipped; ``decode_counter`` counts such files.

    When a sample of rows shows face crops of one size (``_common_crop_shape``), images stay
    uint8 at that size until they are batched, and each batch is converted and resized at
    once: per-image float work and copies of resized images dominate the cost otherwise.
    An image of another size in such a dataset is first resized to the common size (one
    extra, slightly softening resampling) so that batches stay rectangular. Training on such
    crops (without ``cache``) reads a whole batch of files per tf.data element, with a fresh
    full permutation of the rows every pass (``_training_batches_read_whole``; the per-element
    costs of tf.data otherwise outweigh decoding a small file).

    When the sampled crops are at least twice ``image_size`` on each side, each JPEG is decoded
    at the reduced scale ``jpeg_scale_denominator`` picks for its own crop, then resized as
    usual: within a grey level or two of Pillow's full-size path (load_image), and about twice
    as fast on 512-pixel photos.

    ``equalize_histogram`` (one channel only) equalises each image after resizing, before
    augmentation, with the same pixels as load_image's (equalization.py).

    ``resize_in_model`` is for models that resize their own inputs (models.model_inputs): when
    the crops have one size no larger than ``image_size``, batches keep that size, are augmented
    at it, and the model enlarges them. Larger or mixed sizes, and equalised images (equalised
    on the model's grid), are resized here as usual.
    """
    import tensorflow as tf

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if equalize_histogram and channels != 1:
        raise ValueError("histogram equalisation needs channels = 1")
    if image_size < 1 or batch_size < 1:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size}, {batch_size}")
    if len(frame) == 0:
        raise ValueError("make_dataset needs at least one row")
    parallel_calls = tf.data.AUTOTUNE
    margin = float(generator_config.face_margin)

    paths = np.array(_image_paths(frame, images_root))
    boxes = _face_boxes(frame)
    labels = frame["class_index"].to_numpy(dtype="int32")
    sampled_shapes = _sampled_crop_shapes(paths, boxes, margin)
    # Crops of at least twice the training size (AffectNet's photos at 112 or 224 pixels) decode
    # at 1/2, 1/4 or 1/8 scale, chosen per image: the per-image choice costs little next to
    # decoding a large JPEG, and FER-sized images never pay it.
    scaled_decoding = bool(sampled_shapes) and min(min(shape) for shape in sampled_shapes) >= 2 * image_size
    common_shape = None if scaled_decoding else _common_crop_shape(paths, boxes, margin, sampled_shapes)
    # The size batches leave the pipeline at: the crops' own when the model enlarges them.
    output_shape = (image_size, image_size)
    if _handed_over_unresized(common_shape, image_size, resize_in_model, equalize_histogram):
        output_shape = tuple(common_shape)
    boxed_rows = int((boxes[:, 2] > 0).sum())
    jpeg_names_only = all(Path(path).suffix.lower() in (".jpg", ".jpeg") for path in paths)
    if training:
        # Manifests are often sorted by class: a seeded full permutation first, so that the
        # bounded shuffle buffer below mixes classes from the first batch on.
        order = np.random.default_rng(seed).permutation(len(frame))
        paths, boxes, labels = paths[order], boxes[order], labels[order]

    def crop_window(box, height, width):
        """``(top, left, height, width)`` of the face crop: the bounds of crop_bounds()."""
        grow_x, grow_y = margin * box[2], margin * box[3]
        left = tf.minimum(tf.maximum(0, tf.cast(tf.floor(box[0] - grow_x), tf.int32)), width - 1)
        top = tf.minimum(tf.maximum(0, tf.cast(tf.floor(box[1] - grow_y), tf.int32)), height - 1)
        right = tf.maximum(tf.minimum(width, tf.cast(tf.math.ceil(box[0] + box[2] + grow_x), tf.int32)), left + 1)
        bottom = tf.maximum(tf.minimum(height, tf.cast(tf.math.ceil(box[1] + box[3] + grow_y), tf.int32)), top + 1)
        return top, left, bottom - top, right - left

    def decode_jpeg_scaled(encoded, window=None):
        """A JPEG (or the ``(top, left, height, width)`` window of it) decoded at the smallest of
        1/1, 1/2, 1/4 and 1/8 scale that keeps ``image_size`` pixels (jpeg_scale_denominator)."""
        shape = tf.io.extract_jpeg_shape(encoded)
        top, left, height, width = (0, 0, shape[0], shape[1]) if window is None else window
        smaller_side = tf.minimum(height, width)
        branch_index = tf.add_n([tf.cast(smaller_side >= image_size * factor, tf.int32) for factor in (2, 4, 8)])

        def decode_at(denominator):
            def decode():
                # libjpeg's scaled image is ceil(side / denominator) pixels; the window grows to
                # whole scaled pixels (under one scaled pixel more on each side; measured closer
                # to Pillow's full-size crop than rounding the edges to the nearest pixel).
                scaled_height = (shape[0] + denominator - 1) // denominator
                scaled_width = (shape[1] + denominator - 1) // denominator
                scaled_top, scaled_left = top // denominator, left // denominator
                scaled_bottom = tf.minimum((top + height + denominator - 1) // denominator, scaled_height)
                scaled_right = tf.minimum((left + width + denominator - 1) // denominator, scaled_width)
                scaled_window = tf.stack([scaled_top, scaled_left, scaled_bottom - scaled_top,
                                          scaled_right - scaled_left])
                return tf.io.decode_and_crop_jpeg(encoded, scaled_window, channels=3, ratio=denominator,
                                                  dct_method="INTEGER_ACCURATE")
            return decode

        image = tf.switch_case(branch_index, [decode_at(denominator) for denominator in (1, 2, 4, 8)])
        image.set_shape([None, None, 3])
        return image

    def decode_whole(encoded):
        def decode_jpeg():
            if scaled_decoding:
                return decode_jpeg_scaled(encoded)
            # decode_image's JPEG decoder uses libjpeg's fast, inexact inverse DCT (about 2 grey
            # levels off on average); the accurate one decodes exactly as Pillow does.
            return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

        if jpeg_names_only and not scaled_decoding:
            # No per-file choice of decoder (a tf.cond per image costs more than the decoding of
            # a small JPEG); decode_jpeg also decodes PNG and GIF content under a .jpg name, which
            # the scaled decoder (decode_and_crop_jpeg) does not.
            return decode_jpeg()
        image = tf.cond(
            tf.io.is_jpeg(encoded),
            decode_jpeg,
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8),
        )
        image.set_shape([None, None, 3])
        return image

    def decode_face(encoded, box):
        """The face crop; for a JPEG only the crop's window is decoded (within 2 grey levels
        of cropping the whole decoded image, where chroma is upsampled at the window's edge)."""

        def decode_jpeg_window():
            shape = tf.io.extract_jpeg_shape(encoded)
            if scaled_decoding:
                return decode_jpeg_scaled(encoded, crop_window(box, shape[0], shape[1]))
            window = tf.stack(crop_window(box, shape[0], shape[1]))
            return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method="INTEGER_ACCURATE")

        def decode_then_crop():
            image = decode_whole(encoded)
            top, left, height, width = crop_window(box, tf.shape(image)[0], tf.shape(image)[1])
            return image[top:top + height, left:left + width, :]

        image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg_window, decode_then_crop)
        image.set_shape([None, None, 3])
        return image

    def read_and_crop(row, path, box, counted=True):
        """The decoded uint8 RGB image, cropped to its face box when it has one.

        ``counted`` False leaves the decode counter alone (read_batch counts a batch at once)."""
        if decode_counter is None or not counted:
            encoded = tf.io.read_file(path)
        else:
            # Counted before the file is read, so a file whose decoding fails is counted too.
            with tf.control_dependencies([decode_counter.attempted.assign_add(1),
                                          rows_attempted.scatter_nd_update([[row]], [True])]):
                encoded = tf.io.read_file(path)
        if boxed_rows == len(paths):
            image = decode_face(encoded, box)
        elif boxed_rows:
            image = tf.cond(box[2] > 0, lambda: decode_face(encoded, box), lambda: decode_whole(encoded))
        else:
            image = decode_whole(encoded)
        if decode_counter is not None and counted:
            # Depends on the decoded image's runtime height (the final shape is static and would
            # be constant-folded), so it runs only when decoding has succeeded.
            succeeded = tf.shape(image)[0] > 0
            decode_counter.decoded.assign_add(tf.cast(succeeded, tf.int64))
            rows_decoded.scatter_nd_update([[row]], [succeeded])
        return image

    def resized(images, height, width, antialias):
        """Float images (one or a batch) resized with bilinear filtering, within [0, 255]."""
        images = tf.image.resize(images, [height, width], method="bilinear", antialias=antialias)
        # Plain bilinear values are convex combinations of pixels and stay within [0, 255];
        # the antialiasing filter's normalised weights can overshoot by a rounding error.
        return tf.clip_by_value(images, 0.0, 255.0) if antialias else images

    def resized_one(image, height, width, shrink_by_area=False):
        # Antialiased bilinear resizing matches Pillow's BILINEAR filter when shrinking. When
        # enlarging (FER2013's 48x48 faces) it computes the same values as plain bilinear
        # resizing at a third of the speed, so it is used only where it changes something.
        # After a scaled decode (``shrink_by_area``) less than a halving is left: area averaging
        # antialiases that as well (within a grey level of Pillow on 512-pixel photos) at half
        # the cost; its sums can overshoot 255 by a rounding error.
        def shrunk():
            if shrink_by_area:
                return tf.clip_by_value(tf.image.resize(image, [height, width], method="area"), 0.0, 255.0)
            return resized(image, height, width, antialias=True)

        shape = tf.shape(image)
        return tf.cond(
            tf.logical_or(shape[0] > height, shape[1] > width),
            shrunk,
            lambda: resized(image, height, width, antialias=False),
        )

    def to_float_gray(images):
        images = tf.cast(images, tf.float32)
        # Resizing and luma are both linear, so reducing to luma first gives the same values
        # for a third of the resizing work.
        return tf.image.rgb_to_grayscale(images) if channels == 1 else images

    def read_one_image(row, path, box, label):
        """Crops of different sizes: each image is resized on its own."""
        image = to_float_gray(read_and_crop(row, path, box))
        image = resized_one(image, image_size, image_size, shrink_by_area=scaled_decoding)
        if equalize_histogram:
            image = equalization.equalize_histogram_tf(image[tf.newaxis])[0]
        return image, label

    def common_crop(row, path, box, counted=True):
        """Crops of one size: the crop stays uint8 at its size; whole batches are resized later."""
        image = read_and_crop(row, path, box, counted)
        shape = tf.shape(image)
        image = tf.cond(
            tf.logical_and(shape[0] == common_shape[0], shape[1] == common_shape[1]),
            lambda: image,
            lambda: tf.cast(tf.round(resized_one(tf.cast(image, tf.float32), *common_shape)), tf.uint8),
        )
        image.set_shape([*common_shape, 3])
        return image

    def read_common_shape(row, path, box, label):
        return common_crop(row, path, box), label

    def resize_batch(images, batch_labels):
        images = to_float_gray(images)
        if common_shape != output_shape:
            shrinking = common_shape[0] > image_size or common_shape[1] > image_size
            images = resized(images, image_size, image_size, antialias=shrinking)
        if equalize_histogram:
            images = equalization.equalize_histogram_tf(images)
        return images, batch_labels

    if decode_counter is not None:
        rows_attempted, rows_decoded = decode_counter.track(paths)
    if training and common_shape is not None and not generator_config.cache and READ_WHOLE_BATCHES:
        dataset = _training_batches_read_whole(
            paths, boxes, labels, common_shape, batch_size, drop_remainder, seed, parallel_calls,
            common_crop, decode_counter, (rows_attempted, rows_decoded) if decode_counter is not None else None)
    else:
        # Each element carries its row (of the arrays as ordered above), which names a skipped file.
        dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype="int64"), paths, boxes, labels))
        shuffle_buffer = max(1, min(SHUFFLE_BUFFER, len(frame)))
        if training and not generator_config.cache:
            # Shuffling file names before decoding keeps the buffer cheap (strings, not pixels).
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(read_one_image if common_shape is None else read_common_shape,
                              num_parallel_calls=parallel_calls, deterministic=not training)
        dataset = dataset.ignore_errors(log_warning=True)
        if generator_config.cache:
            dataset = dataset.cache()
            if training:
                # A cached dataset replays its first pass, so the shuffle must come after the cache.
                dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size, num_parallel_calls=parallel_calls, drop_remainder=drop_remainder)
    if common_shape is not None:
        dataset = dataset.map(resize_batch, num_parallel_calls=parallel_calls, deterministic=not training)
    augmentation = build_augmentation(generator_config, seed) if training else None
    if augmentation is not None:
        dataset = dataset.map(
            lambda images, batch_labels: (
                tf.clip_by_value(augmentation(images, training=True), 0.0, 255.0),
                batch_labels,
            ),
            num_parallel_calls=parallel_calls,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _training_batches_read_whole(paths: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                                 common_shape: tuple[int, int], batch_size: int, drop_remainder: bool,
                                 seed: int, parallel_calls, common_crop, decode_counter, row_flags):
    """One pass of training batches of uint8 crops of ``common_shape``, each batch read in one call.

    For small files (FER2013's 48-pixel faces) tf.data's cost per element (a shuffle buffer, a
    map call, ``ignore_errors``), not decoding, sets the pace: measured on 2 cores, a pipeline
    with one element per file delivered 0.6 to 0.7 of what decoding alone does, before any
    resizing. Here an element is a whole batch: each pass draws a fresh permutation of the rows
    (a full shuffle, so ``SHUFFLE_BUFFER`` plays no part), cuts it into batches, and one
    ``tf.map_fn`` call reads and decodes each batch's files. Batches are left uint8 at
    ``common_shape``; conversion and resizing follow as a separate stage (measured as fast as
    doing them in the same call, and shared with the per-file path).

    One corrupt file fails its whole batch, which ``ignore_errors`` drops; the batch's rows
    are then still pending, and at the end of the pass they are read again one file at a time
    (with ``ignore_errors`` per file), so the pass loses only the corrupt file. ``decode_counter``
    counts each row once per pass: attempted when its batch starts, decoded when its batch (or
    its own retry) succeeds.
    """
    import tensorflow as tf

    row_count = len(paths)
    paths_tensor = tf.constant(paths)
    boxes_tensor = tf.constant(boxes)
    labels_tensor = tf.constant(labels)
    # Rows whose batch started and has not yet been delivered, in this pass.
    pending = tf.Variable(tf.zeros([row_count], tf.bool), trainable=False, name="rows_pending")
    full_batches, tail = divmod(row_count, batch_size)

    def batches_of_pass(pass_seed):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(row_count, dtype=tf.int64), seed=tf.stack([pass_seed, tf.constant(seed, tf.int64)]))
        with tf.control_dependencies([pending.assign(tf.zeros([row_count], tf.bool))]):
            order = tf.identity(order)
        batches = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[:full_batches * batch_size], [full_batches, batch_size]))
        if tail and not drop_remainder:
            batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full_batches * batch_size:]))
        return batches

    def set_flags(rows, value: bool):
        """Updates that mark ``rows`` pending (True) or delivered (False), with their counts."""
        count = tf.shape(rows, out_type=tf.int64)[0]
        indices = rows[:, tf.newaxis]
        updates = [pending.scatter_nd_update(indices, tf.fill([count], value))]
        if decode_counter is not None:
            rows_attempted, rows_decoded = row_flags
            flags, counter = (rows_attempted, decode_counter.attempted) if value else (rows_decoded, decode_counter.decoded)
            updates += [flags.scatter_nd_update(indices, tf.ones([count], tf.bool)), counter.assign_add(count)]
        return updates

    def read_batch(rows):
        with tf.control_dependencies(set_flags(rows, True)):
            images = tf.map_fn(
                lambda row: common_crop(row, paths_tensor[row], boxes_tensor[row], counted=False), rows,
                fn_output_signature=tf.TensorSpec([*common_shape, 3], tf.uint8))
        # Marked delivered only once the whole batch has decoded.
        with tf.control_dependencies([images]):
            delivered = set_flags(rows, False)
        with tf.control_dependencies(delivered):
            return tf.identity(images), tf.gather(labels_tensor, rows)

    def read_one(row):
        # Counted as decoded on success only: its attempt was counted with its batch.
        image = common_crop(row, paths_tensor[row], boxes_tensor[row], counted=False)
        with tf.control_dependencies([image]):
            delivered = set_flags(row[tf.newaxis], False)
        with tf.control_dependencies(delivered):
            return tf.identity(image), labels_tensor[row]

    def retry_pending(_):
        """The rows of batches that failed in this pass, one file per element (the flags are
        cleared when the next pass starts)."""
        rows = tf.where(pending.read_value())[:, 0]
        singles = tf.data.Dataset.from_tensor_slices(rows).map(read_one, num_parallel_calls=parallel_calls,
                                                               deterministic=False)
        return singles.ignore_errors(log_warning=True).batch(batch_size, drop_remainder=drop_remainder)

    # A new seed for every pass (rerandomize_each_iteration), reproducible from ``seed``.
    dataset = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(batches_of_pass)
    dataset = dataset.map(read_batch, num_parallel_calls=parallel_calls, deterministic=False)
    dataset = dataset.ignore_errors(log_warning=True)
    # Lazily built when the batches are exhausted, so it sees the pass's failed batches.
    return dataset.concatenate(tf.data.Dataset.from_tensors(np.int64(0)).flat_map(retry_pending))


# --- Pillow / numpy --------------------------------------------------------------------------


def load_image(path: str | Path, image_size: int, channels: int, box: Sequence[float] | None = None,
               margin: float = 0.0, equalize_histogram: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """One image as float32 ``(image_size, image_size, channels)`` with values in [0, 255].

    The EXIF orientation is applied first; palette, RGBA (alpha dropped), CMYK and 16-bit
    images are all turned into 8-bit RGB (8-bit grey ones are worked on as their one channel,
    with the same pixels), then cropped to ``box`` (x, y, width, height,
    grown by ``margin``) when given, resized with bilinear filtering and, for one channel,
    reduced to luma with the same weights as the tf.data path.
    A JPEG whose crop is at least twice ``image_size`` on each side is decoded at the reduced
    scale of ``jpeg_scale_denominator``, as the tf.data path does (the box scaled alike).
    ``equalize_histogram`` (one channel only) equalises the result (equalization.py).
    ``out``, a float32 array of the result's shape (a slot of a batch), receives the pixels and
    is returned: a batch filled in place needs no per-image copies of its size.

    Plain JPEGs (8-bit grey or colour, no EXIF block, complete) are decoded by OpenCV
    (``_decode_plain_jpeg``: the same libjpeg decoding, bit for bit, without holding Python's
    lock); every other file, and any file OpenCV cannot read, goes through Pillow.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    has_box = box is not None and np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0
    decoded = _decode_plain_jpeg(path, image_size, box if has_box else None, margin) \
        if DECODE_PLAIN_JPEGS_WITH_OPENCV else None
    if decoded is not None:
        pixels, upright_size = decoded
    else:
        with Image.open(path) as opened:
            # The box refers to the upright image: sides swap for EXIF orientations 5 to 8.
            upright_size = opened.size[::-1] if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8) else opened.size
            if opened.format == "JPEG":
                denominator = _crop_scale_denominator(box if has_box else None, margin, *upright_size, image_size)
                if denominator > 1:
                    opened.draft(None, (opened.size[0] // denominator, opened.size[1] // denominator))
            image = ImageOps.exif_transpose(opened)
            # An 8-bit grey image (FER2013's) is kept as its one channel: each channel of its
            # RGB copy would be computed alike, so the pixels are the same for a third of the work.
            pixels = np.asarray(image if image.mode == "L" else _to_rgb(image))
    if has_box:
        height, width = pixels.shape[:2]
        scale_x, scale_y = width / upright_size[0], height / upright_size[1]
        scaled_box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        left, top, right, bottom = crop_bounds(scaled_box, margin, width, height)
        pixels = pixels[top:bottom, left:right]
    if out is None:
        out = np.empty((image_size, image_size, channels), dtype="float32")
    elif out.shape != (image_size, image_size, channels) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(image_size, image_size, channels)}, got {out.dtype} {out.shape}")
    grey = pixels.ndim == 2
    pixels = _resized(pixels, image_size, out if (channels == 3 and not grey) else None)
    if grey and channels == 3:
        _grey_to_rgb(pixels, out)
    elif grey:
        # The luma of equal channels is the value times the weights' sum (0.9999), as for RGB.
        np.multiply(pixels, GRAY_WEIGHTS.sum(), out=out[..., 0])
    elif channels == 1:
        np.matmul(pixels, GRAY_WEIGHTS, out=out[..., 0])
    np.clip(out, 0.0, 255.0, out=out)
    if equalize_histogram:
        out[...] = equalization.equalize_histogram(out)
    return out


def _crop_scale_denominator(box: Sequence[float] | None, margin: float, width: int, height: int,
                            image_size: int) -> int:
    """jpeg_scale_denominator for the face crop of ``box`` (the whole image when None) in an
    upright image of ``width`` x ``height``: the JPEG scale both host decoders decode at."""
    crop = crop_bounds(box, margin, width, height) if box is not None else (0, 0, width, height)
    return jpeg_scale_denominator(crop[3] - crop[1], crop[2] - crop[0], image_size)


def _resized(pixels: np.ndarray, image_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels (grey or RGB) resized to ``image_size`` squared with bilinear filtering, as float32.

    Shrinking (on either side) uses Pillow's BILINEAR filter, which widens with the reduction
    (antialiasing, as the tf.data path's ``antialias=True``). Enlarging, where no antialiasing
    applies, is plain bilinear interpolation with half-pixel centres in float (cv2.resize),
    the values the tf.data path computes (within 1e-3), unrounded, and about ten times faster
    than Pillow on FER2013's 48-pixel faces. ``out`` (float32, the result's shape) receives
    the result when given.
    """
    import cv2

    height, width = pixels.shape[:2]
    if height > image_size or width > image_size:
        result = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((image_size, image_size),
                                                                                 Image.Resampling.BILINEAR))
    elif (height, width) == (image_size, image_size):
        result = pixels
    else:
        return cv2.resize(pixels.astype("float32"), (image_size, image_size), dst=out,
                          interpolation=cv2.INTER_LINEAR)
    if out is None:
        return result.astype("float32")
    out[...] = result
    return out


def _grey_to_rgb(pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
    """A ``(height, width)`` float32 plane written as three equal channels into ``out``
    (a quarter of the time of np.repeat)."""
    import cv2

    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB, dst=out)


# JPEG start-of-frame markers that libjpeg decodes (baseline, extended and progressive, Huffman
# coded), and the marker that starts the compressed data.
_DECODABLE_FRAME_MARKERS = (0xC0, 0xC1, 0xC2)
_OTHER_FRAME_MARKERS = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_START_OF_SCAN = 0xDA


def plain_jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` of a JPEG that OpenCV and Pillow decode alike, else None.

    Plain means: a complete file (it ends with the end-of-image marker; a truncated one goes
    to Pillow, which reports it), an 8-bit baseline or progressive frame of 1 (grey) or 3
    (colour) components (CMYK's conversion differs by a grey level between the two), and no
    EXIF block before the image data (Pillow applies its orientation; without parsing it here
    such files are left to Pillow). Only the marker headers are read, not the image data.
    """
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    frame = None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == _START_OF_SCAN:
            return frame
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xE1 and data[position + 4:position + 10] == b"Exif\x00\x00":
            return None
        if marker in _OTHER_FRAME_MARKERS:
            return None
        if marker in _DECODABLE_FRAME_MARKERS:
            if position + 10 > len(data):
                return None
            precision, components = data[position + 4], data[position + 9]
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            if precision != 8 or components not in (1, 3) or height == 0 or width == 0:
                return None
            frame = (height, width, components)
        position += 2 + length
    return None


def _decode_plain_jpeg(path: str | Path, image_size: int, box: Sequence[float] | None,
                       margin: float) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A plain JPEG (plain_jpeg_header) decoded by OpenCV: ``(uint8 pixels, (width, height))``.

    Pixels are ``(height, width)`` for grey, ``(height, width, 3)`` RGB for colour, at the DCT
    scale load_image's Pillow path picks (``jpeg_scale_denominator`` of the crop), and the
    size is the file's own. Bit for bit what Pillow decodes (libjpeg's accurate integer DCT and
    smooth chroma upsampling in both; tested), but OpenCV releases Python's lock while it
    decodes, and Pillow's plugin parses markers in Python: on 2 cores Pillow's load_image spent
    about 0.5 ms per 48-pixel FER2013 face, nearly all holding the lock, so threads did not
    help. None: Pillow decodes the file (anything not plain, or too large for
    ``Image.MAX_IMAGE_PIXELS``, which Pillow guards against decompression bombs).
    """
    import cv2

    with open(path, "rb") as opened:
        data = opened.read()
    header = plain_jpeg_header(data)
    if header is None:
        return None
    height, width, components = header
    if Image.MAX_IMAGE_PIXELS is not None and height * width > Image.MAX_IMAGE_PIXELS:
        return None
    denominator = _crop_scale_denominator(box, margin, width, height, image_size)
    flags = {1: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 cv2.IMREAD_REDUCED_GRAYSCALE_8),
             3: (cv2.IMREAD_COLOR, cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4,
                 cv2.IMREAD_REDUCED_COLOR_8)}[components]
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags[denominator.bit_length() - 1])
    expected = (-(-height // denominator), -(-width // denominator))
    if pixels is None or pixels.shape[:2] != expected:
        return None
    if components == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels, (width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode, scaling 16- and 32-bit samples down to 0..255."""
    if image.mode.startswith("I"):
        # 16-bit grayscale (mode I;16 or I): Pillow's own conversion would clip, not scale.
        samples = np.asarray(image, dtype="float64")
        scale = 255.0 / 65535.0 if samples.max(initial=0) > 255 or image.mode.startswith("I;16") else 1.0
        gray = np.clip(np.round(samples * scale), 0, 255).astype("uint8")
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        samples = np.asarray(image, dtype="float64")
        scale = 255.0 if samples.max(initial=0) <= 1.0 else 1.0
        gray = np.clip(np.round(samples * scale), 0, 255).astype("uint8")
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    # RGBA -> RGB drops the alpha channel, as TensorFlow's decoder does with channels=3.
    return image.convert("RGB")


def load_arrays(frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                face_margin: float = 0.0, skip_unreadable: bool = False,
                workers: int = 0, dtype: str = "float32",
                equalize_histogram: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All rows of ``frame`` decoded with Pillow: ``(images, labels int32)``.

    The crops and sizes are those of ``make_dataset`` (without augmentation), in the frame's
    order. An unreadable file is an error naming it, unless ``skip_unreadable``, which leaves
    it out (logged). ``workers`` threads decode in parallel (0: one per CPU core). ``dtype``
    "uint8" rounds the pixels to 8 bits (a quarter of the memory of float32).
    """
    from tqdm import tqdm

    paths = _image_paths(frame, images_root)
    boxes = _face_boxes(frame)
    labels = frame["class_index"].to_numpy(dtype="int32")
    images = np.zeros((len(frame), image_size, image_size, channels), dtype=dtype)
    readable = np.ones(len(frame), dtype=bool)
    rounding = np.issubdtype(np.dtype(dtype), np.integer)

    def decode(index: int) -> None:
        box = boxes[index] if boxes[index, 2] > 0 else None
        try:
            if rounding:
                images[index] = np.round(load_image(paths[index], image_size, channels, box, face_margin,
                                                    equalize_histogram))
            else:
                load_image(paths[index], image_size, channels, box, face_margin, equalize_histogram,
                           out=images[index])
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            if not skip_unreadable:
                raise PipelineError(f"cannot read image {paths[index]}: {error}") from error
            logger.warning("skipping unreadable image %s: %s", paths[index], error)
            readable[index] = False

    threads = workers or os.cpu_count() or 1
    if threads > 1:
        one_opencv_thread_per_worker()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in tqdm(pool.map(decode, range(len(frame))), total=len(frame), desc="decoding images",
                      unit="image", disable=len(frame) < 200):
            pass
    if not readable.all():
        logger.warning("left out %d unreadable images of %d", int((~readable).sum()), len(frame))
    return images[readable], labels[readable]


def one_opencv_thread_per_worker() -> None:
    """Stops OpenCV's own thread pool where our threads already work one image each.

    The host paths parallelise over images (PyDataset workers, load_arrays' threads); OpenCV
    splitting each small resize or colour conversion over every core on top of that
    oversubscribes them: measured on 2 cores, ImageBatches made 1.2-1.4x more FER2013 batches
    per second with one OpenCV thread. The setting is OpenCV's, for the whole process.
    """
    import cv2

    cv2.setNumThreads(1)


class ShuffledBatches(keras.utils.PyDataset):
    """Batches of indices into ``size`` rows: reshuffled every epoch when training, in order otherwise.

    The order of epoch ``e`` is drawn from (seed, e), so a batch's rows never depend on which
    worker thread asks for it first. ``max_batches`` (> 0) caps the batches per epoch; each
    epoch then draws a fresh random subset. Subclasses turn ``batch_rows(index)`` into tensors.
    """

    def __init__(self, size: int, batch_size: int, training: bool, seed: int = 0, max_batches: int = 0,
                 workers: int = 1):
        super().__init__(workers=workers, use_multiprocessing=False)
        if workers > 1:
            one_opencv_thread_per_worker()
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.training = training
        self.seed = int(seed)
        self.max_batches = int(max_batches)
        self.epoch = 0
        self._order = self._new_order()

    def _new_order(self) -> np.ndarray:
        if self.training:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return np.arange(self.size)

    @property
    def num_batches(self) -> int:
        full = math.ceil(self.size / self.batch_size)
        return min(full, self.max_batches) if self.max_batches > 0 else full

    def __len__(self) -> int:
        return self.num_batches

    def batch_rows(self, batch_index: int) -> np.ndarray:
        return self._order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]

    def batch_random(self, batch_index: int) -> np.random.Generator:
        """Random numbers of one batch of the current epoch (augmentation, mixup)."""
        return np.random.default_rng([self.seed, self.epoch, batch_index])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._new_order()


class ImageBatches(ShuffledBatches):
    """Batches decoded on the host (load_image), for training on any Keras backend (``input_mode = "arrays"``).

    Training batches are reshuffled every epoch and augmented on the host by OpenCV
    (``in_memory.FaceAugmentation``, as the tf.data path's ``BatchAugmentation``): Keras'
    layers called outside the model would run on the backend's accelerator, batch by batch,
    and JAX's rotation and zoom stall a GPU for minutes. ``max_batches`` (> 0) caps the
    batches per epoch; each epoch then draws a fresh random subset. Images that fail to decode are dropped from their batch and counted
    in ``unreadable_files``.
    """

    def __init__(self, frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                 batch_size: int, training: bool, generator_config, seed: int = 0,
                 max_batches: int = 0, workers: int = 1, equalize_histogram: bool = False):
        if len(frame) == 0:
            raise ValueError("ImageBatches needs at least one row")
        super().__init__(len(frame), batch_size, training, seed, max_batches, workers)
        self.paths = _image_paths(frame, images_root)
        self.boxes = _face_boxes(frame)
        self.labels = frame["class_index"].to_numpy(dtype="int32")
        self.image_size = image_size
        self.channels = channels
        self.margin = float(generator_config.face_margin)
        self.equalize_histogram = equalize_histogram
        self.unreadable_files: list[str] = []
        from emotion_classifier import in_memory  # in_memory builds on this module

        self._augmentation = in_memory.FaceAugmentation.from_config(generator_config) if training else None

    def __getitem__(self, batch_index: int):
        indices = self.batch_rows(batch_index)
        # Filled in place, slot by slot (load_image's ``out``): no per-image arrays of the
        # batch's size to allocate, free and stack.
        batch = np.empty((len(indices), self.image_size, self.image_size, self.channels), dtype="float32")
        labels = []
        for index in indices:
            box = self.boxes[index] if self.boxes[index, 2] > 0 else None
            try:
                load_image(self.paths[index], self.image_size, self.channels, box, self.margin,
                           self.equalize_histogram, out=batch[len(labels)])
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                logger.warning("skipping unreadable image %s: %s", self.paths[index], error)
                self.unreadable_files.append(self.paths[index])
                continue
            labels.append(self.labels[index])
        if not labels:
            raise PipelineError(f"every image of batch {batch_index} is unreadable, e.g. {self.paths[indices[0]]}")
        batch = batch[:len(labels)]
        if self._augmentation is not None:
            batch = self._augmentation(batch, self.batch_random(batch_index))
        return batch, np.asarray(labels, dtype="int32")


# --- The custom_generator.py stage -----------------------------------------------------------


def run(config, force: bool = False) -> int:
    """Build the training pipeline, save one augmented batch as a PNG and measure its speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    model_config = config.model_4
    generator_config = config.generator
    figure_path = Path(config.paths.reports) / "figures" / "augmented_batch.png"
    stamp = files.StageStamp(
        Path(config.paths.reports) / "figures" / ".augmented_batch.stamp.json",
        {"generator": dataclasses.asdict(generator_config), "image_size": model_config.image_size,
         "channels": model_config.channels, "batch_size": model_config.batch_size,
         "input_mode": model_config.input_mode, "seed": model_config.seed},
        [config.paths.split_manifest, Path(config.paths.processed) / CLASSES_FILE_NAME],
    )
    if stamp.is_current() and not force:
        print(f"{figure_path} is up to date (use --force to redo it)")
        return 0

    frame, classes = read_split(config)
    training_rows = split_rows(frame, "train", config.paths.split_manifest)
    if model_config.input_mode == "memory":
        # What input_mode = "memory" trains on: decoded-once arrays, augmented on the host.
        from emotion_classifier import in_memory, training

        arrays = in_memory.split_arrays(training_rows, "train", config.paths.images_root, config.paths.processed,
                                        model_config.image_size, model_config.channels, generator_config.face_margin,
                                        equalize_histogram=model_config.equalize_histogram)
        batches = in_memory.ArrayBatches(
            arrays[0], arrays[1], model_config.batch_size, training=True, seed=model_config.seed,
            augmentation=in_memory.FaceAugmentation.from_config(generator_config),
            num_classes=training.one_hot_classes(generator_config, len(classes)),
            mixup=training.mixup_alpha(generator_config),
        )
        iterator = (batches[index % len(batches)] for index in itertools.count())
    else:
        dataset = make_dataset(
            training_rows, config.paths.images_root, model_config.image_size, model_config.channels,
            model_config.batch_size, training=True, generator_config=generator_config,
            seed=model_config.seed, equalize_histogram=model_config.equalize_histogram,
        )
        iterator = (tuple(part.numpy() for part in batch) for batch in dataset.repeat())

    # Throughput: the first batch pays for start-up (thread pools, graph tracing), so the clock
    # starts after it.
    batches_to_time = 20
    images, labels = next(iterator)
    if labels.ndim == 2:
        # Mixup's class probabilities: each image is titled with its largest share.
        labels = labels.argmax(axis=1)
    started = time.perf_counter()
    timed_images = 0
    for _ in range(batches_to_time):
        batch_images, _labels = next(iterator)
        timed_images += int(batch_images.shape[0])
    seconds = time.perf_counter() - started
    images_per_second = timed_images / seconds if seconds > 0 else float("inf")

    shown = min(PREVIEW_IMAGES, len(images))
    columns = min(8, shown)
    rows = math.ceil(shown / columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position >= shown:
            continue
        picture = images[position].astype("uint8")
        if picture.shape[-1] == 1:
            axis.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(picture)
        axis.set_title(classes[int(labels[position])], fontsize=9)
    figure.suptitle(f"Augmented training batch ({model_config.image_size}x{model_config.image_size})")
    files.save_figure(figure_path, figure)

    summary = {
        "images_per_second": round(images_per_second, 1),
        "timed_batches": batches_to_time,
        "batch_size": model_config.batch_size,
        "image_size": model_config.image_size,
        "training_images": len(training_rows),
        "value_range": [float(images.min()), float(images.max())],
    }
    print(json.dumps(summary))
    print(f"input pipeline: {images_per_second:.0f} images/s; wrote {figure_path}")
    stamp.record([figure_path])
    return 0
