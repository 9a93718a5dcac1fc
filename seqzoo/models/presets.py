"""Named model configurations: a preset is a function returning an :class:`LMConfig`.

    config = preset("griffin", d_model=512, n_layers=6)     # -> LMConfig
    model = CausalLM(config)

- ``hawk``: every block a Griffin recurrent block (``rglru``) followed by a gated-GeLU MLP (De et al. 2024).
  Hawk is this model; its block is the mixer ``rglru`` (a mixer named ``hawk`` is an error that says so).
- ``griffin``: the repeating pattern recurrent, recurrent, local multi-query attention (``sliding_window``
  with one key/value head and a window of 1024 tokens), each followed by a gated-GeLU MLP.

Hybrids of linear and full attention after "A Systematic Analysis of Hybrid Linear Attention" (Wang et al.
2025), which recommends Gated DeltaNet or HGRN2 with a linear-to-full ratio between 3:1 and 6:1:

- ``hybrid-gated_deltanet-3to1``, ``hybrid-gated_deltanet-6to1``, ``hybrid-hgrn2-3to1``, ``hybrid-hgrn2-6to1``:
  the repeating pattern of r linear-attention layers (with their paper settings (their records,
  ``seqzoo.models.mixer_settings``); Gated DeltaNet with the paper's key head size 256) and one full attention
  layer (RoPE, one head per 64 channels), each followed by a SwiGLU MLP (ratio 4, as fla's models).
  n_layers must be a multiple of r + 1, so the ratio is exact; the defaults are d_model 1024 and the multiple
  of r + 1 nearest 24 layers (24 for 3:1, 21 for 6:1): fla's 340M shape (the paper trains 340M and 1.3B
  models in fla; its exact layer placement is not reproduced here: attention closes each group of r + 1).
  Their attention layers keep a KV cache: decoding memory grows with the length, r + 1 times slower than a
  Transformer's.

Based (Arora et al. 2024), the architecture around its Taylor linear attention:

- ``based``: the repeating pattern BaseConv, Based linear attention, sliding-window attention (window 64),
  BaseConv, BaseConv (the layer placement of the Based repository's 360M model: linear attention at layers
  1, 6, 11, ..., the window at 2, 7, 12, ..., BaseConv elsewhere), each followed by a SwiGLU MLP; every mixer
  with its paper settings. Defaults d_model 1024, 27 layers (the paper's 360M shape).

- ``recurrentgemma-2b``: Google's RecurrentGemma 2B as transformers' ``RecurrentGemmaForCausalLM`` builds it
  (the published config.json through ``seqzoo.interop.hf.recurrent_gemma``): Griffin's pattern with biases on
  the recurrent block and MLP projections, Gemma norms (1 + w), MLP width 3 d per branch, local MQA of window
  2048 with head size 256 and RoPE on half of each head, embeddings scaled by bf16(sqrt(d)), logits soft-capped
  at 30; for converted checkpoints. Keywords override LMConfig fields.

Hawk and Griffin decode in constant memory: the recurrent blocks hold a convolution buffer and an RG-LRU
state, the local attention a ring buffer of its window. Griffin's sizes: MLP expansion 3, attention head
size 128, recurrence width equal to the model width, as many gate blocks as attention heads. Any other keyword
becomes an LMConfig field (vocab_size, mlp_ratio, norm_eps, tie_embeddings, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..registry import constructor_defaults
from .config import LMConfig
from .mixer_settings import with_paper_settings

# The RG-LRU block's temporal convolution width: the layer's default (Griffin: 4; rglru's record).
CONV_WIDTH = constructor_defaults("rglru")["conv_width"]

# Griffin's MLP expansion and attention head size.
MLP_RATIO = 3.0
HEAD_DIM = 128


def _heads(width: int) -> int:
    """Heads of size HEAD_DIM where the width allows, else the largest divisor of the width below that."""
    n = max(1, width // HEAD_DIM)
    while width % n:
        n -= 1
    return n


def hawk(
    d_model: int = 1024,
    n_layers: int = 12,
    lru_width: int | None = None,
    n_heads: int | None = None,
    conv_width: int = CONV_WIDTH,
    **config: Any,
) -> LMConfig:
    """Hawk: recurrent blocks only, gated-GeLU MLPs."""
    width = d_model if lru_width is None else lru_width
    recurrent = {
        "name": "rglru",
        "lru_width": width,
        "n_heads": n_heads or _heads(width),
        "conv_width": conv_width,
    }
    return _config(d_model, n_layers, [recurrent], config)


def griffin(
    d_model: int = 1024,
    n_layers: int = 12,
    lru_width: int | None = None,
    n_heads: int | None = None,
    window: int = 1024,
    conv_width: int = CONV_WIDTH,
    **config: Any,
) -> LMConfig:
    """Griffin: (recurrent, recurrent, local MQA) repeated to n_layers, gated-GeLU MLPs."""
    width = d_model if lru_width is None else lru_width
    heads = n_heads or _heads(d_model)
    # The gates have one block per attention head, when the recurrence width splits that way.
    blocks = heads if width % heads == 0 else _heads(width)
    recurrent = {"name": "rglru", "lru_width": width, "n_heads": blocks, "conv_width": conv_width}
    local = {"name": "sliding_window", "n_heads": heads, "n_kv_heads": 1, "window": window}
    return _config(d_model, n_layers, [recurrent, recurrent, local], config)


def _config(d_model: int, n_layers: int, mixers: list, config: dict) -> LMConfig:
    if "mixer" in config:
        raise ValueError(
            "a preset fixes its mixers: give its own keywords (lru_width, n_heads, window, conv_width; "
            "linear_kwargs, attention_kwargs) instead of mixer"
        )
    return LMConfig(
        **{
            "mlp": "geglu",
            "mlp_ratio": MLP_RATIO,
            **config,
            "d_model": d_model,
            "n_layers": n_layers,
            "mixer": mixers,
        }
    )


# Wang et al. 2025's recommended linear-attention mixers for hybrids and the linear-to-full ratios r (r:1).
HYBRID_LINEAR_MIXERS = ("gated_deltanet", "hgrn2")
HYBRID_RATIOS = (3, 6)
# fla's 340M shape (24 layers of width 1024), the smaller of the paper's two model sizes.
HYBRID_LAYERS, HYBRID_D_MODEL = 24, 1024
# Head sizes of the linear mixers at this scale where their paper fixes one (Gated DeltaNet: 256 for keys).
HYBRID_HEAD_DIM = {"gated_deltanet": 256}


def hybrid_linear_attention(
    linear: str,
    ratio: int,
    d_model: int = HYBRID_D_MODEL,
    n_layers: int | None = None,
    linear_kwargs: dict[str, Any] | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    **config: Any,
) -> LMConfig:
    """(``ratio`` x ``linear``, attention) repeated to n_layers: a linear-to-full attention ratio of ratio:1.

    ``linear_kwargs`` override the linear mixer's paper settings, ``attention_kwargs`` go to the attention
    layers; any other keyword becomes an LMConfig field."""
    if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1:
        raise ValueError(f"ratio must be a positive int (linear layers per attention layer), got {ratio!r}")
    group = ratio + 1
    if n_layers is None:
        n_layers = group * max(1, round(HYBRID_LAYERS / group))
    if not isinstance(n_layers, int) or n_layers < group or n_layers % group:
        raise ValueError(
            f"n_layers must be a positive multiple of ratio + 1 = {group} (so the ratio is exactly {ratio}:1), "
            f"got {n_layers!r}"
        )
    heads = {"n_heads": max(1, d_model // HYBRID_HEAD_DIM[linear])} if linear in HYBRID_HEAD_DIM else {}
    linear_entry = with_paper_settings({"name": linear, **heads, **(linear_kwargs or {})})
    attention = {"name": "attention", **(attention_kwargs or {})}
    return _config(
        d_model, n_layers, [linear_entry] * ratio + [attention], {"mlp": "swiglu", "mlp_ratio": 4.0, **config}
    )


BASED_WINDOW = 64


def based(
    d_model: int = 1024,
    n_layers: int = 27,
    window: int = BASED_WINDOW,
    linear_kwargs: dict[str, Any] | None = None,
    **config: Any,
) -> LMConfig:
    """Based: (base_conv, based, sliding_window, base_conv, base_conv) repeated to n_layers, SwiGLU MLPs."""
    conv = with_paper_settings("base_conv")
    linear = with_paper_settings({"name": "based", **(linear_kwargs or {})})
    local = {"name": "sliding_window", "window": window}
    return _config(
        d_model, n_layers, [conv, linear, local, conv, conv], {"mlp": "swiglu", "mlp_ratio": 4.0, **config}
    )


def recurrentgemma_2b(**config: Any) -> LMConfig:
    """RecurrentGemma 2B (google/recurrentgemma-2b's config.json converted); keywords override LMConfig fields."""
    from ..interop.hf.recurrent_gemma import RECURRENTGEMMA_2B, config_from_hf  # the interop imports models

    if "mixer" in config:
        raise ValueError("recurrentgemma-2b fixes its mixers; give LMConfig fields other than mixer")
    return LMConfig(**{**config_from_hf(RECURRENTGEMMA_2B).model_dump(), **config})


PRESETS: dict[str, Callable[..., LMConfig]] = {
    "hawk": hawk,
    "griffin": griffin,
    "based": based,
    "recurrentgemma-2b": recurrentgemma_2b,
}
for _linear in HYBRID_LINEAR_MIXERS:
    for _ratio in HYBRID_RATIOS:
        PRESETS[f"hybrid-{_linear}-{_ratio}to1"] = partial(hybrid_linear_attention, _linear, _ratio)


def preset(name: str, **kwargs: Any) -> LMConfig:
    """The LMConfig of preset ``name`` (see :data:`PRESETS`), with ``kwargs`` overriding its defaults."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a string, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
