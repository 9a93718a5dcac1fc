"""The stack of blocks shared by the language model and the classifier.

    h = h + mixer(RMSNorm(h));   h = h + MLP(RMSNorm(h))      (prenorm, the default; the MLP is optional)
    h = Norm(h + mixer(h));      h = Norm(h + MLP(h))         (postnorm: S4's Long Range Arena models)

``norm`` picks the normalisation: RMSNorm (the default), LayerNorm, BatchNorm over the batch and time
positions (S4's LRA models; ``BatchNorm`` below), or Gemma's RMSNorm scaled by (1 + w) (``gemma``).
``mlp_hidden`` and ``mlp_bias`` give the MLP an exact width and biases (a converted RecurrentGemma). ``dropout`` drops each branch's output before the residual
add (S4's residual dropout). A postnorm stack has no final norm (its last block ends with one).

``block="zoology"`` builds Zoology's block instead (Arora et al. 2023, ``zoology/model.py``), to reproduce its
training: LayerNorms, and a second branch that is always there: the MLP, or with ``mlp="none"`` its "identity"
state mixer, which adds a normalised copy of the residual:

    h = h + mixer(LayerNorm(h));   h = h + LayerNorm'(h)        (zoology, mlp none)

Packed sequences: ``forward(h, cu_seqlens)`` with h [1, T, d] holding N documents (``seqzoo.ops._varlen``) passes
``cu_seqlens`` to every mixer (norms and MLPs act per position), so no document sees another; ``prefill`` then
returns one state row per document.

Decoding threads one state per layer (a list of the mixers' state dicts) through ``prefill`` and ``step``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.base import State, mix_per_sequence, takes_cu_seqlens
from ..modules import RMSNorm, build_mlp
from ..modules.norm import GemmaRMSNorm
from ..ops._varlen import check_cu_seqlens
from ..registry import build_mixer
from .config import BackboneConfig


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over every (batch, time) position of [B, T, D] (or [B, D] when decoding), per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def build_norm(block: str, d_model: int, eps: float, norm: str = "auto") -> nn.Module:
    if norm == "auto":
        norm = "layer" if block == "zoology" else "rms"
    if norm == "layer":
        return nn.LayerNorm(d_model, eps=eps)
    if norm == "batch":
        return BatchNorm(d_model, eps=eps)
    if norm == "gemma":
        return GemmaRMSNorm(d_model, eps)
    return RMSNorm(d_model, eps)


def _bounds(cu_seqlens, x) -> list[int]:
    return check_cu_seqlens("backbone", cu_seqlens, x, "h")


class Block(nn.Module):
    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        mlp: str,
        mlp_ratio: float,
        eps: float,
        block: str = "prenorm",
        norm: str = "auto",
        dropout: float = 0.0,
        mlp_bias: bool = False,
        mlp_hidden: int | None = None,
    ):
        super().__init__()
        self.postnorm = block == "postnorm"
        self.mixer_norm = build_norm(block, d_model, eps, norm)
        self.mixer = mixer
        self.mlp = build_mlp(d_model, mlp, mlp_ratio, bias=mlp_bias, hidden=mlp_hidden)
        if self.mlp is None and block == "zoology":
            self.mlp = nn.Identity()  # Zoology's "identity" state mixer: the branch adds LayerNorm(h)
        self.mlp_norm = build_norm(block, d_model, eps, norm) if self.mlp is not None else None
        # No module when there is no dropout, so the models (and checkpoints) of earlier versions are unchanged.
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def _mlp(self, h):
        if self.mlp is None:
            return h
        if self.postnorm:
            return self.mlp_norm(h + self.dropout(self.mlp(h)))
        return h + self.dropout(self.mlp(self.mlp_norm(h)))

    def _mix(self, h, y):  # the residual add after the mixer's output y
        y = self.dropout(y)
        return self._mlp(self.mixer_norm(h + y) if self.postnorm else h + y)

    def _mixer_input(self, h):
        return h if self.postnorm else self.mixer_norm(h)

    def forward(self, h, cu_seqlens=None):
        x = self._mixer_input(h)
        if cu_seqlens is None:
            return self._mix(h, self.mixer(x))
        if takes_cu_seqlens(self.mixer):
            return self._mix(h, self.mixer(x, cu_seqlens=cu_seqlens))
        # A user's mixer without cu_seqlens: one call per document (the same numbers).
        return self._mix(h, mix_per_sequence(self.mixer, x, _bounds(cu_seqlens, x)))

    def prefill(self, h, state: State | None, cu_seqlens=None):
        x = self._mixer_input(h)
        if cu_seqlens is None:
            y, state = self.mixer.prefill(x, state)
        elif takes_cu_seqlens(self.mixer):
            y, state = self.mixer.prefill(x, state, cu_seqlens=cu_seqlens)
        else:
            y, state = mix_per_sequence(self.mixer, x, _bounds(cu_seqlens, x), state, prefill=True)
        return self._mix(h, y), state

    def step(self, h_t, state: State):
        y, state = self.mixer.step(self._mixer_input(h_t), state)
        return self._mix(h_t, y), state


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig, extra_mixer_kwargs: dict | None = None):
        super().__init__()
        self.blocks = nn.ModuleList()
        for name, kwargs in config.layer_specs():
            mixer = build_mixer(name, config.d_model, **{**kwargs, **(extra_mixer_kwargs or {})})
            self.blocks.append(
                Block(
                    config.d_model,
                    mixer,
                    config.mlp,
                    config.mlp_ratio,
                    config.norm_eps,
                    block=config.block,
                    norm=config.norm,
                    dropout=config.dropout,
                    mlp_bias=config.mlp_bias,
                    mlp_hidden=config.mlp_hidden,
                )
            )
        self.final_norm = (
            nn.Identity()  # every postnorm block already ends with a norm
            if config.block == "postnorm"
            else build_norm(config.block, config.d_model, config.norm_eps, config.norm)
        )

    def forward(self, h: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """h [B, T, d]; with ``cu_seqlens`` (int32 [N + 1]) h [1, T, d] packs N sequences that no mixer mixes."""
        for block in self.blocks:
            h = block(h, cu_seqlens)
        return self.final_norm(h)

    def prefill(self, h, states: list[State] | None = None, cu_seqlens: torch.Tensor | None = None):
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, state in zip(self.blocks, states):
            h, state = block.prefill(h, state, cu_seqlens)
            new_states.append(state)
        return self.final_norm(h), new_states

    def step(self, h_t, states: list[State]):
        new_states = []
        for block, state in zip(self.blocks, states):
            h_t, state = block.step(h_t, state)
            new_states.append(state)
        return self.final_norm(h_t), new_states

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[State]:
        return [b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def state_size(self, seq_len: int) -> int:
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)


# The mixers' output projections, by parameter name (what ``rescale_output_layers`` scales down).
OUTPUT_PROJECTIONS = ("o_proj.weight", "out_proj.weight")


def init_weights(model: nn.Module, std: float = 0.02, rescale_output_layers: int | None = None) -> None:
    """GPT-style init for linear and embedding weights, then each module's own ``post_init`` (a mixer whose
    paper prescribes an init, such as Mamba's dt bias or S4's A, restores it there).

    ``rescale_output_layers=L`` draws the mixers' output projections with std / sqrt(2 L) (GPT-2's scaled
    residual init, as Zoology applies it to ``out_proj``)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
    if rescale_output_layers:
        for name, p in model.named_parameters():
            if name.endswith(OUTPUT_PROJECTIONS):
                nn.init.normal_(p, std=std / math.sqrt(2 * rescale_output_layers))
    for m in model.modules():
        if m is not model and hasattr(m, "post_init"):
            m.post_init()
