"""The s5 mixer (Smith et al. 2023): forward = prefill = step, the scan = an explicit MIMO kernel convolution, and
S5 with block-diagonal B/C and tied dt = S4D (spec wave3 1.7, items 1-3). Shapes stay tiny: the contract,
packed, bad-input and extreme-input suites run on s5 too."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo.layers.s5 import S5


def build(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    kw = {"d_state": 8, "blocks": 2, **kw}
    m = seqzoo.build_mixer("s5", 8, **kw).to(dtype)
    with torch.no_grad():  # spread the modes so that every one matters over a short sequence
        m.log_step.uniform_(-2.5, -0.5)
    return m


@pytest.mark.parametrize(
    "dtype,tol,kw",
    [
        (torch.float64, 1e-10, {}),
        (torch.float32, 1e-5, {}),
        (torch.float64, 1e-10, {"discretization": "bilinear", "activation": "half_glu2"}),
        (torch.float64, 1e-10, {"init": "ptd", "activation": "full_glu", "clip_eigs": True}),
    ],
    ids=["fp64", "fp32", "bilinear", "ptd"],
)
def test_forward_prefill_step_agree(dtype, tol, kw):
    m = build(dtype, **kw).eval()
    x = torch.randn(2, 13, 8, dtype=dtype)
    y = m(x)
    y_pre, st = m.prefill(x[:, :6])
    y_rest, st = m.prefill(x[:, 6:9], st)  # a prefill from a state
    steps = []
    for t in range(9, 13):
        y_t, st = m.step(x[:, t], st)
        steps.append(y_t)
    got = torch.cat([y_pre, y_rest, torch.stack(steps, 1)], 1)
    assert st["ssm"].shape == (2, m.n_modes, 2) and st["ssm"].dtype == torch.promote_types(
        dtype, torch.float32
    )
    torch.testing.assert_close(got, y, atol=tol, rtol=tol)
    _, full = m.prefill(x)
    torch.testing.assert_close(st["ssm"], full["ssm"], atol=tol, rtol=tol)


def _mimo_kernel(m: S5, T: int):
    """K_l = 2 Re(C~ Lambda_bar^l B_bar) [T, H, H] (Re without conj_sym), one per direction."""
    Lbar, Bbar, C = m.discrete(torch.float64)
    powers = Lbar[None] ** torch.arange(T, dtype=torch.float64)[:, None]  # [T, m]
    k = m.n_modes
    scale = 2 if m.conj_sym else 1
    out = []
    for d in range(2 if m.bidirectional else 1):
        Cd = C[:, d * k : (d + 1) * k]
        out.append(scale * torch.einsum("hm,lm,mj->lhj", Cd, powers, Bbar).real)
    return out


@pytest.mark.parametrize(
    "kw",
    [{}, {"bidirectional": True}, {"init": "ptd", "discretization": "bilinear"}],
    ids=["causal", "bidirectional", "ptd-bilinear"],
)
def test_scan_is_the_mimo_kernel_convolution(kw):
    """y_t = sum_l K_l u_{t-l} (+ sum_l K2_l u_{t+l} bidirectional) + D u_t, T = 64, H = 8, P = 16."""
    torch.manual_seed(1)
    m = seqzoo.build_mixer("s5", 8, d_state=16, blocks=2, **kw).double()
    u = torch.randn(2, 64, 8, dtype=torch.float64)
    y, _ = m.ssm(u)
    K = _mimo_kernel(m, 64)
    T = u.shape[1]
    ref = m.D.double() * u
    for t in range(T):
        ref[:, t] += torch.einsum("lhj,blj->bh", K[0][: t + 1], u[:, : t + 1].flip(1))
        if m.bidirectional:
            ref[:, t] += torch.einsum("lhj,blj->bh", K[1][: T - t], u[:, t:])
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    # and a kernel that is not trivially small: the states carry information across the whole sequence
    assert K[0][-1].abs().max() > 1e-6


def test_block_diagonal_s5_is_s4d():
    """S5 with P = H N (m = H N/2 modes), B~ and C~ block-diagonal per channel and dt tied within each block
    equals S4D (ZOH, the same Lambda, B, C, D) in fp64."""
    H, N = 4, 8
    torch.manual_seed(2)
    s4d = seqzoo.build_mixer("s4d", H, d_state=N).double()
    s5 = seqzoo.build_mixer("s5", H, d_state=H * N, blocks=H).double()
    n = N // 2
    eye = torch.eye(H, dtype=torch.float64)
    with torch.no_grad():
        s5.Lambda_re.copy_(-torch.exp(s4d.log_A_real).reshape(-1))
        s5.Lambda_im.copy_(s4d.A_imag.reshape(-1))
        s5.log_step.copy_(s4d.log_dt[:, None].expand(H, n).reshape(-1))
        B = torch.complex(s4d.B_re, s4d.B_im)  # [H, n]: mode (h, k) reads channel h only
        s5.B.copy_(torch.view_as_real((B[:, :, None] * eye[:, None, :]).reshape(H * n, H)))
        C = torch.complex(s4d.C_re, s4d.C_im)  # [H, n]: channel h reads its own modes only
        s5.C.copy_(torch.view_as_real((eye[:, :, None] * C[None, :, :]).reshape(H, H * n)))
        s5.D.copy_(s4d.D)
    x = torch.randn(2, 40, H, dtype=torch.float64)
    torch.testing.assert_close(s5.ssm(x)[0], s4d._conv(x), atol=1e-10, rtol=1e-10)


def test_record_init_and_optimiser_groups():
    m = seqzoo.build_mixer("s5", 16)  # the paper's defaults: P 256, J 8, conj_sym
    assert m.n_modes == 128 and m.C.shape == (16, 128, 2) and m.B.shape == (128, 16, 2)
    # HiPPO-N blocks: Re = -1/2, the negative-imaginary half of each block, tiled J times
    assert torch.all(m.Lambda_re == -0.5) and torch.all(m.Lambda_im < 0)
    torch.testing.assert_close(m.Lambda_im[:16], m.Lambda_im[16:32])
    for p in (m.Lambda_re, m.Lambda_im, m.B, m.log_step):
        assert p._optim == {"lr": 1e-3, "weight_decay": 0.0}
    assert not hasattr(m.C, "_optim") and not hasattr(m.D, "_optim")
    assert seqzoo.build_mixer("s5", 16, d_state=16, blocks=2, init="ptd").n_modes == 16
    with pytest.raises(ValueError, match="conj_sym"):
        seqzoo.build_mixer("s5", 16, init="ptd", conj_sym=True)
    with pytest.raises(ValueError, match="blocks"):
        seqzoo.build_mixer("s5", 16, d_state=12, blocks=8)
    with pytest.raises(RuntimeError, match="bidirectional"):
        seqzoo.build_mixer("s5", 8, d_state=8, blocks=2, bidirectional=True).prefill(torch.randn(1, 3, 8))


def _pair(**kw):
    """The same s5 layer with the complex scan and with the real (rotating-frame) form."""
    a = build(torch.float64, scan="complex", **kw)
    b = build(torch.float64, scan="real", **kw)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("bidirectional", [False, True])
def test_real_form_equals_complex_scan(bidirectional):
    """The real form (real decay |Lambda_bar| in a frame rotating with each mode's phase) is the same map: plain,
    packed, and (causal) prefill from a state, packed too, with the final states."""
    a, b = _pair(bidirectional=bidirectional)
    x = torch.randn(2, 20, 8, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x), atol=1e-10, rtol=1e-10)
    cu = torch.tensor([0, 5, 6, 20], dtype=torch.int32)
    torch.testing.assert_close(b(x[:1], cu_seqlens=cu), a(x[:1], cu_seqlens=cu), atol=1e-10, rtol=1e-10)
    if bidirectional:
        return
    s0 = {"ssm": torch.randn(2, a.n_modes, 2, dtype=torch.float64)}
    for got, want in zip(b.prefill(x, s0), a.prefill(x, s0)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    s0 = {"ssm": torch.randn(3, a.n_modes, 2, dtype=torch.float64)}
    for got, want in zip(b.prefill(x[:1], s0, cu_seqlens=cu), a.prefill(x[:1], s0, cu_seqlens=cu)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_real_form_runs_on_the_triton_scan():
    """backend="triton" (the GPU path; here under TRITON_INTERPRET=1) scans the real form on linear_scan's Triton
    kernels: outputs, final state and gradients match the complex torch scan in fp32."""
    torch.manual_seed(3)
    ref = seqzoo.build_mixer("s5", 8, d_state=8, blocks=2, bidirectional=True)
    tri = seqzoo.build_mixer("s5", 8, d_state=8, blocks=2, bidirectional=True, backend="triton")
    tri.load_state_dict(ref.state_dict())
    assert tri._real_form(torch.zeros(1)) and not ref._real_form(torch.zeros(1))
    x = torch.randn(2, 9, 8, requires_grad=True)
    y_ref, y_tri = ref(x), tri(x)
    torch.testing.assert_close(y_tri, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x, ref.Lambda_im, ref.B, ref.log_step])
    grads_tri = torch.autograd.grad((y_tri * g).sum(), [x, tri.Lambda_im, tri.B, tri.log_step])
    for got, want in zip(grads_tri, grads_ref):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
