"""The model a run's config describes: a CausalLM, or a SequenceClassifier for ``model.kind: classifier``.

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
    for key in ("kind", "pooling", "bidirectional"):  # the recipe's, not LMConfig's (build_model reads them)
        model_cfg.pop(key)
    if model_cfg.pop("mixer_settings") == "paper":
        model_cfg["mixer"] = resolve_mixers(model_cfg["mixer"], seq_len, model_cfg["mixer_kwargs"])
        model_cfg["mixer_kwargs"] = {}
    return model_cfg


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
        fields = {k: v for k, v in model_cfg.items() if k in BackboneConfig.model_fields}
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
