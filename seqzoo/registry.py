"""The mixer registry: every mixer is built by name with keyword arguments, and carries its record.

@register_mixer("short_conv", description="...", paper="...", family="short convolution", ...)
class ShortConv(Mixer): ...

mixer = build_mixer("short_conv", d_model=64, width=4)
list_mixers()   # {"short_conv": MixerRecord(...), ...}

A mixer's :class:`MixerRecord` holds every per-mixer fact the library uses beyond its constructor: its
paper settings (only values that differ from the constructor's defaults), the keyword set to the task's
length, the MLP it wants in an LM block, small test kwargs, its MQAR learning rate, its Long Range Arena
settings and its family. The recipe (``seqzoo.models.mixer_settings``), the presets, the MQAR sweep, the
demo, the LRA settings and the tests read the records; nothing else states a per-mixer value.

The registry imports no layer: ``import seqzoo`` (which any ``seqzoo.*`` import runs first) imports
``seqzoo.layers``, whose modules register the built-in mixers, so the dependency runs one way.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn


def _frozen(mapping: Mapping | None, what: str) -> Mapping:
    if mapping is None:
        return MappingProxyType({})
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(mapping).__name__}")
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class LRASettings:
    """How a mixer runs on Long Range Arena, on top of the task's config (``train/configs/lra-<task>.yaml``,
    the S4 paper's settings) and the mixer's paper settings.

    ``kwargs``: mixer keywords for LRA only (over its paper settings); ``overrides``: dotted config keys ->
    values (its paper's block and optimiser); ``note``: where they come from, what is not from a paper."""

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "kwargs", _frozen(self.kwargs, "LRASettings.kwargs"))
        object.__setattr__(self, "overrides", _frozen(self.overrides, "LRASettings.overrides"))


