"""The tf.data input pipeline: parallel reading, decoding, cropping, batching and augmentation.

``make_dataset`` turns the rows of a split manifest into batches of float32 images with values
in [0, 255] (the model does its own scaling), cropped to the face box when the row has one,
resized to a square, with the class index as label: the same pixels as ``images.load_image``
gives on the host for the same rows (tests/test_tf_dataset.py holds them to it).

Unreadable files: tf.data cannot catch an exception per element, so ``make_dataset`` drops any
element whose read or decode fails (``Dataset.ignore_errors(log_warning=True)``): TensorFlow logs
a warning with the decoder's message for each dropped image and the run goes on (where a whole
training batch is read in one call, the failed batch's other files are read again at the end
of the pass, so only the bad file is lost). ``DecodeCounter`` counts and names them. The labels
stage opens every image beforehand (``labels.check_images``), so this is a safety net.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotion_classifier import equalization, split_files
from emotion_classifier.augmentation import build_augmentation
from emotion_classifier.images import common_crop_shape, handed_over_unresized, sampled_crop_shapes

# Files whose batch is shuffled by name before decoding (the per-file path); a full permutation
# of the rows comes first, so this only mixes neighbouring rows further.
SHUFFLE_BUFFER = 10_000


class DecodeCounter:
    """Which images a tf.data pipeline tried to decode and never decoded.

    The pipeline skips a file that fails to decode (``ignore_errors``) instead of stopping a
    run of days. TensorFlow logs each skipped file's error but not its name: per-row flags of
    each dataset counted (``track``) give the names. A file that fails once fails in every pass,
    so the files skipped so far are also the files each pass leaves out; counting files, not
    failed attempts, keeps the figure right when tf.data reads ahead into the next pass.
    """

    def __init__(self):
        # Per dataset: its paths (in the dataset's row order) and two flags per row.
        self._tracked: list[tuple[np.ndarray, object, object]] = []

    def track(self, paths: np.ndarray):
        """Flags ``(attempted, decoded)``, one per row of ``paths``, for a dataset to set."""
        import tensorflow as tf

        flags = tuple(tf.Variable(tf.zeros([len(paths)], tf.bool), trainable=False, name=name)
                      for name in ("rows_attempted", "rows_decoded"))
        self._tracked.append((np.asarray(paths), *flags))
        return flags

    def skipped_files(self) -> list[str]:
        """The files tried and never decoded so far, each named once (exact whenever no decode
        is in flight)."""
        names: dict[str, None] = {}  # ordered; a file in two datasets (splits) is named once
        for paths, attempted, decoded in self._tracked:
            failed = attempted.numpy() & ~decoded.numpy()
            names.update(dict.fromkeys(str(path) for path in paths[failed]))
        return list(names)

    def skipped(self) -> int:
        return len(self.skipped_files())


def make_dataset(frame: pd.DataFrame, images_root: str | Path, image_size: int, channels: int,
                 batch_size: int, training: bool, generator_config, seed: int = 0,
                 drop_remainder: bool = False, decode_counter: DecodeCounter | None = None,
                 equalize_histogram: bool = False, resize_in_model: bool = False,
                 read_whole_batches: bool = True):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches for the rows of ``frame``.

    Images are float32 ``(batch, image_size, image_size, channels)`` with values in [0, 255];
    labels are the int32 ``class_index`` column. Training datasets are shuffled every epoch
    and augmented; evaluation datasets keep the frame's order and are never augmented. The
    dataset is finite (one pass over the rows); training repeats it as it needs.
    ``drop_remainder`` leaves out the last, partial batch of each pass (training on several
    replicas needs full batches: a replica handed no image fails in BatchNormalization).
    A file that fails to decode is skipped; ``decode_counter`` counts such files.

    When a sample of rows shows face crops of one size (``images.common_crop_shape``), images
    stay uint8 at that size until they are batched, and each batch is converted and resized at
    once: per-image float work and copies of resized images dominate the cost otherwise. An
    image of another size in such a dataset is first resized to the common size so that batches
    stay rectangular. Training on such crops (without ``cache``) reads a whole batch of files
    per tf.data element when ``read_whole_batches`` (the default; ``_training_batches_read_whole``),
    with a fresh full permutation of the rows every pass.

    When the sampled crops are at least twice ``image_size`` on each side, each JPEG is decoded
    at the reduced scale ``images.jpeg_scale_denominator`` picks for its own crop, then resized:
    about twice as fast on 512-pixel photos, with load_image's crop window.

    ``equalize_histogram`` (one channel only) equalises each image after resizing, before
    augmentation, with the same pixels as load_image's (equalization.py). ``resize_in_model`` is
    for models that resize their own inputs (models.model_inputs): when the crops have one size
    no larger than ``image_size``, batches keep that size and the model enlarges them.
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
    faces = _FaceReader(frame, images_root, image_size, channels, float(generator_config.face_margin),
                        equalize_histogram, resize_in_model)
    paths, boxes, labels = faces.paths, faces.boxes, faces.labels
    if training:
        # Manifests are often sorted by class: a seeded full permutation first, so that the
        # bounded shuffle buffer below mixes classes from the first batch on.
        order = np.random.default_rng(seed).permutation(len(frame))
        paths, boxes, labels = paths[order], boxes[order], labels[order]
    if decode_counter is not None:
        faces.row_flags = decode_counter.track(paths)
    if training and faces.common_shape is not None and not generator_config.cache and read_whole_batches:
        dataset = _training_batches_read_whole(paths, boxes, labels, faces, batch_size, drop_remainder, seed)
    else:
        dataset = _per_file_batches(paths, boxes, labels, faces, batch_size, training, generator_config.cache,
                                    drop_remainder, seed)
    if faces.common_shape is not None:
        dataset = dataset.map(faces.resize_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    augmentation = build_augmentation(generator_config, seed) if training else None
    if augmentation is not None:
        dataset = dataset.map(
            lambda images, batch_labels: (tf.clip_by_value(augmentation(images, training=True), 0.0, 255.0),
                                          batch_labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _per_file_batches(paths: np.ndarray, boxes: np.ndarray, labels: np.ndarray, faces: _FaceReader,
                      batch_size: int, training: bool, cache: bool, drop_remainder: bool, seed: int):
    """Batches made from one file per tf.data element (evaluation, mixed sizes, cached data)."""
    import tensorflow as tf

    # Each element carries its row (of the arrays as ordered), which names a skipped file.
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype="int64"), paths, boxes, labels))
    shuffle_buffer = max(1, min(SHUFFLE_BUFFER, len(paths)))
    if training and not cache:
        # Shuffling file names before decoding keeps the buffer cheap (strings, not pixels).
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    read = faces.read_one_image if faces.common_shape is None else faces.read_common_shape
    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    dataset = dataset.ignore_errors(log_warning=True)
    if cache:
        dataset = dataset.cache()
        if training:
            # A cached dataset replays its first pass, so the shuffle must come after the cache.
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, drop_remainder=drop_remainder)


class _FaceReader:
    """The TensorFlow functions that read, decode, crop and resize the faces of one dataset.

    Built from the rows once: whether crops share one size (``common_shape``), whether JPEGs are
    decoded at a reduced scale (``scaled_decoding``), and the size batches leave at.
    """

    def __init__(self, frame: pd.DataFrame, images_root, image_size: int, channels: int, margin: float,
                 equalize_histogram: bool, resize_in_model: bool):
        self.paths = np.array(split_files.image_paths(frame, images_root))
        self.boxes = split_files.face_boxes(frame)
        self.labels = frame["class_index"].to_numpy(dtype="int32")
        self.image_size, self.channels, self.margin = image_size, channels, margin
        self.equalize_histogram = equalize_histogram
        self.row_flags = None
        sampled_shapes = sampled_crop_shapes(self.paths, self.boxes, margin)
        # Crops of at least twice the training size (AffectNet's photos at 112 or 224 pixels)
        # decode at 1/2, 1/4 or 1/8 scale, chosen per image as load_image chooses it; datasets
        # whose sampled crops are all smaller (FER-sized faces) never pay for the choice.
        self.scaled_decoding = any(min(shape) >= 2 * image_size for shape in sampled_shapes)
        self.common_shape = None if self.scaled_decoding else common_crop_shape(self.paths, self.boxes, margin,
                                                                                  sampled_shapes)
        # The size batches leave the pipeline at: the crops' own when the model enlarges them.
        self.output_shape = (image_size, image_size)
        if handed_over_unresized(self.common_shape, image_size, resize_in_model, equalize_histogram):
            self.output_shape = tuple(self.common_shape)
        self.boxed_rows = int((self.boxes[:, 2] > 0).sum())
        self.jpeg_names_only = all(Path(path).suffix.lower() in (".jpg", ".jpeg") for path in self.paths)

    def crop_window(self, box, height, width):
        """``(top, left, height, width)`` of the face crop: the bounds of images.crop_bounds()."""
        import tensorflow as tf

        grow_x, grow_y = self.margin * box[2], self.margin * box[3]
        left = tf.minimum(tf.maximum(0, tf.cast(tf.floor(box[0] - grow_x), tf.int32)), width - 1)
        top = tf.minimum(tf.maximum(0, tf.cast(tf.floor(box[1] - grow_y), tf.int32)), height - 1)
        right = tf.maximum(tf.minimum(width, tf.cast(tf.math.ceil(box[0] + box[2] + grow_x), tf.int32)), left + 1)
        bottom = tf.maximum(tf.minimum(height, tf.cast(tf.math.ceil(box[1] + box[3] + grow_y), tf.int32)), top + 1)
        return top, left, bottom - top, right - left

    def decode_jpeg_scaled(self, encoded, window=None):
        """A JPEG (or the ``(top, left, height, width)`` window of it) decoded at the smallest of
        1/1, 1/2, 1/4 and 1/8 scale that keeps ``image_size`` pixels (jpeg_scale_denominator)."""
        import tensorflow as tf

        shape = tf.io.extract_jpeg_shape(encoded)
        top, left, height, width = (0, 0, shape[0], shape[1]) if window is None else window
        smaller_side = tf.minimum(height, width)
        branch_index = tf.add_n([tf.cast(smaller_side >= self.image_size * factor, tf.int32) for factor in (2, 4, 8)])

        def decode_at(denominator):
            def decode():
                # libjpeg's scaled image is ceil(side / denominator) pixels; the window grows to
                # whole scaled pixels (images._face_crop takes the same window).
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

    def decode_whole(self, encoded):
        import tensorflow as tf

        def decode_jpeg():
            if self.scaled_decoding:
                return self.decode_jpeg_scaled(encoded)
            # decode_image's JPEG decoder uses libjpeg's fast, inexact inverse DCT (about 2 grey
            # levels off on average); the accurate one decodes exactly as Pillow does.
            return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

        if self.jpeg_names_only and not self.scaled_decoding:
            # No per-file choice of decoder (a tf.cond per image costs more than the decoding of
            # a small JPEG); decode_jpeg also decodes PNG and GIF content under a .jpg name.
            return decode_jpeg()
        image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg,
                        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8))
        image.set_shape([None, None, 3])
        return image

    def decode_face(self, encoded, box):
        """The face crop; for a JPEG only the crop's window is decoded (within 2 grey levels
        of cropping the whole decoded image, where chroma is upsampled at the window's edge)."""
        import tensorflow as tf

        def decode_jpeg_window():
            shape = tf.io.extract_jpeg_shape(encoded)
            if self.scaled_decoding:
                return self.decode_jpeg_scaled(encoded, self.crop_window(box, shape[0], shape[1]))
            window = tf.stack(self.crop_window(box, shape[0], shape[1]))
            return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method="INTEGER_ACCURATE")

        def decode_then_crop():
            image = self.decode_whole(encoded)
            top, left, height, width = self.crop_window(box, tf.shape(image)[0], tf.shape(image)[1])
            return image[top:top + height, left:left + width, :]

        image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg_window, decode_then_crop)
        image.set_shape([None, None, 3])
        return image

    def read_and_crop(self, row, path, box, counted=True):
        """The decoded uint8 RGB image, cropped to its face box when it has one.

        ``counted`` False leaves the decode counter alone (a whole batch is counted at once)."""
        import tensorflow as tf

        counted = counted and self.row_flags is not None
        if not counted:
            encoded = tf.io.read_file(path)
        else:
            # Flagged before the file is read, so a file whose decoding fails is flagged too.
            with tf.control_dependencies([self.row_flags[0].scatter_nd_update([[row]], [True])]):
                encoded = tf.io.read_file(path)
        if self.boxed_rows == len(self.paths):
            image = self.decode_face(encoded, box)
        elif self.boxed_rows:
            image = tf.cond(box[2] > 0, lambda: self.decode_face(encoded, box), lambda: self.decode_whole(encoded))
        else:
            image = self.decode_whole(encoded)
        if counted:
            # Depends on the decoded image's runtime height (the final shape is static and would
            # be constant-folded), so it runs only when decoding has succeeded.
            succeeded = tf.shape(image)[0] > 0
            self.row_flags[1].scatter_nd_update([[row]], [succeeded])
        return image

    @staticmethod
    def resized(images, height, width, shrinking):
        """Float images (one or a batch) resized as images.load_image resizes them: averaging areas
        when ``shrinking`` (antialiased), bilinear interpolation when enlarging; within [0, 255]."""
        import tensorflow as tf

        if not shrinking:
            return tf.image.resize(images, [height, width], method="bilinear")
        # Area sums can overshoot 255 by a rounding error.
        return tf.clip_by_value(tf.image.resize(images, [height, width], method="area"), 0.0, 255.0)

    def resized_one(self, image, height, width):
        """One image resized: shrunk (on either side) by area averaging, else enlarged bilinearly."""
        import tensorflow as tf

        shape = tf.shape(image)
        return tf.cond(tf.logical_or(shape[0] > height, shape[1] > width),
                       lambda: self.resized(image, height, width, shrinking=True),
                       lambda: self.resized(image, height, width, shrinking=False))

    def to_float_gray(self, images):
        import tensorflow as tf

        images = tf.cast(images, tf.float32)
        # Resizing and luma are both linear, so reducing to luma first gives the same values
        # for a third of the resizing work.
        return tf.image.rgb_to_grayscale(images) if self.channels == 1 else images

    def read_one_image(self, row, path, box, label):
        """Crops of different sizes: each image is resized on its own."""
        import tensorflow as tf

        image = self.to_float_gray(self.read_and_crop(row, path, box))
        image = self.resized_one(image, self.image_size, self.image_size)
        if self.equalize_histogram:
            image = equalization.equalize_histogram_tf(image[tf.newaxis])[0]
        return image, label

    def common_crop(self, row, path, box, counted=True):
        """Crops of one size: the crop stays uint8 at its size; whole batches are resized later."""
        import tensorflow as tf

        image = self.read_and_crop(row, path, box, counted)
        shape = tf.shape(image)
        image = tf.cond(
            tf.logical_and(shape[0] == self.common_shape[0], shape[1] == self.common_shape[1]),
            lambda: image,
            lambda: tf.cast(tf.round(self.resized_one(tf.cast(image, tf.float32), *self.common_shape)), tf.uint8),
        )
        image.set_shape([*self.common_shape, 3])
        return image

    def read_common_shape(self, row, path, box, label):
        return self.common_crop(row, path, box), label

    def resize_batch(self, images, batch_labels):
        images = self.to_float_gray(images)
        if self.common_shape != self.output_shape:
            shrinking = self.common_shape[0] > self.image_size or self.common_shape[1] > self.image_size
            images = self.resized(images, self.image_size, self.image_size, shrinking=shrinking)
        if self.equalize_histogram:
            images = equalization.equalize_histogram_tf(images)
        return images, batch_labels


