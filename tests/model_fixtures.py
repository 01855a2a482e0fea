"""A tiny saved classifier shared by the tests of the stages that load a trained model."""

from __future__ import annotations

from pathlib import Path

from emotion_classifier import model_io

IMAGE_SIZE = 32


def save_tiny_model(model_path: Path, classes: list[str], image_size: int = IMAGE_SIZE,
                    channels: int = 3) -> Path:
    """A small untrained classifier saved the way training saves one (model + model_info.json)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(image_size, image_size, channels))
    features = keras.layers.Rescaling(1.0 / 255)(inputs)
    features = keras.layers.Conv2D(4, 3, activation="relu")(features)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    model_io.save_model_info(model_path, classes, image_size, channels, run_name=model_path.parent.name)
    return model_path
