"""Combiner decoding, one token at a time: the state, its checks, and the two backends of ``combiner_step``.

State (a dict, batch first; every row at its own position ``pos``; s = the segment, the length of "k"):

    "q"   fixed: [B, 1, H, D] the running max of the current segment's queries; axial: [B, s, H, D] its queries
    "k", "v"  [B, s, H, D | E]  the current segment's keys and values (zeros after its pos mod s tokens)
    "sk", "sv"  one summary per finished segment: fixed [B, n, H, D | E] (kbar_r, vbar_r); axial
          [B, n, s, H, D | E] (row r's keys and its complete row-attention outputs, by column); n = the most
          finished segments of any row, zeros after a row's own pos // s
    "pos" [B] int64  tokens seen

A token at position p = d s + c (row d, column c) attends, in one softmax, to the current segment's keys 0..c
(its own included) and to one region per finished segment r < d: fixed, key kbar_r and value vbar_r; axial,
key k_(r, c) and value the row-r attention output at (r, c): exactly ``ops.combiner``'s causal row p. When its
token completes a segment (c = s - 1) the segment's summary is appended and the current segment restarts.

Why axial's state is O(T) (fixed's is O(s + T / s)): a later query at column c reads column c of every
finished row, a key and a row-attention output that depend on that row's full query/key/value set, and the
column c' of the next query is not known in advance, so all s columns of every row are kept (2 s n vectors,
like a KV cache). An O(s + T / s) axial state would need a summary per row (the reference code's other
``row_summary`` options), which this variant (``row_summary = none``) does not use.
"""

from __future__ import annotations

import torch

from .._checks import check_same_device, check_tensor

STATE_KEYS = ("q", "k", "v", "sk", "sv", "pos")
NEG = float("-inf")


def init_state(batch, n_heads, head_dim, value_dim, segment, variant="fixed", device=None, dtype=None):
    """The state before any token: zeros, no finished segment."""
    dtype = dtype or torch.float32
    s, h = segment, n_heads

    def z(*shape):
        return torch.zeros(*shape, device=device, dtype=dtype)

    per = (s,) if variant == "axial" else ()
    return {
        "q": z(batch, 1 if variant == "fixed" else s, h, head_dim),
        "k": z(batch, s, h, head_dim),
        "v": z(batch, s, h, value_dim),
        "sk": z(batch, 0, *per, h, head_dim),
        "sv": z(batch, 0, *per, h, value_dim),
        "pos": torch.zeros(batch, dtype=torch.long, device=device),
    }


def check_state(fn: str, state, q, v, variant: str) -> None:
    """``state`` is a combiner decoding state for tokens q [B, H, D], v [B, H, E] (shapes named by key)."""
    if not isinstance(state, dict):
        raise TypeError(f"{fn}: state must be a dict of tensors, got {type(state).__name__}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"{fn}: state lacks {missing}; build it with init_state() or the layer's prefill")
    for key in STATE_KEYS:
        x = state[key]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{fn}: state[{key!r}] must be a torch.Tensor, got {type(x).__name__}")
        check_same_device(fn, q=q, **{f"state[{key!r}]": x})
    if state["pos"].dtype != torch.long:
        raise TypeError(f"{fn}: state['pos'] must be int64, got {state['pos'].dtype}")
    b, h, d = q.shape
    e = v.shape[-1]
    s = state["k"].shape[1] if state["k"].dim() == 4 else 0
    if s < 1:
        raise ValueError(
            f"{fn}: state['k'] must have shape [B, s, H, D] with s >= 1, got {tuple(state['k'].shape)}"
        )
    n = state["sk"].shape[1] if state["sk"].dim() > 1 else 0
    per = (s,) if variant == "axial" else ()
    expected = {
        "q": (b, 1 if variant == "fixed" else s, h, d),
        "k": (b, s, h, d),
        "v": (b, s, h, e),
        "sk": (b, n, *per, h, d),
        "sv": (b, n, *per, h, e),
        "pos": (b,),
    }
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"{fn}: state[{key!r}] must have shape {shape} (variant {variant!r}), got "
                f"{tuple(state[key].shape)}"
            )
        if key != "pos":
            check_tensor(fn, f"state[{key!r}]", state[key], len(shape))


def _grow(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the summaries' dimension 1 to n."""
    if x.shape[1] >= n:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:])], 1)


