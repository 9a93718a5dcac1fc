"""Binding to Dao-AILab's causal-conv1d package (optional, CUDA, widths 2 to 4). It takes channel-first
x [B, D, T]; a transposed view of our channel-last x is exactly the channel-last memory layout it needs to
accept initial states."""

from __future__ import annotations


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, output_final_state=False):
    from causal_conv1d import causal_conv1d_fn

    init = None if initial_state is None else initial_state.to(x.dtype)
    out = causal_conv1d_fn(
        x.transpose(1, 2),
        weight,
        bias,
        initial_states=init,
        return_final_states=output_final_state,
        activation=activation,
    )
    if output_final_state:
        y, final = out
        return y.transpose(1, 2), final.float()
    return out.transpose(1, 2), None
