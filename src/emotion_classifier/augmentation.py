"""Augmentation of training faces: one meaning, two implementations side by side.

``BatchAugmentation`` runs inside tf.data (TensorFlow ops, a batch at a time) for
``input_mode = "tf_data"``; ``AugmentationLayer`` (``keras.ops``, any backend) is the model's first
layer for every other input mode and augments inside the compiled training step. Both draw from
the ``[generator]`` settings, in the same order and with the same conventions: a horizontal flip
with probability 1/2; one affine map combining rotation of up to ``rotation_degrees``, zoom by a
factor in ``1 +- zoom`` and translation of up to ``translation`` of the size, with
cv2.getRotationMatrix2D's conventions (bilinear, borders filled by reflection); a contrast factor
in ``1 +- contrast`` around each image's mean; and, with probability ``random_erasing``, a
rectangle of 2-33% of the area (aspect ratio 0.3-3.3) filled with noise (Zhong et al. 2020).
Values stay in [0, 255]. A zoom-in with a shift is a random crop resized back to the input size
(a scale of 1.2 crops 40 of 48 pixels), so the affine map covers the random-resized crops of
FER2013 recipes. Mixup (``mixup_alpha``) blends images and labels of a batch; it needs labels as
class probabilities, which only ``input_mode = "memory"``'s batches make.
"""

from __future__ import annotations

import math

import keras


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
    """``[generator]``'s augmentation of a batch inside tf.data, as ``AugmentationLayer`` does
    it in the model: a horizontal flip with probability 1/2; rotation of up to
    ``rotation_degrees``, zoom by a factor in ``1 +- zoom`` and translation of up to
    ``translation`` of the size, drawn per image and applied together as one affine resampling
    (bilinear, borders filled by reflection; the layer's reflection leaves out the edge pixel,
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
        anticlockwise on screen), as AugmentationLayer builds it."""
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


# --- In the model's training step ------------------------------------------------------------

# Random erasing's rectangle (Zhong et al. 2020), as RandomErasing draws it.
ERASED_AREA = (0.02, 0.33)
ERASED_ASPECT = (0.3, 3.3)
# Where a saved model keeps the layer's random state.
SEED_STATE_KEY = "seed_state"


def bilinear_affine(images, angle, scale, shift_x, shift_y):
    """Resample ``images`` (batch, height, width, channels; float) by per-image affine maps.

    The forward map of image ``i`` is ``out = scale * R(angle) (in - centre) + centre + shift``
    (angle in radians, anticlockwise on screen; pixel centres at integers; the centre is
    ``(size - 1) / 2``), the map cv2.warpAffine applies with cv2.getRotationMatrix2D's matrix
    plus the shift. Each output pixel reads its source position bilinearly; positions outside
    the image are reflected into it without repeating the edge pixel (BORDER_REFLECT_101).
    """
    ops = keras.ops
    height, width, channels = images.shape[1:]
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
    columns = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))

    def per_image(value):
        return ops.reshape(ops.cast(value, "float32"), (-1, 1, 1))

    # The inverse map: in = R(-angle) (out - centre - shift) / scale + centre.
    cosine, sine = per_image(ops.cos(angle) / scale), per_image(ops.sin(angle) / scale)
    offset_x = columns - centre_x - per_image(shift_x)
    offset_y = rows - centre_y - per_image(shift_y)
    source_x = cosine * offset_x - sine * offset_y + centre_x
    source_y = sine * offset_x + cosine * offset_y + centre_y
    left, top = ops.floor(source_x), ops.floor(source_y)
    weight_x, weight_y = source_x - left, source_y - top
    left, top = ops.cast(left, "int32"), ops.cast(top, "int32")
    # The batch size may be unknown until run time (TensorFlow's traced steps): -1 stands for it.
    flat = ops.reshape(images, (-1, height * width, channels))

    def gather(row, column):
        index = ops.reshape(_reflect(row, height) * width + _reflect(column, width), (-1, height * width, 1))
        return ops.reshape(ops.take_along_axis(flat, index, axis=1), (-1, height, width, channels))

    weight_x, weight_y = weight_x[..., None], weight_y[..., None]
    upper = gather(top, left) * (1 - weight_x) + gather(top, left + 1) * weight_x
    lower = gather(top + 1, left) * (1 - weight_x) + gather(top + 1, left + 1) * weight_x
    return upper * (1 - weight_y) + lower * weight_y


def _reflect(index, size: int):
    """Indices reflected into ``[0, size)`` without repeating the edge (BORDER_REFLECT_101)."""
    if size == 1:
        return keras.ops.zeros_like(index)
    period = 2 * (size - 1)
    index = keras.ops.mod(keras.ops.abs(index), period)
    return keras.ops.where(index > size - 1, period - index, index)


