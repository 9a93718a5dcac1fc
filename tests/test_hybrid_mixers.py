"""based, liger and lizard against direct quadratic computations of their definitions (float64), decoding
across more than one window, and liger/lizard built from an Attention layer (``from_attention``).

The contract (shapes, causality, prefill/step, state size, gradients) is checked for every mixer in
tests/test_mixer_contract.py; this file checks what each of these mixers computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo.layers import Attention, Based, Liger, Lizard, SlidingWindowAttention
from seqzoo.layers import lizard as lizard_module
from seqzoo.layers.based import taylor_feature_map
from seqzoo.modules.rotary import apply_rotary

D = 32
F64 = torch.float64


def _x(t=13, b=2):
    return torch.randn(b, t, D, dtype=F64)


def _causal_window_mask(t, window=None):
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


# -- based ------------------------------------------------------------------------------------------------


def test_taylor_kernel_is_the_second_order_expansion_of_exp():
    d = 16
    a, b = torch.randn(2, 50, d, dtype=F64).unbind(0)
    s = (a * b).sum(-1) / math.sqrt(d)
    kernel = (taylor_feature_map(a) * taylor_feature_map(b)).sum(-1)
    assert taylor_feature_map(a).shape[-1] == 1 + d + d * d
    torch.testing.assert_close(kernel, 1 + s + s**2 / 2, rtol=1e-12, atol=1e-12)
    # exp(s) - kernel = s^3 / 6 + O(s^4): halving s divides the error by ~8.
    errors = []
    for eps in (0.4, 0.2, 0.1, 0.05):
        s_eps = (eps * a * b).sum(-1) / math.sqrt(d)
        k_eps = (taylor_feature_map(eps**0.5 * a) * taylor_feature_map(eps**0.5 * b)).sum(-1)
        err = (s_eps.exp() - k_eps).abs().max()
        errors.append(err)
        assert err <= 1.5 * (s_eps.abs().max() ** 3) / 6 + 1e-15
    ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
    assert all(6.5 < r < 9.5 for r in ratios), ratios


def _based_direct(m: Based, x: torch.Tensor, causal=True):
    b, t, _ = x.shape
    h, f, dv = m.n_heads, m.feature_dim, m.value_head_dim
    q = m.q_proj(x).view(b, t, h, f)
    k = m.k_proj(x).view(b, t, h, f)
    v = m.v_proj(x).view(b, t, h, dv)
    s = torch.einsum("bihf,bjhf->bhij", q, k) / math.sqrt(f)
    a = 1 + s + s**2 / 2  # the Taylor kernel in place of exp
    if causal:
        a = a * _causal_window_mask(t)
    y = torch.einsum("bhij,bjhd->bihd", a, v) / (a.sum(-1).transpose(1, 2)[..., None] + m.eps)
    return m.o_proj(y.reshape(b, t, -1))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_based_equals_normalised_taylor_attention(bidirectional):
    m = seqzoo.build_mixer("based", D, n_heads=2, feature_dim=4, bidirectional=bidirectional).double()
    x = _x()
    torch.testing.assert_close(m(x), _based_direct(m, x, causal=not bidirectional), rtol=1e-10, atol=1e-10)
    if bidirectional:
        with pytest.raises(RuntimeError, match="cannot decode"):
            m.prefill(x)


def test_based_state_holds_the_normaliser():
    m = seqzoo.build_mixer("based", D, n_heads=2, feature_dim=4).double()
    x = _x()
    _, state = m.prefill(x)
    assert state["S"].shape == (2, 2, 1 + 4 + 16, D // 2 + 1)
    # The last column is the running sum of phi(k), the normaliser's state.
    k = taylor_feature_map(m.k_proj(x).view(2, 13, 2, 4))
    torch.testing.assert_close(state["S"][..., -1], k.sum(1), rtol=1e-12, atol=1e-12)
    assert m.state_size(13) == 2 * 21 * 17


# -- liger and lizard, directly -------------------------------------------------------------------------


def _projections(m, x, rotary):
    b, t, _ = x.shape
    q = m.q_proj(x).view(b, t, m.n_heads, m.head_dim)
    k, v = m.kv_proj(x).view(b, t, 2, m.n_kv_heads, m.head_dim).unbind(2)
    group = m.n_heads // m.n_kv_heads
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    pos = torch.arange(t)
    qr, kr = (apply_rotary(q, pos, m.rope_base), apply_rotary(k, pos, m.rope_base)) if rotary else (q, k)
    return q, k, v, qr, kr


def _gla_loop(q, k, v, g):
    """S_t = diag(exp g_t) S_{t-1} + k_t^T v_t ; o_t = q_t S_t, one token at a time. g [B, T, H, K|1]."""
    b, t, h, dk = q.shape
    S = torch.zeros(b, h, dk, v.shape[-1], dtype=F64)
    out = []
    for i in range(t):
        S = g[:, i].exp()[..., None] * S + k[:, i, :, :, None] * v[:, i, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, i], S))
    return torch.stack(out, 1)


def _masked_softmax_attention(q, k, v, window, sink_k=None, sink_v=None):
    t, d = q.shape[1], q.shape[-1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~_causal_window_mask(t, window), float("-inf"))
    if sink_k is None:
        return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    sink_scores = torch.einsum("bihd,hmd->bhim", q, sink_k) / math.sqrt(d)
    p = torch.cat([sink_scores, scores], -1).softmax(-1)
    m = sink_k.shape[1]
    return torch.einsum("bhij,bjhd->bihd", p[..., m:], v) + torch.einsum("bhim,hmd->bihd", p[..., :m], sink_v)


def _liger_direct(m: Liger, x):
    q, k, v, qr, kr = _projections(m, x, m.rotary)
    g = F.logsigmoid(k) / m.gate_normalizer
    o_gla = _gla_loop(q.softmax(-1), k.softmax(-1), v, g)
    o_swa = _masked_softmax_attention(qr, kr, v, m.window)
    o = m.gla_weight * o_gla + m.swa_weight * o_swa
    return m.o_proj(o.reshape(x.shape[0], x.shape[1], -1))


def _lizard_direct(m: Lizard, x):
    b, t, _ = x.shape
    q, k, v, qr, kr = _projections(m, x, m.rotary)

    def phi(u, w):
        uw = torch.einsum("bthd,hdf->bthf", u, w)
        return torch.cat([uw.softmax(-1), (-uw).softmax(-1)], -1)

    # Quadratic form of the normalised GLA: weights e^{G_i - G_j} phi_q(q_i).phi_k(k_j) for j <= i.
    G = (F.logsigmoid(m.g_proj(x)) / m.gate_normalizer).cumsum(1)  # [B, T, H]
    decay = (G.transpose(1, 2)[..., :, None] - G.transpose(1, 2)[..., None, :]).exp()  # [B, H, i, j]
    a = torch.einsum("bihf,bjhf->bhij", phi(q, m.phi_q), phi(k, m.phi_k)) * decay * _causal_window_mask(t)
    o_gla = torch.einsum("bhij,bjhd->bihd", a, v) / a.sum(-1).transpose(1, 2)[..., None]
    group = m.n_heads // m.n_kv_heads
    sk = None if m.meta_k is None else m.meta_k.repeat_interleave(group, 0)
    sv = None if m.meta_v is None else m.meta_v.repeat_interleave(group, 0)
    o_swa = _masked_softmax_attention(qr, kr, v, m.window, sk, sv)
    return m.o_proj((o_gla + m.alpha * o_swa).reshape(b, t, -1))


@pytest.mark.parametrize("rotary", [True, False])
def test_liger_equals_its_definition(rotary):
    m = Liger(D, n_heads=4, n_kv_heads=2, window=4, rotary=rotary, gla_weight=0.3, swa_weight=0.9).double()
    x = _x()
    torch.testing.assert_close(m(x), _liger_direct(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("n_meta", [3, 0])
def test_lizard_equals_its_definition(rotary, n_meta, monkeypatch):
    m = Lizard(D, n_heads=4, n_kv_heads=2, window=4, n_meta=n_meta, feature_dim=5, rotary=rotary).double()
    with torch.no_grad():  # move away from the initial values (zero meta values, alpha 1) to test them
        m.alpha.fill_(0.7)
        if n_meta:
            m.meta_v.normal_()
    x = _x()
    expected = _lizard_direct(m, x)
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
    # The same with query blocks that split the sequence (the window attention works block by block).
    monkeypatch.setattr(lizard_module, "_QUERY_BLOCK", 3)
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def _build(name):
    if name == "liger":
        return Liger(D, n_heads=4, n_kv_heads=2, window=4).double()
    m = Lizard(D, n_heads=4, n_kv_heads=2, window=4, n_meta=2, feature_dim=6).double()
    with torch.no_grad():
        m.meta_v.normal_()
    return m


@pytest.mark.parametrize("name", ["liger", "lizard"])
def test_decoding_across_several_windows(name):
    """Window 4 over 13 tokens: the ring of past keys wraps three times; prefill in pieces and step."""
    m = _build(name)
    x = _x()
    y = m(x)
    for pieces in ([13], [1, 12], [3, 4, 6], [5, 8], [9, 1, 3]):
        state, outs, at = None, [], 0
        for n in pieces:
            out, state = m.prefill(x[:, at : at + n], state)
            outs.append(out)
            at += n
        torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-9, atol=1e-9)
        assert state["k"].shape == (2, 4, 2, D // 4)  # constant: the window, not the sequence
    state = m.init_state(2, dtype=F64)
    for t in range(13):
        y_t, state = m.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-9, atol=1e-9)
    assert int(state["pos"][0]) == 13
    assert (
        sum(v[0].numel() for v in state.values() if v.dim() > 1) == m.state_size(13) == m.state_size(10_000)
    )


# -- from_attention -------------------------------------------------------------------------------------


def test_liger_from_attention_copies_the_weights_and_reduces_to_the_attention():
    attn = Attention(D, n_heads=4, n_kv_heads=2).double()
    x = _x()
    liger = Liger.from_attention(attn, window=16, gla_weight=0.0, swa_weight=1.0)
    for name in ("q_proj", "kv_proj", "o_proj"):
        assert torch.equal(getattr(liger, name).weight, getattr(attn, name).weight)
    assert (liger.n_heads, liger.n_kv_heads, liger.head_dim, liger.rotary) == (4, 2, 8, True)
    assert liger.o_proj.weight.dtype == F64
    # With the GLA branch off and a window >= T, Liger attention is the source attention.
    torch.testing.assert_close(liger(x), attn(x), rtol=1e-12, atol=1e-12)
    # The defaults mix both branches (0.5 / 0.5), so the output moves away from the attention's.
    assert (Liger.from_attention(attn)(x) - attn(x)).abs().max() > 1e-3


def test_liger_from_sliding_window_attention_takes_its_window():
    attn = SlidingWindowAttention(D, n_heads=2, window=5).double()
    liger = Liger.from_attention(attn, gla_weight=0.0, swa_weight=1.0)
    assert liger.window == 5
    x = _x()
    torch.testing.assert_close(liger(x), attn(x), rtol=1e-12, atol=1e-12)


def test_lizard_from_attention_window_branch_is_the_attention():
    attn = Attention(D, n_heads=4, n_kv_heads=2, bias=True).double()
    lizard = Lizard.from_attention(attn, window=16, n_meta=0, rotary=True)
    for name in ("q_proj", "kv_proj", "o_proj"):
        assert torch.equal(getattr(lizard, name).weight, getattr(attn, name).weight)
        assert torch.equal(getattr(lizard, name).bias, getattr(attn, name).bias)
    assert Lizard.from_attention(attn).rotary is False  # the paper's RoPE-free default
    x = _x()
    # y = Wo (o_gla + alpha o_swa) + b: without meta tokens and with a window >= T, Wo o_swa + b is attn(x).
    with torch.no_grad():
        lizard.alpha.fill_(1.0)
        o_gla, _ = lizard._gla(x, *lizard._project(x), None, "torch")
        gla_part = F.linear(o_gla.reshape(2, 13, -1), lizard.o_proj.weight)
    torch.testing.assert_close(lizard(x) - gla_part, attn(x), rtol=1e-10, atol=1e-10)


def test_from_attention_errors():
    attn = Attention(D, n_heads=4)
    with pytest.raises(ValueError, match="n_heads"):
        Liger.from_attention(attn, n_heads=2)
    with pytest.raises(TypeError, match="Attention"):
        Lizard.from_attention(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        Liger.from_attention(Attention(D, n_heads=4, bidirectional=True))


# -- argument checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("based", {"feature_dim": 0}, "feature_dim"),
        ("based", {"n_heads": 3}, "n_heads"),
        ("based", {"eps": -1.0}, "eps"),
        ("liger", {"window": 0}, "window"),
        ("liger", {"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
        ("liger", {"gla_weight": "half"}, "gla_weight"),
        ("liger", {"gate_normalizer": 0.0}, "gate_normalizer"),
        ("liger", {"n_heads": 3}, "n_heads"),
        ("lizard", {"n_meta": -1}, "n_meta"),
        ("lizard", {"feature_dim": 0}, "feature_dim"),
        ("lizard", {"head_dim": 7, "rotary": True}, "head_dim"),  # RoPE needs an even size
    ],
)
def test_bad_kwargs_name_the_argument(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        seqzoo.build_mixer(name, D, **kwargs)


def test_based_preset_mixes_baseconv_based_and_a_window_and_decodes():
    from seqzoo import CausalLM
    from seqzoo.models import preset

    config = preset("based", d_model=32, n_layers=5, vocab_size=50, window=4)
    names = [name for name, _ in config.layer_specs()]
    assert names == ["base_conv", "based", "sliding_window", "base_conv", "base_conv"]
    assert config.layer_specs()[2][1]["window"] == 4 and preset("based").layer_specs()[2][1]["window"] == 64
    lm = CausalLM(config).double().eval()
    ids = torch.randint(0, 50, (2, 11))
    full = lm(ids)
    logits, states = lm.prefill(ids[:, :6])
    torch.testing.assert_close(logits, full[:, :6])
    for t in range(6, 11):
        step, states = lm.step(ids[:, t], states)
        torch.testing.assert_close(step, full[:, t])
    with pytest.raises(ValueError, match="preset fixes its mixers"):
        preset("based", mixer="gla")
