# Two entry points on a fresh machine (see README):  make demo   and   make test
# Each creates .venv, installs torch pinned through constraints.txt (CPU build here), then seqzoo
# with the extras it needs, and runs. Re-running skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=
EXTRAS ?= dev,train
STAMP  := $(VENV)/.installed

.PHONY: test demo venv lint compile-csrc clean

$(STAMP): pyproject.toml setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

venv: $(STAMP)

# The test command (CI's .ci/run calls exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# The main job: a quick comparison of mixers on built-in data, on CPU.
demo: $(STAMP)
	$(BIN)/seqzoo demo

lint: $(STAMP)
	$(BIN)/ruff check seqzoo ops train eval tests

# Compile (not run) every CUDA source with nvcc, so a broken kernel fails CI even without a GPU.
compile-csrc: $(STAMP)
	$(BIN)/python -m seqzoo.ops._csrc --compile-all

clean:
	rm -rf $(VENV) build *.egg-info
