"""The environment of a Python process as on the GPU machine: Keras on the JAX backend (on the
CPU here), and packages that machine lacks (TensorFlow first) refusing to import; and training
runs in such a process."""

from __future__ import annotations

import os
import subprocess
import sys
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


def run_folders_trained_without_tensorflow(child_script: str, tmp_path: Path) -> list[Path]:
    """Run ``child_script`` (``python -c``, given ``tmp_path`` and the tests folder as its arguments)
    in that environment; the run folders it prints after "RUN", which it prints only when
    TensorFlow stayed out."""
    result = subprocess.run([sys.executable, "-c", child_script, str(tmp_path), str(Path(__file__).parent)],
                            capture_output=True, text=True, env=jax_environment(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [Path(name) for name in result.stdout.split("RUN", 1)[1].split()]
