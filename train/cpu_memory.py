"""Keep freed memory in the process on a CPU: glibc's allocator otherwise hands large blocks back to the
system and takes them again a few operations later, each time paying a page fault for every 4 KiB.

A training step of a small model on a CPU frees and allocates the same few-MB activations hundreds of times.
glibc serves blocks above its mmap threshold with fresh mappings and trims the heap top above its trim
threshold, so those blocks come back as untouched pages: one page fault (and a zeroed page) per 4 KiB on
first write. Measured on an MQAR step (d_model 64, batch 64 x 64 tokens, one thread, ``eval/step_time.py``):
retnet 3,230 page faults a step and 226 ms, 456 and 173 ms with the settings below; mamba 5,570 and 321 ms
against 266 and 231 ms; mixers whose blocks already stayed in the heap (gla, hgrn2, attention) unchanged.

``retain_freed_memory()`` raises the mmap threshold to its maximum (32 MiB on 64-bit glibc: blocks up to that
size come from the heap and are reused) and the trim threshold to 1 GiB (the heap keeps what it freed). It
changes how memory is obtained, never what is computed; the cost is a resident size that stays near the
peak. The recipe calls it for CPU runs (``train.retain_cpu_memory``, default on). Elsewhere than glibc
(macOS, musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc refuses more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
