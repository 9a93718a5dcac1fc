"""Flow-attention with Triton kernels for the linear-attention part, forward and backward.

The flow normalisers (prefix sums of D-vectors and scalars, O(T D)) run in torch and are shared with the
``torch`` backend (:func:`.torch.flow_weights`), which folds them into q' = q A / I and v' = v c; autograd
differentiates them. The heavy part, o = q' sum_{j<=i} k_j^T v'_j (or over all j), is a
``torch.autograd.Function`` over four Triton kernels. Each program owns one (batch, head) and one tile of
the output's feature dimension and walks the sequence in chunks of BT positions, carrying a state in
registers (fp32) so that nothing of size T x D x M is ever formed:

    forward   S = sum_{j<i} k_j^T v_j   (forward over chunks)   o_c  = Q_c S + tril(Q_c K_c^T) V_c
    dq        S as above                                        dq_c = dO_c S^T + tril(dO_c V_c^T) K_c
    dk        G = sum_{i>j} q_i^T dO_i  (backward over chunks)  dk_c = tril(dO_c V_c^T)^T Q_c + V_c G^T
    dv        G as above                                        dv_c = tril(Q_c K_c^T)^T dO_c + K_c G

Non-causal runs each kernel in two passes: first the full state over all chunks, then the outputs from it.
Tensors stay in the [B, T, H, D] layout (no transposes); fp32 inputs use IEEE fp32 dot products (TF32
would miss the fp32 tolerances), bf16/fp16 ones the tensor cores with fp32 accumulation. On a CPU these
run only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import device_guarded, launch_fitting, row_offset
from .torch import flow_weights


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _chunk_ptrs(ptr, s, t, cols, row_stride):
    """Addresses of rows s + t (t: a tile of in-chunk positions) and columns ``cols``: the chunk start's
    offset s * row_stride in int64 (it passes 2^31 once T * H * D does), the in-chunk tile in int32."""
    return ptr + row_offset(s, row_stride) + (t[:, None] * row_stride + cols[None, :])


@triton.jit
def _load_rows(ptr, s, t, cols, T, n_cols, row_stride):
    mask = ((s + t)[:, None] < T) & (cols[None, :] < n_cols)
    return tl.load(_chunk_ptrs(ptr, s, t, cols, row_stride), mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, x, s, t, cols, T, n_cols, row_stride):
    mask = ((s + t)[:, None] < T) & (cols[None, :] < n_cols)
    tl.store(_chunk_ptrs(ptr, s, t, cols, row_stride), x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_kernel(
    q, k, v, o, T, H, D, M,
    BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    # int64 offsets: B T H D can pass 2^31 elements.
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    q += (i_b * T * H + i_h) * D
    k += (i_b * T * H + i_h) * D
    v += (i_b * T * H + i_h) * M
    o += (i_b * T * H + i_h) * M
    t = tl.arange(0, BT)
    cd = tl.arange(0, BD)
    cv = i_v * BV + tl.arange(0, BV)
    state = tl.zeros([BD, BV], dtype=tl.float32)
    if CAUSAL:
        lower = t[:, None] >= t[None, :]
        for s in range(0, T, BT):
            qc = _load_rows(q, s, t, cd, T, D, H * D)
            kc = _load_rows(k, s, t, cd, T, D, H * D)
            vc = _load_rows(v, s, t, cv, T, M, H * M)
            scores = tl.where(lower, _dot(qc, tl.trans(kc), IEEE), 0.0)
            oc = _dot(qc, state.to(qc.dtype), IEEE) + _dot(scores.to(vc.dtype), vc, IEEE)
            _store_rows(o, oc, s, t, cv, T, M, H * M)
            state += _dot(tl.trans(kc), vc, IEEE)
    else:
        for s in range(0, T, BT):
            kc = _load_rows(k, s, t, cd, T, D, H * D)
            vc = _load_rows(v, s, t, cv, T, M, H * M)
            state += _dot(tl.trans(kc), vc, IEEE)
        for s in range(0, T, BT):
            qc = _load_rows(q, s, t, cd, T, D, H * D)
            _store_rows(o, _dot(qc, state.to(qc.dtype), IEEE), s, t, cv, T, M, H * M)


@triton.jit
def _dq_kernel(
    k, v, do, dq, T, H, D, M,
    BT: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    # int64 offsets: B T H D can pass 2^31 elements.
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    k += (i_b * T * H + i_h) * D
    dq += (i_b * T * H + i_h) * D
    v += (i_b * T * H + i_h) * M
    do += (i_b * T * H + i_h) * M
    t = tl.arange(0, BT)
    ck = i_k * BK + tl.arange(0, BK)
    cm = tl.arange(0, BM)
    state = tl.zeros([BK, BM], dtype=tl.float32)  # rows i_k of S = sum k^T v
    if CAUSAL:
        lower = t[:, None] >= t[None, :]
        for s in range(0, T, BT):
            kc = _load_rows(k, s, t, ck, T, D, H * D)
            vc = _load_rows(v, s, t, cm, T, M, H * M)
            doc = _load_rows(do, s, t, cm, T, M, H * M)
            dscores = tl.where(lower, _dot(doc, tl.trans(vc), IEEE), 0.0)
            dqc = _dot(dscores.to(kc.dtype), kc, IEEE) + _dot(doc, tl.trans(state).to(doc.dtype), IEEE)
            _store_rows(dq, dqc, s, t, ck, T, D, H * D)
            state += _dot(tl.trans(kc), vc, IEEE)
    else:
        for s in range(0, T, BT):
            kc = _load_rows(k, s, t, ck, T, D, H * D)
            vc = _load_rows(v, s, t, cm, T, M, H * M)
            state += _dot(tl.trans(kc), vc, IEEE)
        for s in range(0, T, BT):
            doc = _load_rows(do, s, t, cm, T, M, H * M)
            _store_rows(dq, _dot(doc, tl.trans(state).to(doc.dtype), IEEE), s, t, ck, T, D, H * D)


@triton.jit
def _dk_kernel(
    q, v, do, dk, T, H, D, M,
    BT: tl.constexpr, BK: tl.constexpr, BM: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    # int64 offsets: B T H D can pass 2^31 elements.
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    q += (i_b * T * H + i_h) * D
    dk += (i_b * T * H + i_h) * D
    v += (i_b * T * H + i_h) * M
    do += (i_b * T * H + i_h) * M
    t = tl.arange(0, BT)
    ck = i_k * BK + tl.arange(0, BK)
    cm = tl.arange(0, BM)
    n_chunks = tl.cdiv(T, BT)
    grad_state = tl.zeros([BK, BM], dtype=tl.float32)  # rows i_k of G = sum q^T dO over later positions
    if CAUSAL:
        lower = t[:, None] >= t[None, :]
        for i in range(0, n_chunks):
            s = (n_chunks - 1 - i) * BT
            qc = _load_rows(q, s, t, ck, T, D, H * D)
            vc = _load_rows(v, s, t, cm, T, M, H * M)
            doc = _load_rows(do, s, t, cm, T, M, H * M)
            dscores = tl.where(lower, _dot(doc, tl.trans(vc), IEEE), 0.0)
            dkc = _dot(tl.trans(dscores).to(qc.dtype), qc, IEEE) + _dot(
                vc, tl.trans(grad_state).to(vc.dtype), IEEE
            )
            _store_rows(dk, dkc, s, t, ck, T, D, H * D)
            grad_state += _dot(tl.trans(qc), doc, IEEE)
    else:
        for s in range(0, T, BT):
            qc = _load_rows(q, s, t, ck, T, D, H * D)
            doc = _load_rows(do, s, t, cm, T, M, H * M)
            grad_state += _dot(tl.trans(qc), doc, IEEE)
        for s in range(0, T, BT):
            vc = _load_rows(v, s, t, cm, T, M, H * M)
            _store_rows(dk, _dot(vc, tl.trans(grad_state).to(vc.dtype), IEEE), s, t, ck, T, D, H * D)


@triton.jit
def _dv_kernel(
    q, k, do, dv, T, H, D, M,
    BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    # int64 offsets: B T H D can pass 2^31 elements.
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    q += (i_b * T * H + i_h) * D
    k += (i_b * T * H + i_h) * D
    do += (i_b * T * H + i_h) * M
    dv += (i_b * T * H + i_h) * M
    t = tl.arange(0, BT)
    cd = tl.arange(0, BD)
    cv = i_v * BV + tl.arange(0, BV)
    n_chunks = tl.cdiv(T, BT)
    grad_state = tl.zeros([BD, BV], dtype=tl.float32)  # columns i_v of G = sum q^T dO over later positions
    if CAUSAL:
        lower = t[:, None] >= t[None, :]
        for i in range(0, n_chunks):
            s = (n_chunks - 1 - i) * BT
            qc = _load_rows(q, s, t, cd, T, D, H * D)
            kc = _load_rows(k, s, t, cd, T, D, H * D)
            doc = _load_rows(do, s, t, cv, T, M, H * M)
            scores = tl.where(lower, _dot(qc, tl.trans(kc), IEEE), 0.0)
            dvc = _dot(tl.trans(scores).to(doc.dtype), doc, IEEE) + _dot(kc, grad_state.to(kc.dtype), IEEE)
            _store_rows(dv, dvc, s, t, cv, T, M, H * M)
            grad_state += _dot(tl.trans(qc), doc, IEEE)
    else:
        for s in range(0, T, BT):
            qc = _load_rows(q, s, t, cd, T, D, H * D)
            doc = _load_rows(do, s, t, cv, T, M, H * M)
            grad_state += _dot(tl.trans(qc), doc, IEEE)
        for s in range(0, T, BT):
            kc = _load_rows(k, s, t, cd, T, D, H * D)
            _store_rows(dv, _dot(kc, grad_state.to(kc.dtype), IEEE), s, t, cv, T, M, H * M)


def _block(n: int, cap: int | None = None) -> int:
    # tl.dot needs every tile dimension >= 16.
    b = max(16, triton.next_power_of_2(n))
    return b if cap is None else min(b, cap)


def _candidates(full: int, tile: int, full_name: str, tile_name: str, ieee: bool) -> list[dict]:
    """Launch settings, fastest first: chunk BT, pipelining depth and the width of the tiled dimension shrink
    until the kernel fits the GPU's shared memory (``launch_fitting`` compiles them in order). ``full`` is
    the dimension a program holds whole (the state's rows), ``tile`` the one it tiles across programs.

    Every program keeps a [full, tile] fp32 state in registers: 8 warps once it reaches 128 x 64. fp32 inputs
    take IEEE dot products, which run on the FMA units with their operands in registers: at BT = 64 every
    fp32 kernel spilled (15-50 KB per thread on sm_90, the compile check's report), so fp32 starts at BT = 16."""
    out = []
    plan = ((64, 3, tile), (64, 2, tile), (32, 2, tile), (32, 1, min(tile, 32)), (16, 1, 16))
    if ieee:
        plan = ((16, 2, min(tile, 32)), (16, 1, min(tile, 32)), (16, 1, 16))
    for bt, stages, width in plan:
        warps = 8 if full * width >= 128 * 64 else 4
        cand = {"BT": bt, full_name: full, tile_name: width, "num_warps": warps, "num_stages": stages}
        if cand not in out:
            out.append(cand)
    return out


def _launch(kernel, args, programs: int, cands, tile_name: str, cols: int, key, device, meta):
    """One launch over (``cols`` in tiles of ``tile_name``, ``programs`` = B * H) with the first candidate
    that fits the GPU (``launch_fitting``)."""

    def grid(settings):
        return (triton.cdiv(cols, settings[tile_name]), programs)

    return launch_fitting(kernel, grid, args, [{**c, **meta} for c in cands], key, device)


class LinearAttention(torch.autograd.Function):
    """o_i = q_i sum_{j<=i} k_j^T v_j (causal) or over all j; q, k [B, T, H, D], v [B, T, H, M], one dtype."""

    @staticmethod
    @device_guarded
    def forward(ctx, q, k, v, causal: bool):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, t, h, d = q.shape
        m = v.shape[-1]
        o = torch.empty_like(v)
        meta = dict(CAUSAL=causal, IEEE=q.dtype == torch.float32)
        key = (q.dtype, d, m, causal)
        cands = _candidates(_block(d), _block(m, 64), "BD", "BV", meta["IEEE"])
        _launch(_fwd_kernel, (q, k, v, o, t, h, d, m), b * h, cands, "BV", m, key, q.device, meta)
        ctx.save_for_backward(q, k, v)
        ctx.causal = causal
        return o

    @staticmethod
    @device_guarded
    def backward(ctx, do):
        q, k, v = ctx.saved_tensors
        do = do.contiguous().to(v.dtype)
        b, t, h, d = q.shape
        m = v.shape[-1]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        meta = dict(CAUSAL=ctx.causal, IEEE=q.dtype == torch.float32)
        key = (q.dtype, d, m, ctx.causal)
        by_k = _candidates(_block(m), _block(d, 64), "BM", "BK", meta["IEEE"])
        by_v = _candidates(_block(d), _block(m, 64), "BD", "BV", meta["IEEE"])
        _launch(_dq_kernel, (k, v, do, dq, t, h, d, m), b * h, by_k, "BK", d, key, q.device, meta)
        _launch(_dk_kernel, (q, v, do, dk, t, h, d, m), b * h, by_k, "BK", d, key, q.device, meta)
        _launch(_dv_kernel, (q, k, do, dv, t, h, d, m), b * h, by_v, "BV", m, key, q.device, meta)
        return dq, dk, dv, None


def linear_attention(q, k, v, causal: bool = True):
    """q, k [B, T, H, D], v [B, T, H, M] (one dtype) -> o [B, T, H, M] through the Triton kernels."""
    return LinearAttention.apply(q, k, v, causal)


def causal_linear_attention(q, k, v):
    return LinearAttention.apply(q, k, v, True)


def flow_attention(q, k, v, causal=True):
    out_dtype = q.dtype
    # The normalisers in fp32: prefix sums over long sequences would drift in bf16.
    q_scaled, v_scaled, _ = flow_weights(q.float(), k.float(), v.float(), causal)
    # The kernels read the input dtype (tensor cores for bf16/fp16) and accumulate in fp32.
    o = linear_attention(q_scaled.to(out_dtype), k, v_scaled.to(out_dtype), causal)
    return o.to(out_dtype)
