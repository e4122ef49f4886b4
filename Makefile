# Two commands, each doing its own set-up on a fresh machine:
#   make quickstart   a real 4-trial sweep on the bundled digits data (CPU, offline, a few minutes)
#   make test         the test suite (unit + integration with real Ray and a real MLflow server)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned here (not in pyproject) so pip takes the builds that lie on this disk.
TORCH := torch==2.14.1 torchvision==0.29.1

# make gpu-check: every GPU figure and correctness check, at most 8 minutes on one GPU (gpucheck/; its CPU form
# without one). No venv needed on a GPU box: the venv's python when there is one, else python3 (or PYTHON=...).
GPU_PYTHON ?= $(if $(filter command line,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(PY)),$(PY),python3))
GPU_CHECK_ARGS ?=

.PHONY: setup quickstart test test-all gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

quickstart: setup
	$(PY) -m tuner.run --space resnet_rsb --dataset digits --num-samples 4 --max-epochs 2

test: setup
	$(PY) -m pytest -m "not slow" --durations=30  # the slowest 30 in the log: the suite is kept well under CI's limit

test-all: setup  # also the tests marked slow (minutes each: more signals, clusters, browsers)
	$(PY) -m pytest

gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m gpucheck $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) sweeps mlruns mlartifacts mlflow.db .pytest_cache
