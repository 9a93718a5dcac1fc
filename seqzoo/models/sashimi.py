"""``Sashimi``: the multi-scale autoregressive audio model of Goel, Gu, Donahue, Re 2022 ("It's Raw! Audio
Generation with State-Space Models"), with any registered mixer inside (S4 by default).

Shapes for pool [4, 4], expand 2, width H = d_model, ids [B, L] (L a multiple of 16):

    h0 = Embedding(ids)                                   [B, L,    H ]   level 0
    h1 = DownPool_0(h0)                                   [B, L/4,  2H]   level 1   (4 samples -> 1 vector)
    h2 = DownPool_1(h1)                                   [B, L/16, 4H]   level 2   (the centre)
    x  = Stack_2(h2) + h2                                 n_layers x (Residual(mixer), Residual(FF))
    x  = UpPool_1(x) + h1;  x = Stack_1(x) + x            [B, L/4,  2H]
    x  = UpPool_0(x) + h0;  x = Stack_0(x) + x            [B, L,    H ]
    logits = Linear(LayerNorm(x))                         [B, L,  vocab]   (next-sample prediction)

    DownPool(p): [B, l p, h] -> [B, l, p h] -> Linear(p h -> expand h)
    UpPool(p):   [B, l, h] -> Linear(h -> p h / expand) -> SHIFT right by one pooled step (zeros first)
                 -> [B, l p, h / expand]
    Residual(f): x + dropout(f(LayerNorm(x)));   FF: Linear(h -> ff h), GELU, Linear(ff h -> h)

The UpPool shift keeps the network causal: pooled vector j summarises samples j p ... j p + p - 1, so the up-
sampled outputs of group j may only use pooled steps <= j - 1; group 0 gets zeros.

Decoding (``step``) runs each level at its own rate: level i steps once every prod(pool[:i]) samples. A
DownPool buffers p inputs and emits one pooled vector when its buffer fills; an UpPool holds p outputs, hands out
one per step, and recomputes all p from the level below when it has handed out its last (its initial zeros are
the shift). The decoding state is one flat ``dict[str, Tensor]``:

    "pos"                 [B]            samples consumed so far (all rows move together)
    "down{i}"             [B, p_i, H_i]  DownPool i's buffered inputs (zeros where not yet filled)
    "up{i}"               [B, p_i, H_i]  UpPool i's outputs for level i's next p_i steps
    "c.{j}.{key}"         the centre's j-th mixer state (its own dict's keys)
    "u{i}.{j}.{key}"      level i's j-th mixer state (up path)

``prefill`` runs the whole network in parallel over the longest prefix that is a multiple of prod(pool)
(from the empty state, or any state at such a position), then steps the rest. Packed documents (``cu_seqlens``)
are refused: a document would have to start on a multiple of prod(pool) to pool as it does alone.

Each level's mixers are built for that level's length: S4's ``l_max`` is seq_len / prod(pool[:i]).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ..registry import build_mixer, mixer_class, mixer_record
from .backbone import init_weights
from .io import load_weights, read_config, save_model_dir
from .mixer_settings import with_paper_settings
from .sampling import decode

IGNORE_INDEX = -100
MODEL_KIND = "sashimi"


class SashimiConfig(BaseModel):
    """A SaShiMi model. The defaults are the paper's (configs/model/sashimi.yaml of state-spaces/s4): d_model 64,
    8 layers per level, pool [4, 4], expand 2, ff 2, S4 with its paper settings, 256 levels (8-bit audio)."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(64, ge=1, description="width of level 0; level i has d_model * expand**i")
    n_layers: int = Field(8, ge=1, description="blocks (mixer + FF) per level")
    pool: list[int] = Field(default_factory=lambda: [4, 4], description="pooling factor of each level")
    expand: int = Field(2, ge=1, description="width multiplier per pooling")
    ff: int = Field(2, ge=0, description="FF hidden = ff * width; 0: no FF blocks")
    mixer: str | dict[str, Any] = Field("s4", description="a registered mixer name, or a dict with 'name'")
    mixer_kwargs: dict[str, Any] = Field(default_factory=dict, description="kwargs for every mixer")
    mixer_settings: Literal["paper", "none"] = Field(
        "paper", description="paper: fill the mixer's kwargs from its record's paper settings first"
    )
    seq_len: int = Field(
        16000, ge=1, description="training length: level i's mixers get l_max = seq_len / prod(pool[:i])"
    )
    vocab_size: int = Field(256, ge=2, description="quantisation levels (256: 8-bit audio)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each residual branch")
    norm: Literal["layer", "rms"] = "layer"
    norm_eps: float = Field(1e-5, gt=0)

    @field_validator("pool")
    @classmethod
    def _pool(cls, value):
        if not value or any((not isinstance(p, int)) or p < 1 for p in value):
            raise ValueError(f"pool: a non-empty list of ints >= 1, got {value!r}")
        return value

    @field_validator("mixer")
    @classmethod
    def _known_mixer(cls, value):
        name = value.get("name") if isinstance(value, dict) else value
        if not isinstance(name, str):
            raise ValueError(f"mixer: a name or a dict with a 'name' key, got {value!r}")
        mixer_class(name)  # ValueError naming the known mixers
        return value

    @model_validator(mode="after")
    def _divisible(self):
        if self.seq_len % self.total_pool:
            raise ValueError(
                f"seq_len ({self.seq_len}) must be a multiple of prod(pool) = {self.total_pool} (pool {self.pool})"
            )
        return self

    @property
    def total_pool(self) -> int:
        return math.prod(self.pool)

    def entry(self) -> dict[str, Any]:
        """The mixer entry (name and kwargs) every level builds, before its length keyword."""
        entry = {"name": self.mixer} if isinstance(self.mixer, str) else dict(self.mixer)
        name = entry.pop("name")
        entry = {"name": name, **self.mixer_kwargs, **entry}
        return with_paper_settings(entry) if self.mixer_settings == "paper" else entry