def state_from_prefix(q, k, v, segment: int, variant: str = "fixed", scale=None, n_min: int = 0, dtype=None):
    """The state ``combiner_step`` reaches from the empty state after q, k [B, T, H, D], v [B, T, H, E] (every
    row T tokens), in one pass: the T // s finished segments' summaries (as :func:`.torch.summaries` makes them
    for the forward pass) and the T mod s tokens of the current one. ``n_min``: at least this many summary slots
    (zeros), as a given state's own would keep; ``dtype``: the state's (default q's)."""
    from .torch import summaries

    b, t, h, d = q.shape
    s = segment
    n, c = t // s, t % s
    dt = dtype or q.dtype
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scale = d**-0.5 if scale is None else scale
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    full = n * s

    def rows(x):  # [B, n, s, H, *]
        return x[:, :full].reshape(b, n, s, *x.shape[2:])

    if n:
        valid = torch.ones(n, s, dtype=torch.bool, device=q.device)
        sk, sv = summaries(rows(q), rows(k), rows(v), valid, variant, scale)
    else:
        per = (s,) if variant == "axial" else ()
        sk, sv = k.new_zeros(b, 0, *per, h, d), v.new_zeros(b, 0, *per, h, v.shape[-1])
    sk, sv = _grow(sk, n_min), _grow(sv, n_min)

    def current(x, slots):  # the current segment's c tokens, zeros after
        return torch.cat([x[:, full:], x.new_zeros(b, slots - c, *x.shape[2:])], 1)

    if variant == "fixed":
        cq = q[:, full:].amax(1, keepdim=True) if c else q.new_zeros(b, 1, h, d)
    else:
        cq = current(q, s)
    new = {"q": cq, "k": current(k, s), "v": current(v, s), "sk": sk, "sv": sv}
    new = {key: x.to(dt) for key, x in new.items()}
    new["pos"] = torch.full((b,), t, dtype=torch.long, device=q.device)
    return new


def step_reference(q, k, v, state, variant="fixed", scale=None):
    """The definition: each row alone, token by token, in fp64 (the ground truth)."""
    out_dtype = q.dtype
    s = state["k"].shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    f = torch.float64
    outs, rows = [], []
    for b in range(q.shape[0]):
        p = int(state["pos"][b])
        c, d = p % s, p // s
        qt, kt, vt = q[b].to(f), k[b].to(f), v[b].to(f)  # [H, D | E]
        keys = torch.cat([state["k"][b, :c].to(f), kt[None]])  # [c + 1, H, D]
        vals = torch.cat([state["v"][b, :c].to(f), vt[None]])
        if variant == "fixed":
            rk, rv = state["sk"][b, :d].to(f), state["sv"][b, :d].to(f)  # [d, H, D | E]
        else:
            rk, rv = state["sk"][b, :d, c].to(f), state["sv"][b, :d, c].to(f)  # column c of each row
        logits = torch.einsum("hd,jhd->hj", qt, torch.cat([keys, rk])) * scale
        w = torch.softmax(logits, -1)
        outs.append(torch.einsum("hj,jhe->he", w, torch.cat([vals, rv])))
        # The new state of row b.
        if variant == "fixed":
            nq = qt[None] if c == 0 else torch.maximum(state["q"][b].to(f), qt[None])
        else:
            nq = torch.cat([state["q"][b, :c].to(f), qt[None]])
        sk, sv = state["sk"][b, :d].to(f), state["sv"][b, :d].to(f)
        if c + 1 == s:  # the segment is complete: its summary, then an empty current segment
            if variant == "fixed":
                kbar = keys.amax(0)  # [H, D]
                wq = torch.softmax(torch.einsum("hd,jhd->hj", nq[0], keys) * scale, -1)
                vbar = torch.einsum("hj,jhe->he", wq, vals)
            else:  # complete (non-causal) row attention, one output per column
                wq = torch.softmax(torch.einsum("ihd,jhd->hij", nq, keys) * scale, -1)
                kbar, vbar = keys, torch.einsum("hij,jhe->ihe", wq, vals)
            sk, sv = torch.cat([sk, kbar[None]]), torch.cat([sv, vbar[None]])
            nq, keys, vals = nq[:0], keys[:0], vals[:0]
        nq_rows = 1 if variant == "fixed" else s
        rows.append(
            {
                "q": torch.cat([nq, nq.new_zeros(nq_rows - nq.shape[0], *nq.shape[1:])]),
                "k": torch.cat([keys, keys.new_zeros(s - keys.shape[0], *keys.shape[1:])]),
                "v": torch.cat([vals, vals.new_zeros(s - vals.shape[0], *vals.shape[1:])]),
                "sk": sk,
                "sv": sv,
            }
        )
    n = max([r["sk"].shape[0] for r in rows] + [state["sk"].shape[1]])
    dt = state["k"].dtype
    new = {key: torch.stack([r[key] for r in rows]).to(dt) for key in ("q", "k", "v")}
    for key in ("sk", "sv"):
        new[key] = torch.stack([_grow(r[key][None], n)[0] for r in rows]).to(dt)
    new["pos"] = state["pos"] + 1
    return torch.stack(outs).to(out_dtype), new


