"""How each mixer runs on Long Range Arena: the task's config (``train/configs/lra-<task>.yaml``, the S4 paper's
settings) with the mixer's own block and optimiser settings on top.

The shipped configs hold S4D's settings (the S4 paper's table: post- or pre-norm with BatchNorm, no MLP, lr
0.01 with the SSM parameters at 1e-3 and no weight decay). A mixer whose paper trains it differently gets its
paper's block here; what is not from a paper is said in ``note``, which ``seqzoo lra`` prints and the sweep
table carries beside the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LRAMixer:
    mixer: dict
    overrides: dict = field(default_factory=dict)  # dotted config keys -> values
    note: str = ""


# The Transformer baseline as S4's repository trains it beside S4 (same depth and width as the task's S4
# model, pre-norm LayerNorm blocks with a GELU MLP), at a Transformer's learning rate.
_TRANSFORMER_BLOCK = {
    "model.block": "prenorm",
    "model.norm": "layer",
    "model.mlp": "gelu",
    "model.mlp_ratio": 2.0,
}

LRA_MIXERS: dict[str, LRAMixer] = {
    "s4d": LRAMixer({"name": "s4d", "d_state": 64}, {}, "S4D-LegS, the S4 paper's LRA settings"),
    "s4": LRAMixer({"name": "s4", "d_state": 64}, {}, "S4-LegS (NPLR), the S4 paper's LRA settings"),
    "attention": LRAMixer(
        {"name": "attention"},
        {**_TRANSFORMER_BLOCK, "optim.lr": 5e-4, "optim.weight_decay": 0.0},
        "Transformer: pre-norm LayerNorm + GELU MLP, lr 5e-4 (LRA's own baselines use other widths and "
        "schedules per task)",
    ),
    "flow": LRAMixer(
        {"name": "flow"},
        {**_TRANSFORMER_BLOCK, "optim.lr": 5e-4, "optim.weight_decay": 0.0},
        "Flowformer: the Transformer baseline with flow-attention (Wu et al. 2022 follow LRA's Transformer)",
    ),
    "mamba": LRAMixer(
        {"name": "mamba"},
        {"model.block": "prenorm", "model.norm": "rms", "model.mlp": "none", "optim.lr": 2e-3},
        "Mamba: pre-norm RMSNorm blocks without MLP as its paper; causal (no bidirectional mode); lr 2e-3 "
        "(not from a paper: Mamba reports no LRA results)",
    ),
    "gla": LRAMixer(
        {"name": "gla", "use_short_conv": False},
        {"model.block": "prenorm", "model.norm": "rms", "model.mlp": "swiglu", "optim.lr": 1e-3},
        "GLA: pre-norm RMSNorm + SwiGLU as its paper; bidirectional, so without the (causal) short "
        "convolution fla adds; lr 1e-3 (not from a paper: GLA reports no LRA results)",
    ),
}


def lra_mixer(name: str) -> LRAMixer:
    """The table's entry, or for a mixer it does not list the mixer with the task config's block."""
    if name in LRA_MIXERS:
        return LRA_MIXERS[name]
    from seqzoo.registry import mixer_class

    mixer_class(name)  # an unknown name: ValueError naming the registered mixers
    return LRAMixer(
        {"name": name}, {}, f"{name}: the task config's block and optimiser (no LRA setting known)"
    )


def overrides_for(name: str, task_mixer: dict) -> dict:
    """Dotted overrides that put mixer ``name`` into a task config whose mixer entry is ``task_mixer``.

    The task config's SSM keys (dt range, output) apply to s4/s4d only; every other mixer gets its entry.
    With ``model.bidirectional: auto`` a mixer runs bidirectionally when it has that mode as configured (a
    causal short convolution from its paper settings keeps it causal)."""
    entry = lra_mixer(name)
    mixer = dict(entry.mixer)
    if mixer["name"] in ("s4", "s4d"):
        mixer = {**{k: v for k, v in task_mixer.items() if k != "name"}, **mixer}
    return {"model.mixer": mixer, **entry.overrides}
