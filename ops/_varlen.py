"""Packed sequences: several documents in one row, told apart by ``cu_seqlens`` (as flash-attn and fla take them).

    cu_seqlens = [0, L_1, L_1 + L_2, ..., T]      # int32 [N + 1]: sequence n is positions cu[n] .. cu[n+1] - 1

Every op with a time axis takes ``cu_seqlens=`` (``ops.gla(q, k, v, g, cu_seqlens=cu)``): its inputs are then one
row (batch 1, T = sum of the lengths), nothing crosses from one sequence into the next, and its states hold one
row per sequence: ``initial_state`` [N, ...] and the final state [N, ...]. The result is, by definition, that of N
separate calls, one per sequence; a backend that knows packing (``Backend.varlen``) computes it in one pass, any
other runs once per sequence (:func:`run_per_sequence`). Either way the numbers are the same and
``op.last_packing`` says which ran ("native" or "per-sequence").

Helpers: :func:`cu_seqlens_from_lengths`, :func:`cu_seqlens_from_eot` (documents that end in an end-of-text token),
:func:`seq_idx_from_cu_seqlens` (the sequence of each position, as Mamba-2's ``seq_idx``),
:func:`positions_from_cu_seqlens` (the position inside its sequence, recurrentgemma's ``segment_pos``) and
:func:`sequence_starts` (True at each sequence's first position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def check_cu_seqlens(op: str, cu_seqlens, x: torch.Tensor, x_name: str = "x") -> list[int]:
    """The boundaries of ``cu_seqlens`` as Python ints, after checking them against ``x`` [1, T, ...].

    Raises a TypeError/ValueError naming ``cu_seqlens`` (or ``x_name`` for a batch other than 1)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(
            f"{op}: cu_seqlens must be an int32 torch.Tensor [N + 1] (0, then each sequence's end), "
            f"got {type(cu_seqlens).__name__}"
        )
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(
            f"{op}: cu_seqlens must be int32 (as flash-attn's), got {cu_seqlens.dtype}; "
            "convert with cu_seqlens.to(torch.int32)"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"{op}: cu_seqlens must have shape [N + 1] with N >= 1 sequences, got shape {tuple(cu_seqlens.shape)}"
        )
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{op}: with cu_seqlens, {x_name} must be a tensor [1, T, ...]")
    if x.shape[0] != 1:
        raise ValueError(
            f"{op}: with cu_seqlens the sequences are packed into one row: {x_name} must have batch 1, "
            f"got batch {x.shape[0]} (shape {tuple(x.shape)}); flatten the batch into the time axis"
        )
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[0] != 0:
        raise ValueError(f"{op}: cu_seqlens must start at 0, got {_show(bounds)}")
    if any(e <= s for s, e in zip(bounds[:-1], bounds[1:])):
        raise ValueError(
            f"{op}: cu_seqlens must be strictly increasing (every sequence at least one token), got {_show(bounds)}"
        )
    t = x.shape[1]
    if bounds[-1] != t:
        raise ValueError(
            f"{op}: cu_seqlens must end at T = {x_name}.shape[1] = {t}, got {_show(bounds)} (ends at {bounds[-1]})"
        )
    return bounds


def _show(bounds: list[int]) -> str:
    return str(bounds) if len(bounds) <= 12 else f"[{', '.join(map(str, bounds[:10]))}, ..., {bounds[-1]}]"


# -- making and reading cu_seqlens ------------------------------------------------------------------------------


