# Two commands, each doing its own set-up on a fresh machine:
#   make quickstart   a real 4-trial sweep on the bundled digits data (CPU, offline, a few minutes)
#   make test         the test suite (unit + integration with real Ray and a real MLflow server)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned here (not in pyproject) so pip takes the builds that lie on this disk.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup quickstart test clean

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
	$(PY) -m pytest

clean:
	rm -rf $(VENV) sweeps mlruns mlartifacts mlflow.db .pytest_cache
