"""Packed documents through the long-convolution and S4 mixers (issue 27), beyond tests/test_packed_mixers.py.

hyena, base_conv and orchid decode from a cache of their long convolutions' inputs that grows with the document
("z", and "x" for base_conv and orchid's residual convolution). A packed prefill returns one row per document,
the caches padded to the longest document and each right-aligned after zeros, so a document's own cache is the
last L_n positions of its row. test_packed_mixers.py's prefill test stacks the separate runs' states, which
for these caches differ in length (and cannot be stacked); here the same checks compare each row's last L_n
positions with the separate run's cache and require the leading positions to be zero. The rest of each
state (short-convolution windows) has a fixed size and is compared whole.

Also: the settings the shared tests do not reach (base_conv with one of its convolutions, orchid without its
residual convolution, hyena of order 3, S4 with a document longer than l_max), the taps cached outside autograd
(decoding under no_grad), gradients through a packed prefill, and fp32.
"""

from __future__ import annotations

import pytest
import torch
from test_mixer_contract import D_MODEL, build
from test_packed_mixers import LENGTHS, TOTAL, _close, _slices

import seqzoo
from seqzoo.ops._varlen import cu_seqlens_from_lengths

# The caches that grow with the sequence, per mixer (time on dim 1); everything else has a fixed size.
GROWING = {"hyena": ("z",), "base_conv": ("x",), "orchid": ("z", "x")}

CACHED = [
    ("hyena", {}),
    ("hyena", {"order": 3}),
    ("base_conv", {}),
    ("base_conv", {"short_width": None}),
    ("base_conv", {"long_conv": False}),
    ("base_conv", {"use_act": True}),
    ("orchid", {}),
    ("orchid", {"residual_conv": False}),
]


def _id(case):
    name, extra = case
    return name + "".join(f"-{k}={v}" for k, v in extra.items())


def _make(name, dtype, **extra):
    seq_len = seqzoo.list_mixers()[name].seq_len_kwarg
    kwargs = {seq_len: TOTAL} if seq_len else {}
    kwargs.update(extra)
    m = build(name, **kwargs).to(dtype)
    torch.manual_seed(1)
    return m


def compare_padded_states(name, packed: dict, separate: list[dict], dtype):
    """Packed state rows against each document's own state: a growing cache right-aligned after zeros (its last
    L_n positions the document's cache), every other tensor equal to the separate states stacked."""
    assert set(packed) == set(separate[0])
    n_docs = len(separate)
    for k, p in packed.items():
        assert p.shape[0] == n_docs, f"state[{k!r}] has {p.shape[0]} rows"
        if k in GROWING.get(name, ()):
            longest = max(s[k].shape[1] for s in separate)
            assert p.shape[1] == longest, f"state[{k!r}] is padded to {p.shape[1]}, expected {longest}"
            for n, s in enumerate(separate):
                own = s[k].shape[1]
                _close(f"state[{k!r}] row {n}", p[n : n + 1, longest - own :], s[k], dtype)
                assert not p[n, : longest - own].any(), f"state[{k!r}] row {n}: padding is not zero"
        else:
            _close(f"state[{k!r}]", p, torch.cat([s[k] for s in separate]), dtype)


def _decode_and_continue(name, m, dtype, grad):
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype)
    with torch.set_grad_enabled(grad):
        y, state = m.prefill(x, cu_seqlens=cu)
        own = [m.prefill(part) for part in _slices(x)]
        _close("prefill output", y, torch.cat([o[0] for o in own], 1), dtype)
        own = [o[1] for o in own]
        compare_padded_states(name, state, own, dtype)
        for _ in range(3):
            x_t = torch.randn(len(LENGTHS), D_MODEL, dtype=dtype)
            y_t, state = m.step(x_t, state)
            y_own = []
            for n in range(len(LENGTHS)):
                y_n, own[n] = m.step(x_t[n : n + 1], own[n])
                y_own.append(y_n)
            _close("step output", y_t, torch.cat(y_own), dtype)
        compare_padded_states(name, state, own, dtype)
        x2 = torch.randn(1, TOTAL, D_MODEL, dtype=dtype)
        y2, state2 = m.prefill(x2, state, cu_seqlens=cu)
        cont = [m.prefill(part, own[n]) for n, part in enumerate(_slices(x2))]
        _close("continued prefill output", y2, torch.cat([c[0] for c in cont], 1), dtype)
        compare_padded_states(name, state2, [c[1] for c in cont], dtype)
        # ... and decoding on from the continued states.
        x_t = torch.randn(len(LENGTHS), D_MODEL, dtype=dtype)
        y_t, _ = m.step(x_t, state2)
        y_own = [m.step(x_t[n : n + 1], c[1])[0] for n, c in enumerate(cont)]
        _close("step after continued prefill", y_t, torch.cat(y_own), dtype)


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("case", CACHED, ids=_id)
def test_packed_prefill_step_continue_with_padded_caches(case, grad):
    name, extra = case
    _decode_and_continue(name, _make(name, torch.float64, **extra), torch.float64, grad)


