"""``CausalLM``: token embedding, pre-norm blocks of any mixers, final RMSNorm, LM head (tied by default).

    logits = model(input_ids)                        # [B, T] -> [B, T, V]
    logits = model(input_ids, logits_at=labels != -100)   # [N, V]: only where a loss is taken (training)
    loss = model.loss(logits, labels)                # cross-entropy, labels == -100 ignored
    ids = model.generate(prompt_ids, max_new_tokens=64, temperature=0.8, top_k=50)

Gemma-style options (a converted RecurrentGemma): ``embed_scale`` multiplies the token embeddings (sqrt(d)
rounded to bf16 there), ``logits_soft_cap`` c maps the logits to c tanh(logits / c) in forward, prefill and step.

Generation runs ``prefill`` over the prompt and then one ``step`` per token, so recurrent mixers decode in
constant memory while attention grows its KV cache.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._varlen import (
    check_cu_seqlens,
    lengths_from_cu_seqlens,
    positions_from_cu_seqlens,
    seq_idx_from_cu_seqlens,
)
from .backbone import Backbone, init_weights
from .config import LMConfig
from .io import load_weights, read_config, save_model_dir
from .sampling import decode

IGNORE_INDEX = -100


class CausalLM(nn.Module):
    def __init__(self, config: LMConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = LMConfig(**overrides)
        elif isinstance(config, dict):
            config = LMConfig(**{**config, **overrides})
        elif overrides:
            config = config.model_copy(update=overrides)
            config = LMConfig(**config.model_dump())  # re-validate
        if not isinstance(config, LMConfig):
            raise TypeError(f"config must be an LMConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        # Learned absolute positions (GPT-2, Zoology's protocol); None: positions come from the mixers (RoPE).
        self.position = (
            nn.Embedding(config.position_embeddings, config.d_model) if config.position_embeddings else None
        )
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.backbone = Backbone(config)
        for i, block in enumerate(self.backbone.blocks):  # a mixer that sees the future would leak the labels
            if getattr(block.mixer, "bidirectional", False):
                raise ValueError(
                    f"CausalLM: layer {i}'s mixer {getattr(block.mixer, 'mixer_name', '?')!r} is bidirectional (it "
                    "sees the future); a causal language model needs causal mixers (use it in a SequenceClassifier)"
                )
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, rescale_output_layers=config.n_layers if config.block == "zoology" else None)
        if config.tie_embeddings:
            self.head.weight = self.embedding.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once

    def _check_ids(self, input_ids, name="input_ids", ndim=2):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.long, torch.int32, torch.int64, torch.int16, torch.uint8):
            raise TypeError(f"{name} must hold integer token ids, got {input_ids.dtype}")
        if input_ids.dim() != ndim:
            raise ValueError(
                f"{name} must have shape {'[B, T]' if ndim == 2 else '[B]'}, got {tuple(input_ids.shape)}"
            )
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"{name} holds ids outside [0, vocab_size={self.config.vocab_size})")

    def _embed(
        self, input_ids: torch.Tensor, start: int | torch.Tensor = 0, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token (plus position) embeddings of ids [B, T] or [B] whose first position is ``start``; packed
        documents give each token's ``positions`` [T] instead (its place in its own document)."""
        h = self.embedding(input_ids)
        if self.config.embed_scale != 1.0:
            # In h's dtype, as transformers multiplies by its (bf16-rounded) normalizer cast to that dtype.
            h = h * torch.tensor(self.config.embed_scale, dtype=h.dtype, device=h.device)
        if self.position is not None:
            t = input_ids.shape[1] if input_ids.dim() == 2 else 1
            if positions is not None:
                end = int(positions.max()) + 1
            else:
                end = int(start.max()) + t if isinstance(start, torch.Tensor) else start + t
            if end > self.position.num_embeddings:
                raise ValueError(
                    f"position {end - 1} is past the model's position_embeddings "
                    f"({self.position.num_embeddings}): learned positions cover only that many tokens"
                )
            if positions is not None:
                h = h + self.position(positions)
            elif input_ids.dim() == 2:
                h = h + self.position(torch.arange(start, start + t, device=input_ids.device))
            else:
                h = h + self.position(start)
        return self.embed_dropout(h)

    def _packed_positions(self, input_ids, cu_seqlens, start: torch.Tensor | None = None):
        """Checks a packed call (ids [1, T], cu_seqlens int32 [N + 1]) and returns each token's position in its
        document (after ``start`` [N], the positions the documents' states reached), or None without them."""
        if cu_seqlens is None:
            return None
        check_cu_seqlens("CausalLM", cu_seqlens, input_ids, "input_ids")
        if self.position is None:
            return None
        positions = positions_from_cu_seqlens(cu_seqlens.to(input_ids.device))
        if start is not None:
            positions = positions + start[seq_idx_from_cu_seqlens(cu_seqlens.to(input_ids.device))]
        return positions

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head, soft-capped when the config says so: c tanh(head(h) / c)."""
        logits = self.head(h)
        cap = self.config.logits_soft_cap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward(
        self,
        input_ids: torch.Tensor,
        logits_at: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V]; with ``logits_at`` (bool [B, T]) only at those positions, [N, V] in row order.

        Training on a task scored at a few positions (MQAR: 8 of 64) needs the LM head and the softmax only
        there; the loss is the same, at a fraction of the cost. ``cu_seqlens`` (int32 [N + 1]): input_ids [1, T]
        packs N documents, each computed as if alone (every mixer takes the boundaries; learned positions
        restart at each document)."""
        self._check_ids(input_ids)
        positions = self._packed_positions(input_ids, cu_seqlens)
        h = self.backbone(self._embed(input_ids, positions=positions), cu_seqlens)
        if logits_at is not None:
            if logits_at.dtype != torch.bool or logits_at.shape != input_ids.shape:
                raise ValueError(
                    f"logits_at must be a bool mask shaped like input_ids {tuple(input_ids.shape)}, got "
                    f"{logits_at.dtype} {tuple(logits_at.shape)}"
                )
            h = h[logits_at]
        return self._logits(h)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Mean cross-entropy over positions whose label is not ``ignore_index`` (labels already shifted)."""
        return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=ignore_index)

    # -- decoding ------------------------------------------------------------------------------------

    # With learned positions the decoding states end with one more dict, {"pos": [B]}: the next position.

    def init_state(self, batch_size: int, device=None, dtype=None):
        states = self.backbone.init_state(batch_size, device=device, dtype=dtype)
        if self.position is not None:
            states.append({"pos": torch.zeros(batch_size, dtype=torch.long, device=device)})
        return states

    def _split_position(self, states, batch_size: int, device):
        if self.position is None:
            return states, None
        if states is None:
            return None, torch.zeros(batch_size, dtype=torch.long, device=device)
        return states[:-1], states[-1]["pos"]

    def state_size(self, seq_len: int) -> int:
        return self.backbone.state_size(seq_len)

    def prefill(self, input_ids: torch.Tensor, states=None, cu_seqlens: torch.Tensor | None = None):
        """Logits for every prompt position and the per-layer states after the last one. ``cu_seqlens``:
        input_ids [1, T] packs N prompts; the states then hold one row per prompt (``states`` given: one row
        per prompt too), to decode them as a batch of N with ``step``."""
        self._check_ids(input_ids)
        if cu_seqlens is not None:
            n = len(check_cu_seqlens("CausalLM", cu_seqlens, input_ids, "input_ids")) - 1
            states, pos = self._split_position(states, n, input_ids.device)
            positions = self._packed_positions(input_ids, cu_seqlens, pos)
            h, states = self.backbone.prefill(self._embed(input_ids, positions=positions), states, cu_seqlens)
            if pos is not None:
                lengths = lengths_from_cu_seqlens(cu_seqlens).to(pos.device)
                states = [*states, {"pos": pos + lengths}]
            return self._logits(h), states
        states, pos = self._split_position(states, input_ids.shape[0], input_ids.device)
        start = 0 if pos is None else int(pos[0])
        h, states = self.backbone.prefill(self._embed(input_ids, start), states)
        if pos is not None:
            states = [*states, {"pos": pos + input_ids.shape[1]}]
        return self._logits(h), states

    def step(self, token_ids: torch.Tensor, states):
        """One token per sequence [B] -> next-token logits [B, V] and the new states."""
        self._check_ids(token_ids, "token_ids", ndim=1)
        states, pos = self._split_position(states, token_ids.shape[0], token_ids.device)
        h, states = self.backbone.step(self._embed(token_ids, 0 if pos is None else pos), states)
        if pos is not None:
            states = [*states, {"pos": pos + 1}]
        return self._logits(h), states

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
        """Prompt [B, T] -> [B, T + n] ids, n <= max_new_tokens. ``temperature=0`` is greedy decoding."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        return decode(self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike):
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically)."""
        return save_model_dir(self, self.config.model_dump(), directory, "causal_lm")

    @classmethod
    def load(cls, directory: str | os.PathLike, device=None) -> CausalLM:
        model = cls(LMConfig(**read_config(directory, "causal_lm")))
        return load_weights(model, directory, device).to(device or "cpu")
