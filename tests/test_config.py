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
    defaults = Config().to_dict()
    assert on_disk == defaults


@pytest.mark.parametrize("name", ["sample.toml", "affectnet.toml", "default.toml"])
def test_shipped_configurations_load(name):
    load_config(REPOSITORY / "config" / name)


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
        (["model_4.resize_in_model=\"on\""], "model_4.resize_in_model: 'on' is not one of auto, false, true"),
        (["model_6.resize_in_model=2"], "model_6.resize_in_model: expected bool or str, got 2"),
        (["model_6.decision_recall_floor=1.0"], "model_6.decision_recall_floor: must be in (0, 1)"),
        (["model_4.decision_calibration=\"floor\""], "model_4.decision_calibration: 'floor' is not one of"),
    ],
)
def test_bad_values_stop_with_a_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides, default_section="model_4")
    assert message in str(error.value)


def test_resize_in_model_takes_true_false_or_auto():
    assert Config().model_4.resize_in_model == "auto" and Config().model_6.resize_in_model == "auto"
    for text, value in (("true", True), ("false", False), ("auto", "auto"), ("\"auto\"", "auto")):
        assert load_config(None, [f"resize_in_model={text}"], "model_4").model_4.resize_in_model == value


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[inspect]\nsample_per_class = 3\n")
    with pytest.raises(ConfigError, match="unknown key inspect.sample_per_class"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model_4\nepochs = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_resolved_configuration_round_trips_through_toml(tmp_path):
    config = load_config(None, ["epochs=3", "split.drop_classes=[\"none\"]"], "model_4")
    path = tmp_path / "resolved.toml"
    path.write_text(config_module.to_toml(config))
    assert dataclasses.asdict(load_config(path)) == dataclasses.asdict(config)
