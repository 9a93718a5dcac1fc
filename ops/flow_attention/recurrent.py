"""Causal flow-attention with a constant-size decoding state: prefill a segment, then step token by token.

Every sum in causal flow-attention (see :mod:`.reference`) runs over the positions seen so far, so the
sums themselves are the state. Per sequence and head:

    k_sum   = sum_j k_j              [D]      q_sum  = sum_j q_j              [D]
    k_flow  = sum_j k_j n_j / O_j    [D]      q_flow = sum_j q_j n_j / I_j    [D]
    exp_sum = sum_j exp(Ô_j)         []       kv     = sum_j k_j^T (v_j c_j)  [D, M]
    count   = positions seen (n)     (per sequence)

A state is a dict of these, batch first: [B, H, D], [B, H], [B, H, D, M] and count [B] (long); the sums are
fp32 (fp64 for fp64 inputs). ``ops.flow_attention_prefill`` processes a whole segment (:func:`prefill`: the
normalisers by prefix sums, the linear attention by ``ops.gla_step`` from the state's kv, gla's torch or Triton
backend) and ``ops.flow_attention_step`` advances one token through the recurrence itself (:func:`step`):

    n = count + 1
    k_sum += k;  q_sum += q;  I = (q + eps) . (k_sum + eps);  O = (k + eps) . (q_sum + eps)
    k_flow += k n / O;  q_flow += q n / I
    Î = (q + eps) . (k_flow + eps) / n;  Ô = clamp((k + eps) . (q_flow + eps) / n, -1, 1)
    exp_sum += exp(Ô);  c = exp(Ô) / exp_sum * n;  kv += k^T (v c)
    o = sigmoid(Î) (q / I) kv

Shapes: prefill q, k [B, T, H, D], v [B, T, H, M] -> o [B, T, H, M]; step q, k [B, H, D], v [B, H, M] ->
o [B, H, M]. Outputs come back in the input dtype. The ops (``backend=``, validation) are defined in
:mod:`seqzoo.ops.flow_attention`; this module holds their backends.
"""

from __future__ import annotations

import torch

from .._checks import check_same_device, check_tensor
from .._dispatch import beyond_recurrent_max_t
from ..gla import gla_step
from .torch import EPS, SUM_KEYS, flow_weights

STATE_KEYS = (*SUM_KEYS, "kv", "count")


def init_state(batch_size: int, n_heads: int, head_dim: int, value_dim: int, device=None, dtype=None) -> dict:
    """The state before any token: every sum zero. ``dtype`` is the model's; the sums are at least fp32."""
    dt = torch.promote_types(dtype or torch.float32, torch.float32)
    b, h, d, m = batch_size, n_heads, head_dim, value_dim
    state = {
        key: torch.zeros(b, h, d, device=device, dtype=dt) for key in ("k_sum", "q_sum", "k_flow", "q_flow")
    }
    state["exp_sum"] = torch.zeros(b, h, device=device, dtype=dt)
    state["kv"] = torch.zeros(b, h, d, m, device=device, dtype=dt)
    state["count"] = torch.zeros(b, device=device, dtype=torch.long)
    return state


def state_size(n_heads: int, head_dim: int, value_dim: int) -> int:
    """Numbers held per sequence (the position counter aside): four D-sums, one scalar and D x M, per head."""
    return n_heads * (4 * head_dim + 1 + head_dim * value_dim)


def _check_state(fn: str, state, b: int, h: int, d: int, m: int) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{fn}: state must be a dict of tensors, got {type(state).__name__}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"{fn}: state lacks {missing}; build it with init_state() or a prefill")
    expected = {key: (b, h, d) for key in ("k_sum", "q_sum", "k_flow", "q_flow")}
    expected.update(exp_sum=(b, h), kv=(b, h, d, m), count=(b,))
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{fn}: state[{key!r}] must have shape {shape}, got {tuple(state[key].shape)}")


