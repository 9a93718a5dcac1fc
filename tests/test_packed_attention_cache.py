"""Packed prefill and decoding of the KV-cache mixers whose cache grows with the sequence (issue 27).

test_packed_mixers.py's prefill test stacks the separate runs' states with torch.cat, which cannot stack
``attention``'s caches (one row holds 5 keys, another 42). Here the separate caches are padded with zeros to
the packed one's length (slots after a row's ``pos`` are padding, never attended) and the rest of that test
is repeated: the packed prefill's output and states, three decoding steps of the N rows at their different
positions, and a packed prefill that continues from one state per document. Also: padding is never attended,
and a batch whose rows stand at different positions decodes as each row alone."""

from __future__ import annotations

import pytest
import torch
from test_mixer_contract import D_MODEL, build
from test_packed_mixers import LENGTHS, TOTAL, _slices

from seqzoo.ops._varlen import cu_seqlens_from_lengths

GROWING = ["attention", "attention:plain"]


def _padded_rows(states: list[dict]) -> dict:
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        if parts[0].dim() > 1:
            longest = max(p.shape[1] for p in parts)
            parts = [torch.cat([p, p.new_zeros(1, longest - p.shape[1], *p.shape[2:])], dim=1) for p in parts]
        out[key] = torch.cat(parts)
    return out


def _same_states(packed, separate):
    assert set(packed) == set(separate)
    for key in packed:
        assert packed[key].shape == separate[key].shape, key
        torch.testing.assert_close(packed[key], separate[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", GROWING)
def test_packed_prefill_then_step_equals_separate_with_padded_caches(name):
    torch.manual_seed(0)
    m = build(name)
    cu = cu_seqlens_from_lengths(LENGTHS)
    x = torch.randn(1, TOTAL, D_MODEL, dtype=torch.float64)
    y, state = m.prefill(x, cu_seqlens=cu)
    separate = [m.prefill(part) for part in _slices(x)]
    torch.testing.assert_close(y, torch.cat([s[0] for s in separate], 1), rtol=1e-10, atol=1e-10)
    assert state["k"].shape[1] == max(LENGTHS) and state["pos"].tolist() == list(LENGTHS)
    _same_states(state, _padded_rows([s[1] for s in separate]))
    own = [s[1] for s in separate]
    for _ in range(3):
        x_t = torch.randn(len(LENGTHS), D_MODEL, dtype=torch.float64)
        y_t, state = m.step(x_t, state)
        y_own = []
        for n in range(len(LENGTHS)):
            y_n, own[n] = m.step(x_t[n : n + 1], own[n])
            y_own.append(y_n)
        torch.testing.assert_close(y_t, torch.cat(y_own), rtol=1e-10, atol=1e-10)
    _same_states(state, _padded_rows(own))
    x2 = torch.randn(1, TOTAL, D_MODEL, dtype=torch.float64)
    y2, state2 = m.prefill(x2, state, cu_seqlens=cu)
    cont = [m.prefill(part, own[n]) for n, part in enumerate(_slices(x2))]
    torch.testing.assert_close(y2, torch.cat([c[0] for c in cont], 1), rtol=1e-10, atol=1e-10)
    _same_states(state2, _padded_rows([c[1] for c in cont]))


@pytest.mark.parametrize("name", ["attention", "sliding_window"])
def test_padding_is_never_attended(name):
    """Whatever lies in a row's slots at or after its position changes nothing (attention's padding; the
    ring's slots a short row has not reached)."""
    torch.manual_seed(0)
    m = build(name)
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64)
    _, state = m.prefill(x, cu_seqlens=cu_seqlens_from_lengths([2, 7]))
    x_t = torch.randn(2, D_MODEL, dtype=torch.float64)
    y_t, _ = m.step(x_t, state)
    spoiled = {k: v.clone() for k, v in state.items()}
    for key in ("k", "v"):
        spoiled[key][0, 2:] = 1e6  # row 0 has seen 2 tokens: slots 2.. are padding (or unwritten ring slots)
    y_s, _ = m.step(x_t, spoiled)
    torch.testing.assert_close(y_s, y_t, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["attention", "sliding_window", "liger", "lizard"])
def test_rows_at_different_positions_decode_as_each_alone(name):
    """A batch made of rows at different positions (here from separate prefills of lengths 3 and 8, padded
    and stacked) decodes, prefills and steps as each row alone, and states stay row-wise equal."""
    torch.manual_seed(0)
    m = build(name)
    xa, xb = torch.randn(1, 3, D_MODEL, dtype=torch.float64), torch.randn(1, 8, D_MODEL, dtype=torch.float64)
    _, sa = m.prefill(xa)
    _, sb = m.prefill(xb)
    state = _padded_rows([sa, sb])
    x = torch.randn(2, 4, D_MODEL, dtype=torch.float64)
    y, state = m.prefill(x, state)
    ya, sa = m.prefill(x[:1], sa)
    yb, sb = m.prefill(x[1:], sb)
    torch.testing.assert_close(y, torch.cat([ya, yb]), rtol=1e-10, atol=1e-10)
    x_t = torch.randn(2, D_MODEL, dtype=torch.float64)
    y_t, state = m.step(x_t, state)
    ya, sa = m.step(x_t[:1], sa)
    yb, sb = m.step(x_t[1:], sb)
    torch.testing.assert_close(y_t, torch.cat([ya, yb]), rtol=1e-10, atol=1e-10)
    _same_states(state, _padded_rows([sa, sb]))


def test_cache_shorter_than_its_position_is_an_error():
    m = build("attention")
    _, state = m.prefill(torch.randn(2, 4, D_MODEL, dtype=torch.float64))
    state = {**state, "pos": torch.tensor([4, 6])}
    with pytest.raises(ValueError, match="pos"):
        m.step(torch.randn(2, D_MODEL, dtype=torch.float64), state)
