"""Packed sequences through every mixer (issue 27): ``mixer(x, cu_seqlens=cu)`` on three documents packed in one
row equals the mixer on each document alone, in the outputs and the gradients of the input and every parameter;
``prefill(x, cu_seqlens=cu)`` returns one state row per document, equal to each document's own, and decoding on
from them (batch N) equals decoding on from each; a packed prefill continues from per-document states; the
bidirectional mode of every mixer that has one packs too. fp64 to 1e-10 and fp32 to 1e-5 (relative to the
largest magnitude), lengths 5, 1 and 42 (one token; none a multiple of a chunk)."""

from __future__ import annotations

import inspect

import pytest
import torch
from test_mixer_contract import D_MODEL, MIXER_FAMILIES, build

import seqzoo
from seqzoo.ops._varlen import cu_seqlens_from_lengths
from seqzoo.ops.testing import relative_error
from seqzoo.registry import mixer_class

LENGTHS = (5, 1, 42)
TOTAL = sum(LENGTHS)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
MIXERS = sorted(MIXER_FAMILIES)


def _takes(name: str, kwarg: str) -> bool:
    return kwarg in inspect.signature(mixer_class(name).__init__).parameters


BIDIRECTIONAL = [n for n in MIXERS if _takes(n, "bidirectional")]


def _make(name, dtype, **extra):
    seq_len = seqzoo.list_mixers()[name].seq_len_kwarg  # S4's l_max: the packed row's length
    m = build(name, **({seq_len: TOTAL} if seq_len else {}), **extra).to(dtype)
    torch.manual_seed(1)
    return m


