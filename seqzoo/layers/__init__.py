"""The mixers. Importing this package imports every module in it, and so registers every built-in mixer with
:mod:`seqzoo.registry`.

To add a mixer, write one file here with a :class:`Mixer` subclass decorated by
``@register_mixer(name, description=..., paper=..., family=..., ...)`` (its record: paper settings, test
kwargs, ...) and add its name to the table of mixers in ``tests/test_mixer_contract.py``; no import line is
needed here (see README, "Adding a mixer").
"""

import importlib
import pkgutil

from .attention import Attention, SlidingWindowAttention
from .base import Mixer, State
from .base_conv import BaseConv
from .based import Based
from .deltanet import DeltaNet, GatedDeltaNet
from .flow import FlowAttention
from .gla import GLA
from .hgrn2 import HGRN2
from .hyena import Hyena
from .liger import AttentionHybridMixer, Liger
from .linear_attention import LinearAttention
from .lizard import Lizard
from .mamba import Mamba
from .mamba2 import Mamba2
from .orchid import Orchid
from .retnet import Lightning, RetNet
from .rglru import RGLRUBlock
from .s4 import S4, S4D
from .short_conv import ShortConv

# Every module of the package, so that a new layer file registers its mixer without an import line above
# (the names above are the public classes, re-exported for `from seqzoo.layers import GLA`).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Mixer",
    "State",
    "Attention",
    "SlidingWindowAttention",
    "ShortConv",
    "FlowAttention",
    "RGLRUBlock",
]
__all__ += ["GLA", "RetNet", "Lightning", "HGRN2", "LinearAttention"]
__all__ += ["S4", "S4D"]
__all__ += ["Mamba", "Mamba2"]
__all__ += ["DeltaNet", "GatedDeltaNet"]
__all__ += ["Based", "Liger", "Lizard", "AttentionHybridMixer"]
__all__ += ["BaseConv", "Hyena", "Orchid"]