@pytest.mark.parametrize("name", ["hyena", "base_conv", "orchid", "s4", "s4d"])
def test_packed_prefill_fp32(name):
    _decode_and_continue(name, _make(name, torch.float32), torch.float32, False)


@pytest.mark.parametrize("case", CACHED, ids=_id)
def test_packed_forward_settings(case):
    name, extra = case
    dtype = torch.float64
    m = _make(name, dtype, **extra)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype, requires_grad=True)
    y = m(x, cu_seqlens=cu)
    y_sep = torch.cat([m(part) for part in _slices(x)], 1)
    _close("output", y, y_sep, dtype)
    cot = torch.randn_like(y)
    params = [p for p in m.parameters() if p.requires_grad]
    g1 = torch.autograd.grad((y * cot).sum(), [x, *params])
    g2 = torch.autograd.grad((y_sep * cot).sum(), [x, *params])
    for a, b in zip(g1, g2):
        _close("grad", a, b, dtype)


@pytest.mark.parametrize("name", ["hyena", "base_conv", "orchid", "s4", "s4d"])
def test_packed_prefill_gradients(name):
    """Gradients flow through a packed prefill, its continuation from per-document states and the padded
    caches as through separate runs."""
    dtype = torch.float64
    m = _make(name, dtype)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=dtype, requires_grad=True)
    x2 = torch.randn(1, TOTAL, D_MODEL, dtype=dtype, requires_grad=True)
    x_t = torch.randn(len(LENGTHS), D_MODEL, dtype=dtype)
    y, state = m.prefill(x, cu_seqlens=cu)
    y2, state = m.prefill(x2, state, cu_seqlens=cu)
    y_t, _ = m.step(x_t, state)
    ys, ys2, yts = [], [], []
    for n, (a, b) in enumerate(zip(_slices(x), _slices(x2))):
        y_n, s_n = m.prefill(a)
        y2_n, s_n = m.prefill(b, s_n)
        ys.append(y_n)
        ys2.append(y2_n)
        yts.append(m.step(x_t[n : n + 1], s_n)[0])
    sep = (torch.cat(ys, 1), torch.cat(ys2, 1), torch.cat(yts))
    cots = [torch.randn_like(t) for t in sep]
    params = [p for p in m.parameters() if p.requires_grad]

    def loss(outs):
        return sum((o * c).sum() for o, c in zip(outs, cots))

    g1 = torch.autograd.grad(loss((y, y2, y_t)), [x, x2, *params], allow_unused=True)
    g2 = torch.autograd.grad(loss(sep), [x, x2, *params], allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            _close("grad", a, b, dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_s4_document_longer_than_l_max(bidirectional):
    """A document longer than l_max gets its kernel from the re-derived C~ (S4's own rule), alone as packed."""
    dtype = torch.float64
    m = _make("s4", dtype, l_max=16, bidirectional=bidirectional)
    lengths = (5, 40, 3)
    cu = cu_seqlens_from_lengths(lengths)
    x = torch.randn(1, sum(lengths), D_MODEL, dtype=dtype)
    y = m(x, cu_seqlens=cu)
    _close("output", y, torch.cat([m(p) for p in _slices(x, lengths)], 1), dtype)
    if not bidirectional:
        y, state = m.prefill(x, cu_seqlens=cu)
        own = [m.prefill(p) for p in _slices(x, lengths)]
        _close("prefill output", y, torch.cat([o[0] for o in own], 1), dtype)
        _close("state", state["ssm"], torch.cat([o[1]["ssm"] for o in own]), dtype)


@pytest.mark.parametrize("name", ["hyena", "base_conv", "orchid", "s4", "s4d"])
def test_packed_prefill_state_rows_checked(name):
    m = _make(name, torch.float64)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)  # two rows for three documents
    with pytest.raises(ValueError, match="sequences in cu_seqlens"):
        m.prefill(x, state, cu_seqlens=cu)
