# Two entry points on a fresh machine (see README):  make demo   and   make test
# Each creates .venv, installs torch pinned through constraints.txt (CPU build here), then seqzoo
# with the extras it needs, and runs. Re-running skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=
# Each entry point installs what it runs: the tests and the recipe need the dev and train extras (pytest,
# datasets, tensorboard, ...); the demo needs only the core package and its plots, which saves ~40 s of a
# fresh machine's install (pyarrow, pandas, tensorboard). One venv; a stamp per set of extras.
# --no-compile: pip would byte-compile every module it installs (torch alone: 41 s of a 12 s install);
# Python compiles the ones a run imports on first use instead.
TEST_EXTRAS ?= dev,train
DEMO_EXTRAS ?= demo
TEST_STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo venv lint compile-csrc clean

$(TEST_STAMP): INSTALL_EXTRAS = $(TEST_EXTRAS)
$(DEMO_STAMP): INSTALL_EXTRAS = $(DEMO_EXTRAS)
$(VENV)/.installed-%: pyproject.toml setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile --upgrade pip
	$(PIP) install -q --no-compile -c constraints.txt torch
	$(PIP) install -q --no-compile -c constraints.txt -e ".[$(INSTALL_EXTRAS)]"
	@touch $@

venv: $(TEST_STAMP)

# The test command (CI's .ci/run calls exactly this).
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# The main job: a quick comparison of mixers on built-in data, on CPU.
demo: $(DEMO_STAMP)
	$(BIN)/seqzoo demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check seqzoo ops train eval tests

# Compile (not run) every CUDA source with nvcc, so a broken kernel fails CI even without a GPU.
compile-csrc: $(TEST_STAMP)
	$(BIN)/python -m seqzoo.ops._csrc --compile-all

clean:
	rm -rf $(VENV) build *.egg-info