def _norm(kind: str, d: int, eps: float) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(d, eps=eps)
    from ..modules import RMSNorm

    return RMSNorm(d, eps)


class DownPool(nn.Module):
    """[B, l p, h] -> [B, l, expand h]: p consecutive samples side by side, then a linear map."""

    def __init__(self, d: int, expand: int, pool: int):
        super().__init__()
        self.pool, self.d = pool, d
        self.linear = nn.Linear(d * pool, d * expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        return self.linear(x.reshape(B, L // self.pool, self.pool * H))


class UpPool(nn.Module):
    """[B, l, h] -> [B, l p, h / expand], shifted right by one pooled step (``first`` or zeros in front)."""

    def __init__(self, d: int, expand: int, pool: int):
        super().__init__()
        self.pool, self.d_out = pool, d // expand
        self.linear = nn.Linear(d, self.d_out * pool)

    def groups(self, x: torch.Tensor) -> torch.Tensor:  # [B, l, h] -> [B, l, p, h / expand], unshifted
        return self.linear(x).unflatten(-1, (self.pool, self.d_out))

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        y = self.groups(x)
        if first is None:
            first = y.new_zeros(y.shape[0], 1, self.pool, self.d_out)
        else:
            first = first[:, None].to(y.dtype)
        y = torch.cat([first, y[:, :-1]], dim=1)  # the shift: group j gets pooled step j - 1
        return y.flatten(1, 2)


class FF(nn.Module):
    def __init__(self, d: int, ff: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, ff * d), nn.Linear(ff * d, d)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class Stack(nn.Module):
    """n_layers x (x + drop(mixer(Norm x)); x + drop(FF(Norm x))) at one level; states keyed "{j}.{key}"."""

    def __init__(self, d: int, config: SashimiConfig, entry: dict[str, Any]):
        super().__init__()
        kwargs = {k: v for k, v in entry.items() if k != "name"}
        self.mixers = nn.ModuleList(build_mixer(entry["name"], d, **kwargs) for _ in range(config.n_layers))
        self.mixer_norms = nn.ModuleList(
            _norm(config.norm, d, config.norm_eps) for _ in range(config.n_layers)
        )
        self.ffs = nn.ModuleList(
            FF(d, config.ff, config.dropout) for _ in range(config.n_layers * (config.ff > 0))
        )
        self.ff_norms = nn.ModuleList(_norm(config.norm, d, config.norm_eps) for _ in range(len(self.ffs)))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def _ff(self, j, x):
        if self.ffs:
            x = x + self.dropout(self.ffs[j](self.ff_norms[j](x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, mixer in enumerate(self.mixers):
            x = self._ff(j, x + self.dropout(mixer(self.mixer_norms[j](x))))
        return x

    def prefill(self, x, state: dict | None, prefix: str):
        new = {}
        for j, mixer in enumerate(self.mixers):
            own = _sub(state, f"{prefix}{j}.")
            y, s = mixer.prefill(self.mixer_norms[j](x), own)
            x = self._ff(j, x + self.dropout(y))
            new.update({f"{prefix}{j}.{k}": v for k, v in s.items()})
        return x, new

    def step(self, x, state: dict, prefix: str):
        new = {}
        for j, mixer in enumerate(self.mixers):
            y, s = mixer.step(self.mixer_norms[j](x), _sub(state, f"{prefix}{j}."))
            x = self._ff(j, x + self.dropout(y))
            new.update({f"{prefix}{j}.{k}": v for k, v in s.items()})
        return x, new

    def init_state(self, batch_size, prefix, device=None, dtype=None):
        out = {}
        for j, mixer in enumerate(self.mixers):
            s = mixer.init_state(batch_size, device=device, dtype=dtype)
            out.update({f"{prefix}{j}.{k}": v for k, v in s.items()})
        return out

    def state_size(self, seq_len: int) -> int:
        return sum(m.state_size(seq_len) for m in self.mixers)


def _sub(state: dict | None, prefix: str) -> dict | None:
    """The entries of a flat state under ``prefix``, without it (None for no state)."""
    if state is None:
        return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class Sashimi(nn.Module):
    """SaShiMi: ``forward(ids) -> logits``, ``prefill / step / init_state / generate``, ``save / load``."""

    def __init__(self, config: SashimiConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = SashimiConfig(**overrides)
        elif isinstance(config, dict):
            config = SashimiConfig(**{**config, **overrides})
        elif overrides:
            config = SashimiConfig(**{**config.model_dump(), **overrides})
        if not isinstance(config, SashimiConfig):
            raise TypeError(f"config must be a SashimiConfig or a dict, got {type(config).__name__}")
        # The saved config names every keyword (the paper settings written out), so it loads the same model.
        entry = config.entry()
        config = SashimiConfig(
            **{**config.model_dump(), "mixer": entry, "mixer_kwargs": {}, "mixer_settings": "none"}
        )
        self.config = config
        length_kwarg = mixer_record(entry["name"]).seq_len_kwarg

        def level_entry(i):  # S4's l_max: this level's length
            if length_kwarg is None:
                return entry
            return {**entry, length_kwarg: config.seq_len // math.prod(config.pool[:i])}

        n, H, e = len(config.pool), config.d_model, config.expand
        self.widths = [H * e**i for i in range(n + 1)]
        self.embedding = nn.Embedding(config.vocab_size, H)
        self.down = nn.ModuleList(DownPool(self.widths[i], e, p) for i, p in enumerate(config.pool))
        self.centre = Stack(self.widths[n], config, level_entry(n))
        # up[i], stacks[i]: the way back to level i (i = n - 1 ... 0 in the order they run: index by level).
        self.up = nn.ModuleList(UpPool(self.widths[i + 1], e, p) for i, p in enumerate(config.pool))
        self.stacks = nn.ModuleList(Stack(self.widths[i], config, level_entry(i)) for i in range(n))
        self.norm = _norm(config.norm, H, config.norm_eps)
        self.head = nn.Linear(H, config.vocab_size)
        # GPT-style init (std 0.02) as CausalLM, then each mixer's own (S4's A, dt): with PyTorch's defaults
        # (N(0, 1) embeddings) the model sat at the unigram entropy for hundreds of steps on tones.
        init_weights(self)

    # -- checks ------------------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_ids(self, ids, name="input_ids", ndim=2):
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of sample ids, got {type(ids).__name__}")
        if ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name} must hold integer sample ids, got {ids.dtype}")
        if ids.dim() != ndim:
            raise ValueError(
                f"{name} must have shape {'[B, T]' if ndim == 2 else '[B]'}, got {tuple(ids.shape)}"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"{name} holds ids outside [0, vocab_size={self.config.vocab_size})")

    def _check_length(self, T: int, name="input_ids"):
        if T % self.config.total_pool:
            raise ValueError(
                f"{name}: length {T} is not a multiple of prod(pool) = {self.config.total_pool} "
                f"(pool {self.config.pool}): every level must pool whole groups (use prefill for any length)"
            )

    @staticmethod
    def _no_packing(cu_seqlens):
        if cu_seqlens is not None:
            raise ValueError(
                "cu_seqlens: Sashimi does not take packed documents (each would have to start on a multiple "
                "of prod(pool)); give a batch [B, T] of whole windows"
            )

    # -- the parallel pass -------------------------------------------------------------------------------

    def _run(self, h: torch.Tensor, state: dict | None, collect: bool):
        """The network over h [B, T, H] (T a multiple of prod(pool)); with ``collect`` also the state after
        its last position, starting from ``state`` (None: empty) taken at a multiple of prod(pool)."""
        n = len(self.config.pool)
        new = {}
        skips = [h]
        for down in self.down:
            h = down(h)
            skips.append(h)
        if collect:
            h, s = self.centre.prefill(h, state, "c.")
            new.update(s)
        else:
            h = self.centre(h)
        h = h + skips.pop()
        for i in reversed(range(n)):
            first = None if state is None else state[f"up{i}"]
            if collect:  # the outputs for level i's next p steps: the last pooled step, unshifted
                new[f"up{i}"] = self.up[i].groups(h[:, -1:])[:, 0]
            h = self.up[i](h, first) + skips.pop()
            if collect:
                y, s = self.stacks[i].prefill(h, state, f"u{i}.")
                new.update(s)
            else:
                y = self.stacks[i](h)
            h = y + h
        return self.norm(h), new

    def forward(
        self, input_ids: torch.Tensor, logits_at: torch.Tensor | None = None, cu_seqlens=None
    ) -> torch.Tensor:
        """Logits [B, T, V] predicting the next sample (T a multiple of prod(pool)); with ``logits_at``
        (bool [B, T]) only there, [N, V]."""
        self._check_ids(input_ids)
        self._no_packing(cu_seqlens)
        self._check_length(input_ids.shape[1])
        h, _ = self._run(self.embedding(input_ids), None, collect=False)
        if logits_at is not None:
            if logits_at.dtype != torch.bool or logits_at.shape != input_ids.shape:
                raise ValueError(
                    f"logits_at must be a bool mask shaped like input_ids {tuple(input_ids.shape)}, got "
                    f"{logits_at.dtype} {tuple(logits_at.shape)}"
                )
            h = h[logits_at]
        return self.head(h)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=ignore_index)

    # -- decoding ----------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        dtype = dtype or self.embedding.weight.dtype
        state = {"pos": torch.zeros(batch_size, dtype=torch.long, device=device)}
        for i, p in enumerate(self.config.pool):
            state[f"down{i}"] = torch.zeros(batch_size, p, self.widths[i], device=device, dtype=dtype)
            state[f"up{i}"] = torch.zeros(batch_size, p, self.widths[i], device=device, dtype=dtype)
            state.update(self.stacks[i].init_state(batch_size, f"u{i}.", device, dtype))
        state.update(self.centre.init_state(batch_size, "c.", device, dtype))
        return state

    def state_size(self, seq_len: int) -> int:
        """Numbers in the decoding state (mixer states at each level's length, plus the pool buffers)."""
        total = self.centre.state_size(seq_len // self.config.total_pool)
        for i, p in enumerate(self.config.pool):
            total += self.stacks[i].state_size(seq_len // math.prod(self.config.pool[:i]))
            total += 2 * p * self.widths[i]
        return total

    def _check_state(self, state, batch_size: int):
        if not isinstance(state, dict) or "pos" not in state:
            raise TypeError("state must be the dict that Sashimi.init_state / prefill / step return")
        pos = state["pos"]
        if pos.shape != (batch_size,):
            raise ValueError(f"state: holds {tuple(pos.shape)} positions for a batch of {batch_size}")
        if pos.numel() and bool((pos != pos[0]).any()):
            raise ValueError("state: the rows are at different positions; Sashimi steps every row together")

    def prefill(self, input_ids: torch.Tensor, state: dict | None = None, cu_seqlens=None):
        """Logits [B, T, V] for every prompt position and the state after the last (any T >= 1)."""
        self._check_ids(input_ids)
        self._no_packing(cu_seqlens)
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids: prefill needs at least one sample per row")
        if state is not None:
            self._check_state(state, B)
        pos = 0 if state is None or B == 0 else int(state["pos"][0])
        P = self.config.total_pool
        parallel = (T // P) * P if pos % P == 0 else 0
        logits = []
        if parallel:
            h, new = self._run(self.embedding(input_ids[:, :parallel]), state, collect=True)
            logits.append(self.head(h))
            ref = self.embedding.weight
            for i, p in enumerate(self.config.pool):  # whole groups: every DownPool buffer is empty
                new[f"down{i}"] = torch.zeros(B, p, self.widths[i], device=ref.device, dtype=ref.dtype)
            new["pos"] = torch.full((B,), pos + parallel, dtype=torch.long, device=input_ids.device)
            state = new
        elif state is None:
            state = self.init_state(B, input_ids.device)
        for t in range(parallel, T):
            out, state = self.step(input_ids[:, t], state)
            logits.append(out[:, None])
        return torch.cat(logits, 1), state

    def step(self, token_ids: torch.Tensor, state: dict):
        """One sample per row [B] -> next-sample logits [B, V] and the new state."""
        self._check_ids(token_ids, "token_ids", ndim=1)
        self._check_state(state, token_ids.shape[0])
        pool, n = self.config.pool, len(self.config.pool)
        t = int(state["pos"][0]) if token_ids.numel() else 0
        new = dict(state)
        new["pos"] = state["pos"] + 1
        x = self.embedding(token_ids)
        # Level i runs at this step when (t + 1) is a multiple of prod(pool[:i]); its own step index is t_i.
        outs, level = [x], 0
        while level < n:
            t_i = (t + 1) // math.prod(pool[:level]) - 1
            k = t_i % pool[level]
            buf = state[f"down{level}"].clone()
            buf[:, k] = x.to(buf.dtype)
            if k < pool[level] - 1:
                new[f"down{level}"] = buf
                break
            x = self.down[level].linear(buf.flatten(1).to(x.dtype))
            new[f"down{level}"] = torch.zeros_like(buf)
            level += 1
            outs.append(x)
        if level == n:  # the centre runs
            x, s = self.centre.step(x, state, "c.")
            new.update(s)
            x = x + outs.pop()
        for i in reversed(range(level + 1 if level < n else n)):
            t_i = (t + 1) // math.prod(pool[:i]) - 1
            k = t_i % pool[i]
            y = state[f"up{i}"][:, k]
            if k == pool[i] - 1:  # handed out its last: the level below has just stepped, refill
                new[f"up{i}"] = self.up[i].groups(x[:, None])[:, 0].to(y.dtype)
            x = y.to(outs[-1].dtype) + outs.pop()
            out, s = self.stacks[i].step(x, state, f"u{i}.")
            new.update(s)
            x = out + x
        return self.head(self.norm(x)), new

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prompt [B, T] (T >= 1) -> [B, T + max_new_tokens] sample ids; ``temperature=0`` is greedy."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids: give at least one prompt sample (e.g. the quantiser's zero, 128)")
        return decode(self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator)

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike):
        """Write ``config.json`` (model_type "sashimi") and ``model.safetensors`` into ``directory``."""
        return save_model_dir(self, self.config.model_dump(), directory, MODEL_KIND)

    @classmethod
    def load(cls, directory: str | os.PathLike, device=None) -> Sashimi:
        model = cls(SashimiConfig(**read_config(directory, MODEL_KIND)))
        return load_weights(model, directory, device).to(device or "cpu")