def _check_inputs(fn: str, q, k, v, ndim: int) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(fn, name, x, ndim)
    check_same_device(fn, q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{fn}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        what = "[B, T, H, D], [B, T, H, D], [B, T, H, M]" if ndim == 4 else "[B, H, D], [B, H, D], [B, H, M]"
        raise ValueError(
            f"{fn}: q, k, v must have shapes {what}, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def prefill(q, k, v, state=None, gla_backend="torch"):
    """Causal flow-attention over a segment that follows ``state`` (None: the sequence starts here); returns
    ``(o, new_state)``. The linear attention runs on ``ops.gla_step`` with ``gla_backend`` (``torch``, or
    ``triton``: gla's fused recurrent kernel for a few tokens, its chunked kernels beyond). Differentiable in
    q, k, v and in the state's floating-point sums."""
    b, t, h, d = q.shape
    m = v.shape[-1]
    if state is None:
        state = init_state(b, h, d, m, device=q.device, dtype=q.dtype)
    out_dtype = q.dtype
    dt = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    sums = {key: state[key] for key in (*SUM_KEYS, "count")}
    q_scaled, v_scaled, new_state = flow_weights(q, k, v, causal=True, sums=sums)
    if gla_backend == "triton" and beyond_recurrent_max_t(q) is None:
        gla_backend = "triton_recurrent"
    # What the tokens before this segment contribute through the state's kv, plus the segment itself.
    o, new_state["kv"] = gla_step(
        q_scaled, k, v_scaled, None, scale=1.0, initial_state=state["kv"].to(dt), backend=gla_backend
    )
    return o.to(out_dtype), new_state


def prefill_by_steps(q, k, v, state=None):
    """The ``reference`` prefill: :func:`step` token by token (the recurrence, fp32 or fp64)."""
    b, t, h, d = q.shape
    if state is None:
        state = init_state(b, h, d, v.shape[-1], device=q.device, dtype=q.dtype)
    outs = []
    for i in range(t):
        o, state = step(q[:, i], k[:, i], v[:, i], state)
        outs.append(o)
    return torch.stack(outs, 1), state


def step_on_gla_triton(q, k, v, state):
    """The ``triton`` step: one token through :func:`prefill` on gla's fused recurrent Triton kernel."""
    o, state = prefill(q[:, None], k[:, None], v[:, None], state, gla_backend="triton")
    return o[:, 0], state


def step(q, k, v, state):
    """One decoding step through the recurrence: q, k [B, H, D], v [B, H, M] and the state after the previous
    token. Returns ``(o, new_state)`` with o [B, H, M]; the state is not modified in place."""
    out_dtype = q.dtype
    dt = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    n = (state["count"] + 1).to(dt)[:, None]  # [B, 1]
    k_sum = state["k_sum"] + k
    q_sum = state["q_sum"] + q
    incoming = ((q + EPS) * (k_sum + EPS)).sum(-1)  # [B, H]
    outgoing = ((k + EPS) * (q_sum + EPS)).sum(-1)
    k_flow = state["k_flow"] + k * (n / outgoing)[..., None]
    q_flow = state["q_flow"] + q * (n / incoming)[..., None]
    incoming_hat = ((q + EPS) * (k_flow + EPS)).sum(-1) / n
    outgoing_hat = (((k + EPS) * (q_flow + EPS)).sum(-1) / n).clamp(-1.0, 1.0)
    e = outgoing_hat.exp()
    exp_sum = state["exp_sum"] + e
    competition = e / exp_sum * n
    kv = state["kv"] + k[..., :, None] * (v * competition[..., None])[..., None, :]
    o = torch.einsum("bhd,bhdm->bhm", q / incoming[..., None], kv) * torch.sigmoid(incoming_hat)[..., None]
    new_state = {
        "k_sum": k_sum,
        "q_sum": q_sum,
        "k_flow": k_flow,
        "q_flow": q_flow,
        "exp_sum": exp_sum,
        "kv": kv,
        "count": state["count"] + 1,
    }
    return o.to(out_dtype), new_state
