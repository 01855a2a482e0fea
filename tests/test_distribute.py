"""Strategies: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy with two local
workers, the choice of strategy, mixed precision and XLA settings, oneDNN on x86 CPUs."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pandas as pd
import pytest

from emotion_classifier import distribute
from emotion_classifier.errors import PipelineError
from emotion_classifier.config import to_toml
from test_training import tiny_config

SOURCE_DIR = Path(__file__).parents[1] / "src"
TESTS_DIR = Path(__file__).parent

# Runs one training in a fresh interpreter: logical devices must be set before TensorFlow
# starts, and a multi-worker strategy must be created before any other TensorFlow work.
CHILD_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    logical_cpus = int(sys.argv[2])
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)])
    from emotion_classifier import distribute, training
    from emotion_classifier.config import load_config

    config = load_config(sys.argv[1])
    strategy = distribute.make_strategy(config.model_4.strategy)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    training.train(config, "model_4")
    print("RESULT " + json.dumps({"replicas": replicas, "chief": distribute.is_chief(strategy)}))
""")


def child_environment(tf_config: dict | None = None) -> dict:
    environment = dict(os.environ, PYTHONPATH=f"{SOURCE_DIR}{os.pathsep}{TESTS_DIR}",
                       TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    environment.pop("TF_CONFIG", None)
    if tf_config is not None:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return environment


def result_of(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def distributed_config(tmp_path: Path, strategy: str) -> Path:
    """The tiny training configuration, with enough images that the loss falls in 4 epochs.

    13 training images per class and batches of 8 (4 per replica on two devices): with 3 images
    per class and 2 per replica, BatchNormalization's statistics were so noisy that the loss
    sometimes rose over the 8 steps of 4 epochs.
    """
    config = tiny_config(tmp_path, epochs=4, per_class=16)
    config.model_4.batch_size = 8
    config.model_4.strategy = strategy
    config.model_4.learning_rate = 0.01
    config.model_4.class_balanced_beta = 0.0
    config.generator.augment = False
    config_path = tmp_path / "distributed.toml"
    config_path.write_text(to_toml(config))
    return config_path


def assert_trained_and_saved_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "models" / "model_4"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # Each epoch logged once (by the chief only), and the training loss fell.
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    assert metrics["loss"].iloc[-1] < metrics["loss"].iloc[0]
    assert (run_dir / "best.keras").is_file() and (run_dir / "training_summary.json").is_file()
    assert len(list((run_dir / "checkpoint").glob("epoch_*.keras"))) == 1
    saved_models = [path for path in tmp_path.rglob("*.keras")]
    assert sorted(path.name for path in saved_models) == ["best.keras", "epoch_0004.keras"]


@pytest.mark.slow
@pytest.mark.shared_data  # too few sample images for the loss to fall reliably
def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    config_path = distributed_config(tmp_path, "mirrored")
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    finished = subprocess.run([sys.executable, str(script), str(config_path), "2"], cwd=tmp_path,
                              env=child_environment(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert result_of(finished.stdout) == {"replicas": 2, "chief": True}
    assert_trained_and_saved_once(tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


# Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585); training works
# around it (training._work_around_multi_worker_fit), and this test fails if a Keras release
# changes what the work-around relies on.
@pytest.mark.slow
@pytest.mark.shared_data  # too few sample images for the loss to fall reliably
def test_multi_worker_strategy_trains_with_two_local_workers(tmp_path):
    config_path = distributed_config(tmp_path, "auto")
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(script), str(config_path), "1"], cwd=tmp_path,
            env=child_environment(tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(stdout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    # "auto" chose the multi-worker strategy from TF_CONFIG; worker 0 is the chief.
    assert [result_of(output) for output in outputs] == [
        {"replicas": 2, "chief": True}, {"replicas": 2, "chief": False},
    ]
    assert_trained_and_saved_once(tmp_path)


def test_auto_strategy_follows_tf_config_and_backend(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_strategy_name("auto", backend="jax") == "none"
    assert distribute.resolve_strategy_name("none", backend="tensorflow") == "none"
    with pytest.raises(PipelineError, match="TensorFlow backend"):
        distribute.resolve_strategy_name("mirrored", backend="jax")
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.resolve_strategy_name("tpu", backend="tensorflow")
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.resolve_strategy_name("auto", backend="tensorflow") == "multi_worker"
    assert distribute.cluster_size(distribute.cluster_from_environment()) == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(PipelineError, match="TF_CONFIG is not valid JSON"):
        distribute.cluster_from_environment()


def test_chief_is_the_chief_task_or_worker_zero_without_one(monkeypatch):
    class Resolver:
        def __init__(self, task_type, task_id):
            self.task_type, self.task_id = task_type, task_id

    class Strategy:
        def __init__(self, task_type, task_id):
            self.cluster_resolver = Resolver(task_type, task_id)

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}}))
    assert distribute.is_chief(None)
    assert distribute.is_chief(Strategy("worker", 0)) and not distribute.is_chief(Strategy("worker", 1))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}}))
    assert distribute.is_chief(Strategy("chief", 0)) and not distribute.is_chief(Strategy("worker", 0))