def step_torch(q, k, v, state, variant="fixed", scale=None):
    """Every row at once (rows at different positions by masks), in the compute dtype (fp32 for half inputs)."""
    out_dtype, dt = q.dtype, state["k"].dtype
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    s = state["k"].shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pos = state["pos"]
    c, d = pos % s, pos // s  # [B]
    idx = torch.arange(s, device=q.device)
    here = (idx[None, :] == c[:, None])[:, :, None, None]  # [B, s, 1, 1]: the new token's slot
    qt, kt, vt = q.to(acc), k.to(acc), v.to(acc)
    keys = torch.where(here, kt[:, None], state["k"].to(acc))  # [B, s, H, D]
    vals = torch.where(here, vt[:, None], state["v"].to(acc))
    n = state["sk"].shape[1]
    sk, sv = state["sk"].to(acc), state["sv"].to(acc)
    if variant == "axial":  # column c of each finished row
        col = c.view(-1, 1, 1, 1, 1)
        rk = sk.gather(2, col.expand(-1, n, 1, *sk.shape[3:])).squeeze(2)
        rv = sv.gather(2, col.expand(-1, n, 1, *sv.shape[3:])).squeeze(2)
    else:
        rk, rv = sk, sv
    # Scaled before masking: -inf times a scale of 0 would be nan.
    l_cur = torch.einsum("bhd,bjhd->bhj", qt, keys) * scale
    l_cur = l_cur.masked_fill(~(idx[None, :] <= c[:, None])[:, None], NEG)
    seen = torch.arange(n, device=q.device)[None, :] < d[:, None]  # [B, n]
    l_reg = (torch.einsum("bhd,brhd->bhr", qt, rk) * scale).masked_fill(~seen[:, None], NEG)
    w = torch.softmax(torch.cat([l_cur, l_reg], -1), -1)
    o = torch.einsum("bhj,bjhe->bhe", w[..., :s], vals) + torch.einsum("bhr,brhe->bhe", w[..., s:], rv)

    # The new current segment's queries.
    first = (c == 0).view(-1, 1, 1, 1)
    if variant == "fixed":
        nq = torch.where(first, qt[:, None], torch.maximum(state["q"].to(acc), qt[:, None]))
    else:
        nq = torch.where(here, qt[:, None], state["q"].to(acc))
    done = c + 1 == s  # [B]: rows whose segment this token completes
    if bool(done.any()):
        if variant == "fixed":
            kbar = keys.amax(1)  # [B, H, D]: a complete segment has s real keys
            wq = torch.softmax(torch.einsum("bhd,bjhd->bhj", nq[:, 0], keys) * scale, -1)
            vbar = torch.einsum("bhj,bjhe->bhe", wq, vals)
        else:
            wq = torch.softmax(torch.einsum("bihd,bjhd->bhij", nq, keys) * scale, -1)
            kbar, vbar = keys, torch.einsum("bhij,bjhe->bihe", wq, vals)
        n_new = max(n, int((d + done.long()).max()))
        sk, sv = _grow(sk, n_new), _grow(sv, n_new)
        # Row b's summary goes to slot d_b, only where its segment completes.
        slot = (torch.arange(n_new, device=q.device)[None, :] == d[:, None]) & done[:, None]  # [B, n_new]
        slot = slot.view(*slot.shape, *([1] * (sk.dim() - 2)))
        sk = torch.where(slot, kbar[:, None], sk)
        sv = torch.where(slot, vbar[:, None], sv)
        keep = ~done.view(-1, 1, 1, 1)
        keys, vals, nq = keys * keep, vals * keep, nq * keep
    new = {
        "q": nq.to(dt),
        "k": keys.to(dt),
        "v": vals.to(dt),
        "sk": sk.to(dt),
        "sv": sv.to(dt),
        "pos": pos + 1,
    }
    return o.to(out_dtype), new
