"""How each mixer runs on Long Range Arena: the task's config (``train/configs/lra-<task>.yaml``, the S4 paper's
settings) with the mixer's own block and optimiser settings on top, from the mixer's record (its
``register_mixer(..., lra=LRASettings(...))`` beside the layer).

The shipped configs hold S4D's settings (the S4 paper's table: post- or pre-norm with BatchNorm, no MLP, lr
0.01 with the SSM parameters at 1e-3 and no weight decay). A mixer whose paper trains it differently gets its
paper's block in its record; what is not from a paper is said in ``note``, which ``seqzoo lra`` prints and the sweep
table carries beside the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LRAMixer:
    mixer: dict
    overrides: dict = field(default_factory=dict)  # dotted config keys -> values
    note: str = ""


def lra_mixer(name: str) -> LRAMixer:
    """Mixer ``name``'s LRA settings from its record (``lra=LRASettings(...)`` beside its layer), or for a mixer
    whose record has none the mixer with the task config's block."""
    from seqzoo.registry import mixer_record

    record = mixer_record(name)  # an unknown name: ValueError naming the registered mixers
    if record.lra is None:
        return LRAMixer(
            {"name": name}, {}, f"{name}: the task config's block and optimiser (no LRA setting known)"
        )
    return LRAMixer({"name": name, **record.lra.kwargs}, dict(record.lra.overrides), record.lra.note)


def lra_mixers() -> dict[str, LRAMixer]:
    """Every mixer whose record has LRA settings (what ``LRA_MIXERS`` held)."""
    from seqzoo.registry import list_mixers

    return {name: lra_mixer(name) for name, record in list_mixers().items() if record.lra is not None}


def overrides_for(name: str, task_mixer: dict, image_size: tuple[int, int] | None = None) -> dict:
    """Dotted overrides that put mixer ``name`` into a task config whose mixer entry is ``task_mixer``.

    The task config's SSM keys (dt range, output) apply to s4/s4d only; every other mixer gets its entry.
    With ``model.bidirectional: auto`` a mixer runs bidirectionally when it has that mode as configured (a
    causal short convolution from its paper settings keeps it causal). An image task's ``image_size`` (H, W)
    goes to a mixer that takes one (vig's 2D convolution), unless its entry sets it."""
    import inspect

    from seqzoo.registry import mixer_class

    entry = lra_mixer(name)
    mixer = dict(entry.mixer)
    if mixer["name"] in ("s4", "s4d"):
        mixer = {**{k: v for k, v in task_mixer.items() if k != "name"}, **mixer}
    takes_image = "image_size" in inspect.signature(mixer_class(name).__init__).parameters
    if image_size is not None and takes_image and "image_size" not in mixer:
        mixer["image_size"] = list(image_size)
    return {"model.mixer": mixer, **entry.overrides}
