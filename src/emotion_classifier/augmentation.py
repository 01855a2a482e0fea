"""Augmentation of training faces: one meaning, two implementations side by side.

``BatchAugmentation`` runs inside tf.data (TensorFlow ops, a batch at a time); ``FaceAugmentation``
runs on the host (OpenCV, an image at a time) for ``input_mode = "memory"`` and ``"arrays"``,
on any Keras backend. Both draw from the ``[generator]`` settings, in the same order and with
the same conventions: a horizontal flip with probability 1/2; one affine map combining rotation
of up to ``rotation_degrees``, zoom by a factor in ``1 +- zoom`` and translation of up to
``translation`` of the size (bilinear, borders filled by reflection); a contrast factor in
``1 +- contrast`` around each image's mean; and, with probability ``random_erasing``, a
rectangle of 2-33% of the area erased (Zhong et al. 2020). Values stay in [0, 255].
Mixup (``mixup_alpha``) blends images and labels of a batch; it needs labels as class
probabilities, which only the host batches make. A third implementation of the same meaning,
``device_augmentation.DeviceAugmentation`` (keras.ops, a model layer), augments inside the
compiled training step for ``input_mode = "device"``.
"""

from __future__ import annotations

import math

import keras
import numpy as np


def mixup_alpha(generator_config) -> float:
    """The mixup setting in force: mixup is an augmentation, so ``augment = false`` turns it off."""
    return float(generator_config.mixup) if generator_config.augment else 0.0


def one_hot_classes(generator_config, num_classes: int) -> int | None:
    """``num_classes`` when mixup is on (labels become one-hot rows), else None."""
    return num_classes if mixup_alpha(generator_config) > 0 else None


def build_augmentation(generator_config, seed: int = 0) -> BatchAugmentation | None:
    """The augmentation of training batches in tf.data, or None when augmentation is off."""
    if not generator_config.augment:
        return None
    augmentation = BatchAugmentation(generator_config, seed)
    return augmentation if augmentation.changes_anything else None


class BatchAugmentation:
    """``[generator]``'s augmentation of a batch inside tf.data, as ``FaceAugmentation``
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

class FaceAugmentation:
    """Random geometric and photometric changes of face crops, on the host, per image.

    The same settings as the tf.data path's ``BatchAugmentation`` (``[generator]``), drawn
    and applied the same way: horizontal flip,
    rotation of up to ``rotation_degrees``, zoom of up to ``zoom`` (a fraction, in or out),
    translation of up to ``translation`` of the size, contrast factor in ``1 +- contrast``, and
    with probability ``random_erasing`` a rectangle of 2-33% of the area filled with noise
    (Zhong et al. 2020). Borders are filled by reflection.
    """

    def __init__(self, generator_config):
        self.flip = bool(generator_config.flip)
        self.rotation_degrees = float(generator_config.rotation_degrees)
        self.zoom = float(generator_config.zoom)
        self.translation = float(generator_config.translation)
        self.contrast = float(generator_config.contrast)
        self.random_erasing = float(generator_config.random_erasing)

    @classmethod
    def from_config(cls, generator_config) -> FaceAugmentation | None:
        """The augmentation of ``[generator]``, or None when ``augment`` is off."""
        return cls(generator_config) if generator_config.augment else None

    def __call__(self, images: np.ndarray, random: np.random.Generator) -> np.ndarray:
        """Augmented float32 copies of a batch ``(batch, height, width, channels)`` of pixels in
        [0, 255] (uint8 from memory, float32 from ImageBatches)."""
        import cv2

        batch, height, width, channels = images.shape
        output = np.empty(images.shape, dtype="float32")
        for index in range(batch):
            image = images[index].astype("float32")
            if self.flip and random.random() < 0.5:
                image = image[:, ::-1]
            if self.rotation_degrees or self.zoom or self.translation:
                angle = random.uniform(-self.rotation_degrees, self.rotation_degrees)
                scale = 1.0 + random.uniform(-self.zoom, self.zoom)
                matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, scale)
                matrix[0, 2] += random.uniform(-self.translation, self.translation) * width
                matrix[1, 2] += random.uniform(-self.translation, self.translation) * height
                image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                image = image.reshape(height, width, channels)
            if self.contrast:
                factor = 1.0 + random.uniform(-self.contrast, self.contrast)
                mean = image.mean(axis=(0, 1), keepdims=True)
                image = (image - mean) * factor + mean
            if self.random_erasing and random.random() < self.random_erasing:
                area = random.uniform(0.02, 0.33) * height * width
                aspect = np.exp(random.uniform(np.log(0.3), np.log(3.3)))
                box_height = int(min(height, round(np.sqrt(area * aspect))))
                box_width = int(min(width, round(np.sqrt(area / aspect))))
                top = random.integers(0, height - box_height + 1)
                left = random.integers(0, width - box_width + 1)
                image = np.array(image)
                image[top:top + box_height, left:left + box_width] = random.uniform(
                    0, 255, size=(box_height, box_width, channels))
            output[index] = np.clip(image, 0.0, 255.0)
        return output
