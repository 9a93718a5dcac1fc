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
import math
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
    check_mixer_kwargs(name, kwargs)
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
        raise ValueError(f"mixer {name!r}: d_model must be a positive int, got {d_model!r}")
    return cls(d_model, **kwargs)


def check_mixer_kwargs(name: str, kwargs: dict) -> None:
    """The checks that need no layer built: every keyword is one the mixer takes (else TypeError, as Python
    says of an unexpected keyword), of the type its constructor annotates (an int, not a bool or "4"; a finite
    number; a known backend: else MixerArgumentError / ValueError). The error names the keyword.
    Values within the type (ranges, divisibility) are the layer's own checks, when it is built."""
    cls = mixer_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p not in ("self", "d_model")]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise TypeError(f"mixer {name!r} got unknown argument(s) {unknown}; it accepts {accepted}")
    annotations = _annotations(cls)
    for key, value in kwargs.items():
        _check_annotated(name, key, value, annotations.get(key))


def _annotations(cls: type) -> dict[str, str]:
    """The constructor's annotations as strings, by argument; a ``**kwargs`` constructor that passes its
    keywords on (``sliding_window`` to ``attention``) adds those of the classes above it."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for key, p in inspect.signature(init).parameters.items():
            if p.annotation is not inspect.Parameter.empty:
                ann = p.annotation
                out[key] = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return out


class MixerArgumentError(ValueError, TypeError):
    """A mixer keyword of the wrong type. Both a TypeError (what it is) and a ValueError (what the layers' own
    check_int / check_bool raise for the same mistake), so that either ``except`` catches it."""


def _is_backend(key: str) -> bool:
    return key == "backend" or key.endswith("_backend")


def _known_backends() -> set[str]:
    from . import ops

    return {"auto"} | {b for op in ops.list_ops().values() for b in op.backend_names()}


def _check_annotated(mixer: str, key: str, value, annotation: str | None) -> None:
    """A keyword's type, as the constructor annotates it (``int``, ``float``, ``bool``, ``str``, ``tuple[...]``,
    each ``| None``): a :class:`MixerArgumentError` naming it (a ValueError for a float that is not finite or an
    unknown backend).
    Values within the type are the layer's own checks (check_int / check_float / check_bool)."""
    if annotation is None:
        return
    kinds = {a.strip().split("[")[0] for a in annotation.split("|")}
    if not kinds <= {"int", "float", "bool", "str", "tuple", "None"}:
        return  # an annotation this check does not read: the layer checks it
    if value is None:
        if "None" not in kinds:
            raise MixerArgumentError(f"mixer {mixer!r}: {key} must be {_expected(kinds)}, got None")
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = (
        (isinstance(value, bool) and "bool" in kinds)
        or (is_int and ("int" in kinds or "float" in kinds))
        or (isinstance(value, float) and "float" in kinds)
        or (isinstance(value, str) and "str" in kinds)
        or (isinstance(value, (tuple, list)) and "tuple" in kinds)
    )
    if not ok:
        raise MixerArgumentError(f"mixer {mixer!r}: {key} must be {_expected(kinds)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"mixer {mixer!r}: {key} must be a finite number, got {value!r}")
    if isinstance(value, str) and _is_backend(key) and value not in _known_backends():
        raise ValueError(
            f"mixer {mixer!r}: unknown {key} {value!r}; expected one of {sorted(_known_backends())}"
        )


def _expected(kinds: set[str]) -> str:
    words = {"int": "an int", "float": "a number", "bool": "a bool", "str": "a string", "tuple": "a tuple"}
    names = [words[k] for k in ("int", "float", "bool", "str", "tuple") if k in kinds]
    if "None" in kinds:
        names.append("None")
    return " or ".join(names)
