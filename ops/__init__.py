"""seqzoo.ops: one public function per mechanism, each with interchangeable backends.

    from seqzoo import ops
    o = ops.attention(q, k, v, causal=True)
    ops.attention.backends()        # {"reference": "available", "torch": "available", "flash": "..."}
    ops.attention.last_backend      # which backend ran last

See docs/design.md ("The ops contract") for every signature; ``list_ops()`` lists them.
"""

from ._dispatch import Op, OpCall, list_ops, note, record_calls
from .attention import attention
from .causal_conv1d import causal_conv1d
from .combiner import combiner, combiner_step
from .delta_rule import delta_rule, delta_rule_step
from .flow_attention import flow_attention, flow_attention_prefill, flow_attention_step
from .gla import gla, gla_step
from .linear_scan import linear_scan
from .s4 import fft_conv, s4_kernel, s4d_kernel
from .selective_scan import selective_scan, selective_state_update

__all__ = [
    "Op",
    "OpCall",
    "list_ops",
    "note",
    "record_calls",
    "attention",
    "causal_conv1d",
    "combiner",
    "delta_rule",
    "flow_attention",
    "gla",
    "linear_scan",
    "s4d_kernel",
    "s4_kernel",
    "fft_conv",
]
__all__ += ["selective_scan", "selective_state_update"]
# Step ops for decoding: advance a state by new tokens, each with its own ``backend=``.
__all__ += ["gla_step", "delta_rule_step", "flow_attention_prefill", "flow_attention_step"]
__all__ += ["combiner_step"]
