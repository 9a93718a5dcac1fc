"""Test-suite settings. Everything here runs on a CPU-only machine."""

import os

# Triton kernels run through the interpreter on CPU-only CI; this must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores in CI: more threads only contend.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
