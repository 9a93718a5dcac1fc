# Two entry points on a fresh machine (see README):  make demo   and   make test
# Each creates .venv, installs torch pinned through constraints.txt (CPU build here), then seqzoo
# with the extras it needs, and runs. Re-running skips the install unless pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=
# Each entry point installs what it runs: the tests, the recipe and seqzoo eval need the dev, train, eval and hf extras (pytest,
# transformers for the checkpoint-conversion tests,
# datasets, tensorboard, ...); the demo needs only the core package and its plots, which saves ~40 s of a
# fresh machine's install (pyarrow, pandas, tensorboard). One venv; a stamp per set of extras.
# --no-compile: pip would byte-compile every module it installs (torch alone: 41 s of a 12 s install);
# Python compiles the ones a run imports on first use instead.
TEST_EXTRAS ?= dev,train,eval,hf
DEMO_EXTRAS ?= demo
TEST_STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo venv lint compile-csrc compile-check gpu-wheels gpu-check clean

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
	$(BIN)/python -m pytest -q -m "not gpu and not exhaustive" $(PYTEST_ARGS)

# The main job: a quick comparison of mixers on built-in data, on CPU.
demo: $(DEMO_STAMP)
	$(BIN)/seqzoo demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check seqzoo ops train eval tests

# Compile (not run) every CUDA source with nvcc, so a broken kernel fails CI even without a GPU.
compile-csrc: $(TEST_STAMP)
	$(BIN)/python -m seqzoo.ops._csrc --compile-all

# Every Triton kernel compiled for H100 (sm_90) and A100 (sm_80) as the wrappers launch it, no GPU needed.
# FULL=1: every shape and dtype (what `pytest -m exhaustive` runs; too long for the suite).
compile-check: $(TEST_STAMP)
	env -u TRITON_INTERPRET $(BIN)/python -m seqzoo.ops._compile_check --arch 90 80 $(if $(FULL),--full)

# The GPU machine (torch 2.11, Triton 3.6, Python 3.12, no network) lacks these: fetch them here as wheels
# into .whl/ (ignored; ~6 MB), which travels with the tree to the GPU machine.
GPU_PYTHON ?= 3.12
# seqzoo's own pure dependencies (pydantic and its parts, PyYAML, safetensors, tqdm: a bare torch image may lack
# any of them) and the peers' flash-linear-attention.
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 pyyaml==6.0.4 safetensors==0.8.0 tqdm==4.70.1 \
	flash-linear-attention==0.6.0 fla-core==0.6.0
gpu-wheels: $(TEST_STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	@ls .whl

# On a machine with a GPU: install from the tree and .whl/, compile check, pytest -m gpu, peers (eval/gpu_check.sh).
gpu-check:
	bash eval/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info
