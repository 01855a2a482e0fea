"""The stage scripts in the order ``make run`` runs them: ``(script, function, section)``, where
``function`` does the stage's work and ``section`` is the configuration section a bare
``KEY=VALUE`` override sets (None for a stage without settings of its own).

Tools that run several stages in one process (tools/gpu_recipe.py, the chain tests) take them
from here, through ``cli.run_configured`` as the scripts do.
"""

from __future__ import annotations

from emotion_classifier import acquire, consolidate, evaluation, generator, inspect_images, labels, splits, training

STAGES = (
    ("get_data.py", acquire.run, "get_data"),
    ("consolidate_data.py", consolidate.run, "consolidate"),
    ("get_filenames_and_labels.py", labels.run, "labels"),
    ("inspect_images.py", inspect_images.run, None),
    ("train_valid_test_clean.py", splits.run, "split"),
    ("custom_generator.py", generator.run, "generator"),
    ("model_4.py", training.run_model_4, "model_4"),
    ("model_evaluation_4.py", evaluation.run_model_evaluation_4, "model_evaluation_4"),
    ("model_6.py", training.run_model_6, "model_6"),
    ("model_evaluation_6.py", evaluation.run_model_evaluation_6, "model_evaluation_6"),
)
# The stages that bring the data in and draw the splits, before any model.
DATA_STAGES = STAGES[:5]
