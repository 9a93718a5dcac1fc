"""Combiner attention in blocks: O(T s + T^2 / s) logits and memory (O(T^1.5) at s = sqrt(T)), never T x T.

Positions are padded to n = ceil(T / s) segments of s (the padding is masked out of every pool, softmax and
region) and viewed as [B, n, s, H, D]. Per head, with l = scale q.k:

    direct   [B, n, H, s, s]    l within each segment (causal: j <= i), the exact part
    fixed:   kbar, qbar [B, n, H, D] = max over each segment's real tokens; span value
             vbar_r = softmax_{j in r}(scale qbar_r . k_j) v_j;  region logits [B, n, H, s, n] = scale q_i.kbar_r
    axial:   row attention [B, n, H, s, s] over each complete row -> vbar_(r, c) = its output at (r, c);
             region logits [B, n, H, s, n] = scale q_(m, c) . k_(r, c) (same column, other rows; a short last
             row is read at column min(c, its length - 1))
    o = softmax([direct ; regions]) . [v ; vbar]       (one joint softmax per query)

Causal: a segment sees only strictly earlier segments' regions, never its own summary (its pooled query and key
mix its later tokens). Decoding is ``ops.combiner_step`` (:mod:`.step`), from the same summaries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import default_segment

NEG = float("-inf")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half precision inputs: logits, softmax and sums in fp32 (as attention kernels accumulate).
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _pad_view(x: torch.Tensor, n: int, s: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, n, s, H, D], zero-padded after position T."""
    b, t = x.shape[:2]
    if n * s != t:
        x = F.pad(x, (0, 0, 0, 0, 0, n * s - t))
    return x.view(b, n, s, *x.shape[2:])


def summaries(qs, ks, vs, valid, variant: str, scale: float):
    """The region keys and values of segments [B, n, s, ...] whose real tokens are ``valid`` [n, s]:
    fixed: kbar, vbar [B, n, H, D | E]; axial: k and the complete row attention outputs [B, n, s, H, D | E]."""
    key_ok = valid[:, None, None, :]  # [n, 1, 1, s] over (H, query, key)
    if variant == "fixed":
        pad = ~valid[None, :, :, None, None]
        kbar = ks.masked_fill(pad, NEG).amax(2)  # [B, n, H, D]: every segment holds a real token
        qbar = qs.masked_fill(pad, NEG).amax(2)
        logits = torch.einsum("bnhd,bnkhd->bnhk", qbar, ks) * scale
        w = torch.softmax(logits.masked_fill(~valid[:, None, :], NEG), dim=-1)
        return kbar, torch.einsum("bnhk,bnkhe->bnhe", w, vs)
    logits = torch.einsum("bnqhd,bnkhd->bnhqk", qs, ks) * scale
    w = torch.softmax(logits.masked_fill(~key_ok, NEG), dim=-1)
    kbar, vbar = ks, torch.einsum("bnhqk,bnkhe->bnqhe", w, vs)
    tail = int(valid[-1].sum())
    if tail < valid.shape[1]:
        # A short last row has no token at columns >= tail: those columns read its last real one instead, so
        # that (bidirectional) every query still reaches the row. Causal queries never see the last row.
        src = torch.arange(valid.shape[1], device=ks.device).clamp(max=tail - 1)
        kbar = torch.cat([kbar[:, :-1], kbar[:, -1:, src]], 1)
        vbar = torch.cat([vbar[:, :-1], vbar[:, -1:, src]], 1)
    return kbar, vbar


def blocks(
    q,
    k,
    v,
    segment: int,
    variant: str,
    causal: bool,
    scale: float,
):
    """Combiner over q, k [B, T, H, D], v [B, T, H, E]: o [B, T, H, E] in the inputs' (compute) dtype."""
    b, t, h, d = q.shape
    s = segment
    n = (t + s - 1) // s
    dev = q.device
    valid = (torch.arange(n * s, device=dev) < t).view(n, s)
    qs, ks, vs = (_pad_view(x, n, s) for x in (q, k, v))
    idx = torch.arange(s, device=dev)
    seg = torch.arange(n, device=dev)

    # The direct part: attention inside each segment (causal: j <= i), padding never a key.
    direct_ok = valid[:, None, None, :]
    if causal:
        direct_ok = direct_ok & (idx[None, :] <= idx[:, None])[None, None]
    l_direct = (torch.einsum("bnqhd,bnkhd->bnhqk", qs, ks) * scale).masked_fill(~direct_ok, NEG)

    kbar, vbar = summaries(qs, ks, vs, valid, variant, scale)
    sees = (
        (seg[None, :] < seg[:, None]) if causal else (seg[None, :] != seg[:, None])
    )  # [n query seg, n region]
    if variant == "fixed":
        l_region = torch.einsum("bnqhd,brhd->bnhqr", qs, kbar) * scale
        region_ok = sees[:, None, None, :]  # [n, 1, 1, n]
    else:
        # Same column c, other rows r: the key k_(r, c) and the row-r attention output at (r, c).
        l_region = torch.einsum("bnqhd,brqhd->bnhqr", qs, kbar) * scale
        region_ok = sees[:, None, None, :]
    l_region = l_region.masked_fill(~region_ok, NEG)
    p = torch.softmax(torch.cat([l_direct, l_region], -1), dim=-1)
    o = torch.einsum("bnhqk,bnkhe->bnqhe", p[..., :s], vs)
    p_region = p[..., s : s + n]
    if variant == "fixed":
        o = o + torch.einsum("bnhqr,brhe->bnqhe", p_region, vbar)
    else:
        o = o + torch.einsum("bnhqr,brqhe->bnqhe", p_region, vbar)
    return o.reshape(b, n * s, h, -1)[:, :t]


def combiner(q, k, v, segment=None, variant="fixed", causal=True, scale=None):
    s = default_segment(q.shape[1]) if segment is None else segment
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = _compute_dtype(q)
    o = blocks(q.to(acc), k.to(acc), v.to(acc), s, variant, causal, scale)
    return o.to(q.dtype)


def cost(t: int, segment: int, variant: str = "fixed") -> dict:
    """The logits ``blocks`` computes per (batch, head) and the largest intermediate it allocates, in elements
    (from the shapes above): direct n s^2, regions n s n, summaries n s (fixed) or n s^2 (axial)."""
    s = segment
    n = (t + s - 1) // s
    direct, region = n * s * s, n * s * n
    pooled = n * s if variant == "fixed" else n * s * s
    return {"logits": direct + region + pooled, "largest": max(direct, region, pooled)}
