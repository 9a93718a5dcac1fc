"""Models built from mixers: the causal language model, the sequence classifier, and SaShiMi (audio)."""

from .classifier import SequenceClassifier
from .config import BackboneConfig, ClassifierConfig, LMConfig
from .lm import CausalLM
from .presets import PRESETS, preset
from .sashimi import Sashimi, SashimiConfig

__all__ = [
    "BackboneConfig",
    "LMConfig",
    "ClassifierConfig",
    "CausalLM",
    "SequenceClassifier",
    "Sashimi",
    "SashimiConfig",
    "preset",
    "PRESETS",
]
