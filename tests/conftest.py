"""Test-suite settings. Everything here runs on a CPU-only machine."""

import os

import torch

# Triton kernels run through the interpreter on a machine without a GPU (CI), and compiled on one with a GPU:
# `pytest -m gpu` must test the kernels a GPU runs, not the interpreter (whose bf16 dot products differ).
# Either way this must be decided before triton is imported; an explicit TRITON_INTERPRET is left alone.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Two cores in CI: more threads only contend.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
