"""Models built from mixers: the causal language model and the sequence classifier."""

from .classifier import SequenceClassifier
from .config import BackboneConfig, ClassifierConfig, LMConfig
from .lm import CausalLM
from .presets import PRESETS, preset

__all__ = [
    "BackboneConfig",
    "LMConfig",
    "ClassifierConfig",
    "CausalLM",
    "SequenceClassifier",
    "preset",
    "PRESETS",
]
