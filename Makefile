# cifarlit — every step of the workflow is one target. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
# PY=python3 uses that interpreter as it is (a machine without the venv, e.g. the GPU machine): no install step.
PY ?= $(VENV)/bin/python
VENV_STAMP := $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed,)
DATA_DIR ?=
CONFIG ?= configs/default.yaml
DATA_ARG := $(if $(DATA_DIR),--data.data_dir $(DATA_DIR),)
export NO_ALBUMENTATIONS_UPDATE := 1

.DEFAULT_GOAL := help
.PHONY: help venv train test test-all test-slow test-gpu bench tensorboard lint clean experiments tune transfer

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV_STAMP)  ## create .venv and install cifarlit with its dev tools

train: venv  ## train the default config (DATA_DIR=<folder> to use local data, CONFIG=<yaml> for another)
	$(PY) -m cifarlit fit --config $(CONFIG) $(DATA_ARG)

test: venv  ## the fast test suite (no network, a few minutes on 2 cores)
	$(PY) -m pytest

test-all: venv  ## every test, including the slow ones (real data when ../shared/data is present) and gpu ones
	$(PY) -m pytest -m ""

test-gpu: venv  ## the GPU specifications (skipped without CUDA): every config on the GPU, no host syncs, ...
	$(PY) -m pytest -m gpu

test-slow: venv  ## only the slow tests: real data, determinism, kill-and-resume, DDP, TensorBoard server
	$(PY) -m pytest -m slow

bench: venv  ## speed benchmarks; prints ratios measured side by side (see benchmarks/README.md)
	$(PY) benchmarks/run.py $(DATA_ARG) 2>&1 | grep -v "━"

tensorboard: venv  ## serve the curves in lightning_logs/ on http://localhost:6006
	$(VENV)/bin/tensorboard --logdir lightning_logs --port 6006

lint: venv  ## ruff lint + format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:  ## remove caches and build leftovers (keeps .venv, data/ and lightning_logs/)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -exec rm -rf {} +

LESSONS := baseline weight_decay early_stopping dropout more_data augmentation sgd_momentum rmsprop adam steplr batchnorm final
experiments: venv  ## run every lesson in configs/experiments/ on DATA_DIR (~40 min on 2 cores), then compare them
	@for lesson in $(LESSONS); do \
	  cmd=$$(sed -n 's/^#   cifarlit fit //p' configs/experiments/$$lesson.yaml); \
	  echo "== $$lesson: cifarlit fit $$cmd $(DATA_ARG)"; \
	  $(PY) -m cifarlit fit $$cmd $(DATA_ARG) 2>&1 | grep -v "━" | tail -4 || exit 1; \
	done
	$(PY) -m cifarlit compare $(foreach l,$(LESSONS),'lightning_logs/$(l)/version_*') --output docs/experiments.png --table docs/experiments.md

TRANSFER := configs/experiments/transfer
transfer: venv  ## transfer learning: pretrain a CNN on classes 0-4, then 10% of 5-9 fine-tuned vs from scratch (~15 min)
	$(PY) -m cifarlit fit -c configs/default.yaml -c $(TRANSFER)/pretrain.yaml $(DATA_ARG) 2>&1 | grep -v "━" | tail -4
	$(PY) -m cifarlit fit -c configs/default.yaml -c $(TRANSFER)/scratch.yaml $(DATA_ARG) 2>&1 | grep -v "━" | tail -4
	$(PY) -m cifarlit fit -c configs/default.yaml -c $(TRANSFER)/scratch.yaml -c $(TRANSFER)/finetune.yaml \
	  $(DATA_ARG) 2>&1 | grep -v "━" | tail -4
	$(PY) -m cifarlit fit -c configs/default.yaml -c $(TRANSFER)/scratch.yaml -c $(TRANSFER)/finetune.yaml \
	  -c $(TRANSFER)/finetune_frozen.yaml $(DATA_ARG) 2>&1 | grep -v "━" | tail -4
	$(PY) -m cifarlit compare 'lightning_logs/transfer_*/version_*' --output docs/transfer.png --table docs/transfer.md

TRIALS ?= 12
tune: venv  ## Optuna search of configs/tune/mlp_space.yaml on the 10% subset (TRIALS=12), resumable; several at once share it
	$(PY) -m cifarlit tune --space configs/tune/mlp_space.yaml --study_name mlp --n_trials $(TRIALS) \
	  -c configs/default.yaml -c configs/experiments/best_mlp.yaml -c configs/tune/mlp_subset.yaml $(DATA_ARG) \
	  2>&1 | grep -v "━"
