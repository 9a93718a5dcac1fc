"""What the Triton backends of ``ops.delta_rule`` share: the host-side preparation of their inputs.

The kernels live by algorithm: :mod:`.triton_chunk` (chunked forward and backward, the ``triton`` backend)
and :mod:`.triton_recurrent` (fused token-by-token, the ``triton_recurrent`` backend); the pieces they share
with gla's kernels are in ``ops/common``.
"""

from __future__ import annotations


def prepare_inputs(q, k, v, beta, g, scale, initial_state):
    """Contiguous q, k, v, beta, g, initial_state; ``scale`` as a float (default K ** -0.5)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    g = g.contiguous() if g is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    return q, k, v, beta, g, scale, initial_state
