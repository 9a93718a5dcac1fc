"""The mixer registry: every mixer is built by name with keyword arguments.

@register_mixer("short_conv", description="...", paper="...")
class ShortConv(Mixer): ...

mixer = build_mixer("short_conv", d_model=64, width=4)
list_mixers()   # {"short_conv": MixerInfo(...), ...}

The registry imports no layer: ``import seqzoo`` (which any ``seqzoo.*`` import runs first) imports
``seqzoo.layers``, whose modules register the built-in mixers, so the dependency runs one way.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class MixerInfo:
    name: str
    cls: type
    description: str
    paper: str

    def __str__(self) -> str:
        return f"{self.name}: {self.description} [{self.paper}]"


_MIXERS: dict[str, MixerInfo] = {}


def register_mixer(name: str, *, description: str, paper: str):
    """Class decorator: make a :class:`seqzoo.layers.Mixer` subclass buildable as ``name``."""

    def add(cls):
        if name in _MIXERS and _MIXERS[name].cls is not cls:
            raise ValueError(
                f"a mixer named {name!r} is already registered ({_MIXERS[name].cls.__qualname__})"
            )
        cls.mixer_name = name
        _MIXERS[name] = MixerInfo(name, cls, description, paper)
        return cls

    return add


def list_mixers() -> dict[str, MixerInfo]:
    """Every registered mixer by name, with a one-line description and its paper."""
    return dict(sorted(_MIXERS.items()))


def mixer_class(name: str) -> type:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    if name not in _MIXERS:
        close = difflib.get_close_matches(name, list(_MIXERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown mixer {name!r}{hint}; registered mixers: {sorted(_MIXERS)}")
    return _MIXERS[name].cls


def build_mixer(name: str, d_model: int, **kwargs) -> nn.Module:
    """Build the mixer registered as ``name`` for width ``d_model``; ``kwargs`` go to its constructor."""
    cls = mixer_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p not in ("self", "d_model")]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise TypeError(f"mixer {name!r} got unknown argument(s) {unknown}; it accepts {accepted}")
    return cls(d_model, **kwargs)
