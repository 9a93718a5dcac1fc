"""S4D's Vandermonde kernel and S4's Cauchy sums in Triton, forward and backward, with no [H, N, L] intermediate.

Vandermonde (s4d_kernel):

    K[h, l] = 2 sum_n Re(W[h, n] exp(l Z[h, n]))
            = 2 sum_n exp(l Zr) (Wr cos(l Zi) - Wi sin(l Zi))

W = C Bbar and Z = log Abar are made in PyTorch (O(H N), differentiated by autograd); the Function here takes
them as separate real and imaginary fp32 tensors [H, N] and returns K [H, L] fp32. Forward: one program per
(h, block of l) loops over n. Backward: one program per (h, block of n) loops over l, with e = exp(l Zr),
c = cos(l Zi), s = sin(l Zi):

    dWr = 2 sum_l dK e c          dWi = -2 sum_l dK e s
    dZr = 2 sum_l dK l e (Wr c - Wi s)       dZi = -2 sum_l dK l e (Wr s + Wi c)

Cauchy sums (s4_kernel): for the four numerators v_k [H, M] (M = 2N, conjugates included), a = dt Lambda [H, M]
and the nodes z_f on the unit circle,

    r_k[h, f] = sum_m v_k[h, m] / den[h, m, f],      den = 2 (1 - z) - a (1 + z)

one program per (h, block of nodes) looping over m; the Woodbury combination and the irfft stay in PyTorch
(O(H L)). Backward, one program per (h, block of m) looping over the nodes, with g_k the incoming gradient of
r_k as a complex number (real part: gradient of Re r_k, imaginary part: of Im r_k) and r holomorphic in v, a:

    dv_k[m] = sum_f g_k[f] conj(1 / den)
    da[m]   = sum_f conj((1 + z) / den^2) sum_k g_k[f] conj(v_k[m])
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded
from . import torch as _torch_backend
from .torch import diagonal_vandermonde_factors


@triton.jit
def _vandermonde_fwd(WR, WI, ZR, ZI, K, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    pos = offs_l.to(tl.float32)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        # Padded modes get W = 0, so they add nothing whatever exp() gives.
        wr = tl.load(WR + h * N + offs_n, mask=mask_n, other=0.0)
        wi = tl.load(WI + h * N + offs_n, mask=mask_n, other=0.0)
        zr = tl.load(ZR + h * N + offs_n, mask=mask_n, other=0.0)
        zi = tl.load(ZI + h * N + offs_n, mask=mask_n, other=0.0)
        e = tl.exp(zr[:, None] * pos[None, :])
        ang = zi[:, None] * pos[None, :]
        acc += tl.sum(e * (wr[:, None] * tl.cos(ang) - wi[:, None] * tl.sin(ang)), axis=0)
    tl.store(K + h * L + offs_l, 2.0 * acc, mask=offs_l < L)


@triton.jit
def _vandermonde_bwd(
    WR, WI, ZR, ZI, DK, DWR, DWI, DZR, DZI, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr
):
    h = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    wr = tl.load(WR + h * N + offs_n, mask=mask_n, other=0.0)
    wi = tl.load(WI + h * N + offs_n, mask=mask_n, other=0.0)
    zr = tl.load(ZR + h * N + offs_n, mask=mask_n, other=0.0)
    zi = tl.load(ZI + h * N + offs_n, mask=mask_n, other=0.0)
    dwr = tl.zeros([BLOCK_N], dtype=tl.float32)
    dwi = tl.zeros([BLOCK_N], dtype=tl.float32)
    dzr = tl.zeros([BLOCK_N], dtype=tl.float32)
    dzi = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        dk = tl.load(DK + h * L + offs_l, mask=offs_l < L, other=0.0)  # padded l: dK = 0
        pos = offs_l.to(tl.float32)
        e = tl.exp(zr[:, None] * pos[None, :]) * dk[None, :]
        ang = zi[:, None] * pos[None, :]
        c = tl.cos(ang) * e
        s = tl.sin(ang) * e
        dwr += tl.sum(c, axis=1)
        dwi -= tl.sum(s, axis=1)
        dzr += tl.sum(pos[None, :] * (wr[:, None] * c - wi[:, None] * s), axis=1)
        dzi -= tl.sum(pos[None, :] * (wr[:, None] * s + wi[:, None] * c), axis=1)
    tl.store(DWR + h * N + offs_n, 2.0 * dwr, mask=mask_n)
    tl.store(DWI + h * N + offs_n, 2.0 * dwi, mask=mask_n)
    tl.store(DZR + h * N + offs_n, 2.0 * dzr, mask=mask_n)
    tl.store(DZI + h * N + offs_n, 2.0 * dzi, mask=mask_n)


BLOCK_N = 16
BLOCK_L = 64


class VandermondeFn(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, wr, wi, zr, zi, L):
        wr, wi, zr, zi = (x.float().contiguous() for x in (wr, wi, zr, zi))
        h, n = wr.shape
        K = torch.empty(h, L, device=wr.device, dtype=torch.float32)
        _vandermonde_fwd[(h, triton.cdiv(L, BLOCK_L))](
            wr, wi, zr, zi, K, n, L, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L
        )
        ctx.save_for_backward(wr, wi, zr, zi)
        ctx.L = L
        return K

    @staticmethod
    @device_guarded
    def backward(ctx, dK):
        wr, wi, zr, zi = ctx.saved_tensors
        h, n = wr.shape
        grads = [torch.empty_like(wr) for _ in range(4)]
        _vandermonde_bwd[(h, triton.cdiv(n, BLOCK_N))](
            wr, wi, zr, zi, dK.float().contiguous(), *grads, n, ctx.L, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L
        )
        return (*grads, None)


def s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, L, discretization="zoh"):
    w, z = diagonal_vandermonde_factors(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, discretization)
    K = VandermondeFn.apply(w.real, w.imag, z.real, z.imag, L)
    return K.to(torch.promote_types(A_re.dtype, torch.float32))


@triton.jit
def _den_inverse(ar, ai, zr, zi):
    # 1 / (2 (1 - z) - a (1 + z)) for a [BM, 1] and z [1, BF], as (re, im).
    dr = 2.0 * (1.0 - zr) - (ar * (1.0 + zr) - ai * zi)
    di = -2.0 * zi - (ar * zi + ai * (1.0 + zr))
    mag = dr * dr + di * di
    return dr / mag, -di / mag


@triton.jit
def _cauchy_fwd(VR, VI, AR, AI, ZR, ZI, RR, RI, H, M, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    h = tl.program_id(0)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    zr = tl.load(ZR + offs_f, mask=mask_f, other=0.0)[None, :]
    zi = tl.load(ZI + offs_f, mask=mask_f, other=0.0)[None, :]
    for k in tl.static_range(4):
        accr = tl.zeros([BLOCK_F], dtype=tl.float32)
        acci = tl.zeros([BLOCK_F], dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            # Padded modes: v = 0 and a = -1, so their denominator 3 - z never vanishes.
            ar = tl.load(AR + h * M + offs_m, mask=mask_m, other=-1.0)[:, None]
            ai = tl.load(AI + h * M + offs_m, mask=mask_m, other=0.0)[:, None]
            vr = tl.load(VR + (k * H + h) * M + offs_m, mask=mask_m, other=0.0)[:, None]
            vi = tl.load(VI + (k * H + h) * M + offs_m, mask=mask_m, other=0.0)[:, None]
            invr, invi = _den_inverse(ar, ai, zr, zi)
            accr += tl.sum(vr * invr - vi * invi, axis=0)
            acci += tl.sum(vr * invi + vi * invr, axis=0)
        tl.store(RR + (k * H + h) * F + offs_f, accr, mask=mask_f)
        tl.store(RI + (k * H + h) * F + offs_f, acci, mask=mask_f)


@triton.jit
def _cauchy_bwd(
    VR, VI, AR, AI, ZR, ZI, GR, GI, DVR, DVI, DAR, DAI, H, M, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr
):
    h = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ar = tl.load(AR + h * M + offs_m, mask=mask_m, other=-1.0)[:, None]
    ai = tl.load(AI + h * M + offs_m, mask=mask_m, other=0.0)[:, None]
    dar = tl.zeros([BLOCK_M], dtype=tl.float32)
    dai = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, F, BLOCK_F):
        offs_f = start + tl.arange(0, BLOCK_F)
        mask_f = offs_f < F
        zr = tl.load(ZR + offs_f, mask=mask_f, other=0.0)[None, :]
        zi = tl.load(ZI + offs_f, mask=mask_f, other=0.0)[None, :]
        invr, invi = _den_inverse(ar, ai, zr, zi)
        # s = sum_k g_k conj(v_k)   [BM, BF]
        sr = tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
        si = tl.zeros([BLOCK_M, BLOCK_F], dtype=tl.float32)
        for k in tl.static_range(4):
            gr = tl.load(GR + (k * H + h) * F + offs_f, mask=mask_f, other=0.0)[
                None, :
            ]  # padded nodes: g = 0
            gi = tl.load(GI + (k * H + h) * F + offs_f, mask=mask_f, other=0.0)[None, :]
            vr = tl.load(VR + (k * H + h) * M + offs_m, mask=mask_m, other=0.0)[:, None]
            vi = tl.load(VI + (k * H + h) * M + offs_m, mask=mask_m, other=0.0)[:, None]
            sr += gr * vr + gi * vi
            si += gi * vr - gr * vi
            # dv_k = sum_f g conj(inv): accumulated straight into the output (each program owns its m's).
            dvr = tl.sum(gr * invr + gi * invi, axis=1)
            dvi = tl.sum(gi * invr - gr * invi, axis=1)
            ptr = (k * H + h) * M + offs_m
            if start == 0:
                tl.store(DVR + ptr, dvr, mask=mask_m)
                tl.store(DVI + ptr, dvi, mask=mask_m)
            else:
                tl.store(DVR + ptr, tl.load(DVR + ptr, mask=mask_m, other=0.0) + dvr, mask=mask_m)
                tl.store(DVI + ptr, tl.load(DVI + ptr, mask=mask_m, other=0.0) + dvi, mask=mask_m)
        # q = (1 + z) inv^2 ; da += s conj(q)
        sqr = invr * invr - invi * invi
        sqi = 2.0 * invr * invi
        qr = (1.0 + zr) * sqr - zi * sqi
        qi = (1.0 + zr) * sqi + zi * sqr
        dar += tl.sum(sr * qr + si * qi, axis=1)
        dai += tl.sum(si * qr - sr * qi, axis=1)
    tl.store(DAR + h * M + offs_m, dar, mask=mask_m)
    tl.store(DAI + h * M + offs_m, dai, mask=mask_m)


CAUCHY_BLOCK_M = 16
CAUCHY_BLOCK_F = 64


class CauchyFn(torch.autograd.Function):
    @staticmethod
    @device_guarded
    def forward(ctx, vr, vi, ar, ai, zr, zi):
        vr, vi, ar, ai, zr, zi = (x.float().contiguous() for x in (vr, vi, ar, ai, zr, zi))
        _, h, m = vr.shape
        f = zr.shape[0]
        rr = torch.empty(4, h, f, device=vr.device, dtype=torch.float32)
        ri = torch.empty_like(rr)
        grid = (h, triton.cdiv(f, CAUCHY_BLOCK_F))
        _cauchy_fwd[grid](
            vr, vi, ar, ai, zr, zi, rr, ri, h, m, f, BLOCK_M=CAUCHY_BLOCK_M, BLOCK_F=CAUCHY_BLOCK_F
        )
        ctx.save_for_backward(vr, vi, ar, ai, zr, zi)
        return rr, ri

    @staticmethod
    @device_guarded
    def backward(ctx, gr, gi):
        vr, vi, ar, ai, zr, zi = ctx.saved_tensors
        _, h, m = vr.shape
        f = zr.shape[0]
        gr = torch.zeros_like(vr[:, :, :1].expand(4, h, f)) if gr is None else gr.float().contiguous()
        gi = torch.zeros_like(gr) if gi is None else gi.float().contiguous()
        dvr, dvi = torch.empty_like(vr), torch.empty_like(vi)
        dar, dai = torch.empty_like(ar), torch.empty_like(ai)
        grid = (h, triton.cdiv(m, CAUCHY_BLOCK_M))
        _cauchy_bwd[grid](
            vr,
            vi,
            ar,
            ai,
            zr,
            zi,
            gr,
            gi,
            dvr,
            dvi,
            dar,
            dai,
            h,
            m,
            f,
            BLOCK_M=CAUCHY_BLOCK_M,
            BLOCK_F=CAUCHY_BLOCK_F,
        )
        return dvr, dvi, dar, dai, None, None


def _cauchy_triton(nums, a, nodes):
    rr, ri = CauchyFn.apply(nums.real, nums.imag, a.real, a.imag, nodes.real, nodes.imag)
    return torch.complex(rr, ri)


def s4_kernel(log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L):
    return _torch_backend.s4_kernel(
        log_dt, Lambda_re, Lambda_im, P_re, P_im, B_re, B_im, C_re, C_im, L, cauchy=_cauchy_triton
    )
