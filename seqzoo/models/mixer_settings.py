"""Each mixer's settings as its paper builds it at small scale: the one table the recipe, the MQAR sweeps,
the demo and the presets read.

    entry = with_paper_settings("gla", seq_len=64)          # {"name": "gla", "use_short_conv": True, ...}
    entry = with_paper_settings({"name": "s4", "d_state": 32}, seq_len=256)   # the entry's own keys win

A comparison between mixers is fair only when each one runs as its paper runs it: linear attention without
the short convolution that GLA, Based, DeltaNet and Zoology put in front of it cannot do MQAR at all (0.05
against 0.99 at the same budget), which says nothing about the mixer. The layers' own defaults stay minimal
(``build_mixer("gla", 64)`` has no convolution), so that a layer is what its arguments say; this table is
what the library's configs add on top. A config opts out with ``model.mixer_settings: none``.

Heads: every layer defaults to one head per 64 channels of d_model (head size 64, as GPT-2 small and the
papers' small models), so at MQAR's d_model 64 there is one head, as in Zoology's attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MixerSettings:
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    # A keyword set to the task's sequence length (S4's kernel length l_max), when the task has one.
    seq_len_kwarg: str | None = None


# Zoology's MQAR models and GLA/DeltaNet/Based put a short causal convolution (width 4, SiLU; fla's
# ShortConvolution) on q, k and v of linear attention.
_SHORT_CONV = {"use_short_conv": True, "conv_width": 4}

MIXER_SETTINGS: dict[str, MixerSettings] = {
    "attention": MixerSettings(
        {}, "Vaswani et al. 2017 with RoPE; one head per 64 channels (Zoology: 1 head)"
    ),
    "sliding_window": MixerSettings({}, "Beltagy et al. 2020; the window is the task's knob (state = 2 W d)"),
    "short_conv": MixerSettings({"width": 4}, "Zoology's short-convolution baseline, width 4"),
    "gla": MixerSettings(
        {**_SHORT_CONV, "expand_k": 0.5, "expand_v": 1.0, "gate_low_rank": 16},
        "Yang et al. 2023: keys d/2, values d, low-rank gate 16; short conv as in fla and Zoology's MQAR models",
    ),
    "retnet": MixerSettings(
        {**_SHORT_CONV, "expand_k": 1.0, "expand_v": 2.0},
        "Sun et al. 2023: values 2d, rotary positions, fixed per-head decays; short conv as in Zoology/fla",
    ),
    "lightning": MixerSettings(
        {**_SHORT_CONV, "feature_map": "silu"},
        "Qin et al. 2023 (TransNormerLLM): SiLU features, ALiBi-slope decays; short conv as in Zoology/fla",
    ),
    "hgrn2": MixerSettings(
        {**_SHORT_CONV, "expand_ratio": 128},
        "Qin et al. 2024: state expansion 128; short conv on q and input (Zoology-style, not in the paper)",
    ),
    "linear_attention": MixerSettings(
        {**_SHORT_CONV, "feature_map": "elu+1"},
        "Katharopoulos et al. 2020: elu+1 features; short conv as in Zoology's MQAR models",
    ),
    "flow": MixerSettings({}, "Wu et al. 2022 (Flowformer): sigmoid features, no convolution"),
    "rglru": MixerSettings({"conv_width": 4}, "De et al. 2024 (Griffin): temporal conv width 4, width d"),
    "hawk": MixerSettings({"conv_width": 4}, "De et al. 2024 (Griffin): temporal conv width 4, width d"),
    "deltanet": MixerSettings(
        {**_SHORT_CONV, "expand_k": 1.0, "expand_v": 1.0},
        "Yang et al. 2024: keys and values d, SiLU + L2-normalised q/k, beta = sigmoid, short conv on q/k/v "
        "as in the paper and fla; output gate (fla's use_gate=True, its default is False); one head per 64 "
        "channels",
    ),
    "gated_deltanet": MixerSettings(
        {**_SHORT_CONV, "expand_k": 1.0, "expand_v": 2.0},
        "Yang, Kautz & Hatamizadeh 2024: values 2x keys, short conv, output gate, A in [1, 16], dt in "
        "[1e-3, 0.1]; the paper's head dim is 256 (keys 0.75 d at 1.3B), here one head per 64 channels of "
        "keys (head dims 64 / 128) at small d",
    ),
    "mamba2": MixerSettings(
        {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "n_groups": 1},
        "Dao and Gu 2024: N 128, head dim 64, expand 2, conv 4, one B/C group, A in [1, 16], dt in "
        "[1e-3, 0.1]",
    ),
    "mamba": MixerSettings(
        {"d_state": 16, "d_conv": 4, "expand": 2}, "Gu and Dao 2023: N 16, conv 4, expand 2, S4D-Real A"
    ),
    "s4": MixerSettings(
        {"d_state": 64}, "Gu et al. 2022: N 64, HiPPO-LegS, kernel length = the task's", seq_len_kwarg="l_max"
    ),
    "s4d": MixerSettings({"d_state": 64}, "Gu et al. 2022 (S4D): N 64, S4D-LegS init, ZOH"),
    "base_conv": MixerSettings(
        {"short_width": 3, "filter_order": 16, "emb_dim": 3},
        "Arora et al. 2023 (Zoology's BaseConv): short conv 3 plus implicit long conv (filter MLP width 16, "
        "emb_dim 3, Sin freq 1), input added back; kernel length = the task's",
        seq_len_kwarg="l_max",
    ),
    "hyena": MixerSettings(
        {"order": 2, "filter_order": 64, "emb_dim": 5, "sin_freq": 10.0, "short_width": 3},
        "Poli et al. 2023, safari's associative-recall config: order 2, filter MLP width 64, emb_dim 5, "
        "Sin freq 10, short filter 3, frozen positional features; kernel length = the task's",
        seq_len_kwarg="l_max",
    ),
    "orchid": MixerSettings(
        {"n_kernels": 4, "filter_order": 64, "short_width": 3, "cond_width": 3},
        "Karami and Ghodsi 2024, the authors' OrchidOperator defaults (order 2, filter MLP width 64, short "
        "filter 3, conditioning conv 3, residual long conv); causal variant with 4 basis kernels (orchid.py)",
        seq_len_kwarg="l_max",
    ),
    "based": MixerSettings(
        {"feature_dim": 16},
        "Arora et al. 2024: Taylor feature dim 16 (273 expanded), normalised, no convolution inside the layer "
        "(the Based architecture adds BaseConv layers: `base_conv`; Zoology's MQAR uses 1 head at d 64, as here)",
    ),
    "liger": MixerSettings(
        {"window": 64, "gla_weight": 0.5, "swa_weight": 0.5},
        "Lan et al. 2025: softmax feature maps, gate logsigmoid(k)/16 (no new parameters), window 64, "
        "0.5 GLA + 0.5 SWA",
    ),
    "lizard": MixerSettings(
        {"window": 64, "n_meta": 4},
        "Van Nguyen et al. 2025: Hedgehog feature maps, learned per-head gate, 4 meta tokens, window 64 "
        "(a public re-implementation uses 128), RoPE-free",
    ),
}


def settings_for(name: str) -> MixerSettings:
    """The table's entry for mixer ``name`` (an empty one for a mixer the table does not list)."""
    return MIXER_SETTINGS.get(name, MixerSettings())


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
    """The table as markdown (the README shows it; a test keeps the two equal)."""
    lines = ["| mixer | settings | from |", "|---|---|---|"]
    for name, s in MIXER_SETTINGS.items():
        kw = {**s.kwargs, **({s.seq_len_kwarg: "seq_len"} if s.seq_len_kwarg else {})}
        shown = ", ".join(f"{k}={v}" for k, v in kw.items()) or "(layer defaults)"
        lines.append(f"| `{name}` | {shown} | {s.source} |")
    return "\n".join(lines) + "\n"
