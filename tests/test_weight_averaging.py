"""``weight_averaging``: validation and the saved models get the moving average of the weights."""

from __future__ import annotations

import keras
import numpy as np

from emotion_classifier import model_io, training
from emotion_classifier.callbacks import AveragedWeights
from emotion_classifier.models import build_model
from test_training import tiny_config


def _trainable(path) -> list[np.ndarray]:
    model, _info = model_io.load_trained_model(path)
    return [np.asarray(weight) for weight in model.trainable_weights]


def _largest_change(weights: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(weights, reference))


def test_the_best_model_holds_the_averaged_weights(tmp_path):
    saved = {}
    for epochs in (1, 3):
        config = tiny_config(tmp_path, input_mode="memory", epochs=epochs)
        config.model_4.run_name = f"averaged_{epochs}"
        config.model_4.optimizer, config.model_4.learning_rate = "sgd", 0.05
        config.model_4.weight_averaging = 0.999999
        saved[epochs] = _trainable(training.train(config, "model_4") / "best.keras")
    # The initial weights, drawn as training draws them.
    keras.utils.set_random_seed(config.model_4.seed)
    start = [np.asarray(weight) for weight in build_model("model_4", config.model_4, 3).trainable_weights]

    # Keras starts the average at the weights after the first step; with momentum 0.999999 it
    # stays there, however many more steps training takes (the trained weights move on). The
    # memory input mode trains the same steps in both runs.
    assert _largest_change(saved[1], start) > 0.1
    assert _largest_change(saved[3], saved[1]) < 1e-3


def test_a_resumed_checkpoint_trains_on_from_the_trained_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.9), loss="mse")
    data = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    targets = np.random.default_rng(1).normal(size=(32, 3)).astype("float32")
    path = tmp_path / "checkpoint.keras"
    seen = {}

    def checkpoint_after_first_epoch(epoch, logs):
        if epoch == 0:
            seen["averaged"] = [np.asarray(weight) for weight in model.trainable_weights]
            model.save(path)

    def record_trained(epoch, logs):
        if epoch == 1:
            seen["trained"] = [np.asarray(weight) for weight in model.trainable_weights]

    # The run's order: the averaging callback first, then the checkpoint.
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=checkpoint_after_first_epoch,
                                              on_epoch_begin=record_trained)
    model.fit(data, targets, batch_size=8, epochs=2, verbose=0, callbacks=[AveragedWeights(), recorder])
    assert _largest_change(seen["averaged"], seen["trained"]) > 1e-3

    # The checkpoint holds the averaged weights; resumed, training goes on from the trained ones.
    resumed_model = keras.saving.load_model(path)
    for weight, expected in zip(resumed_model.trainable_weights, seen["averaged"]):
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
    resumed = AveragedWeights(resumed=True)
    resumed.set_model(resumed_model)
    resumed.on_epoch_begin(1)
    for weight, expected in zip(resumed_model.trainable_weights, seen["trained"]):
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