def test_mixed_precision_policy_is_scoped_and_outputs_stay_float32(monkeypatch):
    from emotion_classifier.models import build_model_4

    # As on a CPU with bfloat16 instructions, whatever this machine's CPU has.
    monkeypatch.setattr(distribute, "cpu_has_bfloat16", lambda: True)
    before = keras.config.dtype_policy().name
    with distribute.precision_policy(True):
        model = build_model_4((32, 32, 1), 3, conv_filters=[4, 8], dense_units=[8])
    assert keras.config.dtype_policy().name == before
    # bfloat16 on such a CPU (fast through oneDNN), float16 where an older GPU is present.
    expected = "float16" if distribute.mixed_precision_policy_name() == "mixed_float16" else "bfloat16"
    assert model.get_layer("conv_1").compute_dtype == expected
    assert model.get_layer("conv_1").variable_dtype == "float32"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", False),   # AVX-512 without BF16 (emulated, slow)
    ("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni", True),  # AVX512-BF16
    ("flags\t\t: fpu avx512f amx_bf16 amx_tile", True),        # AMX
    ("Features\t: fp asimd sve bf16 i8mm", True),                # Arm with BF16
    ("Features\t: fp asimd crc32", False),
    ("processor\t: 0", None),                                   # no flags line: unknown
])
def test_cpu_bfloat16_is_read_from_cpuinfo(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n", encoding="utf-8")
    assert distribute.cpu_has_bfloat16(str(cpuinfo)) is expected
    assert distribute.cpu_has_bfloat16(str(tmp_path / "missing")) is None


def test_mixed_precision_falls_back_to_float32_on_a_cpu_without_bfloat16(monkeypatch, caplog):
    if any("gpu" in str(device).lower() for device in keras.distribution.list_devices()):
        pytest.skip("a GPU decides the policy here, not the CPU")
    monkeypatch.setattr(distribute, "cpu_has_bfloat16", lambda: False)
    with caplog.at_level("WARNING", logger=distribute.logger.name):
        assert distribute.mixed_precision_policy_name() == "float32"
    assert "shows no bfloat16 instructions" in caplog.text
    with distribute.precision_policy(True):
        assert keras.config.dtype_policy().name == "float32"
    monkeypatch.setattr(distribute, "cpu_has_bfloat16", lambda: None)  # unknown CPU: float32 too
    assert distribute.mixed_precision_policy_name() == "float32"
    monkeypatch.setattr(distribute, "cpu_has_bfloat16", lambda: True)
    assert distribute.mixed_precision_policy_name() == "mixed_bfloat16"


def python_output(code: str, environment: dict) -> list[str]:
    finished = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                              timeout=300, check=True)
    return finished.stdout.split()


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}, reason="oneDNN is asked for on x86-64 only")
def test_importing_the_package_turns_onednn_on_unless_the_user_chose():
    without = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    read_back = "import os, emotion_classifier; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    assert python_output(read_back, without) == ["1"]
    assert python_output(read_back, {**without, "TF_ENABLE_ONEDNN_OPTS": "0"}) == ["0"]  # the user's choice stays
    # TensorFlow, imported after the package, runs its oneDNN kernels whatever this CPU's own default.
    on = python_output("import emotion_classifier; from tensorflow.python.util import _pywrap_util_port; "
                       "print(_pywrap_util_port.IsMklEnabled())", without)
    assert on[-1] == "True"
