"""The model a run's config describes: a CausalLM, a SequenceClassifier for ``model.kind: classifier``, or a
Sashimi for ``model.kind: sashimi``.

Both the loop (training) and :mod:`seqzoo.train.generate` (loading a finished run for generation and the
lm-eval harness) build models here, so loading a run does not import the training loop (and through it the
harness: an import circle).
"""

from __future__ import annotations

import torch

from seqzoo import CausalLM, LMConfig
from seqzoo.models.classifier import SequenceClassifier
from seqzoo.models.config import BackboneConfig, ClassifierConfig
from seqzoo.models.mixer_settings import resolve_mixers
from seqzoo.models.sashimi import Sashimi, SashimiConfig

from .config import RunConfig


def predates_mixer_settings(saved_config) -> bool:
    """True for a run folder's config.yaml written before ``model.mixer_settings`` existed: its models were
    built from the layers' bare defaults, and must be rebuilt that way to load its checkpoints."""
    import yaml

    if not saved_config.is_file():
        return False
    raw = yaml.safe_load(saved_config.read_text()) or {}
    return "mixer_settings" not in (raw.get("model") or {})


def model_config(config: RunConfig, seq_len: int) -> dict:
    """The LMConfig fields of ``config.model``. With ``mixer_settings: paper`` (the default) every mixer
    entry is written out with its paper's settings (``seqzoo.models.mixer_settings``), so the saved model's
    config.json names every keyword and loads the same model whatever the table says later."""
    model_cfg = config.model.model_dump()
    for key in ("kind", "pooling", "bidirectional", *SASHIMI_ONLY):  # the recipe's, not LMConfig's
        model_cfg.pop(key)
    if model_cfg.pop("mixer_settings") == "paper":
        model_cfg["mixer"] = resolve_mixers(model_cfg["mixer"], seq_len, model_cfg["mixer_kwargs"])
        model_cfg["mixer_kwargs"] = {}
    return model_cfg


SASHIMI_ONLY = ("pool", "expand", "ff")
# The LM options a SequenceClassifier has no use for, at their defaults (set otherwise: an error, not ignored).
LM_ONLY = {"tie_embeddings": True, "embed_dropout": 0.0, "embed_scale": 1.0, "logits_soft_cap": None}


def sashimi_config(config: RunConfig, seq_len: int, vocab_size: int) -> SashimiConfig:
    """The SashimiConfig of ``model.kind: sashimi``: the model section's width, layers per level, pools and
    mixer entry, its levels' lengths from ``seq_len`` (``mlp`` is not used: SaShiMi's FF is ``ff``)."""
    m = config.model
    mixer = m.mixer[0] if isinstance(m.mixer, list) else m.mixer
    return SashimiConfig(
        d_model=m.d_model,
        n_layers=m.n_layers,
        pool=m.pool,
        expand=m.expand,
        ff=m.ff,
        mixer=mixer,
        mixer_kwargs=m.mixer_kwargs,
        mixer_settings=m.mixer_settings,
        seq_len=seq_len,
        vocab_size=m.vocab_size or vocab_size,
        dropout=m.dropout,
        norm="rms" if m.norm == "rms" else "layer",
    )


def supports_bidirectional(mixer) -> bool:
    """Whether every mixer entry has a bidirectional mode as configured (an encoder can then see both
    directions): the layer accepts ``bidirectional`` and the entry has no causal short convolution."""
    import inspect

    from seqzoo.registry import mixer_class

    entries = [
        e if isinstance(e, dict) else {"name": e} for e in (mixer if isinstance(mixer, list) else [mixer])
    ]
    return all(
        "bidirectional" in inspect.signature(mixer_class(e["name"]).__init__).parameters
        and not e.get("use_short_conv")
        for e in entries
    )


def build_model(config: RunConfig, data) -> torch.nn.Module:
    """The CausalLM, or for ``model.kind: classifier`` the SequenceClassifier, that ``config`` describes."""
    if config.model.kind == "sashimi":
        return Sashimi(sashimi_config(config, data.seq_len, data.vocab_size))
    model_cfg = model_config(config, data.seq_len)
    if config.model.kind == "classifier":
        bidirectional = config.model.bidirectional
        if bidirectional == "auto":
            bidirectional = supports_bidirectional(model_cfg["mixer"])
        elif bidirectional and not supports_bidirectional(model_cfg["mixer"]):
            raise ValueError(
                f"model.bidirectional: not every mixer of {config.model.mixer!r} has a bidirectional mode as "
                "configured (a short convolution is causal: use_short_conv=false); set model.bidirectional to "
                "false or auto"
            )
        for key, default in LM_ONLY.items():
            if model_cfg[key] != default:
                raise ValueError(
                    f"model.{key}: a causal LM's option; a classifier has none (got {model_cfg[key]!r}, leave it "
                    f"at {default!r})"
                )
        fields = {k: v for k, v in model_cfg.items() if k in BackboneConfig.model_fields}
        fields["position_embeddings"] = model_cfg["position_embeddings"]
        return SequenceClassifier(
            ClassifierConfig(
                **fields,
                n_classes=data.n_classes,
                vocab_size=data.vocab_size,
                pooling=config.model.pooling,
                bidirectional=bidirectional,
                pairs=data.pairs,
            )
        )
    model_cfg["vocab_size"] = model_cfg["vocab_size"] or data.vocab_size
    if model_cfg["vocab_size"] < data.vocab_size:
        raise ValueError(
            f"model.vocab_size ({model_cfg['vocab_size']}) is smaller than the data's ({data.vocab_size})"
        )
    return CausalLM(LMConfig(**model_cfg))
