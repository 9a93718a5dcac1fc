"""Long and extreme inputs: no NaN or inf, and the same numbers as the reference where it can be afforded.

- Every op with a long case in its spec (``OpSpec.extreme``: T = 65,536, B = H = 1, small widths, the hardest
  valid values) on its CPU default backend (``torch``): the output is finite and, at a few windows of positions, agrees with the reference recomputed there (the stateful ops continue
  from the state the op itself carried to the window's start, so a drift anywhere before it shows; attention
  and flow attention recompute the window's queries over the whole past; the convolution kernels are computed
  at a few lags directly).
- Every registered mixer in bf16 with extreme decays (log decays near -20, A large, dt near its max, gates
  saturated), forward and backward: no NaN or inf in the output or any gradient; and with no decay at all (the
  state accumulates over the whole sequence).

The full-length reference comparisons (a sequential loop over 65,536 steps per op) are ``exhaustive``: run them
with ``pytest -m exhaustive tests/test_extreme_inputs.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import seqzoo
from seqzoo import ops
from seqzoo.ops._spec import LONG_T
from seqzoo.ops.s4 import reference as s4_reference

T_LONG = LONG_T  # 65,536
# Windows of positions compared with the reference: the start, the middle, the end.
WINDOWS = ((0, 24), (T_LONG // 2 - 8, T_LONG // 2 + 24), (T_LONG - 32, T_LONG))


def assert_finite(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} non-finite values of {x.numel()} (first at {bad.nonzero()[0].tolist()})"
    )


def assert_close_scaled(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float = 2e-4, what: str = "", scale=None
) -> None:
    """Close relative to the tensor's own scale (or ``scale``): long sums in fp32 differ in their last bits by
    order."""
    scale = expected.abs().max().clamp_min(1e-6) if scale is None else scale
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=rtol * float(scale), msg=what
    )


def _slice_time(kwargs: dict, names, start: int, stop: int) -> dict:
    return {k: (v[:, start:stop] if k in names and v is not None else v) for k, v in kwargs.items()}


def check_stateful_op(op, kwargs: dict, time_args, state_key: str = "initial_state") -> None:
    """``op`` over the whole sequence is finite, and each window of it equals the reference run on the window
    from the state the op reached at the window's start (the op itself, on the prefix). ``kwargs`` return the
    final state."""
    full, final = op(**kwargs, backend="torch")[:2]
    assert_finite("output", full)
    assert_finite("final state", final)
    for start, stop in WINDOWS:
        state = kwargs.get(state_key)
        if start > 0:
            _, state = op(**_slice_time(kwargs, time_args, 0, start), backend="torch")[:2]
        window = {**_slice_time(kwargs, time_args, start, stop), state_key: state}
        ref, ref_final = op(**window, backend="reference")[:2]
        assert_close_scaled(full[:, start:stop], ref, what=f"positions {start}..{stop}")
        if stop == T_LONG:
            assert_close_scaled(final, ref_final, what="final state")


def _outputs(out) -> tuple:
    return tuple(o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor))


# Every op whose spec has a long, hard-but-valid case (``OpSpec.extreme``: log decays down to -20 with some at 0,
# large dt, peaked softmax), each variant (gla's decay per key channel and per head, DeltaNet and Gated DeltaNet).
LONG_CASES = {
    label: (op, {"T": T_LONG, **op.spec.extreme, **variant})
    for name, op in ops.list_ops().items()
    if op.spec.extreme is not None
    for label, variant in op.spec.labels(name).items()
}


@pytest.mark.parametrize("case", sorted(LONG_CASES))
def test_op_long_and_extreme(case):
    """The op at T = 65,536 (attention, O(T^2): its spec's 8,192) on its CPU default backend: finite outputs; an
    op carrying a state (gla, delta_rule, linear_scan, selective_scan, causal_conv1d) also matches the reference
    at windows of positions, started from the state the op itself carried there."""
    op, sizes = LONG_CASES[case]
    spec = op.spec
    torch.manual_seed(0)
    kwargs = spec.example(**sizes)
    if spec.state_arg:
        check_stateful_op(op, kwargs, spec.time_args(), spec.state_arg)
    else:
        for i, out in enumerate(_outputs(op(**kwargs, backend="torch"))):
            assert_finite(f"output {i}", out)


def test_long_cases_cover_the_ops():
    """The ops that had a long test of their own before the cases came from the specs are all here."""
    assert {
        "linear_scan",
        "selective_scan",
        "gla",
        "gla_head_decay",
        "delta_rule",
        "gated_delta_rule",
        "causal_conv1d",
        "attention",
        "flow_attention",
        "fft_conv",
        "s4d_kernel",
        "s4_kernel",
    } <= set(LONG_CASES)


def test_causal_conv1d_long():
    b, d, w = 1, 4, 4
    x, weight, bias = torch.randn(b, T_LONG, d), torch.randn(d, w), torch.randn(d)
    y, s = ops.causal_conv1d(x, weight, bias, activation="silu", output_final_state=True, backend="torch")
    ref, ref_s = ops.causal_conv1d(
        x, weight, bias, activation="silu", output_final_state=True, backend="reference"
    )
    assert_finite("output", y)
    assert_close_scaled(y, ref)
    assert_close_scaled(s, ref_s)


# Softmax attention on the CPU is O(T^2): 18 s at T = 65,536 without a window, and minutes with one (the torch
# backend masks a dense T x T score matrix). The default suite takes T = 8,192; the full length is exhaustive.
@pytest.mark.parametrize(
    "t",
    [8192, pytest.param(T_LONG, marks=[pytest.mark.slow, pytest.mark.exhaustive])],
)
@pytest.mark.parametrize("window", [None, 128])
def test_attention_long(t, window):
    b, h, d = 1, 1, 8
    q, k, v = (torch.randn(b, t, h, d) * 3 for _ in range(3))  # peaked softmax
    o = ops.attention(q, k, v, causal=True, window=window, backend="torch")
    assert_finite("output", o)
    for start, stop in ((0, 24), (t // 2 - 8, t // 2 + 24), (t - 32, t)):
        # The window's queries over keys up to its last position (causal: queries are the last positions).
        ref = ops.attention(q[:, start:stop], k[:, :stop], v[:, :stop], window=window, backend="reference")
        assert_close_scaled(o[:, start:stop], ref, what=f"positions {start}..{stop}")


def test_flow_attention_long():
    b, h, d = 1, 1, 4
    q, k = torch.rand(b, T_LONG, h, d), torch.rand(b, T_LONG, h, d)
    v = torch.randn(b, T_LONG, h, d)
    o = ops.flow_attention(q, k, v, causal=True, backend="torch")
    assert_finite("output", o)
    # Causal: a prefix is its own computation (the reference materialises T x T, so only a prefix is affordable).
    n = 2048
    ref = ops.flow_attention(q[:, :n], k[:, :n], v[:, :n], causal=True, backend="reference")
    assert_close_scaled(o[:, :n], ref, rtol=1e-3)


def test_fft_conv_long():
    b, h = 1, 2
    u = torch.randn(b, T_LONG, h)
    K = torch.randn(h, T_LONG) * torch.exp(-torch.arange(T_LONG) / 20_000.0)  # a long, slowly decaying kernel
    D = torch.randn(h)
    y = ops.fft_conv(u, K, D, backend="torch")
    assert_finite("output", y)
    u64, K64 = u.double(), K.double()
    for t in (0, 1, 4097, T_LONG // 2, T_LONG - 1):
        # y_t = sum_{s<=t} K[t-s] u_s + D u_t, summed directly in fp64.
        direct = (K64[:, : t + 1].flip(-1) * u64[0, : t + 1].T).sum(-1) + D.double() * u64[0, t]
        assert_close_scaled(y[0, t], direct, rtol=1e-4, what=f"position {t}")


def _s4d_params(h=2, n=4, strong=False):
    log_dt = torch.full((h,), math.log(0.1))  # dt at the usual dt_max
    A_re = -torch.exp(torch.randn(h, n)) * (1e3 if strong else 1e-3)  # very fast and very slow modes
    A_im = math.pi * torch.arange(n).float().expand(h, n)
    return log_dt, A_re, A_im, torch.randn(h, n), torch.randn(h, n), torch.randn(h, n), torch.randn(h, n)


@pytest.mark.parametrize("strong", [False, True], ids=["slow_modes", "fast_modes"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_kernel_long(strong, discretization):
    params = _s4d_params(strong=strong)
    K = ops.s4d_kernel(*params, T_LONG, discretization=discretization, backend="torch")
    assert_finite("kernel", K)
    # K[h, l] = 2 Re(sum_n C Bbar Abar^l), at a few lags, in fp64.
    p64 = [x.double() for x in params]
    Abar, Bbar = s4_reference.discretize_diagonal(*p64[:5], discretization)
    w = torch.complex(p64[5], p64[6]) * Bbar
    # fp32 against fp64: the phase of Abar^l drifts by ~ l * eps * |l dt A_im| (5e-4 of the kernel's scale at
    # l = 65,535 with slow modes), and the zoh step (Abar - 1) / A loses ~1e-5 to cancellation when dt A -> 0.
    scale = K.abs().max()
    for lag in (0, 1, 999, T_LONG // 2, T_LONG - 1):
        direct = 2 * (w * Abar**lag).sum(-1).real
        assert_close_scaled(K[:, lag], direct, rtol=2e-3, what=f"lag {lag}", scale=scale)


def _s4_params(h=2, n=4):
    log_dt = torch.full((h,), math.log(0.1))
    Lambda_re = -0.5 * torch.ones(h, n)
    Lambda_im = math.pi * torch.arange(n).float().expand(h, n).clone()
    P = [torch.randn(h, n) * 0.1 for _ in range(2)]
    B = [torch.randn(h, n) for _ in range(2)]
    C = [torch.randn(h, n) for _ in range(2)]
    return (log_dt, Lambda_re, Lambda_im, *P, *B, *C)


def test_s4_kernel_long():
    params = _s4_params()
    K = ops.s4_kernel(*params, T_LONG, backend="torch")
    assert_finite("kernel", K)
    # K[h, l] = C~ Abar^l Bbar with the dense matrices of the reference, at a few lags, in fp64.
    Abar, Bbar, C = s4_reference.dplr_dense(*[x.double() for x in params], T_LONG)
    scale = K.abs().max()
    for lag in (0, 1, 999, T_LONG // 2, T_LONG - 1):
        direct = (C * (torch.linalg.matrix_power(Abar, lag) @ Bbar[..., None])[..., 0]).sum(-1).real
        assert_close_scaled(K[:, lag], direct, rtol=1e-3, what=f"lag {lag}", scale=scale)


# -- the full-length reference comparisons: minutes in all, so `pytest -m exhaustive` ---------------------


# The reference over the whole length is affordable for the scans and the S4 kernels (not for the references that
# materialise T x T: attention, flow_attention, fft_conv's Toeplitz product).
FULL_REFERENCE = sorted(
    label
    for label, (op, _) in LONG_CASES.items()
    if op.spec.state_arg or label in ("s4d_kernel", "s4_kernel")
)


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("case", FULL_REFERENCE)
def test_long_matches_full_reference(case):
    op, sizes = LONG_CASES[case]
    torch.manual_seed(0)
    args = op.spec.example(**sizes)
    out = op(**args, backend="torch")
    ref = op(**args, backend="reference")
    for o, r in zip(_outputs(out), _outputs(ref)):
        assert_finite("output", o)
        assert_close_scaled(o, r, rtol=1e-3)


# ------------------------------------------------------------------------------------------------------------
# mixers in bf16 with extreme decays
# ------------------------------------------------------------------------------------------------------------

D_MODEL = 32
T_MIXER = 2048
# Each mixer's small test settings, from its record (register_mixer(..., test_kwargs=...)).
MIXER_KWARGS = {name: dict(record.test_kwargs) for name, record in seqzoo.list_mixers().items()}

# Parameter (or buffer) name -> value that makes the decay as strong as the layer allows ("strong") or
# removes it ("none"): log decays near -20 (retnet / lightning's fixed ones, GLA's gate through
# logsigmoid(b) / 16), A = -exp(A_log) large, dt near its max (softplus of a large bias; S4's log dt at 1),
# RG-LRU's a = sigmoid(a_param)^(8 r) near 0, and the long convolutions' exponential windows at their fastest.
EXTREMES = {
    "strong": {
        "A_log": 8.0,  # A = -3000
        "dt_bias": 10.0,  # dt = softplus(10) ~ 10
        "dt_proj.bias": 10.0,
        "log_dt": 0.0,  # dt = 1 (dt_max is 0.1)
        "log_A_real": 8.0,
        "log_Lambda_real": 8.0,
        "log_decay": -20.0,
        "gk_proj.1.bias": -320.0,  # logsigmoid(-320) / 16 = -20
        "g_proj.bias": -320.0,
        "a_param": -12.0,
        "filter.deltas": 20.0,
        "filter_res.deltas": 20.0,
    },
    "none": {
        "A_log": -12.0,  # A = -6e-6
        "dt_bias": -10.0,
        "dt_proj.bias": -10.0,
        "log_dt": math.log(1e-4),
        "log_A_real": -12.0,
        "log_Lambda_real": -12.0,
        "log_decay": -1e-6,
        "gk_proj.1.bias": 40.0,  # logsigmoid(40) ~ 0
        "g_proj.bias": 40.0,
        "a_param": 12.0,
        "filter.deltas": 0.0,
        "filter_res.deltas": 0.0,
    },
}


def _set_extremes(mixer: torch.nn.Module, regime: str) -> list[str]:
    values = EXTREMES[regime]
    touched = []
    with torch.no_grad():
        for name, t in [*mixer.named_parameters(), *mixer.named_buffers()]:
            for key, value in values.items():
                if name == key or name.endswith("." + key):
                    t.fill_(value)
                    touched.append(name)
    return touched


MIXER_NAMES = sorted(seqzoo.list_mixers())


@pytest.mark.parametrize("regime", ["strong", "none"])
@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixer_bf16_extreme_decays_finite(name, regime):
    torch.manual_seed(0)
    mixer = seqzoo.build_mixer(name, D_MODEL, **MIXER_KWARGS.get(name, {}))
    _set_extremes(mixer, regime)
    mixer = mixer.to(torch.bfloat16)
    # Inputs at 4x the usual scale: the data-dependent gates (GLA, HGRN2, DeltaNet's beta, Liger) saturate too.
    x = (4 * torch.randn(1, T_MIXER, D_MODEL)).to(torch.bfloat16).requires_grad_()
    y = mixer(x)
    assert y.dtype == torch.bfloat16
    assert_finite(f"{name} output", y.float())
    y.float().square().mean().backward()
    assert_finite(f"{name} grad of x", x.grad.float())
    for pname, p in mixer.named_parameters():
        if p.grad is not None:
            assert_finite(f"{name} grad of {pname}", p.grad.float())


def test_extremes_reach_the_decay_parameters():
    """Each mixer with a decay parameter has it set by the table above (a rename would silently skip it)."""
    with_decays = {
        "mamba": {"A_log", "dt_proj.bias"},
        "mamba2": {"A_log", "dt_bias"},
        "gated_deltanet": {"A_log", "dt_bias"},
        "gla": {"gk_proj.1.bias"},
        "retnet": {"log_decay"},
        "lightning": {"log_decay"},
        "rglru": {"a_param"},
        "s4": {"log_dt", "log_Lambda_real"},
        "s4d": {"log_dt", "log_A_real"},
        "lizard": {"g_proj.bias"},
        "hyena": {"filter.deltas"},
    }
    for name, expected in with_decays.items():
        mixer = seqzoo.build_mixer(name, D_MODEL, **MIXER_KWARGS.get(name, {}))
        assert expected <= set(_set_extremes(mixer, "strong")), name


@pytest.mark.parametrize("scale", [0.0, 300.0], ids=["zeros", "huge"])
@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixer_bf16_zero_and_huge_inputs_finite(name, scale):
    """All-zero inputs (normalisers at 0) and huge ones (softmax feature maps one-hot, gates saturated): lizard's
    normaliser underflowed to 0 there and its gradient was inf / NaN."""
    torch.manual_seed(0)
    mixer = seqzoo.build_mixer(name, D_MODEL, **MIXER_KWARGS.get(name, {})).to(torch.bfloat16)
    x = (scale * torch.randn(2, 256, D_MODEL)).to(torch.bfloat16).requires_grad_()
    y = mixer(x)
    assert_finite(f"{name} output", y.float())
    y.float().square().mean().backward()
    assert_finite(f"{name} grad of x", x.grad.float())
    for pname, p in mixer.named_parameters():
        if p.grad is not None:
            assert_finite(f"{name} grad of {pname}", p.grad.float())
