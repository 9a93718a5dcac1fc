"""Named model configurations: a preset is a function returning an :class:`LMConfig`.

    config = preset("griffin", d_model=512, n_layers=6)     # -> LMConfig
    model = CausalLM(config)

- ``hawk``: every block a Griffin recurrent block (``rglru``) followed by a gated-GeLU MLP (De et al. 2024).
- ``griffin``: the repeating pattern recurrent, recurrent, local multi-query attention (``sliding_window``
  with one key/value head and a window of 1024 tokens), each followed by a gated-GeLU MLP.

Both decode in constant memory: the recurrent blocks hold a convolution buffer and an RG-LRU state, the
local attention a ring buffer of its window. Griffin's sizes: MLP expansion 3, attention head size 128,
recurrence width equal to the model width, as many gate blocks as attention heads. Any other keyword
becomes an LMConfig field (vocab_size, mlp_ratio, norm_eps, tie_embeddings, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import LMConfig
from .mixer_settings import settings_for

# The RG-LRU block's temporal convolution width, from the per-mixer settings table (Griffin: 4).
CONV_WIDTH = settings_for("rglru").kwargs["conv_width"]

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
            "a preset fixes its mixers: give lru_width, n_heads, window or conv_width instead of mixer"
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


PRESETS: dict[str, Callable[..., LMConfig]] = {"hawk": hawk, "griffin": griffin}


def preset(name: str, **kwargs: Any) -> LMConfig:
    """The LMConfig of preset ``name`` (see :data:`PRESETS`), with ``kwargs`` overriding its defaults."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a string, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
