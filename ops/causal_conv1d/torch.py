"""Causal depthwise convolution as W shifted multiply-adds over channel-last x.

For the short widths used in mixers (2 to 8) this avoids the transposes a conv1d needs on [B, T, D]
tensors and stays a few elementwise passes; it is the CPU default.

Packed documents (``cu_seqlens``, one pass): the row is convolved as one sequence from a zero state, which is right
at every position but a document's first W-1, whose taps reach into the previous document. Those (at most N (W-1)
outputs) are computed again from the document's own sequence, its initial state (zeros without one) in front of
its first tokens, and written over the wrong ones. A document's final state is its last W-1 rows, reaching into its
initial state when it is shorter than W-1. The arithmetic per output is that of a separate run; the extra work is
O(N W D), and no full-size buffer is made beyond the unpacked path's (on a CPU each fresh one costs page faults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(
    x, weight, bias=None, activation=None, initial_state=None, output_final_state=False, cu_seqlens=None
):
    if cu_seqlens is not None:
        return _packed(x, weight, bias, activation, initial_state, output_final_state, cu_seqlens)
    b, t, d = x.shape
    width = weight.shape[1]
    if initial_state is None:
        head = x.new_zeros(b, width - 1, d)
    else:
        head = initial_state.transpose(1, 2).to(x.dtype)
    xp = torch.cat([head, x], dim=1)  # [B, W-1+T, D]
    y = _finish(_taps(xp, weight, t), bias, activation, x.dtype)
    final = None
    if output_final_state:
        # The state is kept in fp32 (fp64 for fp64 inputs), whatever the input precision.
        final = xp[:, t:].transpose(1, 2).to(torch.promote_types(x.dtype, torch.float32))
    return y, final


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _taps(xp, weight, t):
    """sum_k weight[:, k] xp[t + k] for the T outputs of xp [B, W-1+T, D], in the accumulation dtype."""
    width = weight.shape[1]
    acc_dtype = _acc_dtype(xp.dtype)
    # One contiguous row of D weights per tap: weight[:, k] is a strided view (stride W), and a product that
    # broadcasts a strided operand over [B, T, D] runs ~8x slower on a CPU (0.9 ms against 0.12 ms at
    # 64 x 64 x 128), forward and backward.
    w = weight.to(acc_dtype).t().contiguous()  # [W, D]
    y = xp[:, 0:t].to(acc_dtype) * w[0]
    for k in range(1, width):
        y = torch.addcmul(y, xp[:, k : k + t].to(acc_dtype), w[k])
    return y


def _finish(y, bias, activation, dtype):
    """act(y + bias) computed in y's (accumulation) dtype, returned in ``dtype``."""
    if bias is not None:
        y = y + bias.to(y.dtype)
    if activation == "silu":
        y = F.silu(y)
    return y.to(dtype)


def _packed(x, weight, bias, activation, initial_state, output_final_state, cu_seqlens):
    """One pass over N documents packed in x [1, T, D] (the dispatcher has checked cu_seqlens and that
    initial_state has N rows): see the module docstring."""
    _, t, d = x.shape
    width = weight.shape[1]
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    heads = None if initial_state is None else initial_state.transpose(1, 2).to(x.dtype)  # [N, W-1, D]
    # 1. The whole row as one sequence from a zero state: right everywhere but the first W-1 outputs of each
    # document, whose taps reach into the previous document.
    xp = torch.cat([x.new_zeros(1, width - 1, d), x], dim=1)
    y = _taps(xp, weight, t)
    # 2. Those outputs again from each document's own W-1 rows in front ([N, 2W-2, D], the state then the
    # first tokens), written over the wrong ones (at most W-1 per document; fewer in a shorter one). The final
    # states, each document's last W-1 rows (reaching into its state when it is shorter), come in the same gather:
    # one gather's backward makes one full-size buffer.
    n = len(lengths)
    p = torch.arange(width - 1, device=x.device)
    at = torch.arange(-(width - 1), width - 1, device=x.device).expand(n, -1)  # [N, 2W-2]
    if output_final_state:
        at = torch.cat([at, lengths[:, None] - (width - 1) + p[None]], dim=1)  # + [N, W-1]
    rows = _document_rows(x, heads, starts, lengths, at)
    y_lead = _taps(rows[:, : 2 * (width - 1)], weight, width - 1)
    inside = p[None] < lengths[:, None]  # [N, W-1]
    fix = (starts[:, None] + p[None])[inside]
    y.index_put_((torch.zeros_like(fix), fix), y_lead[inside])
    y = _finish(y, bias, activation, x.dtype)
    final = None
    if output_final_state:
        final = rows[:, 2 * (width - 1) :].transpose(1, 2).to(torch.promote_types(x.dtype, torch.float32))
    return y, final


def _document_rows(x, heads, starts, lengths, at):
    """Rows of the documents' own sequences [state; tokens]: ``at`` [N, R] indexes document n's from -(W-1) (the
    first state row) on; [N, R, D]. A row past a document's end reads zeros (only discarded outputs take it)."""
    inside = (at >= 0) & (at < lengths[:, None])
    tokens = x[0, (starts[:, None] + at).clamp(0, x.shape[1] - 1)]  # [N, R, D]
    rows = torch.where(inside[..., None], tokens, 0.0)
    if heads is not None:
        from_state = at < 0
        state = heads[
            torch.arange(heads.shape[0], device=x.device)[:, None],
            (at + heads.shape[1]).clamp(min=0, max=heads.shape[1] - 1),
        ]
        rows = torch.where(from_state[..., None], state, rows)
    return rows
