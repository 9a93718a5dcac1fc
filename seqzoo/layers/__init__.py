"""The mixers. Importing this package registers every built-in mixer with :mod:`seqzoo.registry`.

To add a mixer, write one file here with a :class:`Mixer` subclass decorated by
``@register_mixer(name, description=..., paper=...)`` and import it below (see README, "Adding a mixer").
"""

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
from .rglru import Hawk, RGLRUBlock
from .s4 import S4, S4D
from .short_conv import ShortConv

__all__ = [
    "Mixer",
    "State",
    "Attention",
    "SlidingWindowAttention",
    "ShortConv",
    "FlowAttention",
    "RGLRUBlock",
    "Hawk",
]
__all__ += ["GLA", "RetNet", "Lightning", "HGRN2", "LinearAttention"]
__all__ += ["S4", "S4D"]
__all__ += ["Mamba", "Mamba2"]
__all__ += ["DeltaNet", "GatedDeltaNet"]
__all__ += ["Based", "Liger", "Lizard", "AttentionHybridMixer"]
__all__ += ["BaseConv", "Hyena", "Orchid"]
