"""Packed sequences through every op and backend (issue 27): one call with ``cu_seqlens`` equals one call per
sequence in every output, every per-sequence final state and the gradient of every input, on the op's own spec
example (``ops/_spec.py``), for three sequences of lengths 5, 1 and 42 (one token; lengths that are no multiple of
any chunk, boundaries inside the first chunk). fp64 to 1e-10 where a backend takes fp64, fp32 to 1e-5; bad
``cu_seqlens`` are refused naming the argument."""

from __future__ import annotations

import pytest
import torch

from seqzoo import ops
from seqzoo.ops._varlen import (
    cu_seqlens_from_eot,
    cu_seqlens_from_lengths,
    positions_from_cu_seqlens,
    seq_idx_from_cu_seqlens,
    sequence_starts,
)
from seqzoo.ops.testing import assert_packed_matches_separate

LENGTHS = (5, 1, 42)
PACKED_OPS = {name: op for name, op in ops.list_ops().items() if op.packed_args()}
NOT_PACKED = sorted(set(ops.list_ops()) - set(PACKED_OPS))


def _backends(op, device: str) -> list[str]:
    return [name for name, status in op.backends(device).items() if status == "available"]


# Every backend that runs here: on a CPU-only machine (CI) the CPU ones (Triton interpreted); with a GPU also every
# backend on it (compiled Triton, cuda, flash when installed), as `pytest -m gpu`.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [
    pytest.param(
        name,
        backend,
        dtype,
        device,
        id=f"{name}-{backend}-{str(dtype)[6:]}" + ("" if device == "cpu" else "-cuda"),
        marks=[pytest.mark.gpu] if device == "cuda" else [],
    )
    for device in DEVICES
    for name, op in PACKED_OPS.items()
    for backend in _backends(op, device)
    for dtype in (torch.float64, torch.float32)
    # The Triton and CUDA kernels take no fp64 (they refuse it by name): fp32 only.
    if not (dtype == torch.float64 and backend not in ("reference", "torch"))
]


def packed_inputs(op, dtype, lengths=LENGTHS, device="cpu", **sizes) -> tuple[dict, torch.Tensor]:
    """The op's example at batch 1 and T = sum(lengths), with one initial state per sequence."""
    spec = op.spec
    total, n = sum(lengths), len(lengths)
    args = spec.example(torch.float32, device, B=1, T=total, **sizes)
    if spec.state_arg:
        state = spec.example(torch.float32, device, B=n, T=3, **sizes).get(spec.state_arg)
        if (
            state is None
        ):  # an op whose example starts fresh (flow_attention_prefill): the state after 3 steps
            prefix = spec.example(torch.float32, device, B=n, T=3, **sizes)
            state = ops.list_ops()[op.name](**prefix, backend="reference")[spec.states[0]]
        args[spec.state_arg] = state

    def cast(v):
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.to(dtype)
        return v

    return {k: cast(v) for k, v in args.items()}, cu_seqlens_from_lengths(lengths, device=device)


@pytest.mark.parametrize("name,backend,dtype,device", CASES)
def test_packed_equals_separate_runs(name, backend, dtype, device):
    op = PACKED_OPS[name]
    inputs, cu = packed_inputs(op, dtype, device=device)
    assert_packed_matches_separate(op, backend, inputs, cu)
    op(**inputs, cu_seqlens=cu, backend=backend)
    assert op.last_backend == backend
    assert op.last_packing in ("native", "per-sequence")


def test_every_op_with_a_time_axis_packs():
    """The ops without one are exactly those that take a single token or make a kernel."""
    assert NOT_PACKED == [
        "combiner_step",
        "flow_attention_step",
        "s4_kernel",
        "s4d_kernel",
        "selective_state_update",
    ]


@pytest.mark.parametrize("name", NOT_PACKED)
def test_ops_without_a_time_axis_refuse_cu_seqlens(name):
    op = ops.list_ops()[name]
    with pytest.raises(TypeError, match="takes no cu_seqlens"):
        op(**op.spec.example(), cu_seqlens=cu_seqlens_from_lengths([1]))


# -- bad cu_seqlens -----------------------------------------------------------------------------------------------


def _bad_cases(total):
    good = cu_seqlens_from_lengths(LENGTHS)
    return {
        "not increasing": (
            torch.tensor([0, 5, 5, total], dtype=torch.int32),
            ValueError,
            "strictly increasing",
        ),
        "decreasing": (torch.tensor([0, 6, 5, total], dtype=torch.int32), ValueError, "strictly increasing"),
        "not from 0": (torch.tensor([1, 6, total], dtype=torch.int32), ValueError, "start at 0"),
        "short of T": (torch.tensor([0, 5, total - 1], dtype=torch.int32), ValueError, "end at T"),
        "past T": (torch.tensor([0, 5, total + 1], dtype=torch.int32), ValueError, "end at T"),
        "int64": (good.long(), TypeError, "int32"),
        "float": (good.float(), TypeError, "int32"),
        "2-D": (good[None], ValueError, r"shape \[N \+ 1\]"),
        "one entry": (good[:1], ValueError, r"shape \[N \+ 1\]"),
        "a list": (good.tolist(), TypeError, "torch.Tensor"),
    }


