"""Saving and loading trained models together with what a caller needs to use them.

A model is saved as ``<name>.keras`` with ``model_info.json`` beside it (in the same folder):
the class names in output order, the input size and channels, and how inputs are scaled. The
model itself holds its preprocessing (rescaling, ImageNet mean subtraction), so every caller
feeds the same thing: float32 RGB (or grayscale) images with values in [0, 255].
"""

from __future__ import annotations

from pathlib import Path

from emotion_classifier import files

MODEL_INFO_NAME = "model_info.json"
# The model the project ships (trained by config/fer2013_cpu.toml, see its README): the default of
# the demo, of predict, and of evaluation when no training run of its own exists.
SHIPPED_MODEL_PATH = Path("models") / "shipped" / "fer2013" / "model.keras"
INPUT_DESCRIPTION = "float32 images with values in [0, 255]; the model applies its own preprocessing"


def model_info_path(model_path: str | Path) -> Path:
    return Path(model_path).with_name(MODEL_INFO_NAME)


def save_model_info(model_path: str | Path, classes: list[str], image_size: int, channels: int,
                    **extra: object) -> None:
    """Write ``model_info.json`` beside ``model_path``."""
    info = {
        "classes": list(classes),
        "image_size": int(image_size),
        "channels": int(channels),
        "input": INPUT_DESCRIPTION,
        **extra,
    }
    files.write_json(model_info_path(model_path), info)


def read_model_info(model_path: str | Path) -> dict:
    path = model_info_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a model needs its model_info.json (classes, input size) beside it"
        )
    info = files.read_json(path)
    for key in ("classes", "image_size", "channels"):
        if key not in info:
            raise ValueError(f"{path}: missing key {key!r}")
    return info


def load_trained_model(model_path: str | Path):
    """Load a ``.keras`` model in Keras' safe mode (no arbitrary code) and its model info.

    Returns ``(model, info)``. Custom layers and losses of this package are registered by
    importing ``emotion_classifier.models`` and ``emotion_classifier.losses`` first.
    """
    import keras

    from emotion_classifier import losses, models  # noqa: F401  (registers custom objects)

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model not found: {model_path}")
    info = read_model_info(model_path)
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    return model, info


def _float32_config(value):
    """A layer configuration with every mixed-precision dtype policy replaced by float32."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" and isinstance(value.get("config"), dict):
            name = value["config"].get("name", "")
            if name.startswith("mixed_"):
                return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    if isinstance(value, str) and value.startswith("mixed_"):
        return "float32"
    return value


def as_float32(model):
    """The same model computing in float32, for inference and export.

    A model trained under mixed precision keeps float32 weights but computes in bfloat16 or
    float16, which TFLite cannot convert and CPUs without bfloat16 units run slowly; the copy
    has the same weights and float32 computation everywhere.
    """
    config = _float32_config(model.get_config())
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy
