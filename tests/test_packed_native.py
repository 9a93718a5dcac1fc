"""The one-pass ("native") packed paths of the torch backends (issue 27) beyond tests/test_packed_ops.py: they
really run natively (``op.last_packing``), and equal separate runs without initial states, in reverse, with
complex inputs, documents shorter than the convolution's width, many one-token documents, low precision and
without autograd (the inference paths)."""

from __future__ import annotations

import pytest
import torch

from seqzoo import ops
from seqzoo.ops._varlen import cu_seqlens_from_lengths
from seqzoo.ops.testing import assert_packed_matches_separate

NATIVE = ["causal_conv1d", "linear_scan"]
LENGTH_SETS = {
    "mixed": (5, 1, 42),
    "ones": (1,) * 7,
    "short": (2, 1, 3, 2),  # shorter than a width-4 convolution's state
    "one": (17,),
}


def _example(name, dtype, lengths, drop_state=False, **sizes):
    op = ops.list_ops()[name]
    spec = op.spec
    n = len(lengths)
    args = spec.example(torch.float32, B=1, T=sum(lengths), **sizes)
    if spec.state_arg:
        args[spec.state_arg] = (
            None if drop_state else spec.example(torch.float32, B=n, T=3, **sizes)[spec.state_arg]
        )
    cast = lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    return op, {k: cast(v) for k, v in args.items()}, cu_seqlens_from_lengths(lengths)


@pytest.mark.parametrize("lengths", list(LENGTH_SETS.values()), ids=list(LENGTH_SETS))
@pytest.mark.parametrize("drop_state", [False, True], ids=["state", "no_state"])
@pytest.mark.parametrize("name", NATIVE)
def test_native_equals_separate(name, drop_state, lengths):
    op, inputs, cu = _example(name, torch.float64, lengths, drop_state)
    assert_packed_matches_separate(op, "torch", inputs, cu)
    op(**inputs, cu_seqlens=cu, backend="torch")
    assert op.last_packing == "native"


@pytest.mark.parametrize("width", [2, 4, 8])
def test_causal_conv1d_widths(width):
    op, inputs, cu = _example("causal_conv1d", torch.float64, (3, 9, 1, 6, 2), W=width)
    assert_packed_matches_separate(op, "torch", inputs, cu)


@pytest.mark.parametrize("lengths", [(5, 1, 42), (30, 40), (1, 1, 1)], ids=["mixed", "long", "ones"])
def test_linear_scan_reverse_and_long(lengths):
    # T >= 24 takes the blocked scan (chunks that straddle documents); shorter ones the step-by-step loop.
    op, inputs, cu = _example("linear_scan", torch.float64, lengths, reverse=True)
    assert inputs["reverse"] is True
    assert_packed_matches_separate(op, "torch", inputs, cu)


def test_linear_scan_complex():
    op, inputs, cu = _example("linear_scan", torch.float64, (5, 1, 42))
    inputs["a"] = inputs["a"] * torch.exp(1j * torch.rand_like(inputs["a"]))
    inputs["initial_state"] = inputs["initial_state"].to(torch.complex128) * 1j
    # (assert_packed_matches_separate draws real cotangents, which a complex output cannot take: by hand here.)
    leaves = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    grads_of = [leaves["a"], leaves["x"], leaves["initial_state"]]

    def run(h_and_final):
        gen = torch.Generator().manual_seed(0)
        loss = 0
        for o in h_and_final:
            loss = (
                loss
                + (torch.view_as_real(o) * torch.randn(*o.shape, 2, generator=gen, dtype=o.real.dtype)).sum()
            )
        return list(h_and_final), torch.autograd.grad(loss, grads_of)

    packed, packed_grads = run(op(**leaves, cu_seqlens=cu, backend="torch"))
    assert op.last_packing == "native"
    bounds = cu.tolist()
    parts = []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        kw = dict(
            leaves,
            a=leaves["a"][:, s:e],
            x=leaves["x"][:, s:e],
            initial_state=leaves["initial_state"][n : n + 1],
        )
        parts.append(op(**kw, backend="torch"))
    separate, separate_grads = run((torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts])))
    for p, s in zip(packed + list(packed_grads), separate + list(separate_grads)):
        torch.testing.assert_close(p, s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NATIVE)
def test_native_low_precision_matches_separate(name):
    """bf16 inputs: the packed path rounds where a separate run rounds (states reset in fp32)."""
    op, inputs, cu = _example(name, torch.bfloat16, (5, 1, 42))
    packed = op(**inputs, cu_seqlens=cu, backend="torch")
    bounds = cu.tolist()
    state_arg = op.spec.state_arg
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        kw = {k: (v[:, s:e] if k in op.packed_args() and v is not None else v) for k, v in inputs.items()}
        kw[state_arg] = inputs[state_arg][n : n + 1]
        sep = op(**kw, backend="torch")
        torch.testing.assert_close(packed[0][:, s:e].float(), sep[0].float(), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(packed[1][n : n + 1], sep[1], rtol=1e-5, atol=1e-5)
        assert packed[0].dtype == sep[0].dtype and packed[1].dtype == sep[1].dtype


@pytest.mark.parametrize("name", NATIVE)
def test_native_without_autograd(name):
    op, inputs, cu = _example(name, torch.float64, (5, 1, 42))
    with torch.no_grad():
        packed = op(**inputs, cu_seqlens=cu, backend="torch")
        separate = op(**inputs, cu_seqlens=cu, backend="reference")
    for p, s in zip(packed, separate):
        torch.testing.assert_close(p, s.to(p.dtype), rtol=1e-10, atol=1e-10)


# -- attention: documents batched by length ----------------------------------------------------------------------

ATTENTION_CASES = {
    "causal": dict(causal=True, window=None),
    "causal_window": dict(causal=True, window=3),
    "full": dict(causal=False, window=None),
    "full_window": dict(causal=False, window=4),
}


@pytest.mark.parametrize("budget", [-1, 0, 10**9], ids=["alone", "equal_lengths", "one_batch"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_native(case, budget, monkeypatch):
    from seqzoo.ops.attention import torch as attention_torch

    monkeypatch.setattr(attention_torch, "PAD_BUDGET", budget)
    monkeypatch.setattr(attention_torch, "PAD_BUDGET_INFERENCE", budget)
    # GQA: 4 query heads over 2 key/value heads.
    op, inputs, cu = _example("attention", torch.float64, (5, 1, 42, 5, 9, 2), H=4, G=2)
    inputs.update(ATTENTION_CASES[case], scale=0.3)
    assert_packed_matches_separate(op, "torch", inputs, cu)
    with torch.no_grad():  # the inference path: documents alone read their slices, outputs written in place
        packed = op(**inputs, cu_seqlens=cu, backend="torch")
        assert op.last_packing == "native"
        reference = op(**inputs, cu_seqlens=cu, backend="reference")
    torch.testing.assert_close(packed, reference, rtol=1e-10, atol=1e-10)


def test_attention_buckets():
    from seqzoo.ops.attention.torch import length_buckets

    assert length_buckets([5, 1, 42], 8, budget=10**9) == [[2, 0, 1]]
    assert length_buckets([5, 1, 42], 8, budget=0) == [[2], [0], [1]]
    assert length_buckets([5, 5, 42], 8, budget=0) == [[2], [0, 1]]  # equal lengths batch with no padding
    # H = 4, D = 64 at the default budget: long documents run alone, short ones share a call.
    assert length_buckets([512, 500, 30, 20, 3], 256) == [[0], [1], [2, 3, 4]]


def test_attention_packed_needs_self_attention():
    op, inputs, cu = _example("attention", torch.float32, (5, 1, 42))
    inputs["k"], inputs["v"], inputs["causal"] = inputs["k"][:, :40], inputs["v"][:, :40], False
    with pytest.raises(ValueError, match="with cu_seqlens, k packs the same sequences as q"):
        op(**inputs, cu_seqlens=cu, backend="torch")


# -- selective_scan: decays reset at document starts ---------------------------------------------------------------

SELECTIVE_CASES = {"real": {}, "complex": {"complex": True}, "groups": {"G": 3}}


@pytest.mark.parametrize("drop_state", [False, True], ids=["state", "no_state"])
@pytest.mark.parametrize("case", list(SELECTIVE_CASES))
def test_selective_scan_native(case, drop_state):
    op, inputs, cu = _example(
        "selective_scan", torch.float64, (5, 1, 42, 30), drop_state, **SELECTIVE_CASES[case]
    )
    if (
        case == "complex"
    ):  # (the shared checker draws real cotangents: compare the real outputs and gradients)
        inputs["output_final_state"] = False
    assert_packed_matches_separate(op, "torch", inputs, cu)
    op(**inputs, cu_seqlens=cu, backend="torch")
    assert op.last_packing == "native"


@pytest.mark.parametrize("case", list(SELECTIVE_CASES))
def test_selective_scan_native_inference_segments(case, monkeypatch):
    """Without autograd the scan runs in segments (here of 64 steps): documents start and end inside them and
    across their boundaries."""
    from seqzoo.ops.selective_scan import torch as selective_torch

    monkeypatch.setattr(selective_torch, "SEGMENT_STATES", 1)
    op, inputs, cu = _example("selective_scan", torch.float64, (5, 1, 58, 30, 70, 1), **SELECTIVE_CASES[case])
    with torch.no_grad():
        y, final = op(**inputs, cu_seqlens=cu, backend="torch")
        assert op.last_packing == "native"
        y_ref, final_ref = op(**inputs, cu_seqlens=cu, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_selective_scan_native_loop_path(monkeypatch):
    """The wide-scan loop runs once per document inside the native call."""
    from seqzoo.ops.selective_scan import torch_loop

    monkeypatch.setattr(torch_loop, "LOOP_MIN_STATES", 1)
    op, inputs, cu = _example("selective_scan", torch.float64, (5, 1, 42))
    assert_packed_matches_separate(op, "torch", inputs, cu)


# -- gla, delta_rule: documents on whole chunks ------------------------------------------------------------------

CHUNKED_LENGTHS = (5, 1, 42, 70, 16, 33)  # across chunk lengths 16..64, a document of exactly one chunk


def _no_decay(inputs):
    inputs["g"] = None
    return inputs


GLA_CASES = {
    "vector": ({"decay": "vector"}, None),
    "head": ({"decay": "head"}, None),
    "strong": ({"decay": "vector", "regime": "strong"}, None),  # the halvings path
    "none": ({"decay": "vector"}, _no_decay),
}


@pytest.mark.parametrize("chunk_costs", [None, {16: 1.0}, {64: 1.0}], ids=["auto", "C16", "C64"])
@pytest.mark.parametrize("drop_state", [False, True], ids=["state", "no_state"])
@pytest.mark.parametrize("case", list(GLA_CASES))
def test_gla_native(case, drop_state, chunk_costs, monkeypatch):
    from seqzoo.ops.gla import torch as gla_torch

    if chunk_costs:
        monkeypatch.setattr(gla_torch, "PACKED_CHUNK_COST", chunk_costs)
        monkeypatch.setattr(gla_torch, "PACKED_CHUNK_COST_INFERENCE", chunk_costs)
    sizes, change = GLA_CASES[case]
    op, inputs, cu = _example("gla", torch.float64, CHUNKED_LENGTHS, drop_state, H=2, K=8, V=4, **sizes)
    if change:
        inputs = change(inputs)
    assert_packed_matches_separate(op, "torch", inputs, cu)
    with torch.no_grad():  # the inference path (chunk by chunk without decay)
        packed = op(**inputs, cu_seqlens=cu, backend="torch")
        assert op.last_packing == "native"
        reference = op(**inputs, cu_seqlens=cu, backend="reference")
    for p, r in zip(packed, reference):
        if p is not None:
            torch.testing.assert_close(p, r.to(p.dtype), rtol=1e-9, atol=1e-9)


def test_gla_native_bidirectional():
    op, inputs, cu = _example("gla", torch.float64, (5, 1, 42), True, H=2, K=8, V=4)
    inputs.update(causal=False, output_final_state=False)
    assert_packed_matches_separate(op, "torch", inputs, cu)


DELTA_CASES = {
    "decay": ({}, None),
    "strong": ({"regime": "strong"}, None),
    "none": ({}, _no_decay),
}


@pytest.mark.parametrize("chunk_costs", [None, {16: 1.0}, {64: 1.0}], ids=["auto", "C16", "C64"])
@pytest.mark.parametrize("drop_state", [False, True], ids=["state", "no_state"])
@pytest.mark.parametrize("case", list(DELTA_CASES))
def test_delta_rule_native(case, drop_state, chunk_costs, monkeypatch):
    from seqzoo.ops.delta_rule import torch as delta_torch

    if chunk_costs:
        monkeypatch.setattr(delta_torch, "PACKED_CHUNK_COST", chunk_costs)
    sizes, change = DELTA_CASES[case]
    op, inputs, cu = _example(
        "delta_rule", torch.float64, CHUNKED_LENGTHS, drop_state, H=2, K=8, V=4, **sizes
    )
    if change:
        inputs = change(inputs)
    assert_packed_matches_separate(op, "torch", inputs, cu)
    op(**inputs, cu_seqlens=cu, backend="torch")
    assert op.last_packing == "native"


@pytest.mark.parametrize("group_states", [1, 40 * 12, 1 << 30], ids=["alone", "groups", "one_pass"])
def test_selective_scan_native_groups(group_states, monkeypatch):
    """With autograd, consecutive documents up to GROUP_STATES states share a pass (here D * N = 12: groups of up
    to 40 tokens, so (5, 1) and (30,) and (2, 1, 9) ... share, 42 runs alone)."""
    from seqzoo.ops.selective_scan import torch as selective_torch

    monkeypatch.setattr(selective_torch, "GROUP_STATES", group_states)
    op, inputs, cu = _example("selective_scan", torch.float64, (5, 1, 42, 30, 2, 1, 9, 3))
    assert_packed_matches_separate(op, "torch", inputs, cu)


@pytest.mark.parametrize("name", ["gla", "delta_rule"])
def test_chunked_native_in_groups(name, monkeypatch):
    """A row run a group of documents at a time: here groups of up to 50 tokens (width H K = 16), so (5, 1, 42) and
    (16, 33) share a pass and 70 runs alone (unpacked), with autograd and without."""
    import importlib

    backend = importlib.import_module(f"seqzoo.ops.{name}.torch")
    monkeypatch.setattr(backend, "GROUP_ELEMENTS", 50 * 16)
    monkeypatch.setattr(backend, "GROUP_ELEMENTS_INFERENCE", 50 * 16)
    op, inputs, cu = _example(name, torch.float64, CHUNKED_LENGTHS, H=2, K=8, V=4)
    assert_packed_matches_separate(op, "torch", inputs, cu)
    with torch.no_grad():
        packed = op(**inputs, cu_seqlens=cu, backend="torch")
        reference = op(**inputs, cu_seqlens=cu, backend="reference")
    for p, r in zip(packed, reference):
        torch.testing.assert_close(p, r.to(p.dtype), rtol=1e-9, atol=1e-9)
