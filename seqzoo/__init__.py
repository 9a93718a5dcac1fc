"""seqzoo: efficient sequence mixers behind one contract.

    import seqzoo
    seqzoo.list_mixers()                                  # every mixer, with its paper
    mixer = seqzoo.build_mixer("attention", d_model=128)  # y = mixer(x); mixer.prefill / step / init_state
    model = seqzoo.CausalLM(seqzoo.LMConfig(mixer=["short_conv", "attention"], n_layers=4))

Kernels live in :mod:`seqzoo.ops`, the training recipe in :mod:`seqzoo.train`, evaluations in
:mod:`seqzoo.eval`.
"""

__version__ = "0.1.0"

from . import ops  # noqa: E402  (ops before layers: the layers call them)
from .layers import Mixer  # noqa: E402
from .models import CausalLM, ClassifierConfig, LMConfig, SequenceClassifier  # noqa: E402
from .registry import build_mixer, list_mixers, register_mixer  # noqa: E402

__all__ = [
    "__version__",
    "ops",
    "Mixer",
    "build_mixer",
    "list_mixers",
    "register_mixer",
    "LMConfig",
    "ClassifierConfig",
    "CausalLM",
    "SequenceClassifier",
]
