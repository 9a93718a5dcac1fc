"""ops/_triton_utils.py: 64-bit row offsets, the device guard around every launch, tiles that fit the GPU."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from seqzoo.ops import _triton_utils as tu  # noqa: E402

OPS = Path(__file__).resolve().parents[1] / "ops"


@triton.jit
def _offsets_kernel(out, start, stride, N: tl.constexpr):
    rows = start + tl.arange(0, N)
    tl.store(out + tl.arange(0, N), tu.row_offset(rows, stride))


@triton.jit
def _int32_offsets_kernel(out, start, stride, N: tl.constexpr):
    rows = start + tl.arange(0, N)
    tl.store(out + tl.arange(0, N), (rows * stride).to(tl.int64))


def test_row_offset_passes_int32():
    # Position 2^20 + i of rows 4096 elements apart (H * K = 4096): offsets of 2^32 and more.
    start, stride = 1 << 20, 4096
    expected = torch.tensor([(start + i) * stride for i in range(4)], dtype=torch.int64)
    out = torch.zeros(4, dtype=torch.int64)
    _offsets_kernel[(1,)](out, start, stride, N=4)
    assert torch.equal(out, expected)
    # The same product in int32 (what the kernels did before) wraps: the check above can fail.
    wrapped = torch.zeros(4, dtype=torch.int64)
    try:
        _int32_offsets_kernel[(1,)](wrapped, start, stride, N=4)
    except Exception:  # noqa: BLE001 - an interpreter that refuses the overflow shows it as well
        return
    assert not torch.equal(wrapped, expected)


@pytest.mark.parametrize(
    "path",
    [
        "gla/triton_chunk.py",
        "gla/triton_recurrent.py",
        "delta_rule/triton_chunk.py",
        "delta_rule/triton_recurrent.py",
        "common/triton_tiles.py",
        "common/triton_chunk.py",
        "common/triton_recurrent.py",
    ],
)
def test_time_offsets_go_through_row_offset(path):
    """No kernel multiplies a time index by a row stride in int32: every `rows[:, None] * stride` tile and
    every `t * (H * K)` scalar is inside row_offset (the reviewed wrap at ~1M tokens)."""
    src = (OPS / path).read_text()
    bare = re.findall(r"(?<!row_offset\()\b(?:o_t|o_i|o_j|rows|t)(?:\[:, None\])? \* \(H \* [KVDM]\)", src)
    assert not bare, f"{path}: int32 time x stride products: {bare}"
    assert "row_offset(" in src


def test_launch_fitting_takes_the_first_candidate_that_fits(monkeypatch):
    monkeypatch.setattr(tu, "triton_interpreting", lambda: False)
    monkeypatch.setattr(tu, "max_shared_memory", lambda device=None: 100)
    tu._CHOSEN.clear()
    shared = {1: 300, 2: 150, 3: 90, 4: 10}
    warmed, launched = [], []

    class FakeKernel:
        __name__ = "fake_kernel"

        def warmup(self, *args, grid, **settings):
            warmed.append(settings["T"])
            return SimpleNamespace(metadata=SimpleNamespace(shared=shared[settings["T"]]))

        def __getitem__(self, grid):
            return lambda *args, **settings: launched.append(settings["T"])

    cands = [{"T": i} for i in (1, 2, 3, 4)]
    dev = torch.device("cpu")
    tu.launch_fitting(FakeKernel(), (1,), (), cands, key=("k",), device=dev)
    assert warmed == [1, 2, 3] and launched == [3]
    tu.launch_fitting(FakeKernel(), (1,), (), cands, key=("k",), device=dev)  # remembered: no new warmups
    assert warmed == [1, 2, 3] and launched == [3, 3]
    monkeypatch.setattr(tu, "max_shared_memory", lambda device=None: 5)
    with pytest.raises(RuntimeError, match="fake_kernel.*shared memory.*5 bytes.*needs 10"):
        tu.launch_fitting(FakeKernel(), (1,), (), cands, key=("k",), device=dev)
    tu._CHOSEN.clear()


def _triton_calls():
    """One small call of every Triton wrapper, forward and backward (interpreter shapes)."""
    from seqzoo.ops.causal_conv1d import triton as conv
    from seqzoo.ops.gla import triton_chunk as gla_chunk
    from seqzoo.ops.gla import triton_recurrent as gla_recurrent
    from seqzoo.ops.linear_scan import triton as ls
    from seqzoo.ops.s4 import triton as s4
    from seqzoo.ops.s4 import triton_direct_conv as triton_conv
    from seqzoo.ops.selective_scan import triton as ss

    def r(*s, pos=False):
        x = torch.rand(*s) if pos else torch.randn(*s)
        return x.requires_grad_()

    def bwd(*outs):
        outs = [o for o in outs if o is not None]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return {
        "gla chunk": lambda: bwd(gla_chunk.chunk_gla(r(1, 8, 1, 16), r(1, 8, 1, 16), r(1, 8, 1, 16))[0]),
        "gla recurrent": lambda: bwd(
            gla_recurrent.recurrent_gla(r(1, 4, 1, 16), r(1, 4, 1, 16), r(1, 4, 1, 16))[0]
        ),
        "causal_conv1d": lambda: bwd(conv.causal_conv1d(r(1, 8, 16), r(16, 4))[0]),
        "linear_scan": lambda: bwd(ls.linear_scan(r(1, 8, 16, pos=True), r(1, 8, 16))[0]),
        "selective_scan": lambda: bwd(
            ss.selective_scan(r(1, 8, 16), r(1, 8, 16), -r(16, 4, pos=True), r(1, 8, 4), r(1, 8, 4))[0]
        ),
        "s4d_kernel": lambda: bwd(s4.s4d_kernel(r(4), *[r(4, 2) for _ in range(6)], 8)),
        "fft_conv": lambda: bwd(triton_conv.fft_conv(r(1, 8, 4), r(4, 8))),
    }


@pytest.mark.parametrize("name", list(_triton_calls()))
def test_every_launch_runs_under_the_device_guard(name, monkeypatch):
    """Triton launches on the current CUDA device; every wrapper must first make it the tensors' device
    (a model on cuda:1). Here (CPU, interpreter) the guard is a spy and every launch checks it is inside."""
    from triton.runtime.interpreter import InterpretedFunction

    depth, launches, outside = [0], [0], []

    class Spy:
        def __init__(self, x):
            pass

        def __enter__(self):
            depth[0] += 1

        def __exit__(self, *exc):
            depth[0] -= 1

    real_run = InterpretedFunction.run

    def run(self, *args, **kwargs):
        launches[0] += 1
        if depth[0] == 0:
            outside.append(getattr(self.fn, "__name__", "?"))
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(tu, "on_device", Spy)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    _triton_calls()[name]()
    assert launches[0] > 0
    assert not outside, f"launched outside the device guard: {outside}"
