"""Each mixer's settings as its paper builds it at small scale, read from the mixer's record (its
``register_mixer`` beside the layer): what the recipe, the MQAR sweeps, the demo and the presets use.

    entry = with_paper_settings("gla", seq_len=64)          # {"name": "gla", "use_short_conv": True, ...}
    entry = with_paper_settings({"name": "s4", "d_state": 32}, seq_len=256)   # the entry's own keys win

A comparison between mixers is fair only when each one runs as its paper runs it: linear attention without
the short convolution that GLA, Based, DeltaNet and Zoology put in front of it cannot do MQAR at all (0.05
against 0.99 at the same budget), which says nothing about the mixer. The layers' own defaults stay minimal
(``build_mixer("gla", 64)`` has no convolution), so that a layer is what its arguments say; a record's
``paper_settings`` are what the library's configs add on top, and hold only the values that differ from the
constructor's defaults (the paper's other values are the defaults; ``settings_source`` says where all of them
come from). A config opts out with ``model.mixer_settings: none``.

Heads: every layer defaults to one head per 64 channels of d_model (head size 64, as GPT-2 small and the
papers' small models), so at MQAR's d_model 64 there is one head, as in Zoology's attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import list_mixers, mixer_record

# The MLP of a model whose mixers' records name none (LMConfig's default).
DEFAULT_MLP = "swiglu"


@dataclass(frozen=True)
class MixerSettings:
    """A view of one mixer's record: its paper settings, where they come from, its length keyword."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    # A keyword set to the task's sequence length (S4's kernel length l_max), when the task has one.
    seq_len_kwarg: str | None = None


def settings_for(name: str) -> MixerSettings:
    """Mixer ``name``'s paper settings, from its record (ValueError naming the registered mixers for an
    unknown name)."""
    record = mixer_record(name)
    return MixerSettings(dict(record.paper_settings), record.settings_source, record.seq_len_kwarg)


def with_paper_settings(entry: str | dict[str, Any], seq_len: int | None = None) -> dict[str, Any]:
    """A mixer entry (a name, or a dict with "name" and kwargs) with the table's settings filled in.

    The entry's own keys override the table's; ``seq_len`` fills the mixer's length keyword (S4's l_max)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"a mixer entry is a name or a dict with a 'name' key, got {entry!r}")
    settings = settings_for(entry["name"])
    out = {"name": entry["name"], **settings.kwargs}
    if settings.seq_len_kwarg and seq_len is not None:
        out[settings.seq_len_kwarg] = seq_len
    out.update({k: v for k, v in entry.items() if k != "name"})
    return out


def resolve_mixers(mixer, seq_len: int | None = None, mixer_kwargs: dict | None = None) -> list[dict]:
    """A model's ``mixer`` value (a name, an entry, or a list of them) as explicit entries with the table's
    settings; ``mixer_kwargs`` (given to every layer) override the table, an entry's own keys override both."""
    entries = mixer if isinstance(mixer, list) else [mixer]
    out = []
    for e in entries:
        e = {"name": e} if isinstance(e, str) else dict(e)
        out.append(with_paper_settings({"name": e.pop("name"), **(mixer_kwargs or {}), **e}, seq_len))
    return out


def markdown_table() -> str:
    """The records' settings as markdown (the README shows it; a test keeps the two equal): per mixer, the
    keywords its paper sets beyond the layer's defaults, its LM block's MLP, and where they come from."""
    lines = [
        "| mixer | family | settings beyond the layer's defaults | LM MLP | from |",
        "|---|---|---|---|---|",
    ]
    for name, record in list_mixers().items():
        kw = {**record.paper_settings, **({record.seq_len_kwarg: "seq_len"} if record.seq_len_kwarg else {})}
        shown = ", ".join(f"{k}={v}" for k, v in kw.items()) or "(layer defaults)"
        mlp = record.lm_mlp or "(model's)"
        lines.append(f"| `{name}` | {record.family} | {shown} | {mlp} | {record.settings_source} |")
    return "\n".join(lines) + "\n"


def lm_mlp_for(mixer) -> str:
    """The MLP a model's mixers ask for in an LM block (their records' ``lm_mlp``; swiglu, the model's default,
    where a record names none): what ``model.mlp: auto`` becomes. ``mixer`` is a model's mixer value (a name,
    an entry, or a list of them); mixers asking for different MLPs raise a ValueError naming model.mlp."""
    entries = mixer if isinstance(mixer, list) else [mixer]
    names = [e if isinstance(e, str) else (e or {}).get("name") for e in entries]
    wanted = {n: mixer_record(n).lm_mlp or DEFAULT_MLP for n in dict.fromkeys(names)}
    if len(set(wanted.values())) > 1:
        raise ValueError(
            f"model.mlp auto: the mixers ask for different MLPs ({wanted}); name the MLP (swiglu, geglu, "
            "gelu, none)"
        )
    return next(iter(wanted.values()))
