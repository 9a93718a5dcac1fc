"""Models built from mixers: the causal language model and the sequence classifier."""

from .classifier import SequenceClassifier
from .config import BackboneConfig, ClassifierConfig, LMConfig
from .lm import CausalLM

__all__ = ["BackboneConfig", "LMConfig", "ClassifierConfig", "CausalLM", "SequenceClassifier"]
