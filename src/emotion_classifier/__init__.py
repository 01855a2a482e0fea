"""Emotion image classifier: the research pipeline (stages, models, evaluation, inference)."""

import os

# TensorFlow prints several lines of C++ start-up notices (oneDNN, CUDA not found, CPU features)
# on every import, burying each stage's own output. Keep warnings and errors; a user who wants
# the notices sets TF_CPP_MIN_LOG_LEVEL=0 themselves (setdefault leaves their choice alone).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