def _slices(x, lengths=LENGTHS):
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    return [x[:, s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def _close(name, got, want, dtype):
    err = relative_error(got, want)
    assert err <= TOL[dtype], f"{name}: relative error {err:.3g} > {TOL[dtype]:g}"


def _held(packed: torch.Tensor, own: torch.Tensor, key: str) -> torch.Tensor:
    """The part of a packed state row that holds a document's own cache ``own`` [1, L_n, ...]: a cache that grows
    with the sequence (a KV cache, a long convolution's inputs) is padded to the longest document along dim 1,
    with the document's entries first or last and zeros in the rest."""
    if packed.shape[1:] == own.shape[1:]:
        return packed
    n = own.shape[1]
    assert packed.shape[2:] == own.shape[2:] and packed.shape[1] > n, (key, packed.shape, own.shape)
    if (
        n == 0
    ):  # an empty cache (combiner's summaries before a first finished segment): its row is all padding
        assert (packed == 0).all(), f"state[{key!r}]: an empty cache padded with non-zeros"
        return packed[:, :0]
    for held, rest in ((packed[:, -n:], packed[:, :-n]), (packed[:, :n], packed[:, n:])):
        if torch.equal(held, own) or (rest == 0).all() and relative_error(held, own) < 1e-6:
            return held
    pytest.fail(
        f"state[{key!r}]: the document's cache {tuple(own.shape)} is neither first nor last in its "
        f"padded row {tuple(packed.shape)} with zeros elsewhere"
    )


def _compare_states(packed: dict, separate: list[dict], dtype):
    """The packed prefill's state rows against each document's own state."""
    assert set(packed) == set(separate[0])
    for k in packed:
        assert packed[k].shape[0] == len(separate), f"state[{k!r}] has {packed[k].shape[0]} rows"
        for n, own in enumerate(separate):
            row = packed[k][n : n + 1]
            if packed[k].is_floating_point() or packed[k].is_complex():
                _close(f"state[{k!r}] row {n}", _held(row, own[k], k), own[k], dtype)
            else:
                assert torch.equal(row, own[k]), (k, n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", MIXERS)
def test_packed_forward_equals_separate(name, dtype):
    m = _make(name, dtype)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype, requires_grad=True)
    y = m(x, cu_seqlens=cu)
    cot = torch.randn_like(y)
    params = [p for p in m.parameters() if p.requires_grad]
    g_packed = torch.autograd.grad((y * cot).sum(), [x, *params], allow_unused=True)
    ys = [m(part) for part in _slices(x)]
    y_sep = torch.cat(ys, dim=1)
    _close("output", y, y_sep, dtype)
    g_sep = torch.autograd.grad((y_sep * cot).sum(), [x, *params], allow_unused=True)
    names = ["x"] + [n for n, p in m.named_parameters() if p.requires_grad]
    for pname, a, b in zip(names, g_packed, g_sep):
        assert (a is None) == (b is None), pname
        if a is not None:
            _close(f"grad[{pname}]", a, b, dtype)


@pytest.mark.parametrize("name", MIXERS)
def test_packed_prefill_then_step_equals_separate(name):
    dtype = torch.float64
    m = _make(name, dtype)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype)
    if m.bidirectional:  # bidirectional whatever its arguments (vig): no packed prefill either
        with pytest.raises(RuntimeError, match="bidirectional"):
            m.prefill(x, cu_seqlens=cu)
        return
    y, state = m.prefill(x, cu_seqlens=cu)
    separate = [m.prefill(part) for part in _slices(x)]
    _close("prefill output", y, torch.cat([s[0] for s in separate], dim=1), dtype)
    _compare_states(state, [s[1] for s in separate], dtype)
    # Decoding on: the packed prefill's states (one row per document) step as the separate ones do.
    own = [s[1] for s in separate]
    for _ in range(3):
        x_t = torch.randn(len(LENGTHS), D_MODEL, dtype=dtype)
        y_t, state = m.step(x_t, state)
        y_own = []
        for n in range(len(LENGTHS)):
            y_n, own[n] = m.step(x_t[n : n + 1], own[n])
            y_own.append(y_n)
        _close("step output", y_t, torch.cat(y_own), dtype)
    # ... and a packed prefill continues from one state per document.
    x2 = torch.randn(1, TOTAL, D_MODEL, dtype=dtype)
    y2, state2 = m.prefill(x2, state, cu_seqlens=cu)
    cont = [m.prefill(part, own[n]) for n, part in enumerate(_slices(x2))]
    _close("continued prefill output", y2, torch.cat([c[0] for c in cont], dim=1), dtype)
    _compare_states(state2, [c[1] for c in cont], dtype)


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_packed_bidirectional_equals_separate(name):
    dtype = torch.float64
    # A short convolution is causal: a bidirectional build leaves it off (as the LRA settings do).
    no_conv = {"use_short_conv": False} if _takes(name, "use_short_conv") else {}
    m = _make(name, dtype, bidirectional=True, **no_conv)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype, requires_grad=True)
    y = m(x, cu_seqlens=cu)
    y_sep = torch.cat([m(part) for part in _slices(x)], dim=1)
    _close("bidirectional output", y, y_sep, dtype)
    cot = torch.randn_like(y)
    (g1,) = torch.autograd.grad((y * cot).sum(), [x])
    (g2,) = torch.autograd.grad((y_sep * cot).sum(), [x])
    _close("bidirectional grad[x]", g1, g2, dtype)


@pytest.mark.parametrize("name", MIXERS)
def test_packed_input_errors_name_cu_seqlens(name):
    m = _make(name, torch.float64)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=torch.float64)
    with pytest.raises(ValueError, match="cu_seqlens"):
        m(x, cu_seqlens=torch.tensor([0, 5, 5, TOTAL], dtype=torch.int32))
    with pytest.raises(TypeError, match="cu_seqlens"):
        m(x, cu_seqlens=cu_seqlens_from_lengths(LENGTHS).long())
    with pytest.raises(ValueError, match="cu_seqlens"):
        m(x[:, :-1], cu_seqlens=cu_seqlens_from_lengths(LENGTHS))
    with pytest.raises(ValueError, match="batch 1"):
        m(x.expand(2, -1, -1), cu_seqlens=cu_seqlens_from_lengths(LENGTHS))
