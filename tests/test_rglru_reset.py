"""rglru's reset at sequence starts (issue 27), as recurrentgemma's RGLRU (recurrentgemma/torch/layers.py:
``reset = segment_pos == 0``; the decay a_t zeroed and the input multiplier sqrt(1 - a_t^2) replaced by 1).

At a start h_t = i_t * u_t exactly; the starts are position 0 of a forward or of a prefill without a state,
every document's first position with cu_seqlens, and the first token of a row whose state is ``fresh``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqzoo.layers.rglru import RGLRUBlock
from seqzoo.ops._varlen import cu_seqlens_from_lengths


def _block(d_model=8, **kwargs):
    torch.manual_seed(0)
    m = RGLRUBlock(d_model, n_heads=2, **kwargs).double()
    with torch.no_grad():  # non-zero biases, so that nothing is symmetric by accident
        m.gate_a_bias.normal_()
        m.gate_x_bias.normal_()
        m.conv.bias.normal_()
    return m


@pytest.mark.parametrize("with_state", [False, True])
def test_start_is_input_gate_times_input_exactly(with_state):
    """h_0 = i_0 * u_0 to the last bit: no decay of the previous state (even a non-zero one), multiplier 1."""
    m = _block()
    u = torch.randn(2, 4, m.lru_width, dtype=torch.float64)
    reset = torch.zeros(2, 4, dtype=torch.bool)
    reset[:, 0] = True
    h0 = torch.randn(2, m.lru_width, dtype=torch.float64) if with_state else None
    h, _ = m._rglru(u, h0, reset)
    i0 = torch.sigmoid(m._gate(u, m.gate_x_weight, m.gate_x_bias))[:, 0]
    assert torch.equal(h[:, 0], i0 * u[:, 0])
    # ... and not at the other tokens: there the decay and sqrt(1 - a^2) act as before.
    assert not torch.allclose(
        h[:, 1], torch.sigmoid(m._gate(u, m.gate_x_weight, m.gate_x_bias))[:, 1] * u[:, 1]
    )


def _scalar_block():
    """d_model = lru_width = 1 with u = x (identity projection, a conv that only passes the current token),
    r = i = 1/2 (zero gate weights and biases) and a = exp(-c softplus(L) r) = 1/2."""
    m = RGLRUBlock(1, n_heads=1).double().requires_grad_(False)
    with torch.no_grad():
        m.in_proj.weight.fill_(1.0)
        m.conv.weight.zero_()
        m.conv.weight[:, -1] = 1.0
        m.conv.bias.zero_()
        for p in (m.gate_a_weight, m.gate_a_bias, m.gate_x_weight, m.gate_x_bias):
            p.zero_()
        # softplus(L) = 2 ln 2 / c, so log a = -c softplus(L) / 2 = -ln 2.
        m.a_param.fill_(math.log(math.expm1(2 * math.log(2) / m.c)))
        m.out_proj.weight.fill_(1.0)
    return m


def test_two_documents_by_hand():
    """Documents [2, 4] and [6, 8, 10] packed: each starts at h = u / 2; then h_t = h_{t-1} / 2 + sqrt(3)/2 u_t / 2."""
    m = _scalar_block()
    x = torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0], dtype=torch.float64).view(1, 5, 1)
    s = math.sqrt(0.75)
    h3 = 1.5 + s * 4
    h = torch.tensor([1.0, 0.5 + s * 2, 3.0, h3, 0.5 * h3 + s * 5], dtype=torch.float64)
    gate = F.gelu(x.view(5) * m.gate_proj.weight.view(()), approximate="tanh")
    want = (h * gate).view(1, 5, 1)
    cu = cu_seqlens_from_lengths([2, 3])
    torch.testing.assert_close(m(x, cu_seqlens=cu), want, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.cat([m(x[:, :2]), m(x[:, 2:])], 1), want, rtol=1e-14, atol=1e-14)
    # Unpacked, the second document is not a start: it decays from the first one's state.
    joined = m(x).view(5)
    assert abs(float(joined[2] / gate[2]) - 3.0) > 0.1
    # The packed prefill's states: each document's last h, both rows spent (not fresh).
    _, state = m.prefill(x, cu_seqlens=cu)
    torch.testing.assert_close(state["h"].view(2), torch.stack([h[1], h[4]]), rtol=1e-14, atol=1e-14)
    assert torch.equal(state["fresh"], torch.zeros(2))


def test_fresh_flag_makes_decoding_agree_with_forward():
    m = _block()
    x = torch.randn(3, 7, m.d_model, dtype=torch.float64)
    y = m(x)
    state = m.init_state(3, dtype=torch.float64)
    assert torch.equal(state["fresh"], torch.ones(3))
    ys = []
    for t in range(7):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-12, atol=1e-12)
    y_pre, s_pre = m.prefill(x, m.init_state(3, dtype=torch.float64))
    y_none, s_none = m.prefill(x)
    torch.testing.assert_close(y_pre, y_none, rtol=0, atol=0)
    for k in s_none:
        torch.testing.assert_close(s_pre[k], s_none[k], rtol=0, atol=0)
    assert torch.equal(s_none["fresh"], torch.zeros(3))


def test_packed_prefill_resets_only_fresh_rows():
    """From given states: a document whose row is fresh starts afresh, one whose row is spent continues."""
    m = _block()
    lengths = [4, 3]
    cu = cu_seqlens_from_lengths(lengths)
    _, spent = m.prefill(torch.randn(1, 5, m.d_model, dtype=torch.float64))
    fresh = m.init_state(1, dtype=torch.float64)
    state = {k: torch.cat([spent[k], fresh[k]]) for k in spent}
    x = torch.randn(1, 7, m.d_model, dtype=torch.float64)
    y, new = m.prefill(x, state, cu_seqlens=cu)
    y0, s0 = m.prefill(x[:, :4], spent)
    y1, s1 = m.prefill(x[:, 4:])
    torch.testing.assert_close(y, torch.cat([y0, y1], 1), rtol=1e-12, atol=1e-12)
    for k in new:
        torch.testing.assert_close(new[k], torch.cat([s0[k], s1[k]]), rtol=1e-12, atol=1e-12)
    # The spent row did not reset: starting it afresh gives another output.
    assert not torch.allclose(y0, m(x[:, :4]))


def test_state_lacking_the_flag_is_an_error():
    m = _block()
    state = m.init_state(2, dtype=torch.float64)
    del state["fresh"]
    with pytest.raises(ValueError, match="fresh"):
        m.step(torch.randn(2, m.d_model, dtype=torch.float64), state)
