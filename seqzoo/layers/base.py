"""The mixer contract every layer in seqzoo follows (docs/design.md, "The mixer contract").

    y = mixer(x)                               # x, y: [B, T, d_model]
    y, state = mixer.prefill(x, state=None)    # same y as forward, plus the state after the last token
    y_t, state = mixer.step(x_t, state)        # x_t: [B, d_model], one decoding step
    y = mixer(x, cu_seqlens=cu)                # packed: x [1, T, d_model] holds N sequences (ops/_varlen.py)
    y, state = mixer.prefill(x, state, cu_seqlens=cu)   # state: one row per sequence, [N, ...]
    state = mixer.init_state(batch_size, device=..., dtype=...)
    n = mixer.state_size(seq_len)              # numbers held per sequence to decode

A state is a ``dict[str, Tensor]`` with the batch dimension first. Subclasses implement ``forward``,
``prefill``, ``step``, ``init_state`` and ``state_size``; the checks below give every mixer the same
errors for bad inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops._varlen import check_cu_seqlens

State = dict[str, torch.Tensor]


# -- argument checks shared by the layers (a ValueError naming the mixer and the argument) ------------------


def check_int(mixer: str, name: str, value, low: int, high: int | None = None) -> int:
    bad = not isinstance(value, int) or isinstance(value, bool) or value < low
    if bad or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{mixer}: {name} must be an int {span}, got {value!r}")
    return value


def check_float(
    mixer: str, name: str, value, low: float | None = None, high: float | None = None, open_low=False
) -> float:
    """A finite number in [low, high) ((low, high) with ``open_low``); ``low=None``: no lower bound."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = (
        ok and (low is None or (value > low if open_low else value >= low)) and (high is None or value < high)
    )
    if not ok:
        parts = [] if low is None else [f"{'>' if open_low else '>='} {low}"]
        parts += [] if high is None else [f"< {high}"]
        span = (" " + " and ".join(parts)) if parts else ""
        raise ValueError(f"{mixer}: {name} must be a finite number{span}, got {value!r}")
    return float(value)


def check_bool(mixer: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{mixer}: {name} must be a bool, got {value!r}")
    return value


def backend_for(op, backend: str) -> str:
    """The backend name a layer built with ``backend`` (a name of its own op) passes to another op it
    calls (its short convolution, a step op): the same name where ``op`` has that backend, else ``op``'s
    ``auto``. A layer built for ``triton_recurrent`` (gla) or ``cuda`` (selective_scan) thus runs its
    convolution with causal_conv1d's own choice. Every backend of an op computes the same function, so this
    picks a speed, never a result."""
    return backend if backend in op.backend_names() else "auto"


class Mixer(nn.Module):
    mixer_name: str = "mixer"  # set by @register_mixer
    # True for mixers that see the future when built with bidirectional=True (they cannot decode).
    bidirectional: bool = False

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
            raise ValueError(f"{type(self).__name__}: d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model

    # -- input checks shared by all mixers ------------------------------------------------------------

    def check_input(self, x, name: str = "x", ndim: int = 3) -> None:
        what = "[B, T, d_model]" if ndim == 3 else "[B, d_model]"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{self.mixer_name}: {name} must be a torch.Tensor {what}, got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.mixer_name}: {name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() != ndim:
            raise ValueError(f"{self.mixer_name}: {name} must have shape {what}, got {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{self.mixer_name}: {name} has last dimension {x.shape[-1]}, expected d_model={self.d_model}"
            )

    def check_packed(self, x, cu_seqlens, state=None, keys=()) -> list[int] | None:
        """The boundaries of a packed ``x`` [1, T, d_model] (None when ``cu_seqlens`` is None), after checking
        them and that ``state`` holds one row per sequence; errors name ``cu_seqlens``, ``x`` or the state."""
        if cu_seqlens is None:
            return None
        bounds = check_cu_seqlens(self.mixer_name, cu_seqlens, x, "x")
        if state is not None:
            self.check_state(state, len(bounds) - 1, keys, what="sequences in cu_seqlens")
        return bounds

    def check_decodable(self) -> None:
        if self.bidirectional:
            raise RuntimeError(f"{self.mixer_name}: a bidirectional mixer sees the future and cannot decode")

    def check_state(self, state, batch_size: int, keys, what: str = "the input's batch") -> None:
        if not isinstance(state, dict):
            raise TypeError(f"{self.mixer_name}: state must be a dict of tensors, got {type(state).__name__}")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(
                f"{self.mixer_name}: state lacks {missing}; build it with init_state() or prefill()"
            )
        for k in keys:
            if state[k].shape[0] != batch_size:
                raise ValueError(
                    f"{self.mixer_name}: state[{k!r}] has batch {state[k].shape[0]}, expected {batch_size} "
                    f"({what})"
                )

    # -- the contract ----------------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def prefill(
        self, x: torch.Tensor, state: State | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{self.mixer_name} does not implement prefill")

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{self.mixer_name} does not implement step")

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        raise NotImplementedError(f"{self.mixer_name} does not implement init_state")

    def state_size(self, seq_len: int) -> int:
        raise NotImplementedError(f"{self.mixer_name} does not implement state_size")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


# -- packed sequences for a mixer that does not take cu_seqlens itself (a user's own) -----------------------------


def takes_cu_seqlens(mixer: nn.Module) -> bool:
    """Whether ``mixer.forward`` and ``mixer.prefill`` take ``cu_seqlens=`` (every built-in mixer does)."""
    import inspect

    def has(fn):
        try:
            return "cu_seqlens" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return False

    return has(mixer.forward) and has(getattr(mixer, "prefill", None) or mixer.forward)


def mix_per_sequence(
    mixer: nn.Module, x: torch.Tensor, bounds: list[int], state: State | None = None, prefill: bool = False
):
    """A packed ``x`` [1, T, d] through a mixer that does not take ``cu_seqlens``, one sequence at a time (the
    same numbers, one call per sequence); ``prefill`` also returns the states, one row per sequence."""
    ys, states = [], []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        if prefill:
            row = None if state is None else {k: v[n : n + 1] for k, v in state.items()}
            y, st = mixer.prefill(x[:, s:e], row)
            states.append(st)
        else:
            y = mixer(x[:, s:e])
        ys.append(y)
    y = torch.cat(ys, dim=1)
    if not prefill:
        return y
    try:
        return y, {k: torch.cat([st[k] for st in states]) for k in states[0]}
    except RuntimeError as e:
        raise RuntimeError(
            f"{getattr(mixer, 'mixer_name', type(mixer).__name__)}: the per-sequence states of a packed prefill "
            f"differ in shape and cannot be stacked ({e}); give the mixer a cu_seqlens argument"
        ) from e
