"""base_conv, hyena and orchid against direct O(T^2) convolutions, Hyena's implicit filter, decoding past the
filter's reference length, the bidirectional mode and the constructor's checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo.layers.hyena import ImplicitFilter

D = 8
LENGTHS = [1, 5, 13, 33]


def build(name, **kw):
    torch.manual_seed(0)
    return seqzoo.build_mixer(name, D, **{"l_max": 16, "filter_order": 8, **kw}).double()


def direct_conv(u, K, bias=None, K_rev=None):
    """y[:, t, c] = sum_{s<=t} K[c, t-s] u[:, s, c] (+ sum_{s>t} K_rev[c, s-t-1] u[:, s, c])
    + bias[c] u[:, t, c], one term at a time; K may be shorter than T (missing taps are zero)."""
    B, T, C = u.shape
    y = torch.zeros_like(u)
    for t in range(T):
        for s in range(T):
            lag = t - s
            if 0 <= lag < K.shape[1]:
                y[:, t] += K[:, lag] * u[:, s]
            elif K_rev is not None and lag < 0 and -lag - 1 < K_rev.shape[1]:
                y[:, t] += K_rev[:, -lag - 1] * u[:, s]
    return y if bias is None else y + bias * u


def direct_short(conv, u):
    """ShortConvolution's causal depthwise filter (no activation): weight[:, -1] is the tap at lag 0."""
    return direct_conv(u, conv.weight.flip(-1)) + conv.bias


@pytest.mark.parametrize("T", LENGTHS)
def test_base_conv_matches_direct_convolution(T):
    m = build("base_conv")
    x = torch.randn(2, T, D, dtype=torch.float64)
    with torch.no_grad():
        c = direct_short(m.short, x) + direct_conv(x, m.filter(T)) + x
        ref = m.projection(x) * c + x
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("order", [2, 3])
def test_hyena_matches_direct_convolution(T, order):
    m = build("hyena", order=order)
    x = torch.randn(2, T, D, dtype=torch.float64)
    with torch.no_grad():
        u = direct_short(m.short_filter, m.in_proj(x))
        *gates, v = u.split(D, -1)
        n = order - 1
        K = m.filter(T).view(D, n, T)  # channel v (N-1) + o, as safari lays the bank out
        bias = m.bias.view(D, n)
        for o, g in enumerate(reversed(gates[1:])):
            v = direct_conv(g * v, K[:, o], bias[:, o])
        ref = m.out_proj(gates[0] * v)
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", LENGTHS)
def test_orchid_matches_a_per_position_kernel(T):
    """Orchid's output at t: the convolution with its kernel h_t = h_0 + sum_m c_{t,m} h_m, summed here."""
    M = 3
    m = build("orchid", n_kernels=M)
    x = torch.randn(2, T, D, dtype=torch.float64)
    with torch.no_grad():
        u = m.in_proj(x)
        a = u[..., 2 * D :].repeat_interleave(M, -1)
        c = F.silu(direct_conv(a, m.cond_conv.weight.flip(-1)) + m.cond_conv.bias)
        c = m.cond_norm(c).view(2, T, D, M)
        x0, x1, v = direct_short(m.short_filter, u).split(D, -1)
        z = x1 * v
        bank = m.filter(T).view(D, M + 1, T)
        w = torch.zeros_like(z)
        for t in range(T):
            # h_t [B, D, T]: the kernel of output t
            h_t = bank[:, 0] + torch.einsum("bdm,dmj->bdj", c[:, t], bank[:, 1:])
            for s in range(t + 1):
                w[:, t] += h_t[:, :, t - s] * z[:, s]
        w = w + m.bias * z
        r = direct_conv(x, m.filter_res(T), m.bias_res)
        ref = m.out_proj(x0 * w + r)
        torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_orchid_coefficients_depend_on_the_input():
    """The weights c_t of the basis kernels (so the kernel h_t) change with the input."""
    m = build("orchid", residual_conv=False)
    x = torch.randn(1, 9, D, dtype=torch.float64)
    with torch.no_grad():
        c1 = m.cond_norm(m.cond_conv(m.in_proj(x)[..., 2 * D :].repeat_interleave(m.n_kernels, -1))[0])
        c2 = m.cond_norm(m.cond_conv(m.in_proj(2 * x)[..., 2 * D :].repeat_interleave(m.n_kernels, -1))[0])
    assert (c1 - c2).abs().max() > 1e-3


