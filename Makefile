# Two entry points on a fresh machine (see README):  make demo   and   make test
# Each creates .venv, installs torch pinned through constraints.txt (CPU build here), then seqzoo
# with the extras it needs, and runs. Re-running skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: test demo venv lint compile-csrc clean

$(VENV)/.stamp-%: pyproject.toml setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[$*]"
	@touch $@

venv: $(VENV)/.stamp-dev

# The test command (CI's .ci/run calls exactly this).
test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# The main job: a quick comparison of mixers on built-in data, on CPU.
demo: $(VENV)/.stamp-dev
	$(BIN)/seqzoo demo

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check seqzoo ops train eval tests

# Compile (not run) every CUDA source with nvcc, so a broken kernel fails CI even without a GPU.
compile-csrc: $(VENV)/.stamp-dev
	$(BIN)/python -m seqzoo.ops._csrc --compile-all

clean:
	rm -rf $(VENV) build *.egg-info
