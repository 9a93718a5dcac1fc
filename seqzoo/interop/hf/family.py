"""What one Hugging Face transformers model family needs to become a seqzoo ``CausalLM`` and back.

A family is four pure functions (no file access, no transformers import), keyed by the ``model_type`` of the
transformers ``config.json``:

    cfg   = family.config_from_hf(hf_config)         # dict (config.json) -> LMConfig
    sd    = family.weights_from_hf(hf_weights, hf_config)   # transformers state dict -> CausalLM state dict
    hfcfg = family.config_to_hf(cfg)                 # LMConfig -> config.json dict
    hfsd  = family.weights_to_hf(sd, cfg)            # CausalLM state dict -> transformers state dict

A config field the family cannot represent raises ``UnsupportedHFConfig``, a ValueError that names the field
(and its value), never a silent approximation. ``seqzoo.interop.hf`` does the file work around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...models.config import LMConfig

StateDict = dict[str, torch.Tensor]


class UnsupportedHFConfig(ValueError):
    """A transformers (or seqzoo) config field that the conversion cannot represent exactly."""

    def __init__(self, family: str, field: str, value: Any, why: str):
        self.family, self.field, self.value = family, field, value
        super().__init__(f"{family}: config field {field}={value!r} is not supported: {why}")


@dataclass(frozen=True)
class HFFamily:
    model_type: str  # transformers' config.json "model_type": "mamba", "mamba2", "recurrent_gemma"
    architecture: str  # transformers' class: "MambaForCausalLM", ...
    config_from_hf: Callable[[dict], LMConfig]
    weights_from_hf: Callable[[StateDict, dict], StateDict]
    config_to_hf: Callable[[LMConfig], dict]
    weights_to_hf: Callable[[StateDict, LMConfig], StateDict]
    note: str = ""  # what the user should know (casts, what transformers cannot do)
    # seqzoo mixer names whose models this family exports (``save_hf`` picks the family by them); empty: the
    # family is tried and skipped when its config_to_hf refuses the field "mixer".
    mixers: tuple[str, ...] = ()


FAMILIES: dict[str, HFFamily] = {}


def register_family(family: HFFamily) -> HFFamily:
    if family.model_type in FAMILIES:
        raise ValueError(f"HF family {family.model_type!r} is registered twice")
    FAMILIES[family.model_type] = family
    return family


def family_for(hf_config: dict) -> HFFamily:
    """The family of a transformers config.json dict; a ValueError names model_type and the supported ones."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedHFConfig(
            "seqzoo.interop.hf", "model_type", model_type, f"supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
