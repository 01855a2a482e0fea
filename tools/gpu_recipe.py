#!/usr/bin/env python3
"""The GPU recipe of config/fer2013_gpu.toml, from FER2013's image folders to the evaluation on val/.

Runs the stages of `make run` that the recipe needs (get_data, consolidate, labels, inspect,
split, model_4, model_evaluation_4) in one process, under --work, and copies what a person looks
at into --output: the best model, its model_info.json, training_summary.json, metrics.csv,
history.png, and the evaluation's evaluation.json and confusion_matrix.png.

    KERAS_BACKEND=jax python tools/gpu_recipe.py --source ../shared/datasets/fer2013 --output reports/gpu_recipe
    python tools/gpu_recipe.py --quick --output /tmp/gpu_recipe_quick   (any machine, about 2 minutes on 2 cores)

--quick runs the same recipe on the shipped sample (sample/fer2013_sample.tar.gz) for one epoch
of 2 steps of 32 faces: it checks on a CPU that every stage of the recipe works. Further
arguments are configuration overrides (section.key=value), applied after those.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "src"))

from emotion_classifier import cli, stages  # noqa: E402
from emotion_classifier.config import load_config  # noqa: E402

CONFIG_PATH = REPOSITORY / "config" / "fer2013_gpu.toml"
SAMPLE_SOURCE = REPOSITORY / "sample" / "fer2013_sample.tar.gz"
# make run's stages but the generator preview and model_6's.
STAGES = [stage for stage in stages.STAGES
          if stage[0] not in ("custom_generator.py", "model_6.py", "model_evaluation_6.py")]
# The sample holds 50 training faces per class: 8 of them validate, as config/sample.toml keeps.
QUICK_OVERRIDES = ["split.valid_per_class=8", "model_4.epochs=1", "model_4.max_steps_per_epoch=2",
                   "model_4.batch_size=32", "model_4.warmup_epochs=0"]
RUN_FILES = ["best.keras", "model_info.json", "training_summary.json", "metrics.csv", "history.png"]
REPORT_FILES = ["evaluation.json", "confusion_matrix.png"]


def recipe_overrides(source: str, work: Path, quick: bool, extra: list[str]) -> list[str]:
    """The configuration overrides of one run of the recipe: data and outputs under ``work``."""
    overrides = [f"get_data.sources={json.dumps([source])}", f"paths.data_dir={json.dumps(str(work / 'data'))}",
                 f"paths.models_dir={json.dumps(str(work / 'models'))}",
                 f"paths.reports_dir={json.dumps(str(work / 'reports'))}"]
    return overrides + (QUICK_OVERRIDES if quick else []) + extra


def run_recipe(source: str, work: Path, output: Path, quick: bool = False, extra: list[str] = ()) -> int:
    """Every stage of the recipe in turn; the figures and the model copied into ``output``."""
    overrides = recipe_overrides(source, work, quick, list(extra))
    for script, function, section in STAGES:
        print(f"== {script}", flush=True)
        status = cli.run_configured(function, CONFIG_PATH, overrides, section, force=False)
        if status != 0:
            print(f"{script} exited with {status}", file=sys.stderr)
            return status
    config = load_config(CONFIG_PATH, overrides, default_section="model_4")
    run_dir = Path(config.paths.models) / config.model_4.run_name
    report_dir = Path(config.paths.reports)
    output.mkdir(parents=True, exist_ok=True)
    copied = [shutil.copy2(path, output) for path in [run_dir / name for name in RUN_FILES]
              + [found for name in REPORT_FILES for found in sorted(report_dir.rglob(name))[:1]] if path.is_file()]
    print(f"copied {len(copied)} files into {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the recipe on the shipped sample, 2 training steps")
    parser.add_argument("--source", help="FER2013's folder (train/ and val/, a folder per class); "
                        "default: the config's get_data.sources, or the sample with --quick")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "data" / "gpu_recipe",
                        help="folder for the stages' data, runs and reports")
    parser.add_argument("--output", type=Path, required=True, help="folder that receives the model and figures")
    parser.add_argument("overrides", nargs="*", help="configuration overrides, section.key=value")
    arguments = parser.parse_args(argv)
    source = arguments.source or (str(SAMPLE_SOURCE) if arguments.quick else None)
    if source is None:
        config = load_config(CONFIG_PATH, [], default_section="model_4")
        source = str(config.get_data.sources[0])
    return run_recipe(source, arguments.work, arguments.output, arguments.quick, arguments.overrides)


if __name__ == "__main__":
    sys.exit(main())
