# sol-rl: two commands on a fresh machine with only Python 3.11+:
#   make run    install, then a Sol-RL run of the embedded shapes preset (Prefect flow, ephemeral)
#   make test   install, then the whole test suite
#   make gpu-smoke   on a GPU machine: also the gpu and rewards extras, then `sol-rl smoke $(SMOKE_CONFIG)`
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

SMOKE_CONFIG ?= configs/flux.yaml
GPU_STAMP := $(VENV)/.installed-gpu-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test gpu-smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel (2.13.0) in pyproject.toml: no CUDA download.
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

run: setup
	$(BIN)/sol-rl run configs/shapes.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Transformer Engine (the gpu extra) builds its PyTorch extension against the installed CUDA torch.
$(GPU_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[gpu,rewards]"
	@touch $@

# What to run first on a new GPU: one prompt x 24 seeds, one update, a SIGKILL mid-regenerate and
# the resume, verify, per-stage peak memory beside the plan (docs/gpus-hopper-blackwell.md).
gpu-smoke: $(GPU_STAMP)
	$(BIN)/sol-rl smoke $(SMOKE_CONFIG)

clean:
	rm -rf $(VENV) runs .pytest_cache
