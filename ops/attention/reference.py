"""Softmax attention, the definition: scores, mask, softmax, weighted sum, computed in fp64.

    o_i = sum_j softmax_j(scale * q_i . k_j + mask_ij) v_j

Shapes: q [B, Tq, H, D]; k [B, Tk, Hk, D]; v [B, Tk, Hk, Dv]; o [B, Tq, H, Dv]. Query head h reads key/value
head h // (H // Hk) (GQA; Hk = 1 is MQA). Queries are the *last* Tq of the Tk positions (bottom-right
alignment, as in decoding with a KV cache): query i sits at position p_i = Tk - Tq + i.
Causal: key j is visible when j <= p_i. A window W keeps the W most recent positions, p_i - W < j (causal),
or |p_i - j| < W (non-causal).
"""

from __future__ import annotations

import torch


def attention_mask(tq: int, tk: int, causal: bool, window: int | None, device=None) -> torch.Tensor | None:
    """Boolean [Tq, Tk] mask, True where query i may attend key j; None when every pair is allowed."""
    if not causal and window is None:
        return None
    pos_q = torch.arange(tk - tq, tk, device=device)[:, None]
    pos_k = torch.arange(tk, device=device)[None, :]
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        allowed &= pos_k <= pos_q
        if window is not None:
            allowed &= pos_k > pos_q - window
    elif window is not None:
        allowed &= (pos_k - pos_q).abs() < window
    return allowed


def attention(q, k, v, causal=True, window=None, scale=None):
    b, tq, h, d = q.shape
    tk, hk = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    group = h // hk
    # fp64 whatever the inputs, o returned in q's dtype: in fp32 the scores' rounding (|score| * 6e-8) moves
    # large logits (|score| ~ 1e2) by 2e-5 relative, and the softmax backward, dp - sum_j p_j dp_j, cancels
    # when the values share a large offset (1e-4 relative in dk); the kernels under test keep ~1e-6.
    acc = torch.float64
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    kf = kf.repeat_interleave(group, dim=2)
    vf = vf.repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    mask = attention_mask(tq, tk, causal, window, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = torch.einsum("bhij,bjhd->bihd", probs, vf)
    return o.to(q.dtype)
