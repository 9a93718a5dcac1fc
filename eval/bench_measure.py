"""How the bench harness measures one call: wall time (CUDA events on a GPU, perf_counter on a CPU) and the
peak memory a call needs beyond what was allocated before it (the CUDA allocator's peak, or the growth of the
process's peak resident set on Linux CPUs). Used by ``seqzoo bench`` (:mod:`seqzoo.eval.bench`) and the peers'
comparison (:mod:`seqzoo.eval.peers`)."""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

# -- timing and memory -------------------------------------------------------------------------------------


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    # The garbage collector would charge one call for garbage made by others (as timeit does, it is off).
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory one call of ``fn`` needs beyond what is allocated before it (None if unmeasurable)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return _cpu_peak_rss_growth(fn)
    return None


def _cpu_peak_rss_growth(fn: Callable[[], Any]) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    # Freed memory that malloc keeps for reuse stays resident, and a call served from it would show no
    # growth at all; hand it back to the kernel first so the peak counts what this call touches.
    _malloc_trim()
    try:
        # "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmHWM")
        fn()
        after = _proc_status_kib("VmHWM")
    except OSError:
        return None
    if before is None or after is None:
        return None
    return max(0, after - before) * 1024


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the measure is then a lower bound


def _proc_status_kib(field_name: str) -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None
