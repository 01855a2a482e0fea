"""The environment of a Python process as on the GPU machine: Keras on the JAX backend (on the
CPU here), and packages that machine lacks (TensorFlow first) refusing to import."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def jax_environment(tmp_path: Path, absent: Iterable[str] = ("tensorflow",)) -> dict[str, str]:
    """``os.environ`` for a child process in which each package of ``absent`` raises ImportError."""
    blocked = tmp_path / "blocked"
    for name in absent:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f'raise ImportError("{name} is not installed here")\n')
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")])}
