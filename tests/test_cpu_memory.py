"""train/cpu_memory.py: freed memory stays in the process (no page fault per reuse), and CPU runs apply it."""

from __future__ import annotations

import subprocess
import sys

import pytest

# 24 blocks of 4 MiB allocated and freed each round. With glibc's default thresholds (128 KiB for mmap and
# trim; pinned, since glibc adjusts them from the process's history) each block is a fresh mapping that is
# unmapped when freed, so every round faults on all its pages (24,576); with the memory retained, the rounds
# after the first reuse the same heap pages.
CHURN = """
import resource, sys, torch
from seqzoo.train.cpu_memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
else:  # glibc's documented defaults, pinned (its dynamic adjustment of them depends on the process's history)
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 128 * 1024) == 1
def churn():
    blocks = [torch.ones(1 << 20) for _ in range(24)]
    del blocks
for _ in range(3):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux) only")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = _faults("default"), _faults("retain")
    assert default > 10 * 4096  # the default returns the freed pages every round (24,576 faults a round)
    assert retained < 100


def test_cpu_runs_retain_freed_memory_unless_told_not_to(tmp_path, monkeypatch):
    from test_train import tiny_config

    from seqzoo.train import loop
    from seqzoo.train.config import load_config

    calls = []
    monkeypatch.setattr(loop, "retain_freed_memory", lambda: calls.append(1) or True)
    loop.train(load_config(tiny_config(tmp_path / "a", train={"steps": 1})))
    assert calls == [1]
    loop.train(load_config(tiny_config(tmp_path / "b", train={"steps": 1, "retain_cpu_memory": False})))
    assert calls == [1]