def _training_batches_read_whole(paths: np.ndarray, boxes: np.ndarray, labels: np.ndarray, faces: _FaceReader,
                                 batch_size: int, drop_remainder: bool, seed: int):
    """One pass of training batches of uint8 crops of ``faces.common_shape``, each batch read in one call.

    For small files (FER2013's 48-pixel faces) tf.data's cost per element (a shuffle buffer, a
    map call, ``ignore_errors``), not decoding, sets the pace: measured on 2 cores, a pipeline
    with one element per file delivered 0.6 to 0.7 of what decoding alone does, before any
    resizing. Here an element is a whole batch: each pass draws a fresh permutation of the rows
    (a full shuffle), cuts it into batches, and one ``tf.map_fn`` call reads and decodes each
    batch's files. Batches are left uint8 at ``common_shape``; conversion and resizing follow.

    One corrupt file fails its whole batch, which ``ignore_errors`` drops; the batch's rows
    are then still pending, and at the end of the pass they are read again one file at a time
    (with ``ignore_errors`` per file), so the pass loses only the corrupt file.
    """
    import tensorflow as tf

    whole = _WholeBatches(paths, boxes, labels, faces, batch_size, drop_remainder, seed)
    # A new seed for every pass (rerandomize_each_iteration), reproducible from ``seed``.
    dataset = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(whole.batches_of_pass)
    dataset = dataset.map(whole.read_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.ignore_errors(log_warning=True)
    # Lazily built when the batches are exhausted, so it sees the pass's failed batches.
    return dataset.concatenate(tf.data.Dataset.from_tensors(np.int64(0)).flat_map(whole.retry_pending))


class _WholeBatches:
    """The TensorFlow functions of ``_training_batches_read_whole``: the rows of each batch of a
    pass, reading a batch, and reading again the rows of the pass's failed batches."""

    def __init__(self, paths, boxes, labels, faces: _FaceReader, batch_size: int, drop_remainder: bool, seed: int):
        import tensorflow as tf

        self.faces, self.batch_size, self.drop_remainder, self.seed = faces, batch_size, drop_remainder, seed
        self.row_count = len(paths)
        self.paths, self.boxes, self.labels = tf.constant(paths), tf.constant(boxes), tf.constant(labels)
        # Rows whose batch started and has not yet been delivered, in this pass.
        self.pending = tf.Variable(tf.zeros([self.row_count], tf.bool), trainable=False, name="rows_pending")

    def batches_of_pass(self, pass_seed):
        import tensorflow as tf

        order = tf.random.experimental.stateless_shuffle(
            tf.range(self.row_count, dtype=tf.int64), seed=tf.stack([pass_seed, tf.constant(self.seed, tf.int64)]))
        with tf.control_dependencies([self.pending.assign(tf.zeros([self.row_count], tf.bool))]):
            order = tf.identity(order)
        full_batches, tail = divmod(self.row_count, self.batch_size)
        batches = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[:full_batches * self.batch_size], [full_batches, self.batch_size]))
        if tail and not self.drop_remainder:
            batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full_batches * self.batch_size:]))
        return batches

    def set_flags(self, rows, value: bool):
        """Updates that mark ``rows`` pending (True: attempted) or delivered (False: decoded)."""
        import tensorflow as tf

        count = tf.shape(rows, out_type=tf.int64)[0]
        indices = rows[:, tf.newaxis]
        updates = [self.pending.scatter_nd_update(indices, tf.fill([count], value))]
        if self.faces.row_flags is not None:
            flags = self.faces.row_flags[0] if value else self.faces.row_flags[1]
            updates.append(flags.scatter_nd_update(indices, tf.ones([count], tf.bool)))
        return updates

    def read_batch(self, rows):
        import tensorflow as tf

        with tf.control_dependencies(self.set_flags(rows, True)):
            images = tf.map_fn(
                lambda row: self.faces.common_crop(row, self.paths[row], self.boxes[row], counted=False), rows,
                fn_output_signature=tf.TensorSpec([*self.faces.common_shape, 3], tf.uint8))
        # Marked delivered only once the whole batch has decoded.
        with tf.control_dependencies([images]):
            delivered = self.set_flags(rows, False)
        with tf.control_dependencies(delivered):
            return tf.identity(images), tf.gather(self.labels, rows)

    def read_one(self, row):
        import tensorflow as tf

        image = self.faces.common_crop(row, self.paths[row], self.boxes[row], counted=False)
        with tf.control_dependencies([image]):
            delivered = self.set_flags(row[tf.newaxis], False)
        with tf.control_dependencies(delivered):
            return tf.identity(image), self.labels[row]

    def retry_pending(self, _):
        """The rows of batches that failed in this pass, one file per element (the flags are
        cleared when the next pass starts)."""
        import tensorflow as tf

        rows = tf.where(self.pending.read_value())[:, 0]
        singles = tf.data.Dataset.from_tensor_slices(rows).map(self.read_one, num_parallel_calls=tf.data.AUTOTUNE,
                                                               deterministic=False)
        return singles.ignore_errors(log_warning=True).batch(self.batch_size, drop_remainder=self.drop_remainder)
