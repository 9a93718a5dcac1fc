"""Helpers the families share: reading a config.json field with transformers' default, refusing a value seqzoo
does not compute, and renaming state-dict keys by a table of patterns (both ways).

No family registers here; ``seqzoo.interop.hf`` imports this module like every other of the package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .family import StateDict, UnsupportedHFConfig

_MISSING = object()


def field(family: str, hf: dict, name: str, default: Any = _MISSING) -> Any:
    """``hf[name]``, or transformers' default for a field its config.json may leave out."""
    if name in hf:
        return hf[name]
    if default is _MISSING:
        raise UnsupportedHFConfig(family, name, None, "the config.json lacks this field, which seqzoo needs")
    return default


def require(family: str, hf: dict, name: str, allowed: tuple, default: Any, why: str) -> Any:
    """The field's value, which must be one of ``allowed`` (the values seqzoo computes exactly)."""
    value = field(family, hf, name, default)
    if value not in allowed:
        raise UnsupportedHFConfig(family, name, value, why)
    return value


def positive_int(family: str, hf: dict, name: str, default: Any = _MISSING) -> int:
    value = field(family, hf, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedHFConfig(family, name, value, "must be a positive integer")
    return value


@dataclass(frozen=True)
class Rename:
    """One tensor (or one per layer: ``{i}`` in both names) in transformers' and seqzoo's names; ``to_seqzoo``
    and ``to_hf`` reshape where the layouts differ (a depthwise conv is [C, 1, W] there, [C, W] here)."""

    hf: str
    seqzoo: str
    to_seqzoo: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    to_hf: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


def _pattern(name: str) -> re.Pattern:
    return re.compile(re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _rename(sd: StateDict, table: list[Rename], src: str, family: str, n_layers: int) -> StateDict:
    """Rename every key of ``sd`` (``src`` "hf": transformers -> seqzoo, else back) by ``table``; a key the
    table lacks, a layer index past ``n_layers`` or a tensor missing from ``sd`` is a ValueError naming it."""
    dst = "seqzoo" if src == "hf" else "hf"
    patterns = [(_pattern(getattr(r, src)), r) for r in table]
    out: StateDict = {}
    for key, tensor in sd.items():
        for pattern, rule in patterns:
            m = pattern.match(key)
            if m is None:
                continue
            i = m.groupdict().get("i")
            if i is not None and int(i) >= n_layers:
                raise ValueError(f"{family}: tensor {key!r} is for a layer past the config's {n_layers}")
            name = getattr(rule, dst).replace("{i}", i or "")
            out[name] = (rule.to_seqzoo if src == "hf" else rule.to_hf)(tensor)
            break
        else:
            raise ValueError(
                f"{family}: tensor {key!r} has no counterpart in seqzoo's model (unexpected key)"
            )
    expected = [
        getattr(r, dst).replace("{i}", str(i))
        for r in table
        for i in (range(n_layers) if "{i}" in getattr(r, dst) else [None])
    ]
    missing = [k for k in expected if k not in out]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        theirs = "the transformers checkpoint" if src == "hf" else "the seqzoo model"
        raise ValueError(f"{family}: {theirs} lacks tensors for: {shown}")
    return out


def weights_from_hf(
    family: str, sd: StateDict, table: list[Rename], n_layers: int, tied: bool, embed: str, head: str
) -> StateDict:
    """transformers -> seqzoo names. Tied heads: transformers' files hold the embedding alone (or the head as
    an equal copy); seqzoo's state dict names the one tensor twice (``embedding.weight``, ``head.weight``)."""
    sd = dict(sd)
    if tied:
        lm_head = sd.pop(head, None)
        if lm_head is not None and embed in sd and not torch.equal(lm_head, sd[embed]):
            raise UnsupportedHFConfig(
                family, "tie_word_embeddings", True, f"{head} differs from {embed} in the weights"
            )
    table = table + ([] if tied else [Rename(head, "head.weight")])
    out = _rename(sd, table, "hf", family, n_layers)
    if tied:
        out["head.weight"] = out["embedding.weight"]
    return out


def weights_to_hf(
    family: str, sd: StateDict, table: list[Rename], n_layers: int, tied: bool, head: str
) -> StateDict:
    """seqzoo -> transformers names; a tied head is left out, as transformers' save_pretrained does."""
    sd = dict(sd)
    if tied:
        sd.pop("head.weight", None)
    table = table + ([] if tied else [Rename(head, "head.weight")])
    return {k: v.contiguous() for k, v in _rename(sd, table, "seqzoo", family, n_layers).items()}


def conv_to_seqzoo(t: torch.Tensor) -> torch.Tensor:
    """A depthwise nn.Conv1d weight [C, 1, W] -> ShortConvolution's [C, W]."""
    if t.dim() != 3 or t.shape[1] != 1:
        raise ValueError(f"expected a depthwise conv1d weight [C, 1, W], got {tuple(t.shape)}")
    return t[:, 0]


def conv_to_hf(t: torch.Tensor) -> torch.Tensor:
    return t[:, None]


def single_mixer(family: str, cfg, name: str) -> dict:
    """The one mixer's kwargs of an LMConfig whose every layer is ``name`` (what the family can export)."""
    specs = cfg.layer_specs()
    names = {n for n, _ in specs}
    if names != {name}:
        raise UnsupportedHFConfig(family, "mixer", cfg.mixer, f"every layer must be {name!r}")
    kwargs = specs[0][1]
    if any(k != kwargs for _, k in specs):
        raise UnsupportedHFConfig(family, "mixer", cfg.mixer, "every layer must have the same settings")
    for fname, value in (
        ("mlp", "none"),
        ("block", "prenorm"),
        ("position_embeddings", 0),
        ("dropout", 0.0),
        ("embed_dropout", 0.0),
    ):
        if getattr(cfg, fname) != value:
            raise UnsupportedHFConfig(
                family, fname, getattr(cfg, fname), f"the transformers model has {value!r}"
            )
    if cfg.norm not in ("auto", "rms"):
        raise UnsupportedHFConfig(family, "norm", cfg.norm, "the transformers model has RMSNorm")
    return kwargs


# -- what the Mamba and Mamba-2 families share ----------------------------------------------------------------

MAMBA_HEAD = "lm_head.weight"
MAMBA_EMBED = "backbone.embeddings.weight"


def mamba_table(mixer_params: tuple[str, ...]) -> list[Rename]:
    """The renames of a transformers Mamba / Mamba-2 checkpoint: embedding, final norm, each block's norm, its
    depthwise conv ([E, 1, W] there, [E, W] here) and the mixer's own ``mixer_params`` (same names both sides)."""
    return [
        Rename(MAMBA_EMBED, "embedding.weight"),
        Rename("backbone.norm_f.weight", "backbone.final_norm.weight"),
        Rename("backbone.layers.{i}.norm.weight", "backbone.blocks.{i}.mixer_norm.weight"),
        Rename(
            "backbone.layers.{i}.mixer.conv1d.weight",
            "backbone.blocks.{i}.mixer.conv.weight",
            conv_to_seqzoo,
            conv_to_hf,
        ),
        Rename("backbone.layers.{i}.mixer.conv1d.bias", "backbone.blocks.{i}.mixer.conv.bias"),
        *[
            Rename(f"backbone.layers.{{i}}.mixer.{name}", f"backbone.blocks.{{i}}.mixer.{name}")
            for name in mixer_params
        ],
    ]


_MAMBA_BIASES = [  # only with use_bias
    Rename("backbone.layers.{i}.mixer.in_proj.bias", "backbone.blocks.{i}.mixer.in_proj.bias"),
    Rename("backbone.layers.{i}.mixer.out_proj.bias", "backbone.blocks.{i}.mixer.out_proj.bias"),
]


def select_mamba_table(table: list[Rename], use_bias: bool, use_conv_bias: bool) -> list[Rename]:
    """``table`` with the projections' biases (``use_bias``) and without the conv's bias (not ``use_conv_bias``)."""
    table = table + (_MAMBA_BIASES if use_bias else [])
    if not use_conv_bias:
        table = [r for r in table if not r.hf.endswith("conv1d.bias")]
    return table


def positive_expand(family: str, hf: dict) -> int:
    expand = field(family, hf, "expand", 2)
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 1:
        raise UnsupportedHFConfig(
            family, "expand", expand, f"seqzoo's {family} takes a positive integer expand"
        )
    return expand


def dt_init_from_hf(family: str, hf: dict) -> dict:
    """The layer's dt init from transformers' time_step_* fields: a fresh model's (after resizing, say), no
    effect on converted weights."""
    return {
        "dt_min": float(field(family, hf, "time_step_min", 1e-3)),
        "dt_max": float(field(family, hf, "time_step_max", 1e-1)),
        "dt_init_floor": float(field(family, hf, "time_step_floor", 1e-4)),
    }


def dt_init_to_hf(kw: dict) -> dict:
    return {
        "time_step_min": kw["dt_min"],
        "time_step_max": kw["dt_max"],
        "time_step_floor": kw["dt_init_floor"],
    }


def mamba_lm_config(family: str, hf: dict, mixer: str, kwargs: dict, norm_eps: float, tied: bool):
    """The LMConfig of a Mamba-family checkpoint: blocks of ``mixer`` with no MLP; pydantic's refusal becomes an
    UnsupportedHFConfig naming seqzoo's field."""
    from ...models.config import LMConfig

    try:
        return LMConfig(
            d_model=positive_int(family, hf, "hidden_size"),
            n_layers=positive_int(family, hf, "num_hidden_layers"),
            vocab_size=positive_int(family, hf, "vocab_size"),
            mixer=mixer,
            mixer_kwargs=kwargs,
            mlp="none",
            norm_eps=norm_eps,
            tie_embeddings=tied,
        )
    except ValueError as e:  # pydantic's, naming seqzoo's field
        raise UnsupportedHFConfig(family, "config", None, str(e)) from None


def mamba_config_to_hf(cfg, kw: dict, architecture: str, model_type: str, **own) -> dict:
    """The config.json fields a Mamba-family LMConfig shares with the other family, then the family's ``own``."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "state_size": kw["d_state"],
        "conv_kernel": kw["d_conv"],
        "expand": kw["expand"],
        "use_bias": kw["bias"],
        "use_conv_bias": kw["conv_bias"],
        "hidden_act": "silu",
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        **dt_init_to_hf(kw),
        "residual_in_fp32": True,
        **own,
    }
