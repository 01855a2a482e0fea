"""The class-balanced weights and the weighted cross-entropy against hand computations."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from emotion_classifier.losses import WeightedCrossEntropy, class_balanced_weights


def test_class_balanced_weights_match_hand_computation():
    counts = [10, 100]
    beta = 0.9
    # Effective numbers (1 - beta^n) / (1 - beta); weights are their inverses, rescaled to sum to 2.
    raw = np.array([(1 - beta) / (1 - beta**10), (1 - beta) / (1 - beta**100)])
    expected = raw * 2 / raw.sum()
    weights = class_balanced_weights(counts, beta)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.sum() == pytest.approx(2.0)
    assert weights[0] > weights[1], "the rarer class must weigh more"


def test_class_balanced_weights_beta_zero_gives_ones_and_sum_is_class_count():
    np.testing.assert_allclose(class_balanced_weights([5, 50, 500], 0.0), [1.0, 1.0, 1.0])
    weights = class_balanced_weights([3, 40, 7, 1000], 0.999)
    assert weights.sum() == pytest.approx(4.0, rel=1e-6)
    assert np.argmax(weights) == 0 and np.argmin(weights) == 3


@pytest.mark.parametrize("counts, beta", [([0, 10], 0.9), ([], 0.9), ([1, 2], 1.0), ([1, 2], -0.1)])
def test_class_balanced_weights_rejects_bad_input(counts, beta):
    with pytest.raises(ValueError):
        class_balanced_weights(counts, beta)


def test_weighted_cross_entropy_matches_manual_computation():
    class_weights = [0.5, 2.0, 1.0]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype="float32")
    labels = np.array([0, 1, 2])
    smoothing = 0.1
    targets = np.eye(3)[labels] * (1 - smoothing) + smoothing / 3
    per_image = -(targets * np.log(probabilities)).sum(axis=1) * np.array(class_weights)[labels]
    loss = WeightedCrossEntropy(class_weights, label_smoothing=smoothing)
    value = float(keras.ops.convert_to_numpy(loss(labels, probabilities)))
    assert value == pytest.approx(per_image.mean(), rel=1e-5)

    # Without smoothing and with unit weights it is Keras' own sparse categorical cross-entropy.
    plain = WeightedCrossEntropy([1.0, 1.0, 1.0])
    reference = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(keras.ops.convert_to_numpy(plain(labels, probabilities))) == pytest.approx(
        float(keras.ops.convert_to_numpy(reference)), rel=1e-5
    )


def test_weighted_cross_entropy_from_logits_agrees_with_probabilities():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]], dtype="float32")
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([[0], [2]])
    from_logits = WeightedCrossEntropy([1.0, 3.0, 2.0], from_logits=True)(labels, logits)
    from_probabilities = WeightedCrossEntropy([1.0, 3.0, 2.0])(labels, probabilities)
    assert float(keras.ops.convert_to_numpy(from_logits)) == pytest.approx(
        float(keras.ops.convert_to_numpy(from_probabilities)), rel=1e-5
    )


def test_weighted_cross_entropy_serialisation_round_trip():
    loss = WeightedCrossEntropy([0.25, 1.75], label_smoothing=0.05)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, WeightedCrossEntropy)
    assert restored.class_weights == [0.25, 1.75]
    assert restored.label_smoothing == pytest.approx(0.05)
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7]], dtype="float32")
    labels = np.array([0, 1])
    assert float(keras.ops.convert_to_numpy(restored(labels, probabilities))) == pytest.approx(
        float(keras.ops.convert_to_numpy(loss(labels, probabilities)))
    )


@pytest.mark.parametrize("weights, smoothing", [([], 0.0), ([1.0, -1.0], 0.0), ([1.0, 1.0], 1.0)])
def test_weighted_cross_entropy_rejects_bad_arguments(weights, smoothing):
    with pytest.raises(ValueError):
        WeightedCrossEntropy(weights, label_smoothing=smoothing)
