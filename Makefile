# One-command set-up on a fresh machine: every target installs what it needs first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEPLOY_VENV := .venv-deploy

.PHONY: deploy-venv install test test-all test-slurm slurm-up slurm-down lint train bench bench-data clean viewer viewer-check chromium

install: $(STAMP)

# Torch first, pinned, so no resolver ever picks another (multi-GB) build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev,viewer,export]'
	touch $(STAMP)

# The layer contracts first (seconds): a broken layer fails the run before the suite starts.
test: install
	$(BIN)/lint-imports
	$(BIN)/pytest

test-all: install chromium
	$(BIN)/pytest -m ''

# hydra/launcher=slurm on a real one-node cluster: the tests bring it up (installing Debian's
# slurm-wlm, slurmdbd, munge and mariadb-server the first time: root or sudo) and down again.
test-slurm: install
	$(BIN)/pytest -m slurm

# A one-node SLURM cluster on this machine, to try hydra/launcher=slurm (README, "Run on a cluster").
slurm-up:
	tools/slurm/up.sh

slurm-down:
	tools/slurm/down.sh

lint: install
	$(BIN)/ruff check src tests experiments hydra_plugins
	$(BIN)/ruff format --check src tests experiments hydra_plugins
	$(BIN)/lint-imports

# The main job on the embedded default data (a synthetic phantom generated on first use).
train: install
	$(BIN)/python -m src.train +experiment=unet_dice_cpu

bench-data: install
	$(BIN)/python -m src.bench_data

# Training throughput (Trainer vs plain loop, loader, FLOPs) appended to BENCHMARKS.md; the
# full grid is meant for a GPU: make bench ARGS="--sizes 64 --base-channels 16 --steps 5" on a CPU.
bench: install
	$(BIN)/python -m src.bench $(ARGS)

# The viewer on http://127.0.0.1:8501 (Ctrl+C stops it):
#   make viewer ARGS="ckpt_path=<file.ckpt> [run_dir=<evaluated run>] [data overrides]"
viewer: install
	@test -n "$(ARGS)" || { echo 'usage: make viewer ARGS="ckpt_path=<file.ckpt> [run_dir=...]"'; exit 2; }
	$(BIN)/python -m src.viewer $(ARGS)

# Every viewer page served and loaded in headless Chromium; screenshots in outputs/viewer-check/.
viewer-check: install chromium
	SONOSEG_SCREENSHOTS=outputs/viewer-check $(BIN)/pytest -m slow tests/viewer_app/test_viewer_app.py

# Debian's chromium for the browser test (never a browser download at run time).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# A torch-free environment for exported packages (python -m src.export): the project without
# its dependencies, then the `deploy` group alone, read from the project's own metadata.
deploy-venv:
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --no-deps -e .
	$(DEPLOY_VENV)/bin/python -c "from importlib.metadata import requires; \
	print('\n'.join(r.split(';')[0] for r in requires('sonoseg') if 'extra == \"deploy\"' in r))" \
	  > $(DEPLOY_VENV)/deploy-requirements.txt
	$(DEPLOY_VENV)/bin/pip install -r $(DEPLOY_VENV)/deploy-requirements.txt

clean:
	rm -rf outputs multirun .pytest_cache
