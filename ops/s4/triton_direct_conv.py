"""fft_conv's Triton backend: the long convolution computed directly, tile by tile, forward and backward.

    y[b, t, h] = sum_{j<Lc} Kc[h, j] x[b, t - j - oc, h] + sum_{j<La} Ka[h, j] x[b, t + j + oa, h]

Forward: Kc = K (causal, oc = 0) and, when bidirectional, Ka = K[1] (oa = 1: lags -1, -2, ...). The input
gradient is the same sum with the directions swapped: du[s] = sum_j K[j] g[s + j] + sum_j K[1][j] g[s - 1 - j],
i.e. Kc = K[1] with oc = 1 and Ka = K with oa = 0. The kernel gradient is a correlation,
dK[h, j] = sum_{b, t} g[b, t, h] u[b, t - j, h] (dK[1][h, j] = sum g[b, t, h] u[b, t + 1 + j, h]).

This is O(T min(L, T)) work per channel rather than the FFT's O(T log T): it wins for short kernels and
moderate T, and it never forms a [T, T] or [H, N, L] tensor (tiles of [BLOCK_T, BLOCK_J, BLOCK_H] only).
The D skip and its gradient stay in PyTorch. Accumulation in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded


@triton.jit
def _conv_kernel(
    X, KC, KA, Y, T, H, LC, LA, OC, OA,
    HAS_A: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    pid_t, pid_h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    base = b.to(tl.int64) * T * H
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for start in range(0, LC, BLOCK_J):
        offs_j = start + tl.arange(0, BLOCK_J)
        k = tl.load(
            KC + offs_h[None, :] * LC + offs_j[:, None],
            mask=(offs_j < LC)[:, None] & mask_h[None, :],
            other=0.0,
        )
        src = offs_t[:, None] - offs_j[None, :] - OC  # [BT, BJ]
        ok = (src >= 0) & (src < T) & (offs_j < LC)[None, :]
        x = tl.load(
            X + base + src[:, :, None] * H + offs_h[None, None, :],
            mask=ok[:, :, None] & mask_h[None, None, :],
            other=0.0,
        )
        acc += tl.sum(x * k[None, :, :], axis=1)
    if HAS_A:
        for start in range(0, LA, BLOCK_J):
            offs_j = start + tl.arange(0, BLOCK_J)
            k = tl.load(
                KA + offs_h[None, :] * LA + offs_j[:, None],
                mask=(offs_j < LA)[:, None] & mask_h[None, :],
                other=0.0,
            )
            src = offs_t[:, None] + offs_j[None, :] + OA
            ok = (src >= 0) & (src < T) & (offs_j < LA)[None, :]
            x = tl.load(
                X + base + src[:, :, None] * H + offs_h[None, None, :],
                mask=ok[:, :, None] & mask_h[None, None, :],
                other=0.0,
            )
            acc += tl.sum(x * k[None, :, :], axis=1)
    tl.store(
        Y + base + offs_t[:, None] * H + offs_h[None, :], acc, mask=(offs_t < T)[:, None] & mask_h[None, :]
    )


@triton.jit
def _correlate_kernel(
    G, U, DK, B, T, H, L, SHIFT, SIGN,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    # DK[h, j] = sum_{b, t} G[b, t, h] U[b, t + SIGN * j + SHIFT, h]   (causal: SIGN = -1, SHIFT = 0)
    pid_j, pid_h = tl.program_id(0), tl.program_id(1)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    acc = tl.zeros([BLOCK_J, BLOCK_H], dtype=tl.float32)
    for b in range(0, B):
        base = (tl.full([], 0, tl.int64) + b) * T * H  # int64: B*T*H can pass 2^31
        for start in range(0, T, BLOCK_T):
            offs_t = start + tl.arange(0, BLOCK_T)
            g = tl.load(
                G + base + offs_t[:, None] * H + offs_h[None, :],
                mask=(offs_t < T)[:, None] & mask_h[None, :],
                other=0.0,
            )
            src = offs_t[:, None] + SIGN * offs_j[None, :] + SHIFT  # [BT, BJ]
            ok = (src >= 0) & (src < T) & (offs_t < T)[:, None] & (offs_j < L)[None, :]
            u = tl.load(
                U + base + src[:, :, None] * H + offs_h[None, None, :],
                mask=ok[:, :, None] & mask_h[None, None, :],
                other=0.0,
            )
            acc += tl.sum(u * g[:, None, :], axis=0)
    tl.store(DK + offs_h[None, :] * L + offs_j[:, None], acc, mask=(offs_j < L)[:, None] & mask_h[None, :])


BLOCK_T, BLOCK_J, BLOCK_H = 32, 16, 16


def _conv(x, kc, ka, oc, oa, lc=None):
    b, t, h = x.shape
    lc = kc.shape[1] if lc is None else lc
    y = torch.empty_like(x)
    grid = (triton.cdiv(t, BLOCK_T), triton.cdiv(h, BLOCK_H), b)
    _conv_kernel[grid](
        x, kc, kc if ka is None else ka, y, t, h, lc, 0 if ka is None else ka.shape[1], oc, oa,
        HAS_A=ka is not None, BLOCK_T=BLOCK_T, BLOCK_J=BLOCK_J, BLOCK_H=BLOCK_H,
    )  # fmt: skip
    return y


def _correlate(g, u, L, shift, sign):
    b, t, h = u.shape
    dk = torch.empty(h, L, device=u.device, dtype=torch.float32)
    grid = (triton.cdiv(L, BLOCK_J), triton.cdiv(h, BLOCK_H))
    _correlate_kernel[grid](
        g, u, dk, b, t, h, L, shift, sign, BLOCK_T=BLOCK_T, BLOCK_J=BLOCK_J, BLOCK_H=BLOCK_H
    )
    return dk


class DirectConvFn(torch.autograd.Function):
    """y = causal conv of u with kc (+ anti-causal conv with ka, lags -1, -2, ...); u [B, T, H] fp32."""

    @staticmethod
    @device_guarded
    def forward(ctx, u, kc, ka):
        u, kc = u.float().contiguous(), kc.float().contiguous()
        ka = None if ka is None else ka.float().contiguous()
        ctx.save_for_backward(u, kc, ka)
        return _conv(u, kc, ka, 0, 1)

    @staticmethod
    @device_guarded
    def backward(ctx, g):
        u, kc, ka = ctx.saved_tensors
        g = g.float().contiguous()
        if ka is None:
            # du[s] = sum_j kc[j] g[s + j]: the anti-causal sum alone (an empty causal part).
            du = _conv(g, kc, kc, 0, 0, lc=0)
        else:
            du = _conv(g, ka, kc, 1, 0)
        dkc = _correlate(g, u, kc.shape[1], 0, -1)
        dka = None if ka is None else _correlate(g, u, ka.shape[1], 1, 1)
        return du, dkc, dka


def fft_conv(u, K, D=None, bidirectional=False):
    t = u.shape[1]
    out_dtype = torch.promote_types(u.dtype, K.dtype)
    # Taps at lags >= T never meet an input: drop them (the kernel loops over min(L, T) lags).
    K = K[..., :t]
    y = DirectConvFn.apply(u, K[0], K[1]) if bidirectional else DirectConvFn.apply(u, K, None)
    if D is not None:
        y = y + u.float() * D.float()
    return y.to(out_dtype)