@pytest.mark.parametrize("name", sorted(PACKED_OPS))
@pytest.mark.parametrize("case", list(_bad_cases(48)))
def test_bad_cu_seqlens_is_refused_by_name(name, case):
    op = PACKED_OPS[name]
    inputs, _ = packed_inputs(op, torch.float32)
    cu, error, match = _bad_cases(sum(LENGTHS))[case]
    with pytest.raises(error, match=match) as info:
        op(**inputs, cu_seqlens=cu, backend="reference")
    assert "cu_seqlens" in str(info.value)


@pytest.mark.parametrize("name", sorted(PACKED_OPS))
def test_packed_batch_must_be_one(name):
    op = PACKED_OPS[name]
    inputs = op.spec.example(B=2, T=sum(LENGTHS))
    with pytest.raises(ValueError, match="batch 1") as info:
        op(**inputs, cu_seqlens=cu_seqlens_from_lengths(LENGTHS), backend="reference")
    assert "cu_seqlens" in str(info.value)


@pytest.mark.parametrize("name", sorted(n for n, op in PACKED_OPS.items() if op.spec.state_arg))
def test_packed_states_need_a_row_per_sequence(name):
    op = PACKED_OPS[name]
    inputs, cu = packed_inputs(op, torch.float32, lengths=(5, 1, 42, 2))
    bad = dict(inputs)
    bad["cu_seqlens"] = cu_seqlens_from_lengths(LENGTHS[:2] + (44,))
    with pytest.raises(ValueError, match="one state per sequence: expected 3 rows") as info:
        op(**bad, backend="reference")
    assert op.spec.state_arg in str(info.value)


# -- the helpers --------------------------------------------------------------------------------------------------


def test_cu_seqlens_helpers():
    cu = cu_seqlens_from_lengths([2, 1, 3])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 3, 6]
    assert seq_idx_from_cu_seqlens(cu).tolist() == [0, 0, 1, 2, 2, 2]
    assert positions_from_cu_seqlens(cu).tolist() == [0, 1, 0, 0, 1, 2]
    assert sequence_starts(cu).tolist() == [True, False, True, True, False, False]
    ids = torch.tensor([5, 6, 0, 7, 0, 8, 9])  # two documents ending in EOT (0), then one cut by the window
    assert cu_seqlens_from_eot(ids, 0).tolist() == [0, 3, 5, 7]
    assert cu_seqlens_from_eot(ids[:5], 0).tolist() == [0, 3, 5]
    with pytest.raises(ValueError, match="positive"):
        cu_seqlens_from_lengths([2, 0])


def test_packed_tensors_must_share_the_row():
    """attention's keys pack the same sequences as its queries: a k of another length is refused by name (every
    backend, the per-sequence runs included, would otherwise cut it by the queries' boundaries)."""
    inputs, cu = packed_inputs(ops.attention, torch.float32)
    inputs["k"] = inputs["k"][:, :-1]
    inputs["v"] = inputs["v"][:, :-1]
    for backend in ("reference", "torch"):
        with pytest.raises(ValueError, match="with cu_seqlens, k packs the same sequences as q"):
            ops.attention(**inputs, cu_seqlens=cu, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_packed_complex_scan(backend):
    """A complex recurrence (S4D-style) packs too; the helper draws complex cotangents for complex outputs."""
    inputs, cu = packed_inputs(ops.linear_scan, torch.float64)
    inputs["a"] = inputs["a"] * torch.exp(1j * torch.rand_like(inputs["a"]))
    inputs["x"] = inputs["x"].to(torch.complex128)
    inputs["initial_state"] = inputs["initial_state"].to(torch.complex128)
    assert_packed_matches_separate(ops.linear_scan, backend, inputs, cu)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_packed_fft_conv_groups_similar_lengths(bidirectional, dtype):
    """fft_conv's torch backend batches documents of similar length, zero-padded to the group's longest: groups of
    several documents, either way in time."""
    lengths = (7, 9, 8, 30, 33, 1, 16)
    inputs, cu = packed_inputs(ops.fft_conv, dtype, lengths=lengths, bidirectional=bidirectional)
    assert_packed_matches_separate(ops.fft_conv, "torch", inputs, cu)
    ops.fft_conv(**inputs, cu_seqlens=cu, backend="torch")
    assert ops.fft_conv.last_packing == "native"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_packed_flow_attention_normalisers_are_each_documents(causal, dtype):
    """flow_attention's torch backend packs in one pass: running and whole sums, positions and the competition's
    softmax per document (causal and not)."""
    inputs, cu = packed_inputs(ops.flow_attention, dtype, lengths=(7, 1, 30, 9, 2))
    inputs["causal"] = causal
    assert_packed_matches_separate(ops.flow_attention, "torch", inputs, cu)
    ops.flow_attention(**inputs, cu_seqlens=cu, backend="torch")
    assert ops.flow_attention.last_packing == "native"
