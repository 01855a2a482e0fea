"""Histogram equalisation of grey face crops, the same on every path that feeds a model.

FER2013 as distributed here is histogram-equalised: re-equalising its 48x48 faces changes
them by 1.25 grey levels (median; their JPEG compression undoes a little of it), while faces
from other sources have whatever contrast their camera and light gave them. A model trained
with ``equalize_histogram = true`` sees every face, in training and afterwards, equalised on
the model's own grid (after cropping and resizing), so the contrast of a new source no longer
matters. The setting travels with the model in ``model_info.json``.

Two implementations that give identical pixels: ``equalize_histogram`` (OpenCV, for the
Pillow/numpy paths: memory and arrays input modes, evaluation, prediction, export) and
``equalize_histogram_tf`` (for the tf.data pipeline). Both compute OpenCV's ``equalizeHist``:
the darkest grey level present maps to 0, and level ``v`` to
``round(255 * (count(pixels <= v) - count(darkest)) / (pixels - count(darkest)))``; an image of
one grey level is left as it is.
"""

from __future__ import annotations

import cv2
import numpy as np


def equalize_histogram(images: np.ndarray) -> np.ndarray:
    """Float32 images in [0, 255] of one channel, ``(height, width, 1)`` or a batch of them,
    each rounded to 8 bits and histogram-equalised."""
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[-1] != 1:
        raise ValueError(f"histogram equalisation needs one-channel images (..., height, width, 1), "
                         f"got shape {images.shape}")
    levels = np.clip(np.rint(images), 0, 255).astype(np.uint8).reshape(-1, *images.shape[-3:-1])
    equalised = np.stack([cv2.equalizeHist(image) for image in levels])
    return equalised.reshape(images.shape).astype(np.float32)


def equalize_histogram_tf(images):
    """The same for a float32 tensor batch ``(batch, height, width, 1)`` (TensorFlow ops)."""
    import tensorflow as tf

    shape = tf.shape(images)
    levels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
    flat = tf.reshape(levels, [shape[0], -1])
    histogram = tf.math.bincount(flat, minlength=256, maxlength=256, axis=-1)
    cumulative = tf.cumsum(histogram, axis=-1)
    pixels = tf.cast(tf.shape(flat)[1], tf.int32)
    # The cumulative count at the darkest level present is that level's own count.
    darkest = tf.reduce_min(tf.where(histogram > 0, cumulative, pixels), axis=-1, keepdims=True)
    spread = pixels - darkest
    # OpenCV multiplies by a float32 scale and rounds half to even, as tf.round does.
    scale = 255.0 / tf.cast(tf.maximum(spread, 1), tf.float32)
    table = tf.clip_by_value(tf.round(tf.cast(cumulative - darkest, tf.float32) * scale), 0.0, 255.0)
    equalised = tf.gather(table, flat, batch_dims=1)
    # An image of one grey level (nothing to spread) stays as it is, as in OpenCV.
    equalised = tf.where(spread > 0, equalised, tf.cast(flat, tf.float32))
    return tf.reshape(equalised, shape)
