"""S4 / S4D: the kernel ops (every backend against its reference, gradients included), the S4D ZOH kernel
against numbers worked out by hand, fft_conv against the explicit convolution, the initialisations, and the
layers: convolution mode equals the token-by-token recurrence for every initialisation and discretisation."""

from __future__ import annotations

import math

import pytest
import torch

import seqzoo
from seqzoo import ops
from seqzoo.layers.ssm_init import S4D_INITS, hippo_legs, log_dt_init, nplr_legs, s4d_init
from seqzoo.ops.testing import assert_matches_reference
from seqzoo.train.loop import param_groups


def ssm_inputs(h=3, n=5, dtype=torch.float32, names=("A", "B", "C"), seed=0):
    g = torch.Generator().manual_seed(seed)
    first = names[0]
    x = {"log_dt": (torch.rand(h, generator=g) * math.log(1e-1 / 1e-3) + math.log(1e-3) + 2).to(dtype)}
    for name in names:
        x[f"{name}_re"] = torch.randn(h, n, generator=g).to(dtype)
        x[f"{name}_im"] = (torch.randn(h, n, generator=g) * 4).to(dtype)
    # A stable state matrix: Re(A) < 0 (and spread so some modes decay fast, others slowly).
    x[f"{first}_re"] = -(torch.rand(h, n, generator=g) * 2 + 0.05).to(dtype)
    return x


# -- s4d_kernel --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 37, 2500])
def test_s4d_kernel_torch_matches_reference(discretization, dtype, L):
    assert_matches_reference(
        ops.s4d_kernel, "torch", ssm_inputs(dtype=dtype), L=L, discretization=discretization
    )


