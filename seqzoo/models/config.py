"""Validated model configurations. Hybrids are configuration, not code:

    LMConfig(mixer="gla")                                  # every layer a gla
    LMConfig(mixer=["gla", "gla", "attention"], n_layers=6) # the pattern repeats to n_layers
    LMConfig(mixer=[{"name": "sliding_window", "window": 64}, "short_conv"])  # per-layer kwargs

``mixer_kwargs`` go to every layer; an entry's own keys override them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..registry import mixer_class

MixerEntry = str | dict[str, Any]


class BackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(128, ge=1, description="model width")
    n_layers: int = Field(2, ge=1, description="number of blocks")
    mixer: MixerEntry | list[MixerEntry] = Field(
        "attention", description="mixer name(s), repeated to n_layers"
    )
    mixer_kwargs: dict[str, Any] = Field(default_factory=dict, description="kwargs for every mixer")
    mlp: Literal["swiglu", "geglu", "gelu", "none"] = "swiglu"
    mlp_ratio: float = Field(4.0, gt=0)
    mlp_hidden: int | None = Field(
        None,
        ge=1,
        description="the MLP's hidden width (of each branch of a gated MLP) exactly, instead of mlp_ratio's "
        "rounded width (a converted RecurrentGemma: 3 d per branch)",
    )
    mlp_bias: bool = Field(False, description="biases on the MLP's projections (RecurrentGemma has them)")
    norm_eps: float = Field(1e-6, gt=0)
    block: Literal["prenorm", "postnorm", "zoology"] = Field(
        "prenorm",
        description="prenorm: h + mixer(Norm h), h + MLP(Norm h); postnorm: Norm(h + mixer h), Norm(h + MLP h) "
        "(S4's LRA models); zoology: Zoology's block (LayerNorms; "
        "with mlp none the second branch adds LayerNorm(h), its 'identity' state mixer; output projections "
        "initialised with std 0.02 / sqrt(2 n_layers))",
    )
    norm: Literal["auto", "rms", "layer", "batch", "gemma"] = Field(
        "auto",
        description="auto: RMSNorm (LayerNorm for the zoology block); batch: BatchNorm over batch and time "
        "(S4's LRA models); gemma: RMSNorm scaled by (1 + w), w starting at 0 (Gemma, RecurrentGemma)",
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on each branch's output (S4: residual dropout)"
    )

    @field_validator("mixer")
    @classmethod
    def _known_mixers(cls, value):
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise ValueError("mixer: give at least one mixer name")
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else entry
            if not isinstance(name, str):
                raise ValueError(f"mixer: each entry is a name or a dict with a 'name' key, got {entry!r}")
            mixer_class(name)  # raises ValueError naming the unknown mixer and the known ones
        return value

    def layer_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(mixer name, kwargs) for each of the n_layers blocks."""
        entries = self.mixer if isinstance(self.mixer, list) else [self.mixer]
        specs = []
        for i in range(self.n_layers):
            entry = entries[i % len(entries)]
            if isinstance(entry, str):
                specs.append((entry, dict(self.mixer_kwargs)))
            else:
                own = {k: v for k, v in entry.items() if k != "name"}
                specs.append((entry["name"], {**self.mixer_kwargs, **own}))
        return specs


class LMConfig(BackboneConfig):
    """A causal language model: embedding, n_layers pre-norm blocks, final norm, LM head."""

    vocab_size: int = Field(256, ge=2, description="vocabulary size (256 for bytes)")
    tie_embeddings: bool = True
    position_embeddings: int = Field(
        0, ge=0, description="learned absolute positions for this many tokens (0: none; attention has RoPE)"
    )
    embed_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the embeddings (Zoology: 0.1)")
    embed_scale: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="multiplies the token embeddings (in the model's dtype, before positions are added); "
        "Gemma/RecurrentGemma: sqrt(d_model) rounded to bf16, as transformers computes it",
    )
    logits_soft_cap: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="cap * tanh(logits / cap) on the LM head's output in forward, prefill and step "
        "(RecurrentGemma: 30); None: raw logits",
    )


class ClassifierConfig(BackboneConfig):
    """A sequence classifier (Long Range Arena): token embedding or input projection, blocks, pooling, head."""

    n_classes: int = Field(ge=2)
    vocab_size: int | None = Field(None, ge=2, description="token inputs; None for continuous inputs")
    d_input: int | None = Field(None, ge=1, description="feature size of continuous inputs [B, T, d_input]")
    pooling: Literal["mean", "last", "cls"] = "mean"
    bidirectional: bool = Field(False, description="build every mixer with bidirectional=True")
    pairs: bool = Field(
        False,
        description="two towers (LRA retrieval): inputs [B, 2, T] encoded by the same backbone, pooled to u, v, "
        "classified from [u, v, u*v, u-v] by an MLP",
    )
    position_embeddings: int = Field(
        0,
        ge=0,
        description="learned absolute positions added to the input embeddings for up to this many tokens "
        "(0: none; ViG's abs pos embed)",
    )

    @model_validator(mode="after")
    def _one_input_kind(self):
        if (self.vocab_size is None) == (self.d_input is None):
            raise ValueError("give exactly one of vocab_size (token inputs) and d_input (continuous inputs)")
        return self
