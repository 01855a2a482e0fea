"""Grad-CAM heat maps: which parts of a face made the model choose its emotion.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional layer's output by the
average gradient of the class score with respect to that channel, sums the weighted channels
and keeps the positive part. The class score used here is the log of the softmax probability:
our models end in a softmax, and the gradient of the probability itself vanishes when the model
is sure (p close to 1), while the log-probability's gradient does not.

Gradients are computed with ``tf.GradientTape``, so Grad-CAM needs Keras' TensorFlow backend
(the project's default); TensorFlow is imported only inside ``gradcam_heatmaps``, so importing
this module, and predicting without ``--explain``, never loads it. Layer search and drawing use
Keras and NumPy only.
"""

from __future__ import annotations

import cv2
import numpy as np


def find_gradcam_layer(model) -> str:
    """The name of the last top-level layer whose output is a (batch, height, width, channels) map.

    For a model that wraps a backbone (ResNet50 in model_6) this is the backbone itself, whose
    output is its last convolutional block's feature map.
    """
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is None or len(shape) != 4:
            continue
        height, width = shape[1], shape[2]
        if height is not None and width is not None and height * width > 1:
            return layer.name
    raise ValueError(
        f"model {model.name!r} has no layer with a spatial (height x width) output to compute Grad-CAM on"
    )


def gradcam_heatmaps(model, images: np.ndarray, class_indices: np.ndarray, layer_name: str = "") -> np.ndarray:
    """Grad-CAM maps for a batch: shape (batch, layer height, layer width), values in [0, 1].

    ``images`` are the model's inputs (float32, [0, 255]); ``class_indices`` the class explained
    for each image (usually the predicted one). A map that is zero everywhere means that no
    region raised the class score.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Grad-CAM uses tf.GradientTape and needs Keras' TensorFlow backend; this Keras runs "
            f"{keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)"
        )
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    class_indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
    if images.ndim != 4 or len(images) != len(class_indices):
        raise ValueError(
            f"need a batch of images (N, height, width, channels) and one class per image; got images "
            f"{images.shape} and {len(class_indices)} classes"
        )
    members = [] if layer_name else ensemble_members(model)
    if members:
        return _ensemble_heatmaps(model, members, images, class_indices)
    layer = model.get_layer(layer_name or find_gradcam_layer(model))
    feature_model = keras.Model(model.input, [layer.output, model.output])
    with tf.GradientTape() as tape:
        features, probabilities = feature_model(images, training=False)
        scores = _log_scores(probabilities, class_indices)
    return _normalised_maps(features, tape.gradient(scores, features))


def ensemble_members(model) -> list:
    """The member models of an ensemble built by ``ensemble.build_ensemble``; [] for any other model."""
    import keras

    from emotion_classifier import ensemble

    if ensemble.MERGE_LAYER_NAME not in [layer.name for layer in model.layers]:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _ensemble_heatmaps(model, members: list, images: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """The mean of each member's Grad-CAM map, every one explaining the ensemble's own class score.

    The members sit nested in the ensemble, so their feature maps are not outputs of it: the
    forward pass is redone here, member by member, then the ensemble's merge and output layers.
    """
    import keras
    import tensorflow as tf

    from emotion_classifier import calibration, ensemble

    feature_models = [
        keras.Model(member.input, [member.get_layer(find_gradcam_layer(member)).output, member.output])
        for member in members
    ]
    with tf.GradientTape() as tape:
        outputs = [feature_model(images, training=False) for feature_model in feature_models]
        feature_maps = [features for features, _vector in outputs]
        merged = model.get_layer(ensemble.MERGE_LAYER_NAME)([vector for _features, vector in outputs])
        probabilities = model.get_layer(calibration.OUTPUT_LAYER_NAME)(merged)
        scores = _log_scores(probabilities, class_indices)
    gradients = tape.gradient(scores, feature_maps)
    maps = [_normalised_maps(features, member_gradients)
            for features, member_gradients in zip(feature_maps, gradients)]
    height, width = maps[0].shape[1:]
    maps = [member_maps if member_maps.shape[1:] == (height, width) else
            np.stack([cv2.resize(single, (width, height), interpolation=cv2.INTER_LINEAR) for single in member_maps])
            for member_maps in maps]
    return _scaled_to_peak(np.mean(maps, axis=0))


def _log_scores(probabilities, class_indices: np.ndarray):
    """The log-probability of each image's chosen class (the score Grad-CAM explains)."""
    import tensorflow as tf

    chosen = tf.gather(probabilities, class_indices, axis=1, batch_dims=1)
    # The small floor keeps the log finite when a probability underflows to zero.
    return tf.math.log(chosen + 1e-12)


def _normalised_maps(features, gradients) -> np.ndarray:
    """Grad-CAM maps from a layer's output and the score's gradients, each scaled to peak at 1."""
    import tensorflow as tf

    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(tf.cast(features, "float32") * tf.cast(channel_weights, "float32"),
                                    axis=-1)).numpy()
    return _scaled_to_peak(maps)


def _scaled_to_peak(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (a map that is zero everywhere stays zero)."""
    peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def overlay_heatmap(region: np.ndarray, heatmap: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (any size) over an RGB ``uint8`` region, red where it is hot."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    height, width = region.shape[:2]
    resized = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.clip(resized * 255.0, 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = region.astype(np.float32) * (1.0 - opacity) + colours.astype(np.float32) * opacity
    return np.clip(blended, 0, 255).astype(np.uint8)


def overlay_aligned_heatmap(photo: np.ndarray, heatmap: np.ndarray, matrix: np.ndarray, side: int,
                            opacity: float = 0.45) -> np.ndarray:
    """Blend the heat map of an aligned face (a ``side`` x ``side`` picture cut from ``photo`` by
    the affine ``matrix``) back over the photo, turned as the face is; returns a new photo."""
    height, width = photo.shape[:2]
    picture_map = cv2.resize(heatmap.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    in_photo = cv2.warpAffine(picture_map, matrix, (width, height), flags=flags, borderValue=0.0)
    covered = cv2.warpAffine(np.ones((side, side), np.float32), matrix, (width, height), flags=flags,
                             borderValue=0.0) > 0.5
    blended = overlay_heatmap(photo, in_photo, opacity)
    return np.where(covered[..., np.newaxis], blended, photo)
