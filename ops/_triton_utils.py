"""Small helpers the Triton wrappers share: what the GPU offers, and launching on the tensors' device."""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from ._dispatch import triton_interpreting


@triton.jit
def row_offset(rows, stride):
    """rows * stride as int64: the offset of a position in time (a scalar or a tile of them) in a tensor whose
    rows are ``stride`` elements apart. T * H * K passes 2^31 near a million tokens at H * K = 2048, where an
    int32 product wraps and the kernel reads and writes the wrong memory. Every kernel that multiplies a
    time index by a row stride goes through here (tests/test_triton_utils.py checks both)."""
    return tl.cast(rows, tl.int64) * stride  # tl.cast: rows may be a plain int (loop counters, interpreter)


# What a wrapper assumes under the interpreter (no GPU to ask): H100's opt-in limit, so that tiles chosen in
# the CPU tests are the ones an H100 gets.
INTERPRETER_SHARED_MEMORY = 227 * 1024


def max_shared_memory(device: torch.device | None = None) -> int:
    """Bytes of shared memory one block may use on ``device`` (its opt-in maximum), from Triton's driver.

    The compile check's stand-in driver answers for the GPU it compiles for; under the interpreter the
    answer is ``INTERPRETER_SHARED_MEMORY``."""
    if triton_interpreting():
        return INTERPRETER_SHARED_MEMORY
    from triton.runtime import driver

    index = device.index if device is not None else None
    if index is None:
        index = driver.active.get_current_device()
    return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])


def on_device(x: torch.Tensor):
    """The CUDA device guard for a launch on ``x``'s device: Triton launches on the *current* device, which
    need not be the one holding the tensors (a model on cuda:1). A no-op for CPU tensors (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


# (kernel, key) -> the launch settings chosen for it: the first candidate that fits the device.
_CHOSEN: dict = {}


def launch_fitting(kernel, grid, args: tuple, candidates: list[dict], key: tuple, device: torch.device):
    """Launch ``kernel[grid](*args, **settings)`` with the first of ``candidates`` (constexpr tiles and
    ``num_warps`` / ``num_stages``, fastest first) whose compiled kernel fits the device's shared memory.

    Shared memory depends on the tiles, the dtype and the pipelining depth in ways only the compiler knows,
    so each candidate is compiled (Triton's ``warmup``: no launch) and its ``metadata.shared`` compared
    with ``max_shared_memory(device)``; the choice is remembered under ``key`` (what decides it: dtype, head
    dims, flags). Under the interpreter nothing is compiled and the first candidate runs. If none fits the
    launch is refused before it starts, naming the kernel, the smallest need and the limit."""
    if triton_interpreting():
        return kernel[grid](*args, **candidates[0])
    limit = max_shared_memory(device)
    memo = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, key, device.index, limit)
    settings = _CHOSEN.get(memo)
    if settings is None:
        needs = []
        for cand in candidates:
            compiled = kernel.warmup(*args, grid=grid, **cand)
            needs.append(compiled.metadata.shared)
            if needs[-1] <= limit:
                settings = cand
                break
        if settings is None:
            raise RuntimeError(
                f"{memo[0]}: no tile configuration fits this GPU's shared memory ({limit} bytes per block; "
                f"the smallest candidate needs {min(needs)}) for {key}"
            )
        _CHOSEN[memo] = settings
    return kernel[grid](*args, **settings)


def device_guarded(fn):
    """Run ``fn`` (a Triton wrapper, or an autograd Function's forward / backward) under ``on_device`` of its
    first tensor argument, so that every launch inside it goes to the tensors' GPU."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        with on_device(x) if x is not None else contextlib.nullcontext():
            return fn(*args, **kwargs)

    return guarded
