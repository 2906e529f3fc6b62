# One-command set-up on a fresh machine: every target installs what it needs first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint train bench-data clean

install: $(STAMP)

# Torch first, pinned, so no resolver ever picks another (multi-GB) build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest

test-all: install
	$(BIN)/pytest -m ''

lint: install
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

# The main job on the embedded default data (a synthetic phantom generated on first use).
train: install
	$(BIN)/python -m src.train +experiment=unet_dice_cpu

bench-data: install
	$(BIN)/python -m src.bench_data

clean:
	rm -rf outputs multirun .pytest_cache
