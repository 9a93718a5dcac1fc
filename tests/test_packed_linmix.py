"""Packed documents through the linear-attention family, the delta rule, mamba2 and flow: what
tests/test_packed_mixers.py does not reach.

- The bidirectional mode packs (each position sees its whole document, never the next one), built without the
  short convolution: these layers refuse ``use_short_conv=True`` with ``bidirectional=True`` (the convolution is
  causal; tests/test_gla.py::test_mixer_bad_config), so their paper settings cannot build bidirectionally.
- Every mixer packs without its short convolution too (the layers' own defaults).
- The rotary mixer (retnet) decodes a batch whose rows stand at different positions as each row alone.
- ``ssd`` (mamba2's SSD on ops.gla) packs, with per-document initial and final states.
"""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo.layers.mamba2 import ssd
from seqzoo.ops._varlen import cu_seqlens_from_lengths
from seqzoo.ops.testing import relative_error

D = 32
LENGTHS = (5, 1, 42)
TOTAL = sum(LENGTHS)
SMALL = {
    "gla": {"n_heads": 2},
    "retnet": {"n_heads": 2},
    "lightning": {"n_heads": 2},
    "hgrn2": {"n_heads": 2, "expand_ratio": 8},
    "linear_attention": {"n_heads": 2},
    "based": {"n_heads": 2, "feature_dim": 4},
    "mamba2": {"d_state": 8, "headdim": 16, "n_groups": 2},
    "deltanet": {"n_heads": 2},
    "gated_deltanet": {"n_heads": 2},
    "flow": {"n_heads": 4},
}
BIDIRECTIONAL = ["gla", "retnet", "lightning", "hgrn2", "linear_attention", "based", "flow"]


def _build(name, **extra):
    torch.manual_seed(0)
    return seqzoo.build_mixer(name, D, **{**SMALL[name], **extra}).double()


def _slices(x):
    out, s = [], 0
    for n in LENGTHS:
        out.append(x[:, s : s + n])
        s += n
    return out


def _close(what, got, want, tol=1e-10):
    err = relative_error(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def _check_forward(m):
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D, dtype=torch.float64, requires_grad=True)
    y = m(x, cu_seqlens=cu)
    y_sep = torch.cat([m(part) for part in _slices(x)], dim=1)
    _close("output", y, y_sep)
    cot = torch.randn_like(y)
    params = [p for p in m.parameters() if p.requires_grad]
    g1 = torch.autograd.grad((y * cot).sum(), [x, *params], allow_unused=True)
    g2 = torch.autograd.grad((y_sep * cot).sum(), [x, *params], allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            _close("gradient", a, b)


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_packed_bidirectional_without_short_conv(name):
    _check_forward(_build(name, bidirectional=True))


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_packed_bidirectional_does_not_see_the_next_document(name):
    # Changing the last document leaves the first two untouched, both ways.
    m = _build(name, bidirectional=True)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, LENGTHS[0] + LENGTHS[1] :] += 1.0
    head = LENGTHS[0] + LENGTHS[1]
    torch.testing.assert_close(m(x, cu_seqlens=cu)[:, :head], m(x2, cu_seqlens=cu)[:, :head], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_packed_without_short_conv(name):
    _check_forward(_build(name))


def test_retnet_batch_decodes_rows_at_their_own_positions():
    m = _build("retnet", use_short_conv=True)
    xs = [torch.randn(1, n, D, dtype=torch.float64) for n in (3, 7)]
    states = [m.prefill(x)[1] for x in xs]
    batch = {k: torch.cat([s[k] for s in states]) for k in states[0]}
    assert batch["pos"].tolist() == [3, 7]
    for _ in range(2):
        x_t = torch.randn(2, D, dtype=torch.float64)
        y_t, batch = m.step(x_t, batch)
        for n in range(2):
            y_n, states[n] = m.step(x_t[n : n + 1], states[n])
            _close("step output", y_t[n : n + 1], y_n)
    assert batch["pos"].tolist() == [5, 9]


def test_ssd_packs_with_per_document_states():
    torch.manual_seed(0)
    h, p, g, n = 4, 3, 2, 5
    x = torch.randn(1, TOTAL, h, p, dtype=torch.float64)
    dt = torch.rand(1, TOTAL, h, dtype=torch.float64) + 0.1
    A = -torch.rand(h, dtype=torch.float64) - 0.5
    B = torch.randn(1, TOTAL, g, n, dtype=torch.float64)
    C = torch.randn(1, TOTAL, g, n, dtype=torch.float64)
    Dk = torch.randn(h, dtype=torch.float64)
    h0 = torch.randn(len(LENGTHS), h, n, p, dtype=torch.float64)
    cu = cu_seqlens_from_lengths(LENGTHS)
    y, hT = ssd(x, dt, A, B, C, Dk, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    bounds = cu.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        cut = [t[:, s:e] for t in (x, dt)]
        y_i, h_i = ssd(
            cut[0], cut[1], A, B[:, s:e], C[:, s:e], Dk, initial_state=h0[i : i + 1], output_final_state=True
        )
        _close("ssd output", y[:, s:e], y_i)
        _close("ssd state", hT[i : i + 1], h_i)
