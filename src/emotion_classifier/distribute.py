"""Training on several devices and machines: tf.distribute strategies, mixed precision, XLA.

``[model_4] strategy`` (and ``[model_6]``) chooses how training uses the hardware:

- ``none``: TensorFlow's default strategy, one device (and the only choice on JAX or PyTorch);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every GPU of this machine (or every
  logical CPU device when there is no GPU, which is how the tests run it);
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across machines, each started
  with the same command and a ``TF_CONFIG`` environment variable naming the cluster and its task;
- ``auto``: ``multi_worker`` when ``TF_CONFIG`` names a cluster of more than one task,
  ``mirrored`` with two or more GPUs, else ``none``.

The batch size in the configuration is the global batch: each of N replicas gets a 1/N share of
every batch. Only the chief (task ``chief``, or ``worker`` 0 when the cluster has no chief)
writes the run folder; the other workers train and write nothing.

TensorFlow is imported inside the functions, so importing this module costs nothing and the
``none`` strategy on another Keras backend never touches TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Iterator

import keras

from emotion_classifier.errors import PipelineError

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("auto", "none", "mirrored", "multi_worker")


def cluster_from_environment() -> dict:
    """The parsed ``TF_CONFIG`` (``{}`` when unset); a malformed value is a PipelineError."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise PipelineError(f"TF_CONFIG is not valid JSON: {error}") from error
    if not isinstance(parsed, dict) or not isinstance(parsed.get("cluster", {}), dict):
        raise PipelineError('TF_CONFIG must be {"cluster": {...}, "task": {"type": ..., "index": ...}}')
    return parsed


def cluster_size(tf_config: dict) -> int:
    """Number of training tasks (chief and workers) a ``TF_CONFIG`` describes."""
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def resolve_strategy_name(requested: str, backend: str | None = None) -> str:
    """The strategy ``requested`` stands for on this machine: never "auto" in the result."""
    if requested not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {requested!r}")
    backend = backend or keras.backend.backend()
    if backend != "tensorflow":
        if requested in ("mirrored", "multi_worker"):
            raise PipelineError(
                f"strategy {requested!r} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
                f"the backend is {backend!r}"
            )
        return "none"
    if requested != "auto":
        return requested
    if cluster_size(cluster_from_environment()) > 1:
        return "multi_worker"
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "none"


def make_strategy(requested: str):
    """A ``tf.distribute.Strategy`` for ``requested``, or None for one device.

    None means: no strategy scope at all, which keeps the single-device path backend-neutral.
    """
    name = resolve_strategy_name(requested)
    if name == "none":
        return None
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
        if len(devices) < 2:
            logger.warning("strategy mirrored on a single device (%s)", devices[0])
        # Collective all-reduce over NCCL needs GPUs; on CPU devices the plain copy-based
        # reduction is the one that works everywhere.
        cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross_device_ops)
    else:
        tf_config = cluster_from_environment()
        if cluster_size(tf_config) < 1 or "task" not in tf_config:
            raise PipelineError(
                "strategy multi_worker needs TF_CONFIG naming the cluster and this task, for example "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    logger.info("training with %s on %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def is_multi_worker(strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy (a cluster of worker processes)."""
    if strategy is None:
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """True for the task that writes the run folder (always true without a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    task_id = int(getattr(resolver, "task_id", 0) or 0)
    if task_type == "chief":
        return True
    has_chief = bool(cluster_from_environment().get("cluster", {}).get("chief"))
    return task_type == "worker" and task_id == 0 and not has_chief


@contextlib.contextmanager
def strategy_scope(strategy) -> Iterator[None]:
    """``strategy.scope()``, or nothing for one device."""
    if strategy is None:
        yield
        return
    with strategy.scope():
        yield


# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic: x86's AVX512-BF16 and AMX, Arm's BF16.
CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bfloat16 instructions (None: unknown, no readable /proc/cpuinfo)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                # x86 lists "flags", Arm "Features"; the first processor speaks for all.
                if key.strip().lower() in ("flags", "features"):
                    return not CPU_BFLOAT16_FLAGS.isdisjoint(value.split())
    except OSError:
        return None
    return None


def mixed_precision_policy_name() -> str:
    """The mixed policy that is fast on the devices at hand ("float32" where none is).

    GPUs compute fastest in float16 (with loss scaling), or bfloat16 from compute capability
    8.0. CPUs have no fast float16 path; those with bfloat16 instructions (AVX512-BF16, AMX)
    run bfloat16 matrix work through oneDNN: on a 2-core AMD EPYC with AVX512-BF16 the fer_vgg
    preset trained 2.6 times faster under mixed_bfloat16. CPUs without them emulate it: on a
    2-core Xeon with AVX-512 but no BF16 the FER presets trained about 3 times slower
    (bench/mixed_precision.py), so there mixed precision falls back to float32.
    """
    devices = keras.distribution.list_devices()
    if any("gpu" in str(device).lower() or "cuda" in str(device).lower() for device in devices):
        # GPUs of compute capability 8.0 on (A100, H100, recent consumer cards) have bfloat16
        # tensor cores: as fast as float16 and, with float32's range, no loss scaling needed.
        capability = _gpu_compute_capability()
        return "mixed_bfloat16" if capability is not None and capability >= (8, 0) else "mixed_float16"
    if cpu_has_bfloat16():
        return "mixed_bfloat16"
    logger.warning("mixed_precision is on but this CPU shows no bfloat16 instructions (%s in /proc/cpuinfo); "
                   "emulated bfloat16 trains about 3 times slower than float32, so computing in float32",
                   ", ".join(sorted(CPU_BFLOAT16_FLAGS)))
    return "float32"


def _gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, as the active backend reports it (None: unknown)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            text = getattr(jax.devices()[0], "compute_capability", None)
            return tuple(int(part) for part in str(text).split(".")[:2]) if text else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return tuple(tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")) if gpus else None
        if backend == "torch":
            import torch

            return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    return None


@contextlib.contextmanager
def precision_policy(mixed_precision: bool) -> Iterator[None]:
    """Build models under a mixed policy when asked; the previous policy comes back afterwards.

    Keras keeps weights in float32 (and, for float16, wraps the optimizer in a loss-scale
    optimizer by itself); the models' softmax outputs are float32 so the loss is computed in full
    precision.
    """
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy(mixed_precision_policy_name())
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def shard_for_workers(dataset, strategy):
    """Shard a dataset of files by element (not by file) across the workers of a cluster.

    Keras distributes a ``tf.data.Dataset`` itself; the element policy (DATA) is the one that
    works for every source, including a list of image paths, which has no files to shard by.
    """
    if strategy is None:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)