@dataclass(frozen=True)
class MixerRecord:
    """Everything the library states about one mixer, beside its layer (see the module docstring).

    name, cls, description, paper: what it is (``seqzoo.list_mixers()`` prints them).
    family: the kind of mixer (``seqzoo demo`` runs one per family: the one with ``demo=True``).
    paper_settings: the keywords its paper's small models use that differ from the constructor's defaults
        (a value equal to the default is the default's to state; a test checks), from ``settings_source``.
    seq_len_kwarg: a keyword set to the task's sequence length (S4's kernel length ``l_max``).
    lm_mlp: the MLP its paper puts after it in an LM block (``model.mlp: auto``); None: the model's default.
    test_kwargs: small settings that keep the test suite fast (at d_model 16 to 32).
    mqar_lr: its learning rate in the CPU MQAR sweep (``mixer_lrs: record``); None: the sweep's ``lrs``.
    lra: its Long Range Arena settings; None: the task config's block and optimiser.
    """

    name: str
    cls: type
    description: str
    paper: str
    family: str = ""
    demo: bool = False
    paper_settings: Mapping[str, Any] = field(default_factory=dict)
    settings_source: str = ""
    seq_len_kwarg: str | None = None
    lm_mlp: str | None = None
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mqar_lr: float | None = None
    lra: LRASettings | None = None

    def __post_init__(self):
        for key in ("name", "description", "paper", "family", "settings_source"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(f"mixer record: {key} must be a string, got {getattr(self, key)!r}")
        for key in ("paper_settings", "test_kwargs"):
            object.__setattr__(self, key, _frozen(getattr(self, key), f"mixer {self.name!r}: {key}"))
        if self.seq_len_kwarg is not None and not isinstance(self.seq_len_kwarg, str):
            raise TypeError(f"mixer {self.name!r}: seq_len_kwarg must be a string or None")
        if self.lm_mlp is not None and self.lm_mlp not in ("swiglu", "geglu", "gelu", "none"):
            raise ValueError(
                f"mixer {self.name!r}: lm_mlp must be swiglu, geglu, gelu or none, got {self.lm_mlp!r}"
            )
        if self.mqar_lr is not None and (
            not isinstance(self.mqar_lr, (int, float))
            or isinstance(self.mqar_lr, bool)
            or not self.mqar_lr > 0
        ):
            raise ValueError(f"mixer {self.name!r}: mqar_lr must be a positive number, got {self.mqar_lr!r}")
        if self.lra is not None and not isinstance(self.lra, LRASettings):
            raise TypeError(f"mixer {self.name!r}: lra must be an LRASettings, got {type(self.lra).__name__}")

    @property
    def encoder_only(self) -> bool:
        """True for a mixer whose class is bidirectional whatever its arguments (vig): it has no causal mode, so
        no language model, MQAR run or tiny LM config."""
        return bool(getattr(self.cls, "bidirectional", False))

    def __str__(self) -> str:
        return f"{self.name}: {self.description} [{self.paper}]"


# The record's old name (seqzoo <= issue 25), for code that imports it.
MixerInfo = MixerRecord

_MIXERS: dict[str, MixerRecord] = {}

# Mixer names that were removed, with what to use instead (a config or saved model naming one says so).
REMOVED_MIXERS = {
    "hawk": "the mixer 'hawk' was removed: the block is the mixer 'rglru' (the same parameters and init: "
    "rename the mixer in the config or the saved model's config.json); Hawk the model (RG-LRU blocks with "
    "gated-GeLU MLPs) is the preset seqzoo.models.preset('hawk')",
}


def register_mixer(name: str, *, description: str, paper: str, **record: Any):
    """Class decorator: make a :class:`seqzoo.layers.Mixer` subclass buildable as ``name``.

    ``record`` holds the optional :class:`MixerRecord` fields (family, paper_settings, settings_source,
    seq_len_kwarg, lm_mlp, test_kwargs, mqar_lr, lra, demo); a user's own mixer needs none of them."""
    unknown = set(record) - {f for f in MixerRecord.__dataclass_fields__ if f not in ("name", "cls")}
    if unknown:
        raise TypeError(f"register_mixer({name!r}): unknown record field(s) {sorted(unknown)}")

    def add(cls):
        if name in _MIXERS and _MIXERS[name].cls is not cls:
            raise ValueError(
                f"a mixer named {name!r} is already registered ({_MIXERS[name].cls.__qualname__})"
            )
        entry = MixerRecord(name, cls, description, paper, **record)
        _check_record_kwargs(entry)
        cls.mixer_name = name
        _MIXERS[name] = entry
        return cls

    return add


def _check_record_kwargs(entry: MixerRecord) -> None:
    """A record's keywords are ones its constructor takes, of the annotated type."""
    for what, kwargs in (("paper_settings", entry.paper_settings), ("test_kwargs", entry.test_kwargs)):
        try:
            _check_kwargs(entry.name, entry.cls, dict(kwargs))
        except (TypeError, ValueError) as e:
            raise type(e)(f"register_mixer({entry.name!r}): {what}: {e}") from None


def list_mixers() -> dict[str, MixerRecord]:
    """Every registered mixer by name: its record (a one-line description, its paper, its settings)."""
    return dict(sorted(_MIXERS.items()))


def mixer_class(name: str) -> type:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    if name not in _MIXERS:
        if name in REMOVED_MIXERS:
            raise ValueError(REMOVED_MIXERS[name])
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
    _check_kwargs(name, mixer_class(name), kwargs)


def mixer_record(name: str) -> MixerRecord:
    """The record of mixer ``name`` (ValueError naming the registered mixers for an unknown name)."""
    mixer_class(name)
    return _MIXERS[name]


def _check_kwargs(name: str, cls: type, kwargs: dict) -> None:
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p not in ("self", "d_model")]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise TypeError(f"mixer {name!r} got unknown argument(s) {unknown}; it accepts {accepted}")
    annotations = _annotations(cls)
    for key, value in kwargs.items():
        _check_annotated(name, key, value, annotations.get(key))


def constructor_defaults(name: str) -> dict[str, Any]:
    """The default of every keyword mixer ``name``'s constructor takes (along the classes above it, for a
    ``**kwargs`` constructor that passes its keywords on): what ``build_mixer(name, d)`` builds with."""
    out: dict[str, Any] = {}
    for klass in reversed(mixer_class(name).__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for key, p in inspect.signature(init).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out[key] = p.default
    return out


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
