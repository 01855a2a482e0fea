# The stage graph. `make help` lists the targets.
# Everything runs inside .venv, created and filled on first use (Python 3.11 and the package
# registries are all a fresh machine needs).

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# The configuration every stage reads; the shipped sample by default.
CONFIG ?= config/sample.toml
# Extra KEY=VALUE overrides passed to every stage, e.g. ARGS="model_4.epochs=1".
ARGS ?=
STAGE = $(VENV_PYTHON) $(1) --config $(CONFIG) $(ARGS)

.PHONY: help run test test-all bench predict evaluate-shipped export venv clean get_data consolidate labels inspect split generator model_4 evaluate_4 model_6 evaluate_6 demo summary

help: ## List the targets.
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-17s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	@test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(VENV_PYTHON) -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(VENV)/.installed ## Create or update the virtual environment.

run: venv ## Run every stage on CONFIG (default: the shipped sample), then print the figures.
	$(call STAGE,get_data.py)
	$(call STAGE,consolidate_data.py)
	$(call STAGE,get_filenames_and_labels.py)
	$(call STAGE,inspect_images.py)
	$(call STAGE,train_valid_test_clean.py)
	$(call STAGE,custom_generator.py)
	$(call STAGE,model_4.py)
	$(call STAGE,model_evaluation_4.py)
	$(call STAGE,model_6.py)
	$(call STAGE,model_evaluation_6.py)
	$(VENV_PYTHON) -m emotion_classifier.demo --config $(CONFIG) $(ARGS)
	$(VENV_PYTHON) -m emotion_classifier.run_summary --config $(CONFIG) $(ARGS)

get_data: venv ## Stage 1: bring the dataset into data/raw/ and extract it.
	$(call STAGE,get_data.py)
consolidate: venv ## Stage 2: gather every image and label file into data/interim/.
	$(call STAGE,consolidate_data.py)
labels: venv ## Stage 3: read the labels into data/processed/manifest.csv; list rejected files.
	$(call STAGE,get_filenames_and_labels.py)
inspect: venv ## Stage 4: plot sample faces and class counts (reports/figures/).
	$(call STAGE,inspect_images.py)
split: venv ## Stage 5: draw the train, validation and test splits.
	$(call STAGE,train_valid_test_clean.py)
generator: venv ## Stage 6: preview an augmented batch; measure the input pipeline.
	$(call STAGE,custom_generator.py)
model_4: venv ## Stage 7: train model_4, the custom CNN (models/model_4/).
	$(call STAGE,model_4.py)
evaluate_4: venv ## Stage 8: evaluate model_4 (reports/model_4/, reports/comparison.md).
	$(call STAGE,model_evaluation_4.py)
model_6: venv ## Stage 9: train model_6, ResNet50 (models/model_6/).
	$(call STAGE,model_6.py)
evaluate_6: venv ## Stage 10: evaluate model_6 (reports/model_6/).
	$(call STAGE,model_evaluation_6.py)
demo: venv ## Stage 11: run demo.ipynb headless on images/ (reports/demo/).
	$(VENV_PYTHON) -m emotion_classifier.demo --config $(CONFIG) $(ARGS)
summary: venv ## Print each model's accuracy and macro F1 and where the reports are.
	$(VENV_PYTHON) -m emotion_classifier.run_summary --config $(CONFIG) $(ARGS)

# FER2013's val/ (PublicTest) as given under ../shared; any folder-per-class dataset works.
EVALUATE_DATASET ?= ../shared/datasets/fer2013

evaluate-shipped: venv ## Evaluate the shipped model on EVALUATE_DATASET's val/ (FER2013 PublicTest), flip-and-crops views; no training.
	$(VENV_PYTHON) model_evaluation_4.py --config config/fer2013_cpu.toml \
		model_evaluation_4.model='"models/shipped/fer2013/model.keras"' \
		model_evaluation_4.dataset='"$(EVALUATE_DATASET)"' model_evaluation_4.name='"shipped_fer2013"' $(ARGS)

predict: venv ## Find and classify every face in INPUT (default images/) with the shipped model.
	$(VENV_PYTHON) -m emotion_classifier.predict $(or $(INPUT),images) --output reports/predict $(ARGS)

export: venv ## Export MODEL (default: the shipped model) as SavedModel and TFLite (float32, float16, int8).
	$(VENV_PYTHON) -m emotion_classifier.export $(if $(MODEL),--model $(MODEL)) $(ARGS)

bench: venv ## Run the benchmarks (input pipeline, training, label scale, predict speed and memory, detectors, alignment, video, CPU settings); JSON in reports/bench/.
	$(VENV_PYTHON) bench/input_pipeline.py
	$(VENV_PYTHON) bench/training.py
	$(VENV_PYTHON) bench/scale.py
	$(VENV_PYTHON) bench/predict_speed.py
	$(VENV_PYTHON) bench/predict_memory.py
	$(VENV_PYTHON) bench/face_detectors.py
	$(VENV_PYTHON) bench/face_alignment.py
	$(VENV_PYTHON) bench/video_speed.py
	$(VENV_PYTHON) bench/mixed_precision.py
	$(VENV_PYTHON) bench/onednn.py

test: venv ## Run the default test suite (fast; slow tests excluded).
	$(VENV_PYTHON) -m pytest

test-all: venv ## Run every test, the slow ones included.
	$(VENV_PYTHON) -m pytest -m "slow or not slow"

clean: ## Remove generated data, runs and reports (never the shipped sample or the shipped model).
	rm -rf data reports
	find models -mindepth 1 -maxdepth 1 ! -name shipped -exec rm -rf {} +
