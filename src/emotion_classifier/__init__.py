"""Emotion image classifier: the research pipeline (stages, models, evaluation, inference).

This file is the one place that sets environment variables: TensorFlow reads them once, when it
is first imported, so they are set when the package is, before any of its modules imports
TensorFlow. Every stage script, the demo and the benchmarks import the package first.
"""

import os
import platform

# TensorFlow prints several lines of C++ start-up notices (oneDNN, CUDA not found, CPU features)
# on every import, burying each stage's own output. Keep warnings and errors; a user who wants
# the notices sets TF_CPP_MIN_LOG_LEVEL=0 themselves (setdefault leaves their choice alone).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's x86 Linux wheels carry oneDNN's kernels but turn them on by default only on CPUs
# with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX. On the many cloud CPUs without those (AMD EPYC
# before Zen 4, Intel Xeons before Cascade Lake) its generic Eigen kernels run instead, and the
# FER models train 1.4 times slower on 2 AVX2-only EPYC cores (bench/onednn.py measures it).
# So ask for oneDNN on every x86-64 CPU unless the user chose (TF_ENABLE_ONEDNN_OPTS=0 turns it
# off). TensorFlow reads this once, when it is first imported: it has no effect on a process
# that imported TensorFlow before this package. Arm is left to TensorFlow's own choice.
if platform.machine().lower() in {"x86_64", "amd64"}:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
