"""The two classifiers: the original custom CNN (model_4) and ResNet50 transfer learning (model_6).

Both take float32 images with values in [0, 255] and do their own scaling inside the model, so
training, evaluation and the demo feed the same thing and a saved model carries its
preprocessing with it. Only ``keras.layers`` and ``keras.ops`` are used, so the models build,
train and load on every Keras backend. The custom layers are registered for serialisation,
so saved models load with ``safe_mode=True`` (no Lambda layers, no pickled code).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Sequence

import keras

from emotion_classifier.augmentation import AugmentationLayer
from emotion_classifier.errors import PipelineError

logger = logging.getLogger(__name__)

# The file keras.applications.ResNet50(include_top=False, weights="imagenet") downloads into
# Keras' cache, and the host it comes from.
RESNET50_NOTOP_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_DOWNLOAD_HOST = "storage.googleapis.com"
REACHABILITY_TIMEOUT_SECONDS = 3.0

# ImageNet channel means in BGR order, the "caffe" preprocessing ResNet50's weights expect.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)

# The first layer of a model built with ``resize_in_model``: images of any size in, the
# model's input size out.
RESIZE_LAYER_NAME = "resize_to_input_size"


@keras.saving.register_keras_serializable(package="emotion_classifier")
class CaffePreprocessing(keras.layers.Layer):
    """``keras.applications.resnet.preprocess_input`` as a layer: RGB to BGR, minus ImageNet means.

    Inputs are RGB with values in [0, 255], as ResNet50's ImageNet weights were trained on.
    """

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        means = keras.ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=bgr.dtype)
        return bgr - means

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="emotion_classifier")
class ResizeImages(keras.layers.Layer):
    """Bilinear resizing of a batch of images to ``(height, width)`` (no antialiasing).

    Not ``keras.layers.Resizing``: measured with Keras 3.15 on TensorFlow 2.21, a model whose
    Resizing layer precedes BatchNormalization exports (``model.export``) with that
    BatchNormalization normalising by the batch's statistics instead of its moving averages.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)

    def call(self, inputs):
        return keras.ops.image.resize(inputs, (self.height, self.width), interpolation="bilinear",
                                      antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def model_inputs(input_shape: Sequence[int], resize_in_model: bool = False,
                 training_augmentation: AugmentationLayer | None = None):
    """The ``keras.Input`` of a model and the tensor its layers start from.

    With ``resize_in_model`` the input takes images of any height and width, and a bilinear
    ResizeImages layer brings them to ``input_shape``: the input pipeline can then hand over small
    faces (FER2013's 48 pixels) at their own size and leave the enlargement to the accelerator,
    moving 5 to 20 times fewer bytes per image. Images already at the input size pass through
    it unchanged (bilinear sampling at scale 1 reads each pixel's own value), so evaluation and
    prediction, which resize on the host, give the same results either way. Enlarging without
    antialiasing computes what the pipeline's own resizing does; inputs larger than the model's
    should be resized on the host (the pipeline never hands them over unresized).

    ``training_augmentation`` (every input mode but tf_data) augments the images right after the
    input, in training only; at inference it passes them through.
    """
    height, width, channels = (int(size) for size in input_shape)
    if not resize_in_model:
        inputs = keras.Input(shape=(height, width, channels), name="image")
        augmented = inputs if training_augmentation is None else training_augmentation(inputs)
        return inputs, augmented
    inputs = keras.Input(shape=(None, None, channels), name="image")
    augmented = inputs if training_augmentation is None else training_augmentation(inputs)
    # float32 under mixed precision too: the enlarged pixels are those the host would compute,
    # and the next layer casts them as it casts host-resized inputs.
    resized = ResizeImages(height, width, dtype="float32", name=RESIZE_LAYER_NAME)(augmented)
    return inputs, resized


def model_input_size(model: keras.Model) -> tuple[int, int] | None:
    """``(height, width)`` the model computes on: its input's, or its ResizeImages layer's when
    the input takes any size; None when neither is known."""
    height, width = model.input_shape[1:3]
    if height is not None and width is not None:
        return int(height), int(width)
    try:
        layer = model.get_layer(RESIZE_LAYER_NAME)
    except ValueError:
        return None
    return int(layer.height), int(layer.width)


def build_model_4(
    input_shape: Sequence[int],
    num_classes: int,
    conv_filters: Sequence[int] = (64, 128, 256, 256),
    dense_units: Sequence[int] = (128, 64),
    conv_dropout: float = 0.3,
    dense_dropout: float = 0.25,
    resize_in_model: bool = False,
    training_augmentation: AugmentationLayer | None = None,
) -> keras.Model:
    """The original project's VGG-type CNN; the default arguments reproduce it exactly.

    Each convolution block is Conv 3x3 'same' -> ReLU -> BatchNormalization -> MaxPool 2x2, with
    a Dropout right after the second block's convolution (and nowhere else among the blocks), as
    in the original. The head is Flatten, then Dense -> ReLU -> BatchNormalization per entry of
    ``dense_units`` with a Dropout after the first one only, then a softmax layer. The first
    layer rescales [0, 255] inputs to [0, 1] (after model_inputs' ResizeImages with ``resize_in_model``).
    """
    _check_cnn_arguments(input_shape, num_classes, conv_filters, dense_units, conv_dropout, dense_dropout)

    inputs, x = model_inputs(input_shape, resize_in_model, training_augmentation)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale_to_unit")(x)
    for block, filters in enumerate(conv_filters, start=1):
        x = keras.layers.Conv2D(int(filters), 3, padding="same", name=f"conv_{block}")(x)
        if block == 2 and conv_dropout > 0:
            x = keras.layers.Dropout(conv_dropout, name=f"conv_dropout_{block}")(x)
        x = keras.layers.Activation("relu", name=f"conv_relu_{block}")(x)
        x = keras.layers.BatchNormalization(name=f"conv_batch_norm_{block}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(int(units), name=f"dense_{index}")(x)
        x = keras.layers.Activation("relu", name=f"dense_relu_{index}")(x)
        x = keras.layers.BatchNormalization(name=f"dense_batch_norm_{index}")(x)
        if index == 1 and dense_dropout > 0:
            x = keras.layers.Dropout(dense_dropout, name=f"dense_dropout_{index}")(x)
    # float32 probabilities even under mixed precision, so the loss is computed in full precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="model_4")


def build_vgg(
    input_shape: Sequence[int],
    num_classes: int,
    conv_filters: Sequence[int] = (32, 64, 128, 256),
    convs_per_block: int = 2,
    dense_units: Sequence[int] = (256,),
    conv_dropout: float = 0.1,
    dense_dropout: float = 0.4,
    residual: bool = False,
    resize_in_model: bool = False,
    training_augmentation: AugmentationLayer | None = None,
) -> keras.Model:
    """A VGG-style network for face crops at FER's resolution (the ``fer_vgg`` preset).

    Each block stacks ``convs_per_block`` Conv 3x3 -> BatchNormalization -> ReLU, then MaxPool 2x2
    and a light spatial Dropout; the head is global average pooling (far fewer weights than the
    original's Flatten, so it overfits less on 30k images), Dense -> ReLU -> Dropout per entry of
    ``dense_units``, and softmax. Convolutions carry no bias because BatchNormalization follows.

    With ``residual`` each block is a residual unit (He et al. 2016): the block's input, through
    a 1x1 convolution and BatchNormalization where its channels differ, is added to the last
    convolution's normalised output before that convolution's ReLU. The shortcut costs a small
    fraction of a block's 3x3 convolutions, so both forms compute about the same.
    """
    _check_cnn_arguments(input_shape, num_classes, conv_filters, dense_units, conv_dropout, dense_dropout)
    if convs_per_block < 1:
        raise ValueError(f"convs_per_block must be at least 1, got {convs_per_block}")

    inputs, x = model_inputs(input_shape, resize_in_model, training_augmentation)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale_to_unit")(x)
    for block, filters in enumerate(conv_filters, start=1):
        shortcut = x
        for index in range(1, convs_per_block + 1):
            x = keras.layers.Conv2D(int(filters), 3, padding="same", use_bias=False,
                                    name=f"block{block}_conv{index}")(x)
            x = keras.layers.BatchNormalization(name=f"block{block}_batch_norm{index}")(x)
            if residual and index == convs_per_block:
                x = keras.layers.Add(name=f"block{block}_add")([x, _shortcut(shortcut, int(filters), block)])
            x = keras.layers.Activation("relu", name=f"block{block}_relu{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        if conv_dropout > 0:
            x = keras.layers.SpatialDropout2D(conv_dropout, name=f"block{block}_dropout")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pool")(x)
    for index, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(int(units), name=f"dense_{index}")(x)
        x = keras.layers.Activation("relu", name=f"dense_relu_{index}")(x)
        if dense_dropout > 0:
            x = keras.layers.Dropout(dense_dropout, name=f"dense_dropout_{index}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="residual_vgg" if residual else "vgg")


def _shortcut(x, filters: int, block: int):
    """A residual unit's shortcut: ``x`` itself, or projected to ``filters`` channels."""
    if x.shape[-1] == filters:
        return x
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"block{block}_shortcut_conv")(x)
    return keras.layers.BatchNormalization(name=f"block{block}_shortcut_batch_norm")(x)


def build_model_6(
    input_shape: Sequence[int],
    num_classes: int,
    weights: str = "imagenet",
    frozen_fraction: float = 0.8,
    resize_in_model: bool = False,
    training_augmentation: AugmentationLayer | None = None,
) -> keras.Model:
    """ResNet50 backbone, global average pooling and a softmax head, for transfer learning.

    ``weights`` is "imagenet" (Keras' cached file, or a download when the host answers),
    "none" (random initialisation) or the path of a local weights file for the backbone. The
    first ``frozen_fraction`` of the backbone's layers are frozen; a frozen BatchNormalization
    layer runs in inference mode (Keras 3 does this for ``trainable = False``), so fine-tuning
    does not disturb the statistics learnt on ImageNet. Grayscale inputs are repeated to three
    channels inside the model.
    """
    _check_common_arguments(input_shape, num_classes)
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must be in [0, 1], got {frozen_fraction}")
    height, width, channels = (int(size) for size in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"model_6 takes 1 or 3 channels, got {channels}")

    backbone = _resnet50_backbone((height, width, 3), weights)
    frozen_count = int(round(frozen_fraction * len(backbone.layers)))
    for layer in backbone.layers[:frozen_count]:
        layer.trainable = False

    inputs, x = model_inputs((height, width, channels), resize_in_model, training_augmentation)
    if channels == 1:
        x = keras.layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    x = CaffePreprocessing(name="imagenet_caffe_preprocessing")(x)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="model_6")


def build_model(section_name: str, model_config, num_classes: int, resize_in_model: bool = False,
                training_augmentation: AugmentationLayer | None = None) -> keras.Model:
    """Build the model of a configuration section ("model_4" or "model_6"); ``resize_in_model``
    (see model_inputs) as inputs.resolve_resize_in_model decides it for the training images, and
    ``training_augmentation`` after its input when given (every input mode but tf_data)."""
    input_shape = (model_config.image_size, model_config.image_size, model_config.channels)
    if section_name == "model_4" and model_config.architecture in ("vgg", "residual_vgg"):
        return build_vgg(
            input_shape,
            num_classes,
            conv_filters=model_config.conv_filters or (32, 64, 128, 256),
            convs_per_block=model_config.convs_per_block,
            dense_units=model_config.dense_units,
            conv_dropout=model_config.conv_dropout,
            dense_dropout=model_config.dense_dropout,
            residual=model_config.architecture == "residual_vgg",
            resize_in_model=resize_in_model,
            training_augmentation=training_augmentation,
        )
    if section_name == "model_4":
        if not model_config.conv_filters:
            raise PipelineError(
                f"{section_name}.conv_filters is empty: set it or use preset = \"seed\""
            )
        return build_model_4(
            input_shape,
            num_classes,
            conv_filters=model_config.conv_filters,
            dense_units=model_config.dense_units,
            conv_dropout=model_config.conv_dropout,
            dense_dropout=model_config.dense_dropout,
            resize_in_model=resize_in_model,
            training_augmentation=training_augmentation,
        )
    if section_name == "model_6":
        return build_model_6(
            input_shape,
            num_classes,
            weights=model_config.weights or "imagenet",
            frozen_fraction=model_config.frozen_fraction,
            resize_in_model=resize_in_model,
            training_augmentation=training_augmentation,
        )
    raise ValueError(f"unknown model section {section_name!r}; expected model_4 or model_6")


def keras_weights_cache_path() -> Path:
    """Where Keras keeps the downloaded ResNet50 weights (``$KERAS_HOME/models`` or ~/.keras)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(keras_home) / "models" / RESNET50_NOTOP_WEIGHTS_FILE


def download_host_reachable(host: str = WEIGHTS_DOWNLOAD_HOST, port: int = 443,
                            timeout: float = REACHABILITY_TIMEOUT_SECONDS) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_cnn_arguments(input_shape: Sequence[int], num_classes: int, conv_filters: Sequence[int],
                         dense_units: Sequence[int], conv_dropout: float, dense_dropout: float) -> None:
    """The checks model_4's two architectures share: filters, units, dropout rates, pooling depth."""
    _check_common_arguments(input_shape, num_classes)
    if not conv_filters or any(int(filters) < 1 for filters in conv_filters):
        raise ValueError(f"conv_filters must be a non-empty list of positive integers, got {conv_filters!r}")
    if any(int(units) < 1 for units in dense_units):
        raise ValueError(f"dense_units must be positive integers, got {dense_units!r}")
    for name, rate in (("conv_dropout", conv_dropout), ("dense_dropout", dense_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    smallest_side = min(input_shape[0], input_shape[1]) // 2 ** len(conv_filters)
    if smallest_side < 1:
        raise ValueError(
            f"input {tuple(input_shape)} is too small for {len(conv_filters)} pooling steps; "
            "use a larger image_size or fewer conv_filters"
        )


def _check_common_arguments(input_shape: Sequence[int], num_classes: int) -> None:
    if len(input_shape) != 3 or any(int(size) < 1 for size in input_shape):
        raise ValueError(f"input_shape must be (height, width, channels), got {tuple(input_shape)!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def _resnet50_backbone(input_shape: tuple[int, int, int], weights: str) -> keras.Model:
    """ResNet50 without its top, initialised as ``weights`` asks; never waits on a dead network."""
    choices = (
        'weights = "none" (train from scratch) or weights = "<path to a local weights file>" '
        f"(for example a copy of {RESNET50_NOTOP_WEIGHTS_FILE})"
    )
    if weights == "none":
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    if weights == "imagenet":
        cached = keras_weights_cache_path()
        if not cached.is_file() and not download_host_reachable():
            raise PipelineError(
                f"model_6.weights = \"imagenet\" needs {cached}, which is not there, and "
                f"{WEIGHTS_DOWNLOAD_HOST} cannot be reached to download it. Copy the file there, "
                f"or set {choices}."
            )
        return keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)

    path = Path(weights).expanduser()
    if not path.is_file():
        raise PipelineError(
            f"model_6.weights: {path} is not a file. Use \"imagenet\", or set {choices}."
        )
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    try:
        if path.name.endswith(".weights.h5"):
            # Keras 3 weights files match layers by position; skip_mismatch tolerates a
            # different head or input size.
            backbone.load_weights(path, skip_mismatch=True)
        elif path.suffix == ".h5":
            # Legacy HDF5 files (like Keras' own ImageNet file) can be matched by layer name.
            backbone.load_weights(path, by_name=True, skip_mismatch=True)
        else:
            raise PipelineError(
                f"model_6.weights: {path} is neither a .weights.h5 nor a legacy .h5 weights file"
            )
    except (OSError, ValueError) as error:
        raise PipelineError(f"model_6.weights: cannot load {path} into ResNet50: {error}") from error
    logger.info("loaded ResNet50 weights from %s", path)
    return backbone
