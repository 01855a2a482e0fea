"""The training loss: cross-entropy weighted per class by the effective number of samples.

AffectNet is strongly imbalanced (about 135,000 happy faces against 4,000 contempt), so an
unweighted loss learns mostly the frequent classes. Cui et al. 2019, "Class-Balanced Loss Based
on Effective Number of Samples", weight class c by the inverse of its effective number of samples
``(1 - beta ** n_c) / (1 - beta)``, which grows like ``n_c`` for small counts and saturates for
large ones. The weights are computed from the training split's counts, never typed in.

The loss uses ``keras.ops`` only, so it runs on every Keras backend (TensorFlow, JAX, PyTorch).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np


def class_balanced_weights(counts: Sequence[int] | np.ndarray, beta: float) -> np.ndarray:
    """Per-class weights ``(1 - beta) / (1 - beta ** n_c)``, scaled to sum to the number of classes.

    ``beta = 0`` gives every class the weight 1 (plain cross-entropy); ``beta`` close to 1 gives
    weights close to the inverse class frequency. Every class needs at least one training image:
    a class without any has an effective number of zero and no finite weight.
    """
    counts = np.asarray(counts, dtype="float64")
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty list of per-class counts, got {counts!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    empty = np.flatnonzero(counts <= 0)
    if empty.size:
        raise ValueError(
            f"classes at positions {empty.tolist()} have no training images; a class-balanced "
            "weight needs at least one image per class"
        )
    effective_numbers = (1.0 - np.power(beta, counts)) / (1.0 - beta)
    weights = 1.0 / effective_numbers
    return (weights * counts.size / weights.sum()).astype("float32")


@keras.saving.register_keras_serializable(package="emotion_classifier")
class WeightedCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with a weight per true class and optional label smoothing.

    ``y_true`` holds integer class indices (or, with mixup, one row of class probabilities per
    image, weighted by the same mixture of class weights), ``y_pred`` probabilities (the models end in softmax)
    or logits when ``from_logits`` is true. Each image's loss is
    ``-weight[y] * sum_k target_k * log(p_k)`` where ``target`` is the one-hot label smoothed
    towards the uniform distribution by ``label_smoothing``. The default reduction averages
    over the batch, like Keras' own losses.
    """

    def __init__(self, class_weights: Sequence[float], label_smoothing: float = 0.0,
                 from_logits: bool = False, name: str = "weighted_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        class_weights = [float(weight) for weight in class_weights]
        if not class_weights or any(weight < 0 or not np.isfinite(weight) for weight in class_weights):
            raise ValueError(f"class_weights must be finite, non-negative and not empty: {class_weights}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.class_weights = class_weights
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        num_classes = len(self.class_weights)
        class_weights = keras.ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype)
        if len(y_true.shape) == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
            # Class probabilities (mixup): the weight is the label's mixture of class weights.
            targets = keras.ops.cast(y_true, y_pred.dtype)
            weights = keras.ops.sum(targets * class_weights, axis=-1)
        else:
            labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
            targets = keras.ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
            weights = keras.ops.take(class_weights, labels)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        if self.from_logits:
            log_probabilities = keras.ops.log_softmax(y_pred, axis=-1)
        else:
            # Clipping keeps log() finite when a probability underflows to exactly 0 or 1.
            epsilon = keras.config.epsilon()
            log_probabilities = keras.ops.log(keras.ops.clip(y_pred, epsilon, 1.0 - epsilon))
        per_image = -keras.ops.sum(targets * log_probabilities, axis=-1)
        return per_image * weights

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            class_weights=list(self.class_weights),
            label_smoothing=self.label_smoothing,
            from_logits=self.from_logits,
        )
        return config
