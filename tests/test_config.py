"""The configuration: defaults, files, overrides, and errors that name the key."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from emotion_classifier import config as config_module
from emotion_classifier.config import Config, ConfigError, load_config

REPOSITORY = Path(__file__).resolve().parents[1]


def test_default_toml_lists_every_key_with_its_default():
    on_disk = tomllib.loads((REPOSITORY / "config" / "default.toml").read_text())
    defaults = Config()
    assert on_disk == {field.name: {key: getattr(getattr(defaults, field.name), key)
                                    for key in config_module.section_keys(getattr(defaults, field.name))}
                       for field in dataclasses.fields(Config)}
    # The training keys once, under [training]; each model section with its own keys only.
    assert "epochs" in on_disk["training"] and "epochs" not in on_disk["model_4"]
    assert "conv_filters" in on_disk["model_4"] and "conv_filters" not in on_disk["model_6"]
    assert "weights" in on_disk["model_6"] and "weights" not in on_disk["model_4"]


@pytest.mark.parametrize("name", ["sample.toml", "affectnet.toml", "default.toml", "fer2013.toml",
                                  "fer2013_cpu.toml", "fer2013_gpu.toml"])
def test_shipped_configurations_load(name):
    load_config(REPOSITORY / "config" / name)


def test_training_keys_apply_to_both_models_unless_a_model_section_sets_them(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[training]\nepochs = 9\nmixed_precision = true\n[model_6]\nepochs = 3\n')
    config = load_config(path, ["training.batch_size=16", "model_4.batch_size=8"])
    assert (config.model_4.epochs, config.model_6.epochs) == (9, 3)
    assert (config.model_4.batch_size, config.model_6.batch_size) == (8, 16)
    assert config.model_4.mixed_precision and config.model_6.mixed_precision
    assert config.training.epochs == 9
    # The resolved sections carry the model keys under the same names.
    assert config.model_4.preset == "seed" and config.model_6.weights == "imagenet"
    assert config.model_6.preset == "resnet50"  # the one network of model_6, not a setting


def test_file_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model_4]\nepochs = 7\nimage_size = 64\n[split]\nseed = 5\n')
    config = load_config(path, ["epochs=2", "split.valid_per_class=10", "paths.data_dir=\"elsewhere\""],
                         default_section="model_4")
    assert config.model_4.epochs == 2
    assert config.model_4.image_size == 64
    assert config.split.seed == 5
    assert config.split.valid_per_class == 10
    assert config.paths.data_dir == "elsewhere"
    assert config.paths.processed == Path("elsewhere") / "processed"


def test_override_value_without_quotes_is_text_and_lists_parse():
    config = load_config(None, ["paths.data_dir=/tmp/x", "model_4.conv_filters=[8, 16]"], "model_4")
    assert config.paths.data_dir == "/tmp/x"
    assert config.model_4.conv_filters == [8, 16]


def test_seed_preset_is_the_original_architecture():
    config = load_config(None)
    assert config.model_4.preset == "seed"
    assert config.model_4.conv_filters == [64, 128, 256, 256]
    assert config.model_4.dense_units == [128, 64]
    assert config.model_4.image_size == 256
    assert config.model_4.batch_size == 64
    assert config.model_4.learning_rate == pytest.approx(1e-3)
    assert config.model_4.class_balanced_beta == pytest.approx(0.9999)


def test_explicit_keys_win_over_the_preset():
    config = load_config(None, ["conv_filters=[4, 8]"], "model_4")
    assert config.model_4.conv_filters == [4, 8]
    assert config.model_4.dense_units == [128, 64]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model_4.epoch=3"], "unknown key model_4.epoch"),
        (["model_6.conv_filters=[4]"], "unknown key model_6.conv_filters"),
        (["model_4.weights=\"none\""], "unknown key model_4.weights"),
        (["training.run_name=\"x\""], "unknown key training.run_name"),
        (["model_6.preset=\"seed\""], "unknown key model_6.preset"),
        (["training.epochs=0"], "training.epochs: must be in [1, inf)"),
        (["model_6.epochs=0"], "model_6.epochs: must be in [1, inf)"),
        (["generator.zoom=1.5"], "generator.zoom: must be in [0, 1)"),
        (["model_4.conv_filters=[8, 0]"], "model_4.conv_filters: must be in [1, inf), got 0"),
        (["model_4.channels=2"], "model_4.channels: 2 is not one of 1, 3"),
        (["export.tflite_variants=[\"int4\"]"], "export.tflite_variants: 'int4' is not one of"),
        (["model_4.equalize_histogram=true"], "model_4.equalize_histogram equalises grey images: it needs "
                                              "model_4.channels = 1"),
        (["generator.mixup=0.2"], "generator.mixup = 0.2 needs training.input_mode = \"memory\""),
        (["generator.mixup=0.2", "training.input_mode=\"memory\"", "model_6.input_mode=\"arrays\""],
         "generator.mixup = 0.2 needs model_6.input_mode = \"memory\""),
        (["training.input_mode=\"memory\"", "generator.source=\"tfrecords\""],
         "generator.source = 'tfrecords' is read by input_mode = \"tf_data\" only; training.input_mode"),
        (["model_4.strategy=\"mirrored\"", "training.input_mode=\"memory\""],
         "model_4.strategy = 'mirrored' needs training.input_mode = \"tf_data\""),
        (["training.warmup_epochs=2"], "training.warmup_epochs = 2 needs training.learning_rate_schedule = \"cosine\""),
        (["training.learning_rate_schedule=\"cosine\"", "training.warmup_epochs=5"],
         "training.warmup_epochs = 5 must be less than training.epochs = 5"),
        (["model_4.start_from_run=\"a\"", "model_4.ensemble_runs=[\"a\", \"b\"]"],
         "model_4.start_from_run and model_4.ensemble_runs exclude each other"),
        (["model_4.ensemble_runs=[\"a\"]"], "model_4.ensemble_runs: needs two or more different run names"),
        (["model_4.ensemble_runs=[\"a\", \"model_4\"]"], "model_4.ensemble_runs: needs two or more"),
        (["model_6.start_from_run=\"model_6\""], "model_6.start_from_run: 'model_6' is not the run name of another"),
        (["model_6.run_name=\"model_4\""], "model_4.run_name and model_6.run_name are both 'model_4'"),
        (["model_4.architecture=\"custom_cnn\"", "model_4.conv_filters=[]"], "model_4.conv_filters is empty"),
        (["get_data.source_kind=\"drive\""], "get_data.source_kind = \"drive\" needs get_data.drive_folder_id"),
        (["nosuchsection.key=1"], "unknown section [nosuchsection]"),
        (["model_4.epochs=\"three\""], "model_4.epochs: expected an integer"),
        (["model_4.epochs=2.5"], "model_4.epochs: expected an integer"),
        (["split.use_source_evaluation_split=1"], "expected true or false"),
        (["model_4.conv_filters=[1, \"a\"]"], "model_4.conv_filters[1]"),
        (["labels.layout=\"xml\""], "labels.layout"),
        (["split.test_fraction=1.5"], "split.test_fraction"),
        (["model_4.preset=\"huge\""], "model_4.preset: unknown preset"),
        (["model_4.image_size=8"], "model_4.image_size"),
        (["no_equals_sign"], "KEY=VALUE"),
        (["model_6.decision_recall_floor=1.0"], "model_6.decision_recall_floor: must be in (0, 1)"),
        (["model_4.decision_calibration=\"floor\""], "model_4.decision_calibration: 'floor' is not one of"),
    ],
)
def test_bad_values_stop_with_a_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides, default_section="model_4")
    assert message in str(error.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[split]\nsed = 3\n")
    with pytest.raises(ConfigError, match="unknown key split.sed"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model_4\nepochs = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_resolved_configuration_round_trips_through_toml(tmp_path):
    config = load_config(None, ["epochs=3", "split.drop_classes=[\"none\"]", "training.epochs=4"], "model_4")
    path = tmp_path / "resolved.toml"
    path.write_text(config_module.to_toml(config))
    assert dataclasses.asdict(load_config(path)) == dataclasses.asdict(config)


@pytest.mark.parametrize(
    "override, message",
    [
        ("split.valid_per_class=-1", "split.valid_per_class: must be in [0, inf), got -1"),
        ("generator.zoom=1.0", "generator.zoom: must be in [0, 1), got 1.0"),
        ("training.learning_rate=0", "training.learning_rate: must be in (0, inf), got 0.0"),
        ("model_4.learning_rate=0", "model_4.learning_rate: must be in (0, inf), got 0.0"),
        ("model_4.conv_dropout=1", "model_4.conv_dropout: must be in [0, 1), got 1.0"),
        ("model_4.conv_filters=[8, 0]", "model_4.conv_filters: must be in [1, inf), got 0"),
        ("predict.min_confidence=-1", "predict.min_confidence: must be in [0, inf), got -1.0"),
        ("get_data.max_expansion_ratio=0", "get_data.max_expansion_ratio: must be in [1, inf), got 0"),
    ],
)
def test_impossible_numbers_stop_at_start_up_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value) == message or str(error.value).startswith(message)


def test_every_numeric_setting_has_a_range_and_the_defaults_are_inside():
    config = Config()
    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(getattr(config, section.name)):
            numeric = field.type in ("int", "float", "list[int]", "list[float]")
            if numeric and not field.name.endswith("seed"):
                assert field.metadata.get("allowed"), f"{section.name}.{field.name} has no range"
    config_module.validate(config)


@pytest.mark.parametrize("key", ["data_dir", "models_dir", "reports_dir"])
def test_folder_settings_that_name_a_file_stop_at_start_up(tmp_path, key):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for value in (a_file, a_file / "below"):
        with pytest.raises(ConfigError, match=f"paths.{key}: .*a_file is not a folder"):
            load_config(None, [f"paths.{key}=\"{value}\""])


def test_a_file_inside_the_data_folder_where_a_stage_folder_belongs_stops_at_start_up(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").write_text("")
    with pytest.raises(ConfigError, match="paths.data_dir: .*processed is not a folder"):
        load_config(None, [f"paths.data_dir=\"{tmp_path / 'data'}\""])


def test_config_files_that_are_not_utf8_or_not_readable_name_the_file(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[labels]\n# caf\u00e9\nworkers = 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.toml: not UTF-8 text"):
        load_config(latin)
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes("[labels]\nworkers = 1\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"utf16\.toml: not UTF-8 text"):
        load_config(utf16)
    with pytest.raises(ConfigError, match="a folder, not a configuration file"):
        load_config(tmp_path)
