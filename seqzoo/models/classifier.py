"""``SequenceClassifier``: a backbone of mixers with pooling and a linear head (Long Range Arena).

    logits = model(inputs, mask=None)      # inputs [B, T] token ids or [B, T, d_input] features
                                           # mask [B, T] bool, True on real (non-padding) positions
``position_embeddings=P`` adds learned absolute positions (T <= P) to the input embeddings.
Pooling: ``mean`` over unmasked positions, ``last`` unmasked position, or a learned ``cls`` token
prepended to the sequence (pair it with ``bidirectional=True``, or a causal mixer never lets it see
the sequence). ``bidirectional=True`` builds every mixer with ``bidirectional=True``.

Padding never enters the backbone: a batch with padding runs its rows' real tokens packed into one row
(``cu_seqlens``), so a bidirectional mixer's reverse pass, a convolution or a batch norm reads only real tokens
and a sequence's logits do not depend on how much padding its batch has.

``pairs=True`` is LRA's two-tower model (retrieval: does document 1 cite document 2?): inputs [B, 2, T]
(mask [B, 2, T]); both documents go through the same backbone and pooling, to u and v [B, d], and an MLP
classifies [u, v, u * v, u - v] (Tay et al. 2021's dual-encoder head: Linear(4d, d), ReLU, Linear(d, C)).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..ops._varlen import cu_seqlens_from_lengths
from .backbone import Backbone, init_weights
from .config import ClassifierConfig
from .io import load_weights, read_config, save_model_dir


class SequenceClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None or isinstance(config, dict):
            config = ClassifierConfig(**{**(config or {}), **overrides})
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"config must be a ClassifierConfig or a dict, got {type(config).__name__}")
        self.config = config
        if config.vocab_size is not None:
            self.encoder = nn.Embedding(config.vocab_size, config.d_model)
        else:
            self.encoder = nn.Linear(config.d_input, config.d_model)
        # Learned absolute positions (ViG's and the LRA Transformer's), added to each row's embeddings before
        # padding is cut, so a packed document's tokens keep their own positions 0, 1, ...
        self.position = (
            nn.Embedding(config.position_embeddings, config.d_model) if config.position_embeddings else None
        )
        extra = {"bidirectional": True} if config.bidirectional else None
        self.backbone = Backbone(config, extra_mixer_kwargs=extra)
        self.cls_token = nn.Parameter(torch.zeros(config.d_model)) if config.pooling == "cls" else None
        if config.pairs:
            d = config.d_model
            self.head = nn.Sequential(nn.Linear(4 * d, d), nn.ReLU(), nn.Linear(d, config.n_classes))
        else:
            self.head = nn.Linear(config.d_model, config.n_classes)
        init_weights(self, rescale_output_layers=config.n_layers if config.block == "zoology" else None)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.pairs:
            if inputs.dim() < 2 or inputs.shape[1] != 2:
                raise ValueError(
                    f"inputs of a two-tower model must be [B, 2, T, ...], got {tuple(inputs.shape)}"
                )
            if mask is not None and mask.shape != inputs.shape[:3]:
                raise ValueError(f"mask must have shape {tuple(inputs.shape[:3])}, got {tuple(mask.shape)}")
            b = inputs.shape[0]
            pooled = self._pool(inputs.flatten(0, 1), None if mask is None else mask.flatten(0, 1))
            u, v = pooled.view(b, 2, -1).unbind(1)  # inputs[:, 0] and inputs[:, 1]
            return self.head(torch.cat([u, v, u * v, u - v], dim=-1))
        return self.head(self._pool(inputs, mask))

    def _pool(self, inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, d_model]: the backbone's output pooled over the (unmasked) positions."""
        if self.config.vocab_size is not None:
            if inputs.dim() != 2 or inputs.is_floating_point():
                raise ValueError(f"inputs must be token ids [B, T], got {tuple(inputs.shape)} {inputs.dtype}")
        elif inputs.dim() != 3 or inputs.shape[-1] != self.config.d_input or not inputs.is_floating_point():
            raise ValueError(
                f"inputs must be float features [B, T, {self.config.d_input}], got {tuple(inputs.shape)}"
            )
        b, t = inputs.shape[:2]
        if mask is not None and (mask.shape != (b, t) or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be a bool tensor of shape {(b, t)}, got {tuple(mask.shape)} {mask.dtype}"
            )
        h = self.encoder(inputs)
        if self.position is not None:
            if t > self.position.num_embeddings:
                raise ValueError(
                    f"inputs have {t} positions, more than position_embeddings ({self.position.num_embeddings})"
                )
            h = h + self.position.weight[:t].to(h.dtype)
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(b, 1, -1).to(h.dtype), h], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        if mask is None or bool(mask.all()):
            h = self.backbone(h)
        else:
            h = self._backbone_on_real_tokens(h, mask)
        if self.config.pooling == "cls":
            pooled = h[:, 0]
        elif self.config.pooling == "last":
            last = (
                (mask.sum(1) - 1).clamp_min(0)
                if mask is not None
                else torch.full((b,), t - 1, device=h.device)
            )
            pooled = h[torch.arange(b, device=h.device), last]
        else:
            if mask is None:
                pooled = h.mean(1)
            else:
                m = mask.to(h.dtype)[..., None]
                pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
        return pooled

    def _backbone_on_real_tokens(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The backbone on each row's real tokens only: the rows packed into one (``cu_seqlens``), so no mixer
        (a bidirectional one's reverse pass, a convolution, attention) and no batch norm reads the padding; the
        padded positions of the result are zero."""
        lengths = mask.sum(1)
        if bool((lengths == 0).any()):
            row = int((lengths == 0).nonzero()[0])
            raise ValueError(f"mask: row {row} has no real position (a sequence needs at least one token)")
        prefix = torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]
        if not torch.equal(prefix, mask):
            raise ValueError("mask must mark a prefix of each row (real tokens first, padding on the right)")
        packed = self.backbone(h[mask][None], cu_seqlens_from_lengths(lengths, device=h.device))
        out = h.new_zeros(h.shape[:2] + packed.shape[-1:])
        out[mask] = packed[0]
        return out

    def save(self, directory: str | os.PathLike):
        return save_model_dir(self, self.config.model_dump(), directory, "sequence_classifier")

    @classmethod
    def load(cls, directory: str | os.PathLike, device=None) -> SequenceClassifier:
        model = cls(ClassifierConfig(**read_config(directory, "sequence_classifier")))
        return load_weights(model, directory, device).to(device or "cpu")