def test_s4d_kernel_torch_chunks_agree():
    # The chunked Vandermonde (chunk < L, L not a multiple) equals one chunk.
    x = ssm_inputs(dtype=torch.float64)
    args = [x[k] for k in ("log_dt", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im")]
    from seqzoo.ops.s4 import torch as s4_torch

    whole = s4_torch.s4d_kernel(*args, 50, "zoh", chunk=64)
    torch.testing.assert_close(s4_torch.s4d_kernel(*args, 50, "zoh", chunk=7), whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("h, n, L", [(2, 5, 70), (1, 19, 3), (3, 16, 64)])
def test_s4d_kernel_triton_matches_reference(discretization, h, n, L):
    # N across BLOCK_N=16 and L across BLOCK_L=64 boundaries; gradients of every parameter.
    assert_matches_reference(ops.s4d_kernel, "triton", ssm_inputs(h, n), L=L, discretization=discretization)


def test_s4d_zoh_kernel_by_hand():
    # N = 1, L = 3, dt = 1 (log_dt = 0), B = C = 1.
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    log_dt = torch.zeros(1, dtype=torch.float64)
    # (a) A = -ln 2: Abar = 1/2, Bbar = (1/2 - 1)/(-ln 2) = 1/(2 ln 2);
    #     K[l] = 2 Bbar 2^-l = [1/ln 2, 1/(2 ln 2), 1/(4 ln 2)] = [1.4426950, 0.7213475, 0.3606738].
    for backend in ("reference", "torch"):
        K = ops.s4d_kernel(
            log_dt, one(-math.log(2)), one(0.0), one(1.0), one(0.0), one(1.0), one(0.0), 3, backend=backend
        )
        torch.testing.assert_close(
            K, torch.tensor([[1.4426950, 0.7213475, 0.3606738]], dtype=torch.float64), rtol=0, atol=1e-6
        )
    # (b) A = -ln 2 + i pi/2: Abar = e^{-ln 2} e^{i pi/2} = i/2;
    #     Bbar = (i/2 - 1)/(-ln 2 + i pi/2) = (1.4785453 + 1.2242227 i)/2.9478541 = 0.5015667 + 0.4152929 i;
    #     K[0] = 2 Re(Bbar) = 1.0031333,
    #     K[1] = 2 Re(Bbar i/2) = -Im(Bbar) = -0.4152929, K[2] = 2 Re(Bbar (-1/4)) = -0.2507833.
    for backend in ("reference", "torch"):
        K = ops.s4d_kernel(
            log_dt,
            one(-math.log(2)),
            one(math.pi / 2),
            one(1.0),
            one(0.0),
            one(1.0),
            one(0.0),
            3,
            backend=backend,
        )
        torch.testing.assert_close(
            K, torch.tensor([[1.0031333, -0.4152929, -0.2507833]], dtype=torch.float64), rtol=0, atol=2e-6
        )


# -- s4_kernel ---------------------------------------------------------------------------------------------


def s4_inputs(dtype, h=2, n=4, seed=0):
    x = ssm_inputs(h, n, dtype, names=("Lambda", "P", "B", "C"), seed=seed)
    x["P_re"], x["P_im"] = x["P_re"] * 0.5, x["P_im"] * 0.1
    return x


@pytest.mark.parametrize(
    "dtype, L",
    # At L = 1 the kernel is -C~ A^{-1} B whatever dt: d/d log_dt is exactly zero and both fp32 backends return
    # rounding noise around it, so L = 1 is checked in fp64 only.
    [(torch.float64, 1)] + [(d, L) for d in (torch.float32, torch.float64) for L in (2, 16, 21)],
)
def test_s4_kernel_cauchy_matches_dense_reference(dtype, L):
    assert_matches_reference(ops.s4_kernel, "torch", s4_inputs(dtype), L=L)


@pytest.mark.parametrize("L, dt", [(1, 1e-2), (2, 1e-2), (16, 1e-3), (2048, 1e-1)])
@pytest.mark.parametrize("kernel", ["s4_kernel", "s4d_kernel"])
def test_reference_kernels_are_exact_in_fp32(kernel, L, dt):
    """The ground truth computes in fp64 inside: fp32 inputs give the fp64 kernel rounded once (the dense S4
    solve lost ~1e-4 relative accuracy in fp32 at small L * dt, and long S4D power chains accumulate)."""
    x = s4_inputs(torch.float64) if kernel == "s4_kernel" else ssm_inputs(2, 4, torch.float64)
    x["log_dt"] = torch.full_like(x["log_dt"], math.log(dt))
    op = getattr(ops, kernel)
    exact = op(**x, L=L, backend="reference")
    got = op(**{k: v.float() for k, v in x.items()}, L=L, backend="reference")
    assert got.dtype == torch.float32
    err = ((got.double() - exact).norm() / exact.norm()).item()
    # fp32 inputs are the fp64 ones rounded (relative 6e-8), which moves the kernel by about as much
    assert err < 2e-6, err


@pytest.mark.parametrize("h, n, L", [(2, 4, 16), (1, 9, 150), (2, 3, 2)])
def test_s4_kernel_triton_matches_reference(h, n, L):
    # M = 2N across BLOCK_M = 16, L // 2 + 1 nodes across BLOCK_F = 64; gradients of every parameter. (L = 1 is
    # fp64-only: see above.)
    assert_matches_reference(ops.s4_kernel, "triton", s4_inputs(torch.float32, h=h, n=n), L=L)


def s4_low_rank_inputs(dtype, rank, per_mode_dt, h=2, n=4, seed=0):
    """s4_inputs with P [rank, H, N] and, with ``per_mode_dt``, log_dt [H, N] (one step per mode)."""
    x = s4_inputs(dtype, h=h, n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x["P_re"] = (torch.randn(rank, h, n, generator=g) * 0.5).to(dtype)
    x["P_im"] = (torch.randn(rank, h, n, generator=g) * 0.4).to(dtype)
    if per_mode_dt:
        x["log_dt"] = (torch.rand(h, n, generator=g) * math.log(1e2) + math.log(1e-3) + 2).to(dtype)
    return x


@pytest.mark.parametrize(
    "rank, per_mode_dt, dtype, L",
    [
        (2, False, torch.float64, 1),
        (2, False, torch.float32, 21),
        (2, True, torch.float64, 16),
        (3, True, torch.float32, 16),
    ],
)
def test_s4_kernel_low_rank_and_per_mode_dt_match_dense_reference(rank, per_mode_dt, dtype, L):
    # The Woodbury identity with an R x R solve per frequency (HiPPO-LegT needs R = 2), and one dt per mode
    # (x' = Delta (A x + B u), unit step): outputs and gradients of every parameter against the dense system.
    assert_matches_reference(ops.s4_kernel, "torch", s4_low_rank_inputs(dtype, rank, per_mode_dt), L=L)


def test_s4_kernel_rank_and_dt_special_cases():
    x = s4_inputs(torch.float64)
    # rank 2 whose second row is zero is the rank-1 kernel; equal per-mode steps are the tied step
    y = {**x, "P_re": torch.stack([x["P_re"], torch.zeros_like(x["P_re"])])}
    y["P_im"] = torch.stack([x["P_im"], torch.zeros_like(x["P_im"])])
    y["log_dt"] = x["log_dt"][:, None].expand(-1, 4).contiguous()
    for backend in ("reference", "torch"):
        torch.testing.assert_close(
            ops.s4_kernel(**y, L=20, backend=backend),
            ops.s4_kernel(**x, L=20, backend=backend),
            rtol=1e-12,
            atol=1e-12,
        )
    with pytest.raises(ValueError, match="P_re"):
        ops.s4_kernel(**{**y, "P_re": y["P_re"][:, :1]}, L=4)
    with pytest.raises(ValueError, match="P_re and P_im"):
        ops.s4_kernel(**{**y, "P_im": y["P_im"][:1]}, L=4)
    with pytest.raises(ValueError, match="log_dt"):
        ops.s4_kernel(**{**y, "log_dt": y["log_dt"][:, :3]}, L=4)


def test_s4_kernel_triton_takes_rank_1_only():
    # Rank 2 is refused by name when triton is asked for, and auto runs torch (never a different result).
    x = s4_low_rank_inputs(torch.float32, 2, False)
    with pytest.raises(ValueError, match="rank 2"):
        ops.s4_kernel(**x, L=8, backend="triton")
    from seqzoo.ops.s4 import _triton_s4_unsupported

    assert "rank 2" in _triton_s4_unsupported(*x.values(), 8)
    assert _triton_s4_unsupported(**s4_inputs(torch.float32), L=8) is None
    torch.testing.assert_close(ops.s4_kernel(**x, L=8), ops.s4_kernel(**x, L=8, backend="torch"))


def test_s4_kernel_with_hippo_init_matches_reference():
    lam, P, B = nplr_legs(8)
    h = 2
    x = {"log_dt": log_dt_init(h, generator=torch.Generator().manual_seed(1))}
    C = torch.randn(h, 4, dtype=torch.complex128)
    for name, v in (("Lambda", lam), ("P", P), ("B", B), ("C", C)):
        x[f"{name}_re"] = v.real.expand(h, 4).clone()
        x[f"{name}_im"] = v.imag.expand(h, 4).clone()
    assert_matches_reference(ops.s4_kernel, "torch", x, L=32)


# -- fft_conv ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T, L", [(1, 4), (9, 9), (12, 5), (6, 20)])
@pytest.mark.parametrize("with_D", [False, True])
def test_fft_conv_matches_explicit_convolution(bidirectional, T, L, with_D):
    g = torch.Generator().manual_seed(T * 31 + L)
    h = 3
    x = {
        "u": torch.randn(2, T, h, generator=g),
        "K": torch.randn(*((2,) if bidirectional else ()), h, L, generator=g),
    }
    if with_D:
        x["D"] = torch.randn(h, generator=g)
    assert_matches_reference(ops.fft_conv, "torch", x, bidirectional=bidirectional)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T, L", [(1, 4), (40, 40), (37, 19), (6, 20)])
def test_fft_conv_triton_matches_explicit_convolution(bidirectional, T, L):
    # T across BLOCK_T = 32, lags across BLOCK_J = 16, H = 17 across BLOCK_H = 16; with the D skip.
    g = torch.Generator().manual_seed(T * 7 + L)
    h = 17
    x = {
        "u": torch.randn(2, T, h, generator=g),
        "K": torch.randn(*((2,) if bidirectional else ()), h, L, generator=g),
        "D": torch.randn(h, generator=g),
    }
    assert_matches_reference(ops.fft_conv, "triton", x, bidirectional=bidirectional)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fft_conv_low_precision(dtype):
    g = torch.Generator().manual_seed(3)
    x = {
        "u": torch.randn(2, 33, 4, generator=g).to(dtype),
        "K": (torch.randn(4, 33, generator=g) / 6).to(dtype),
        "D": torch.randn(4, generator=g).to(dtype),
    }
    assert ops.fft_conv(**x).dtype == dtype
    assert_matches_reference(ops.fft_conv, "torch", x)


def test_fft_conv_reference_is_the_convolution():
    u = torch.randn(1, 5, 2, dtype=torch.float64)
    K = torch.randn(2, 2, 3, dtype=torch.float64)
    D = torch.randn(2, dtype=torch.float64)
    y = ops.fft_conv(u, K, D, bidirectional=True, backend="reference")
    for t in range(5):
        want = D * u[0, t]
        for s in range(5):
            if 0 <= t - s < 3:
                want = want + K[0, :, t - s] * u[0, s]
            if 0 <= s - t - 1 < 3:
                want = want + K[1, :, s - t - 1] * u[0, s]
        torch.testing.assert_close(y[0, t], want, rtol=1e-12, atol=1e-12)


def test_bad_arguments_name_themselves():
    x = ssm_inputs()
    with pytest.raises(ValueError, match="C_im"):
        ops.s4d_kernel(**{**x, "C_im": x["C_im"][:, :2]}, L=4)
    with pytest.raises(ValueError, match="discretization"):
        ops.s4d_kernel(**x, L=4, discretization="euler")
    with pytest.raises(ValueError, match="L"):
        ops.s4d_kernel(**x, L=0)
    with pytest.raises(ValueError, match="K"):
        ops.fft_conv(torch.randn(1, 4, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="K"):
        ops.fft_conv(torch.randn(1, 4, 3), torch.randn(3, 5), bidirectional=True)
    with pytest.raises(ValueError, match="D"):
        ops.fft_conv(torch.randn(1, 4, 3), torch.randn(3, 5), torch.randn(4))
    with pytest.raises(ValueError, match="P_re"):
        s = s4_inputs(torch.float32)
        ops.s4_kernel(**{**s, "P_re": s["P_re"][0]}, L=4)
    with pytest.raises(ValueError, match="triton"):
        ops.s4d_kernel(**ssm_inputs(dtype=torch.float64), L=4, backend="triton")


# -- initialisations ---------------------------------------------------------------------------------------


def test_nplr_legs_is_similar_to_hippo():
    n = 8
    lam, P, _ = nplr_legs(n)
    assert (lam.imag > 0).all() and torch.allclose(lam.real, torch.full((n // 2,), -0.5, dtype=torch.float64))
    full = lambda v: torch.cat([v, v.conj()])  # noqa: E731
    A = torch.diag(full(lam)) - full(P)[:, None] * full(P).conj()[None, :]
    got = torch.sort(torch.linalg.eigvals(A).real).values
    want = torch.sort(torch.linalg.eigvals(hippo_legs(n)[0]).real).values  # -1, ..., -N
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(want, torch.arange(-n, 0, dtype=torch.float64))


def test_s4d_inits():
    n = 8
    m = torch.arange(4, dtype=torch.float64)
    A, B = s4d_init("lin", n)
    torch.testing.assert_close(A, torch.complex(torch.full((4,), -0.5, dtype=torch.float64), math.pi * m))
    A, _ = s4d_init("inv", n)
    torch.testing.assert_close(A.imag, n / math.pi * (n / (2 * m + 1) - 1))
    A, _ = s4d_init("real", n)
    torch.testing.assert_close(A.real, -(m + 1))
    assert (A.imag == 0).all()
    A, _ = s4d_init("legs", n)
    torch.testing.assert_close(A, nplr_legs(n)[0])
    ld = log_dt_init(1000, generator=torch.Generator().manual_seed(0))
    assert ld.min() >= math.log(1e-3) and ld.max() <= math.log(1e-1) and ld.max() - ld.min() > 4


# -- layers: convolution equals recurrence -----------------------------------------------------------------

LAYERS = [("s4d", {"init": i, "discretization": d}) for i in S4D_INITS for d in ("zoh", "bilinear")]
LAYERS += [
    ("s4", {"init": "legs", "l_max": 16}),
    ("s4", {"init": "legs", "l_max": 8}),
]  # l_max 8 < T: extended


def step_through(m, x):
    state = m.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("name, kwargs", LAYERS)
def test_convolution_equals_recurrence(name, kwargs):
    torch.manual_seed(0)
    # Large dt (up to 1) too, so the kernel has not decayed over the test length and every step matters.
    m = seqzoo.build_mixer(name, 6, d_state=8, dt_min=1e-2, dt_max=1.0, **kwargs)
    x = torch.randn(2, 15, 6)
    conv64 = m.double()(x.double())
    torch.testing.assert_close(step_through(m, x.double()), conv64, rtol=1e-9, atol=1e-9)
    m = m.float()
    conv32, rec32 = m(x), step_through(m, x)
    scale = conv64.abs().max()
    assert (conv32.double() - conv64).abs().max() / scale < 1e-4
    assert (rec32.double() - conv64).abs().max() / scale < 1e-4


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_layer_backends_agree_with_recurrence(name, backend):
    torch.manual_seed(1)
    m = seqzoo.build_mixer(name, 4, d_state=6, backend=backend, dt_max=1.0)
    x = torch.randn(1, 11, 4)
    assert ((m(x) - step_through(m, x)).abs().max() / m(x).abs().max()) < 1e-4


def test_bidirectional_sees_both_ways_and_does_not_decode():
    for name in ("s4", "s4d"):
        m = seqzoo.build_mixer(name, 4, d_state=4, bidirectional=True, dt_max=1.0).double()
        x = torch.randn(1, 9, 4, dtype=torch.float64)
        y = m(x)
        x2 = x.clone()
        x2[:, 6:] += 1.0
        assert (m(x2)[:, :6] - y[:, :6]).abs().max() > 1e-6  # the past sees the future
        x3 = x.clone()
        x3[:, :3] += 1.0
        assert (m(x3)[:, 3:] - y[:, 3:]).abs().max() > 1e-6
        with pytest.raises(RuntimeError, match="bidirectional"):
            m.step(x[:, 0], m.init_state(1))


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_ssm_parameters_get_their_own_optimizer_group(name):
    m = seqzoo.build_mixer(name, 8, d_state=4)
    groups = param_groups(m, lr=3e-4, weight_decay=0.1)
    ssm = [g for g in groups if g["lr"] == 1e-3]
    assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0
    want = {"log_dt", "B_re", "B_im"} | (
        {"log_A_real", "A_imag"} if name == "s4d" else {"log_Lambda_real", "Lambda_imag", "P_re", "P_im"}
    )
    assert set(ssm[0]["names"]) == want
    # C, D and the output projection train at the model's lr.
    others = {n for g in groups if g["lr"] == 3e-4 for n in g["names"]}
    assert {"C_re", "C_im", "D", "out_proj.weight"} <= others


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="d_state"):
        seqzoo.build_mixer("s4d", 8, d_state=5)
    with pytest.raises(ValueError, match="init"):
        seqzoo.build_mixer("s4d", 8, init="foo")
    with pytest.raises(ValueError, match="output"):
        seqzoo.build_mixer("s4", 8, output="tanh")


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_in_a_causal_lm_and_a_bidirectional_classifier(name):
    from seqzoo.models.classifier import SequenceClassifier
    from seqzoo.models.lm import CausalLM

    torch.manual_seed(0)
    lm = CausalLM(d_model=16, n_layers=2, vocab_size=32, mixer=name, mixer_kwargs={"d_state": 4})
    # The GPT-style init touches only Linear/Embedding weights: the SSM parameters keep their init.
    mixer = lm.backbone.blocks[0].mixer
    assert math.log(1e-3) - 1e-6 <= mixer.log_dt.min() and mixer.log_dt.max() <= math.log(1e-1) + 1e-6
    a_re = mixer.log_A_real if name == "s4d" else mixer.log_Lambda_real
    torch.testing.assert_close(a_re, torch.full_like(a_re, math.log(0.5)))  # Re(A) = -1/2 (LegS)
    groups = param_groups(lm, lr=3e-4, weight_decay=0.1)
    ssm = [g for g in groups if g["lr"] == 1e-3]
    assert len(ssm) == 1 and all(".mixer." in n for n in ssm[0]["names"])
    assert sum("log_dt" in n for n in ssm[0]["names"]) == 2  # one per layer
    ids = torch.randint(0, 32, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm(ids)
    assert torch.isfinite(logits.float()).all()
    clf = SequenceClassifier(
        d_model=16,
        n_layers=1,
        vocab_size=32,
        n_classes=3,
        bidirectional=True,
        mixer=name,
        mixer_kwargs={"d_state": 4},
    )
    assert clf.backbone.blocks[0].mixer.bidirectional
    assert clf(ids).shape[0] == 2


def test_s4_decoding_cache_follows_the_parameters():
    torch.manual_seed(0)
    m = seqzoo.build_mixer("s4", 4, d_state=4, l_max=8).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(step_through(m, x), m(x), rtol=1e-9, atol=1e-9)
        m.log_dt.add_(0.5)  # an optimiser step: the cached system must not be reused
        m.B_re.mul_(1.5)
        torch.testing.assert_close(step_through(m, x), m(x), rtol=1e-9, atol=1e-9)


# -- parameter set-up (issue 14: one _init_ssm for S4 and S4D) -----------------------------------------------


def _setup_before_issue_14(kind, d_model, d_state, output, bidirectional, dt_min, dt_max, init):
    """The parameters as S4 / S4D built them before their set-up was shared, written out step by step in the
    same order (names, values and random draws): the shared set-up must give these bit for bit."""
    from torch import nn

    h, m = d_model * (2 if bidirectional else 1), d_state // 2
    out = {"D": torch.randn(d_model)}
    proj = nn.Linear(d_model, d_model * (2 if output == "glu" else 1))
    out["out_proj.weight"], out["out_proj.bias"] = proj.weight, proj.bias
    if kind == "s4d":
        A, B = s4d_init(init, d_state)
        out["log_dt"] = log_dt_init(h, dt_min, dt_max).float()
        out["log_A_real"] = torch.log(-A.real).expand(h, m).float()
        out["A_imag"] = torch.zeros(h, m) if init == "real" else A.imag.expand(h, m).float()
    else:
        A, P, B = nplr_legs(d_state)
        out["log_dt"] = log_dt_init(h, dt_min, dt_max).float()
        out["log_Lambda_real"] = torch.log(-A.real).expand(h, m).float()
        out["Lambda_imag"] = A.imag.expand(h, m).float()
        out["P_re"], out["P_im"] = P.real.expand(h, m).float(), P.imag.expand(h, m).float()
    out["B_re"], out["B_im"] = B.real.expand(h, m).float(), B.imag.expand(h, m).float()
    out["C_re"] = torch.randn(h, m) * 0.5**0.5
    out["C_im"] = torch.randn(h, m) * 0.5**0.5
    return out


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("s4d", {"d_model": 6, "d_state": 8}),
        ("s4d", {"d_model": 5, "d_state": 4, "init": "lin", "bidirectional": True, "output": "linear"}),
        ("s4d", {"d_model": 3, "d_state": 6, "init": "real", "discretization": "bilinear"}),
        ("s4d", {"d_model": 3, "d_state": 6, "init": "inv", "dt_min": 1e-2, "dt_max": 0.5}),
        ("s4", {"d_model": 6, "d_state": 8, "l_max": 16}),
        ("s4", {"d_model": 5, "d_state": 4, "l_max": 7, "bidirectional": True, "output": "linear"}),
    ],
)
def test_seeded_parameters_are_unchanged_by_the_shared_setup(kind, kwargs):
    full = {"output": "glu", "bidirectional": False, "dt_min": 1e-3, "dt_max": 1e-1, "init": "legs", **kwargs}
    setup = {
        k: full[k] for k in ("d_model", "d_state", "output", "bidirectional", "dt_min", "dt_max", "init")
    }
    torch.manual_seed(1234)
    layer = seqzoo.build_mixer(kind, **kwargs)
    after_layer = torch.rand(3)
    torch.manual_seed(1234)
    expected = _setup_before_issue_14(kind, **setup)
    after_expected = torch.rand(3)
    state = layer.state_dict()
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], value), name
    assert torch.equal(after_layer, after_expected)  # the same random draws, no more, no fewer
    # The parameters' order (the optimiser's state follows it): the layer's own in the order made, then out_proj.
    buffers = {"A_imag"} if kind == "s4d" and full["init"] == "real" else set()
    own = [n for n in expected if not n.startswith("out_proj.") and n not in buffers]
    assert [n for n, _ in layer.named_parameters()] == own + ["out_proj.weight", "out_proj.bias"]
    assert [n for n, _ in layer.named_buffers()] == sorted(buffers)
    ssm = {"log_dt", "log_A_real", "A_imag", "log_Lambda_real", "Lambda_imag", "P_re", "P_im", "B_re", "B_im"}
    for n, p in layer.named_parameters():
        assert getattr(p, "_optim", None) == ({"lr": 1e-3, "weight_decay": 0.0} if n in ssm else None), n
