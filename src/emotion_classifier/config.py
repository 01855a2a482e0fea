"""One configuration for every stage, read from TOML and overridable per run.

The schema is the set of dataclasses below: their defaults are the built-in values, a TOML file
overrides some of them (a section per stage), and ``KEY=VALUE`` words on a script's command line
override the file. Unknown sections or keys and values of the wrong type stop the program at
start-up with a message that names the key, so a typo never silently falls back to a default.

Relative paths are resolved against the current working directory (the project root when the
stage scripts are run as documented), never hard-coded as absolute paths.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


@dataclasses.dataclass
class PathsConfig:
    """Where each stage reads and writes. The data tree follows cookiecutter-data-science."""

    data_dir: str = "data"
    models_dir: str = "models"
    reports_dir: str = "reports"

    @property
    def raw(self) -> Path:
        return Path(self.data_dir) / "raw"

    @property
    def interim(self) -> Path:
        return Path(self.data_dir) / "interim"

    @property
    def processed(self) -> Path:
        return Path(self.data_dir) / "processed"

    @property
    def images_root(self) -> Path:
        return self.interim / "images"

    @property
    def labels_root(self) -> Path:
        return self.interim / "labels"

    @property
    def manifest(self) -> Path:
        return self.processed / "manifest.csv"

    @property
    def split_manifest(self) -> Path:
        return self.processed / "split_manifest.csv"

    @property
    def models(self) -> Path:
        return Path(self.models_dir)

    @property
    def reports(self) -> Path:
        return Path(self.reports_dir)


@dataclasses.dataclass
class GetDataConfig:
    """``get_data.py``: bring archives or folders into ``data/raw`` and extract them."""

    # "local": a file or folder path (or several) on this machine; "drive": a Google Drive folder
    # or file IDs.
    source_kind: str = "local"
    # Local archives (zip, tar, tar.gz, rar) or folders. Empty means: nothing configured yet.
    sources: list[str] = dataclasses.field(default_factory=list)
    # Google Drive: a folder ID (every file in it, recursively) or explicit file IDs.
    drive_folder_id: str = ""
    drive_file_ids: list[str] = dataclasses.field(default_factory=list)
    # "service_account" (a key file) or "oauth" (installed-app flow with a cached token).
    drive_auth: str = "service_account"
    drive_credentials_file: str = "secrets/drive-service-account.json"
    drive_token_file: str = "secrets/drive-token.json"
    # Only for tests and mirrors: an alternative API endpoint (the real one when empty).
    drive_api_endpoint: str = ""
    drive_max_retries: int = 6
    drive_chunk_size_mb: int = 16
    # Extract archives after bringing them in.
    extract: bool = True
    # Decompression-bomb limits, checked on the sizes an archive declares and on the bytes
    # actually written: an archive set may expand to at most this many times its own size
    # (beyond its first 16 MiB; JPEG and PNG images barely compress, text a few to tens of times)...
    max_expansion_ratio: int = 100
    # ...and to at most this many gigabytes (10^9 bytes) in all.
    max_extracted_gb: int = 1000


@dataclasses.dataclass
class ConsolidateConfig:
    """``consolidate_data.py``: one images root and one labels root from the extracted trees."""

    # "auto": hard links where the filesystem allows, copies otherwise; "hardlink"; "copy".
    link_mode: str = "auto"
    # Extracted archives often wrap everything in one folder (``Manually_Annotated_Images/689/...``)
    # while label files name paths below it (``689/...``): strip such a single top folder.
    strip_single_top_folder: bool = True


@dataclasses.dataclass
class LabelsConfig:
    """``get_filenames_and_labels.py``: every supported label layout into one manifest."""

    # "auto", "affectnet_csv" (original release), "affectnet_npy" (later release), "class_folders".
    layout: str = "auto"
    # Open every image while building the manifest, so bad files are found now, not in training.
    check_images: bool = True
    # Processes used to check images; 0 means one per CPU core.
    workers: int = 0
    # Images larger than this many pixels are rejected as possible decompression bombs.
    max_image_pixels: int = 100_000_000


@dataclasses.dataclass
class InspectConfig:
    """``inspect_images.py``: sample grids and class-distribution charts."""

    samples_per_class: int = 8
    seed: int = 0


@dataclasses.dataclass
class SplitConfig:
    """``train_valid_test_clean.py``: which classes are kept and how the splits are drawn."""

    # Dropped as in the original project: the non-emotion categories, contempt and disgust.
    drop_classes: list[str] = dataclasses.field(
        default_factory=lambda: ["none", "uncertain", "non_face", "contempt", "disgust"]
    )
    # Class-balanced validation set: this many images per class (500 as in the AffectNet paper).
    valid_per_class: int = 500
    # A class never gives more than this fraction of its training images to validation.
    max_valid_fraction: float = 0.5
    # Stratified test split when the dataset has no evaluation split of its own (about 1%).
    test_fraction: float = 0.01
    # Use the dataset's own evaluation split (AffectNet validation.csv, a val/test folder) as test.
    use_source_evaluation_split: bool = True
    seed: int = 42


@dataclasses.dataclass
class GeneratorConfig:
    """``custom_generator.py``: the tf.data input pipeline shared by training and evaluation."""

    # Parallel decode calls; 0 means tf.data.AUTOTUNE.
    parallel_calls: int = 0
    # File names held for shuffling training rows. Training on face crops of one size (FER2013)
    # reads whole batches and draws a full permutation every pass instead, so it is unused there.
    shuffle_buffer: int = 10_000
    # Keep decoded images in memory after the first epoch (small datasets only): resized, or
    # as uint8 face crops when all crops share one size (make_dataset then resizes per batch).
    cache: bool = False
    # Extra margin around a face box, as a fraction of its size, before cropping.
    face_margin: float = 0.0
    # Augmentation, applied to training batches only.
    augment: bool = True
    flip: bool = True
    rotation_degrees: float = 10.0
    zoom: float = 0.1
    translation: float = 0.1
    contrast: float = 0.1
    random_erasing: float = 0.0
    # Mixup (Zhang et al. 2018): every training image blended with another image of its batch,
    # and their labels alike, with a weight drawn from Beta(mixup, mixup), e.g. 0.2; 0 turns it
    # off. Needs input_mode = "memory" (labels become class probabilities); augment = false
    # turns it off with the other augmentations.
    mixup: float = 0.0
    # Images of the augmented batch that the script saves as a PNG.
    preview_images: int = 16
    seed: int = 0
    # Where training reads images: "files" (decode every epoch) or "tfrecords" (decoded,
    # face-cropped and resized once into sharded TFRecord files, read with interleaving).
    source: str = "files"
    # Folder of the TFRecord shards; empty means <data_dir>/processed/tfrecords.
    tfrecord_dir: str = ""
    # Images per TFRecord shard, and threads writing shards (0: one per CPU core).
    tfrecord_shard_images: int = 2000
    tfrecord_workers: int = 0


@dataclasses.dataclass
class ModelConfig:
    """Shared training settings for ``model_4.py`` and ``model_6.py``."""

    run_name: str = ""
    preset: str = ""
    image_size: int = 256
    channels: int = 3
    batch_size: int = 64
    epochs: int = 5
    learning_rate: float = 1e-3
    # "adam" (the original), "adamw" (decoupled weight decay) or "sgd" (Nesterov momentum 0.9).
    optimizer: str = "adam"
    weight_decay: float = 0.0
    # "constant" (the original) or "cosine" (linear warm-up, then cosine decay to zero).
    learning_rate_schedule: str = "constant"
    warmup_epochs: int = 0
    # The validation metric that chooses the best epoch (best.keras) and drives early stopping:
    # "val_loss" (the original) or "val_accuracy" (better for long runs with label smoothing,
    # whose validation loss bottoms out epochs before the accuracy peaks).
    monitor: str = "val_loss"
    # Early stopping: epochs without improvement of the monitored metric.
    patience: int = 3
    # Histogram-equalise every face on the model's grid (channels = 1 only), in training and in
    # everything that uses the model afterwards (it is saved in model_info.json): FER2013's faces
    # come equalised, photos from elsewhere do not (see equalization.py).
    equalize_histogram: bool = False
    # A resizing layer first in the model, which takes images of any size: crops smaller than
    # image_size (FER2013's 48-pixel faces at 112 or 224) are then decoded, cached (input_mode
    # "memory"), batched and augmented at their own size and enlarged on the accelerator.
    # "auto": true when a sample of the training crops shares one size smaller than image_size
    # (the host would otherwise enlarge every image of every epoch) and the images come from
    # files without equalize_histogram; false otherwise (a run's config.json records the answer).
    resize_in_model: bool | str = "auto"
    # After training: "none"; "prior_matching" (per-class offsets added to the final layer's
    # logits so that, on the validation split reweighted to the training class frequencies, each
    # class is predicted as often as it occurs); or "recall_floor" (the smallest offsets found that
    # give every class a validation recall of at least decision_recall_floor: only the classes
    # below it are pushed up). Fitted on the views of the matching evaluation section's
    # test_time_augmentation. Changing it re-calibrates a finished run, no retraining.
    decision_calibration: str = "none"
    # The validation recall every class gets from decision_calibration = "recall_floor".
    decision_recall_floor: float = 0.5
    # An ensemble instead of a training run: the run names (folders under paths.models) of two or
    # more finished runs of this section, whose best models become one model that averages their
    # logits (each member's own decision offsets taken off first); the ensemble's run is then
    # calibrated and evaluated as a trained one. Empty: train as usual.
    ensemble_runs: list[str] = dataclasses.field(default_factory=list)
    # Fine-tuning a finished run: the run name (a folder under paths.models) of a finished run of
    # this section and of the same network (preset, input size, channels, classes), whose best
    # model (its decision offsets taken off) starts this run instead of random weights. The
    # optimizer, schedule and epochs are this run's own: a second, lower cosine cycle after a
    # first one lets a short budget train longer in separate, resumable runs. Empty: random
    # initialisation.
    start_from_run: str = ""
    # Class-balanced loss of Cui et al. 2019: weights from the effective number of samples.
    class_balanced_beta: float = 0.9999
    label_smoothing: float = 0.0
    seed: int = 0
    # Steps per epoch cap (0: the whole training split); for smoke runs and benchmarks.
    max_steps_per_epoch: int = 0
    # "tf_data" (parallel tf.data pipeline), "memory" (every image decoded once and cached as
    # uint8 arrays, augmented on the host with OpenCV; any Keras backend; the fastest
    # when the dataset fits in memory), "arrays" (decoded on the host every epoch, plain
    # JPEGs by OpenCV and other files by Pillow; any backend) or "device" (the cached uint8
    # arrays held on the accelerator and augmented by the model in its compiled training step;
    # any backend; keeps a GPU busy).
    input_mode: str = "tf_data"
    # Devices: "auto" (MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy with
    # several GPUs, else none), "none", "mirrored" (all GPUs of this machine) or "multi_worker".
    strategy: str = "auto"
    # 16-bit computation with float32 weights: bfloat16 on GPUs that have it (compute capability
    # 8.0 on), else float16 with loss scaling; on a CPU bfloat16 only where it has bfloat16
    # instructions (AVX512-BF16, AMX), else float32 (emulated bfloat16 is about 3 times slower).
    mixed_precision: bool = False
    # XLA compilation of the training step: "auto" (Keras decides), "on" or "off".
    xla: str = "auto"
    # Training batches per call of the compiled training step (Keras' steps_per_execution):
    # above 1 the host's work per step (dispatch, callbacks) is paid once per that many batches,
    # which counts for small models on fast accelerators (FER2013's 48-pixel faces on a GPU);
    # per-batch callbacks and the progress bar then advance that many batches at a time.
    steps_per_execution: int = 1
    # Architecture of model_4 (the custom VGG-type CNN).
    # "custom_cnn": the original's blocks (one Conv -> ReLU -> BN -> MaxPool each, Flatten head);
    # "vgg": convs_per_block Conv -> BN -> ReLU per block, global average pooling head.
    architecture: str = "custom_cnn"
    conv_filters: list[int] = dataclasses.field(default_factory=list)
    convs_per_block: int = 1
    dense_units: list[int] = dataclasses.field(default_factory=list)
    conv_dropout: float = 0.3
    dense_dropout: float = 0.25
    # Architecture of model_6 (ResNet50 transfer learning).
    weights: str = ""
    frozen_fraction: float = 0.8


@dataclasses.dataclass
class EvaluationConfig:
    """``model_evaluation_4.py`` / ``model_evaluation_6.py``."""

    # The saved model; empty means the best model of the matching training run.
    model: str = ""
    # "test" (the split stage's test set), "valid", or a dataset folder (a folder per class,
    # optionally inside train/, val/, test/): its test part, else its val part, else all of it.
    dataset: str = "test"
    batch_size: int = 64
    # Name of the report folder and of the row in the comparison table; empty: the run name.
    name: str = ""
    # Test-time augmentation: average the probabilities of several views of each image.
    # "none"; "flip" (the image and its mirror); "flip_crops" (also four corner crops and a
    # centre crop of crop_fraction of the side, each with its mirror: 12 views).
    test_time_augmentation: str = "none"
    crop_fraction: float = 0.9


@dataclasses.dataclass
class DemoConfig:
    """``demo.ipynb``: find and classify every face in the images of a folder (as ``predict``)."""

    # The saved model; empty means the shipped model (else model_4's best model).
    model: str = ""
    images_dir: str = "images"
    # Where predictions, figures and the executed notebook go; empty means <reports_dir>/demo.
    output_dir: str = ""


@dataclasses.dataclass
class PredictConfig:
    """``emotion-predict``: find every face in photos, classify it and optionally explain it."""

    # An image file or a folder of images (searched recursively).
    input: str = "images"
    # The trained Keras model; empty means the shipped model (models/shipped/fer2013/model.keras).
    model: str = ""
    # A TFLite model written by the export stage; when set it classifies instead of the Keras model.
    tflite_model: str = ""
    output_dir: str = "reports/predict"
    # "haar" (OpenCV's frontal-face Haar cascade, works offline) or "yunet" (needs yunet_model).
    detector: str = "haar"
    # Haar cascade XML file; empty means OpenCV's haarcascade_frontalface_default.xml.
    haar_cascade: str = ""
    # YuNet ONNX file for cv2.FaceDetectorYN (face_detection_yunet_2023mar.onnx).
    yunet_model: str = ""
    # Haar: size step between searched face scales, and neighbouring hits a face needs.
    scale_factor: float = 1.1
    min_neighbors: int = 5
    # Smallest face searched for, in pixels of the detection image.
    min_face_size: int = 48
    # YuNet: lowest face score kept, and box overlap above which two boxes are merged.
    score_threshold: float = 0.7
    nms_threshold: float = 0.3
    # Photos with a longer side above this are shrunk for detection only (speed); 0: never.
    detection_max_side: int = 640
    # Margin added on each side of a face box before cropping, as a fraction of the box side.
    # 0.05 frames faces as FER2013's crops are framed (about the Haar box): the shipped model
    # scores 66.2% at 0.05 and 60.8% at 0.2 on detected FER2013 val faces (tools/margin_check.py).
    face_margin: float = 0.05
    # Classify the whole image (flagged "whole_image") when no face is found in it.
    classify_whole_if_no_face: bool = False
    # Images no larger than this on their longer side are face crops already (FER2013 is 48x48):
    # when no face is found in one, it is classified whole and flagged, whatever the key above.
    face_crop_max_side: int = 64
    # Faces classified together in one batch.
    batch_size: int = 32
    # Test-time augmentation, each face's probabilities averaged over its views (see
    # [model_evaluation_4]): "none", "flip" (the face and its mirror), "flip_crops" (12 views)
    # or "model" (the views the model's decisions were calibrated with, in its model_info.json;
    # none for an uncalibrated model). On FER2013 val the shipped model scores 65.2% / 66.3%
    # with flip / flip_crops (the model's; the GPU model shipped before session 18: 66.0% /
    # 66.4%), and flip_crops costs 5 times the classifier time of flip (docs/predict.md).
    test_time_augmentation: str = "flip"
    # Save a Grad-CAM heat map over each face beside the annotated image (needs the Keras model).
    explain: bool = False
    # Grad-CAM's layer; empty means the last layer with a spatial (height x width) output.
    gradcam_layer: str = ""
    # The contact sheet shows at most this many faces, each on a square tile of this side.
    contact_sheet_max_faces: int = 400
    contact_sheet_tile: int = 112


@dataclasses.dataclass
class ExportConfig:
    """``emotion-export``: the trained model as a TensorFlow SavedModel and TFLite models."""

    # The trained Keras model; empty means the shipped model (models/shipped/fer2013/model.keras).
    model: str = ""
    # Where the exports and export_report.json go; empty means an "export" folder beside the model.
    output_dir: str = ""
    # TFLite models written: any of "float32", "float16", "int8".
    tflite_variants: list[str] = dataclasses.field(default_factory=lambda: ["float32", "float16", "int8"])
    # Images that calibrate int8 quantisation: a folder of images, or empty for the training split.
    representative_images: str = ""
    representative_count: int = 200
    # Images, apart from the calibration ones, on which each export is compared with the Keras model.
    verification_count: int = 200
    seed: int = 0


# Architecture presets: a preset fills the architecture keys that the file and the command line
# leave unset. "seed" is the original project's custom CNN, exactly.
MODEL_PRESETS: dict[str, dict[str, object]] = {
    "seed": {
        "architecture": "custom_cnn",
        "conv_filters": [64, 128, 256, 256],
        "convs_per_block": 1,
        "dense_units": [128, 64],
        "conv_dropout": 0.3,
        "dense_dropout": 0.25,
    },
    # The recipe of config/fer2013.toml: a VGG-style network sized for 48x48 faces on a CPU.
    "fer_vgg": {
        "architecture": "vgg",
        "conv_filters": [32, 64, 128, 256],
        "convs_per_block": 2,
        "dense_units": [256],
        "conv_dropout": 0.1,
        "dense_dropout": 0.4,
    },
    # fer_vgg with its last two blocks wider (2.7 million weights), for more capacity where it is
    # cheapest: the 12x12 and 6x6 blocks. On 2 cores of an AMD EPYC with AVX512-BF16 an epoch
    # of FER2013 took 160-175 s, against fer_vgg's 121 s (fer_vgg_wide: about 300 s); on 2 cores
    # of a Xeon with AMX-BF16, 92-106 s. The shipped model's preset (config/fer2013_cpu.toml).
    "fer_vgg_cpu": {
        "architecture": "vgg",
        "conv_filters": [32, 64, 192, 384],
        "convs_per_block": 2,
        "dense_units": [384],
        "conv_dropout": 0.1,
        "dense_dropout": 0.4,
    },
    # The GPU recipe of config/fer2013_gpu.toml: twice as wide, about 4.9 million weights.
    "fer_vgg_wide": {
        "architecture": "vgg",
        "conv_filters": [64, 128, 256, 512],
        "convs_per_block": 2,
        "dense_units": [512],
        "conv_dropout": 0.1,
        "dense_dropout": 0.5,
    },
    "resnet50": {},
}


@dataclasses.dataclass
class Config:
    paths: PathsConfig = dataclasses.field(default_factory=PathsConfig)
    get_data: GetDataConfig = dataclasses.field(default_factory=GetDataConfig)
    consolidate: ConsolidateConfig = dataclasses.field(default_factory=ConsolidateConfig)
    labels: LabelsConfig = dataclasses.field(default_factory=LabelsConfig)
    inspect: InspectConfig = dataclasses.field(default_factory=InspectConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    model_4: ModelConfig = dataclasses.field(
        default_factory=lambda: ModelConfig(run_name="model_4", preset="seed", **copy.deepcopy(MODEL_PRESETS["seed"]))
    )
    model_6: ModelConfig = dataclasses.field(
        default_factory=lambda: ModelConfig(
            run_name="model_6", preset="resnet50", image_size=224, weights="imagenet"
        )
    )
    model_evaluation_4: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    model_evaluation_6: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)
    predict: PredictConfig = dataclasses.field(default_factory=PredictConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section_types(section_class: type) -> dict[str, object]:
    return typing.get_type_hints(section_class)


def _describe_type(expected: object) -> str:
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")


def _coerce(key: str, value: object, expected: object) -> object:
    """Return ``value`` checked against the field type ``expected``; raise ConfigError if wrong."""
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_describe_type(item_type)}, got {value!r}")
        return [_coerce(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is types.UnionType:
        # ``bool | str``: true, false or a word such as "auto" (the word's choices are in _CHOICES).
        for member in typing.get_args(expected):
            try:
                return _coerce(key, value, member)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_describe_type(member) for member in typing.get_args(expected))}, "
                          f"got {value!r}")
    raise ConfigError(f"{key}: unsupported type {expected!r}")  # pragma: no cover - schema bug


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
                raise ConfigError(
                    f"{origin}: unknown section [{section}]; known sections: {', '.join(sorted(section_names))}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: [{section}] must be a table of keys")
            merged.setdefault(section, {}).update(values)
    return merged


def build_config(layers: list[tuple[str, dict]]) -> Config:
    """Apply layers of ``{section: {key: value}}`` (file, then command line) to the defaults."""
    config = Config()
    merged = _merge_layers(layers)
    for section, values in merged.items():
        section_object = getattr(config, section)
        types = _section_types(type(section_object))
        # A model preset fills architecture keys that no layer set explicitly.
        if isinstance(section_object, ModelConfig):
            preset = values.get("preset", section_object.preset)
            if not isinstance(preset, str) or preset not in MODEL_PRESETS:
                raise ConfigError(
                    f"{section}.preset: unknown preset {preset!r}; known: {', '.join(MODEL_PRESETS)}"
                )
            values = {**MODEL_PRESETS[preset], **values}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown key {section}.{key}; known keys of [{section}]: {', '.join(sorted(types))}"
                )
            setattr(section_object, key, _coerce(f"{section}.{key}", value, types[key]))
    # Sections no layer mentioned still get their preset's architecture.
    for field in dataclasses.fields(Config):
        section_object = getattr(config, field.name)
        if isinstance(section_object, ModelConfig) and field.name not in merged:
            for key, value in copy.deepcopy(MODEL_PRESETS[section_object.preset]).items():
                setattr(section_object, key, value)
    validate(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                default_section: str | None = None) -> Config:
    """Read ``path`` (or only the defaults when None) and apply ``KEY=VALUE`` overrides."""
    layers: list[tuple[str, dict]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            layers.append((str(path), tomllib.loads(path.read_text(encoding="utf-8"))))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    if overrides:
        layers.append(("command line", parse_overrides(overrides, default_section)))
    return build_config(layers)


_CHOICES = {
    ("get_data", "source_kind"): {"local", "drive"},
    ("get_data", "drive_auth"): {"service_account", "oauth"},
    ("consolidate", "link_mode"): {"auto", "hardlink", "copy"},
    ("model_evaluation_4", "test_time_augmentation"): {"none", "flip", "flip_crops"},
    ("model_evaluation_6", "test_time_augmentation"): {"none", "flip", "flip_crops"},
    ("labels", "layout"): {"auto", "affectnet_csv", "affectnet_npy", "class_folders"},
    ("model_4", "input_mode"): {"tf_data", "memory", "arrays", "device"},
    ("model_4", "monitor"): {"val_loss", "val_accuracy"},
    ("model_4", "decision_calibration"): {"none", "prior_matching", "recall_floor"},
    ("model_6", "decision_calibration"): {"none", "prior_matching", "recall_floor"},
    ("model_6", "monitor"): {"val_loss", "val_accuracy"},
    ("model_4", "architecture"): {"custom_cnn", "vgg"},
    ("model_4", "optimizer"): {"adam", "adamw", "sgd"},
    ("model_6", "optimizer"): {"adam", "adamw", "sgd"},
    ("model_4", "learning_rate_schedule"): {"constant", "cosine"},
    ("model_6", "learning_rate_schedule"): {"constant", "cosine"},
    ("model_6", "input_mode"): {"tf_data", "memory", "arrays", "device"},
    ("model_4", "strategy"): {"auto", "none", "mirrored", "multi_worker"},
    ("model_6", "strategy"): {"auto", "none", "mirrored", "multi_worker"},
    ("model_4", "resize_in_model"): {True, False, "auto"},
    ("model_6", "resize_in_model"): {True, False, "auto"},
    ("model_4", "xla"): {"auto", "on", "off"},
    ("model_6", "xla"): {"auto", "on", "off"},
    ("generator", "source"): {"files", "tfrecords"},
    ("predict", "detector"): {"haar", "yunet"},
    ("predict", "test_time_augmentation"): {"model", "none", "flip", "flip_crops"},
}


def validate(config: Config) -> None:
    """Check values that a type alone cannot: choices and ranges."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            # Booleans as TOML spells them (resize_in_model's true, false or "auto").
            names = sorted(json.dumps(choice) if isinstance(choice, bool) else choice for choice in choices)
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(names)}")
    if config.generator.mixup < 0:
        raise ConfigError(f"generator.mixup: must not be negative, got {config.generator.mixup}")
    split = config.split
    if not 0.0 <= split.test_fraction < 1.0:
        raise ConfigError(f"split.test_fraction: must be in [0, 1), got {split.test_fraction}")
    if not 0.0 < split.max_valid_fraction <= 1.0:
        raise ConfigError(f"split.max_valid_fraction: must be in (0, 1], got {split.max_valid_fraction}")
    if config.get_data.max_expansion_ratio < 1 or config.get_data.max_extracted_gb < 1:
        raise ConfigError("get_data.max_expansion_ratio and get_data.max_extracted_gb: must be at least 1, got "
                          f"{config.get_data.max_expansion_ratio} and {config.get_data.max_extracted_gb}")
    if split.valid_per_class < 0:
        raise ConfigError(f"split.valid_per_class: must not be negative, got {split.valid_per_class}")
    for name in ("model_4", "model_6"):
        model = getattr(config, name)
        if model.image_size < 32:
            raise ConfigError(f"{name}.image_size: must be at least 32, got {model.image_size}")
        if not 0.0 < model.decision_recall_floor < 1.0:
            raise ConfigError(f"{name}.decision_recall_floor: must be in (0, 1), got {model.decision_recall_floor}")
        if model.channels not in (1, 3):
            raise ConfigError(f"{name}.channels: must be 1 or 3, got {model.channels}")
        if model.equalize_histogram and model.channels != 1:
            raise ConfigError(f"{name}.equalize_histogram: equalises grey images; needs {name}.channels = 1, "
                              f"got {model.channels}")
        if model.batch_size < 1 or model.epochs < 1:
            raise ConfigError(f"{name}: batch_size and epochs must be positive")
        if model.steps_per_execution < 1:
            raise ConfigError(f"{name}.steps_per_execution: must be at least 1, got {model.steps_per_execution}")
        if not 0.0 < model.class_balanced_beta < 1.0 and model.class_balanced_beta != 0.0:
            raise ConfigError(f"{name}.class_balanced_beta: must be 0 (no weighting) or in (0, 1)")
        if not 0.0 <= model.frozen_fraction <= 1.0:
            raise ConfigError(f"{name}.frozen_fraction: must be in [0, 1], got {model.frozen_fraction}")
        if not model.run_name:
            raise ConfigError(f"{name}.run_name: must not be empty")
        if model.ensemble_runs:
            if len(model.ensemble_runs) < 2 or len(set(model.ensemble_runs)) != len(model.ensemble_runs):
                raise ConfigError(f"{name}.ensemble_runs: needs two or more different run names, got "
                                  f"{model.ensemble_runs}")
            if model.run_name in model.ensemble_runs:
                raise ConfigError(f"{name}.ensemble_runs: the ensemble's own run_name {model.run_name!r} "
                                  "cannot be one of its members")
            for member in model.ensemble_runs:
                if not member or member in (".", "..") or "/" in member or "\\" in member:
                    raise ConfigError(f"{name}.ensemble_runs: {member!r} is not a run name (a folder name "
                                      "under paths.models)")
        if model.start_from_run:
            if model.ensemble_runs:
                raise ConfigError(f"{name}: start_from_run and ensemble_runs exclude each other (an ensemble "
                                  "is built, not trained)")
            if model.start_from_run == model.run_name:
                raise ConfigError(f"{name}.start_from_run: a run cannot start from itself ({model.run_name!r})")
            if model.start_from_run in (".", "..") or "/" in model.start_from_run or "\\" in model.start_from_run:
                raise ConfigError(f"{name}.start_from_run: {model.start_from_run!r} is not a run name (a folder "
                                  "name under paths.models)")
        if model.strategy in ("mirrored", "multi_worker") and model.input_mode != "tf_data":
            raise ConfigError(f"{name}.strategy = {model.strategy!r} needs input_mode = \"tf_data\"")
    if config.generator.tfrecord_shard_images < 1:
        raise ConfigError("generator.tfrecord_shard_images: must be at least 1")


def to_toml(config: Config) -> str:
    """Write the whole resolved configuration as TOML (used for config/default.toml and runs)."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
