# ovisnet — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.ovisnet-installed
PYTEST_FAST := -m "not slow and not gpu and not data"
DATA_DIR ?= data/synthetic
EXP ?= cmasktrack_cpu
# demo: the newest `make train` run's last checkpoint unless CKPT is given
CKPT ?= $(firstword $(shell ls -t outputs/train/*/checkpoints/last.ckpt 2>/dev/null))
INPUT ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-gpu gpu-check lint format bench synthetic stats train demo paper-tables clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the working torch/torchvision pair and ovisnet (editable, dev extras)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PIN)
	@touch $@

test: install ## run the fast test suite (no GPU, no network, no real data)
	$(BIN)/python -m pytest $(PYTEST_FAST) -q

test-slow: install ## run the slow tests too (no GPU, no real data)
	$(BIN)/python -m pytest -m "not gpu and not data" -q

test-gpu: install ## run the GPU tests (needs a CUDA device)
	$(BIN)/python -m pytest -m gpu -q

gpu-check: install ## on a GPU, < 8 min: correlation op, gpu tests, FPS, 100 train steps, bandwidth -> markdown report
	$(BIN)/python scripts/gpu_check.py $(ARGS)

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: install ## ruff format and autofix
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

synthetic: install ## generate the synthetic OVIS-format set in $(DATA_DIR)
	@test -f $(DATA_DIR)/annotations/valid.json || $(BIN)/python -m ovisnet.data.synthetic --out $(DATA_DIR)

stats: synthetic ## dataset statistics of the synthetic train split (plots in $(DATA_DIR)/stats)
	$(BIN)/python -m ovisnet.stats $(DATA_DIR)/annotations/train.json --plots $(DATA_DIR)/stats

train: synthetic ## train $(EXP) (default: the CPU CMaskTrack preset on the synthetic set), evaluate, print the AP table
	$(BIN)/python -m ovisnet.train experiment=$(EXP) $(ARGS)

demo: install ## run CKPT (default: the newest `make train` run) on INPUT=VIDEO_OR_FRAME_FOLDER
	@test -n "$(CKPT)" || { echo "make demo: no checkpoint: run 'make train' first or pass CKPT=path/to.ckpt"; exit 2; }
	@test -n "$(INPUT)" || { echo "make demo: pass INPUT=video.mp4 (or a folder of frames), e.g. INPUT=$(DATA_DIR)/JPEGImages/video_0049"; exit 2; }
	$(BIN)/python -m ovisnet.demo ckpt_path=$(CKPT) input=$(INPUT) $(ARGS)

bench: install ## run the benchmarks (ratios measured side by side)
	$(BIN)/python scripts/bench_correlation.py
	$(BIN)/python scripts/bench_inference.py
	$(BIN)/python scripts/bench_sipmask.py
	$(BIN)/python scripts/bench_stemseg.py
	$(BIN)/python scripts/bench_evaluation.py

paper-tables: install ## train / evaluate every family's CPU preset and write docs/paper_tables.md (resumable; ARGS="--seeds 0 1")
	$(BIN)/python scripts/paper_tables.py $(ARGS)

clean: ## remove build and test caches (keeps .venv and data/)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
