"""Attention through PyTorch's scaled_dot_product_attention (fused kernels on CPU and GPU).

SDPA aligns a causal mask top-left when Tq != Tk, while seqzoo aligns queries to the last positions
(decoding with a cache), so an explicit mask is built for every case but the plain square causal one.

Packed documents (``cu_seqlens``, self-attention: q, k and v packed alike): the documents are batched, not masked.
A block-diagonal [T, T] mask over the whole row would cost T^2 where the documents need sum L_n^2, and SDPA on a CPU
takes a masked call down a slower path than its causal one; one call per document instead pays SDPA's fixed cost N
times, which is most of the time for short documents. So documents of similar lengths share a call: sorted by
length, each joins the bucket of the longest one before it while the padding that costs (L_0^2 - L_n^2 per head
channel) stays under about one call's fixed cost (``PAD_BUDGET``), and a bucket runs as one batch
[n_b, L_0, H, D], each document padded at its end. With the plain causal mask no real query reaches a padding
key (they all come after it), so the call keeps SDPA's ``is_causal`` path; with a window or without causality a
[n_b, 1, L_0, L_0] mask also hides the padding keys from the real queries (padding queries keep their own pattern,
never an empty row). A bucket of one document is that document's slice, exactly a separate run. Outputs of
padding are dropped and the rows put back in packed order. Without autograd each document runs alone on its slice
of the row, its output written into place (``PAD_BUDGET_INFERENCE``): there a call costs little and a batch would
need its rows gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import attention_mask

# A document joins a bucket padded to L_0 while (L_0^2 - L^2) * H * D stays under this: about what one more SDPA
# call (forward and backward, with its autograd bookkeeping) costs in fixed overhead, measured on one CPU thread
# in query-key pairs times head channels (fp32, H = 4, D = 64: ~0.3 ms per call, ~0.25 us per 256 pair-channels).
PAD_BUDGET = 300_000
# Without autograd batching saves nothing on a CPU (a call costs ~0.05 ms, about what SDPA spends per batch entry
# anyway, and a batch needs its rows gathered, while a document alone reads its slice): 128 documents of 4..64
# tokens, H = 4, D = 64, one thread: 12-16 ms batched by PAD_BUDGET, 11-14 ms batching equal lengths only, 9-11 ms
# one call each. So then every document runs alone (a budget below 0 batches nothing).
PAD_BUDGET_INFERENCE = -1


def attention(q, k, v, causal=True, window=None, scale=None, cu_seqlens=None):
    if cu_seqlens is not None:
        return _packed(q, k, v, causal, window, scale, cu_seqlens)
    tq, tk = q.shape[1], k.shape[1]
    # [B, T, H, D] -> [B, H, T, D], the layout SDPA expects.
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[2] != k.shape[2]
    if causal and window is None and tq == tk:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = attention_mask(tq, tk, causal, window, device=q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)


def check_packed_self_attention(q, k) -> None:
    """With cu_seqlens the documents attend to themselves: k (and v) must be packed as q, same T."""
    if k.shape[1] != q.shape[1]:
        raise ValueError(
            "attention: with cu_seqlens, q, k and v hold the same packed documents (self-attention), so k must "
            f"have q's length T = {q.shape[1]}, got k of shape {tuple(k.shape)}"
        )


def length_buckets(lengths: list[int], pair_cost: int, budget: int = PAD_BUDGET) -> list[list[int]]:
    """The documents (indices into ``lengths``) grouped for batched calls: longest first, each joining the current
    bucket while padding it to the bucket's longest costs (L_0^2 - L^2) * pair_cost <= budget."""
    buckets: list[list[int]] = []
    for n in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if buckets and (lengths[buckets[-1][0]] ** 2 - lengths[n] ** 2) * pair_cost <= budget:
            buckets[-1].append(n)
        else:
            buckets.append([n])
    return buckets


