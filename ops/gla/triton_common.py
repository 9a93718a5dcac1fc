"""What the Triton backends of ``ops.gla`` share: the host-side preparation of their inputs.

The kernels themselves live by algorithm: :mod:`.triton_chunk` (chunked forward and backward, the
``triton`` backend) and :mod:`.triton_recurrent` (fused token-by-token, the ``triton_recurrent`` backend).
"""

from __future__ import annotations


def prepare_inputs(q, k, v, g, scale, initial_state):
    """Contiguous q, k, v, g, initial_state; ``scale`` as a float (default K ** -0.5); a decay per head
    ([B, T, H]) broadcast over the key channels, as the kernels read [B, T, H, K]."""
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else float(scale)
    if g is not None and g.dim() == 3:
        # One decay per head: broadcast over the key channels (autograd sums the gradient back).
        g = g[..., None].expand(B, T, H, K)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = g.contiguous() if g is not None else None
    initial_state = initial_state.contiguous() if initial_state is not None else None
    return q, k, v, g, scale, initial_state