@keras.saving.register_keras_serializable(package="emotion_classifier")
class AugmentationLayer(keras.layers.Layer):
    """``[generator]``'s augmentation as a model layer, active only in training (see the module).

    Written once with ``keras.ops`` and ``keras.random`` (gathers for the bilinear sampling, no
    Keras affine layers, whose ``map_coordinates`` stalled a JAX GPU epoch for minutes), it runs
    on every backend in the compiled training step: every shape is static, so the step is traced
    once, not per batch. At inference (``training=False``) it passes its input through unchanged,
    so evaluation and prediction see the plain classifier.

    ``seed`` seeds the layer's random numbers (a ``keras.random.SeedGenerator``, whose state is
    part of the layer and advances with every training step). The saved model carries that
    state, so a run resumed from its checkpoint goes on with the draws it would have made.
    ``traces`` counts how often the training branch was traced or run eagerly: once per compiled
    training function.
    """

    def __init__(self, flip: bool = True, rotation_degrees: float = 0.0, zoom: float = 0.0,
                 translation: float = 0.0, contrast: float = 0.0, random_erasing: float = 0.0,
                 seed: int = 0, **kwargs):
        # Sampling positions and pixel values need float32, also under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.flip = bool(flip)
        self.rotation_degrees = float(rotation_degrees)
        self.zoom = float(zoom)
        self.translation = float(translation)
        self.contrast = float(contrast)
        self.random_erasing = float(random_erasing)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.traces = 0

    @classmethod
    def from_config_section(cls, generator_config, seed: int = 0) -> AugmentationLayer | None:
        """The augmentation of ``[generator]``, or None when ``augment`` is off."""
        if not generator_config.augment:
            return None
        return cls(flip=generator_config.flip, rotation_degrees=generator_config.rotation_degrees,
                   zoom=generator_config.zoom, translation=generator_config.translation,
                   contrast=generator_config.contrast, random_erasing=generator_config.random_erasing, seed=seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        self.traces += 1
        images = keras.ops.cast(inputs, "float32")
        batch, height, width = images.shape[0], images.shape[1], images.shape[2]
        if batch is None:
            batch = keras.ops.shape(images)[0]
        if self.flip:
            flipped = self._uniform((batch, 1, 1, 1)) < 0.5
            images = keras.ops.where(flipped, keras.ops.flip(images, axis=2), images)
        if self.rotation_degrees or self.zoom or self.translation:
            angle = self._uniform((batch,), -self.rotation_degrees, self.rotation_degrees) * (math.pi / 180.0)
            scale = 1.0 + self._uniform((batch,), -self.zoom, self.zoom)
            shift_x = self._uniform((batch,), -self.translation, self.translation) * width
            shift_y = self._uniform((batch,), -self.translation, self.translation) * height
            images = bilinear_affine(images, angle, scale, shift_x, shift_y)
        if self.contrast:
            factor = 1.0 + self._uniform((batch, 1, 1, 1), -self.contrast, self.contrast)
            mean = keras.ops.mean(images, axis=(1, 2), keepdims=True)
            images = (images - mean) * factor + mean
        if self.random_erasing:
            images = self._erase(images, batch, height, width)
        return keras.ops.cast(keras.ops.clip(images, 0.0, 255.0), inputs.dtype)

    def _uniform(self, shape, low: float = 0.0, high: float = 1.0):
        return keras.random.uniform(shape, minval=low, maxval=high, seed=self.seed_generator)

    def _erase(self, images, batch, height: int, width: int):
        """With probability ``random_erasing`` per image, a random rectangle filled with noise."""
        ops = keras.ops
        area = self._uniform((batch,), *ERASED_AREA) * (height * width)
        aspect = ops.exp(self._uniform((batch,), math.log(ERASED_ASPECT[0]), math.log(ERASED_ASPECT[1])))
        box_height = ops.minimum(ops.round(ops.sqrt(area * aspect)), height)
        box_width = ops.minimum(ops.round(ops.sqrt(area / aspect)), width)
        top = ops.floor(self._uniform((batch,)) * (height - box_height + 1))
        left = ops.floor(self._uniform((batch,)) * (width - box_width + 1))
        erased = self._uniform((batch,)) < self.random_erasing
        rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
        columns = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))

        def per_image(value):
            return ops.reshape(value, (-1, 1, 1))

        inside = ((rows >= per_image(top)) & (rows < per_image(top + box_height))
                  & (columns >= per_image(left)) & (columns < per_image(left + box_width)) & per_image(erased))
        noise = self._uniform(ops.shape(images), 0.0, 255.0)
        return ops.where(inside[..., None], noise, images)

    def save_own_variables(self, store):
        store[SEED_STATE_KEY] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        if SEED_STATE_KEY in store:
            self.seed_generator.state.assign(keras.ops.cast(store[SEED_STATE_KEY], self.seed_generator.state.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "rotation_degrees": self.rotation_degrees,
                "zoom": self.zoom, "translation": self.translation, "contrast": self.contrast,
                "random_erasing": self.random_erasing, "seed": self.seed}