def cu_seqlens_from_lengths(lengths: Sequence[int] | torch.Tensor, device=None) -> torch.Tensor:
    """[0, L_1, L_1 + L_2, ...] as int32 for positive ``lengths``."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    if lengths.dim() != 1 or lengths.numel() == 0 or bool((lengths < 1).any()):
        raise ValueError(f"lengths must be a non-empty 1-D list of positive ints, got {lengths.tolist()}")
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


def cu_seqlens_from_eot(ids: torch.Tensor, eot_id: int) -> torch.Tensor:
    """The documents of a packed row of token ids [T] (or [1, T]) that end in ``eot_id``: a sequence ends after
    each end-of-text token, and the last one at T (a document cut by the window's end)."""
    row = ids.reshape(-1) if ids.dim() == 2 and ids.shape[0] == 1 else ids
    if row.dim() != 1 or row.numel() == 0:
        raise ValueError(f"ids must be a non-empty [T] or [1, T] tensor, got shape {tuple(ids.shape)}")
    ends = (row == eot_id).nonzero().reshape(-1) + 1
    ends = ends[ends < row.numel()]
    t = torch.tensor([row.numel()], device=row.device)
    return torch.cat([torch.zeros(1, dtype=ends.dtype, device=row.device), ends, t]).to(torch.int32)


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The sequence each position belongs to, [T] int64 (Mamba-2's ``seq_idx``)."""
    lengths = lengths_from_cu_seqlens(cu_seqlens)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Each position's index inside its own sequence, [T] int64 (recurrentgemma's ``segment_pos``)."""
    total = int(cu_seqlens[-1])
    idx = seq_idx_from_cu_seqlens(cu_seqlens)
    return torch.arange(total, device=cu_seqlens.device) - cu_seqlens.long()[idx]


def sequence_starts(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[T] bool, True at every sequence's first position."""
    total = int(cu_seqlens[-1])
    starts = torch.zeros(total, dtype=torch.bool, device=cu_seqlens.device)
    starts[cu_seqlens[:-1].long()] = True
    return starts


def sequence_ends(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The index of each sequence's last position, [N] int64."""
    return cu_seqlens[1:].long() - 1


# -- states of N sequences -------------------------------------------------------------------------------------


def state_rows(state) -> int | None:
    """The number of rows (sequences) a state holds: a tensor's first dimension, or a dict's (its first value's);
    None for anything else (the op's own checks then name what is wrong)."""
    if isinstance(state, dict):
        state = next(iter(state.values()), None)
    if isinstance(state, torch.Tensor) and state.dim() > 0:
        return state.shape[0]
    return None


def take_row(state, n: int):
    """Row ``n`` of a state (tensor or dict of tensors), keeping the batch dimension."""
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: v[n : n + 1] for k, v in state.items()}
    return state[n : n + 1]


def cat_rows(states: list):
    """The states of separate runs as one with a row each (None when the runs returned none)."""
    if all(s is None for s in states):
        return None
    if isinstance(states[0], dict):
        return {k: torch.cat([s[k] for s in states]) for k in states[0]}
    return torch.cat(states)


def run_per_sequence(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    bounds: list[int],
    packed_args: Sequence[str],
    state_arg: str,
    state_outputs: Sequence[int],
):
    """``fn`` once per sequence: each of ``packed_args`` cut to the sequence's positions [1, L_n, ...], the state
    argument to its row; the per-position outputs joined along time, the state outputs row under row."""
    outs = []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        kw = dict(kwargs)
        for name in packed_args:
            if kw.get(name) is not None:
                kw[name] = kw[name][:, s:e]
        if state_arg and kw.get(state_arg) is not None:
            kw[state_arg] = take_row(kw[state_arg], n)
        outs.append(fn(**kw))
    if not isinstance(outs[0], tuple):
        return torch.cat(outs, dim=1)
    joined = []
    for i in range(len(outs[0])):
        parts = [o[i] for o in outs]
        if i in state_outputs:
            joined.append(cat_rows(parts))
        elif all(p is None for p in parts):
            joined.append(None)
        else:
            joined.append(torch.cat(parts, dim=1))
    return tuple(joined)


__all__ = [
    "check_cu_seqlens",
    "cu_seqlens_from_lengths",
    "cu_seqlens_from_eot",
    "lengths_from_cu_seqlens",
    "seq_idx_from_cu_seqlens",
    "positions_from_cu_seqlens",
    "sequence_starts",
    "sequence_ends",
    "run_per_sequence",
]
