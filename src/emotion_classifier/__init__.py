"""Emotion image classifier: the research pipeline (stages, models, evaluation, inference)."""

__version__ = "0.1.0"