def test_hyena_filter_decays_and_is_a_function_of_the_tap():
    torch.manual_seed(0)
    f = ImplicitFilter(32, l_max=64, width=16, sin_freq=1.0).double()
    plain = ImplicitFilter(32, l_max=64, width=16, sin_freq=1.0, modulate=False).double()
    plain.load_state_dict(f.state_dict())
    with torch.no_grad():
        h, h_plain = f(64), plain(64)
        early, late = slice(0, 16), slice(48, 64)
        assert h[:, late].abs().mean() < 0.2 * h[:, early].abs().mean()
        ratio = h[:, late].abs().mean() / h[:, early].abs().mean()
        assert ratio < 0.5 * h_plain[:, late].abs().mean() / h_plain[:, early].abs().mean()
        # The window alone is positive and decreasing in the tap, faster for later channels.
        window = h / h_plain
        assert (window > 0).all() and (window[:, 1:] < window[:, :-1]).all()
        assert (window[1:, -1] < window[:-1, -1]).all()
        # Taps past l_max exist and the filter for T taps is the first T taps of a longer one.
        torch.testing.assert_close(f(200)[:, :64], h, rtol=1e-12, atol=1e-12)


def test_filter_cache_follows_parameter_changes():
    f = ImplicitFilter(4, l_max=8, width=8).double()
    with torch.no_grad():
        before = f.taps(10)
        torch.testing.assert_close(before, f(10), rtol=1e-12, atol=1e-12)
        f.mlp[0].weight.add_(0.5)
        after = f.taps(10)
        assert (after - before).abs().max() > 1e-6
        torch.testing.assert_close(after, f(10), rtol=1e-12, atol=1e-12)
        assert f.taps(300).shape == (4, 300)


@pytest.mark.parametrize("name", ["base_conv", "hyena", "orchid"])
@pytest.mark.parametrize("grad", [True, False])
def test_decoding_past_the_filter_length(name, grad):
    """l_max 16: prefill 20 tokens, then 30 steps, equals the forward over 50 (taps generated as needed)."""
    m = build(name)
    x = torch.randn(2, 50, D, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        y = m(x)
        y_pre, state = m.prefill(x[:, :20])
        steps = []
        for t in range(20, 50):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.cat([y_pre, torch.stack(steps, 1)], 1), y, rtol=1e-9, atol=1e-9)
    assert sum(v[0].numel() for v in state.values()) == m.state_size(50)


@pytest.mark.parametrize("name", ["base_conv", "hyena", "orchid"])
def test_bidirectional_sees_the_future_and_refuses_to_decode(name):
    m = build(name, bidirectional=True)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (m(x2)[:, 0] - m(x)[:, 0]).abs().max() > 1e-6
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.prefill(x)
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.step(x[:, 0], {})
    m(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_bidirectional_base_conv_matches_direct_two_sided_convolution():
    m = build("base_conv", bidirectional=True)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    with torch.no_grad():
        K = m.filter(11)
        c = direct_short(m.short, x) + direct_conv(x, K[0], K_rev=K[1]) + x
        torch.testing.assert_close(m(x), m.projection(x) * c + x, rtol=1e-10, atol=1e-10)


def test_filter_parameters_skip_weight_decay():
    m = build("hyena")
    assert all(p._optim == {"weight_decay": 0.0} for p in m.filter.parameters())
    assert not hasattr(m.in_proj.weight, "_optim")


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("base_conv", {"short_width": 1}, "short_width"),
        ("base_conv", {"short_width": None, "long_conv": False}, "short_width"),
        ("base_conv", {"long_conv": False, "bidirectional": True}, "bidirectional"),
        ("base_conv", {"l_max": 1}, "l_max"),
        ("base_conv", {"emb_dim": 4}, "emb_dim"),
        ("base_conv", {"use_act": "yes"}, "use_act"),
        ("hyena", {"order": 1}, "order"),
        ("hyena", {"filter_order": 0}, "filter_order"),
        ("hyena", {"emb_dim": 2}, "emb_dim"),
        ("hyena", {"sin_freq": 0.0}, "sin_freq"),
        ("hyena", {"short_width": 9}, "short_width"),
        ("hyena", {"dropout": 1.0}, "dropout"),
        ("hyena", {"bidirectional": 1}, "bidirectional"),
        ("hyena", {"l_max": 8.0}, "l_max"),
        ("orchid", {"n_kernels": 0}, "n_kernels"),
        ("orchid", {"cond_width": 1}, "cond_width"),
        ("orchid", {"residual_conv": None}, "residual_conv"),
        ("orchid", {"n_inner_mlps": -1}, "n_inner_mlps"),
    ],
)
def test_bad_arguments_name_themselves(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        seqzoo.build_mixer(name, D, **kwargs)