def _packed(q, k, v, causal, window, scale, cu_seqlens):
    """N documents packed in q, k, v [1, T, ...] (see the module docstring); cu_seqlens already checked."""
    check_packed_self_attention(q, k)
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if len(bounds) == 2:
        return attention(q, k, v, causal, window, scale)
    t, device = q.shape[1], q.device
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    training = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    budget = PAD_BUDGET if training else PAD_BUDGET_INFERENCE
    buckets = length_buckets(lengths, q.shape[2] * q.shape[3], budget)

    # A bucket's rows [n_b, L_0] of the row. A padding row repeats its document's first row: no real query sees it
    # (the causal mask, or the mask below), and what it computes is dropped, so its values only need to be finite,
    # and the gradients it sends back are exact zeros.
    def layout(bucket):
        longest = lengths[bucket[0]]
        begin = torch.tensor([starts[n] for n in bucket], device=device)[:, None]
        size = torch.tensor([lengths[n] for n in bucket], device=device)[:, None]
        offset = torch.arange(longest, device=device)[None]
        real = offset < size  # [n_b, L_0]
        return len(bucket), longest, real, torch.where(real, begin + offset, begin)

    attend = lambda qb, kb, vb, real: _bucket(qb, kb, vb, real, causal, window, scale)
    if not training:
        # Without autograd a document alone reads its slice of the row (no copy) and every output is written into
        # place; only batched documents are gathered.
        out = q.new_empty(t, q.shape[2], v.shape[3])
        for bucket in buckets:
            if len(bucket) == 1:
                s, e = bounds[bucket[0]], bounds[bucket[0] + 1]
                out[s:e] = attention(q[:, s:e], k[:, s:e], v[:, s:e], causal, window, scale)[0]
            else:
                n_b, longest, real, rows = layout(bucket)
                flat = rows.reshape(-1)
                o = attend(
                    *(x[0].index_select(0, flat).view(n_b, longest, *x.shape[2:]) for x in (q, k, v)), real
                )
                out.index_copy_(0, rows[real], o[real])
        return out[None]
    layouts = [layout(bucket) for bucket in buckets]
    # With autograd every bucket's rows are gathered at once and the outputs read back at once: one index_select
    # each way, whose backward is one full-size buffer (a gather or a slice per bucket would make one per bucket).
    at = torch.cat([rows.reshape(-1) for *_, rows in layouts])
    gathered = [x[0].index_select(0, at) for x in (q, k, v)]
    splits = [n_b * longest for n_b, longest, *_ in layouts]
    pieces = []
    for (n_b, longest, real, _), qb, kb, vb in zip(layouts, *(x.split(splits) for x in gathered)):
        o = attend(*(x.view(n_b, longest, *x.shape[1:]) for x in (qb, kb, vb)), real)
        pieces.append(o.reshape(n_b * longest, *o.shape[2:]))
    # Each token's row among the gathered ones (the real rows of ``at``: each token once).
    real_rows = torch.cat([real.reshape(-1) for _, _, real, _ in layouts]).nonzero().reshape(-1)
    where = torch.empty(t, dtype=torch.long, device=device)
    where[at[real_rows]] = real_rows
    return torch.cat(pieces).index_select(0, where)[None]


def _bucket(q, k, v, real, causal, window, scale):
    """Attention of a bucket of n_b documents zero-padded to L_0 (q, k, v [n_b, L_0, H, D], ``real`` [n_b, L_0]
    True at real positions); o [n_b, L_0, H, Dv], its padding rows meaningless."""
    n_b, longest = real.shape
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [n_b, H, L_0, D], SDPA's layout
    gqa = q.shape[2] != k.shape[2]
    if causal and window is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = attention_mask(longest, longest, causal, window, device=q.device)
        if n_b > 1:
            if mask is None:
                mask = torch.ones(longest, longest, dtype=torch.bool, device=q.device)
            # Real queries see real keys only; a padding query keeps its pattern (never an empty row: no NaN).
            mask = (mask & (real[:, None, :] | ~real[:, :, None]))[:, None]  # [n_b, 1, L_0, L_0]
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)
