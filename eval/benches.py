"""The benchmarks ``seqzoo bench`` runs: one ``register_bench`` call per op.

A new op adds a function that makes its inputs for one shape and a call to :func:`register_bench` with its
grids. Inputs are drawn the way a layer would produce them (unit-variance activations, small weights,
log-decays <= 0 where an op takes them): the values decide the work for some kernels, and a bench should time
the case that matters.

Grids: ``shapes`` is the CPU default (sizes a CPU finishes in minutes), ``cuda_shapes`` the GPU default
(a fixed number of tokens per batch, so the time per token across T shows the scaling), ``quick_shapes``
what ``--quick`` runs on either device (seconds).
"""

from __future__ import annotations

import torch

from .bench import register_bench


def attention_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h, d = shape["B"], shape["T"], shape["H"], shape["D"]
    hk = shape.get("Hk", h)  # fewer key/value heads: GQA/MQA
    return {
        "q": torch.randn(b, t, h, d, dtype=dtype, device=device),
        "k": torch.randn(b, t, hk, d, dtype=dtype, device=device),
        "v": torch.randn(b, t, hk, d, dtype=dtype, device=device),
    }


register_bench(
    "attention",
    attention_inputs,
    shapes=[{"B": 2, "T": t, "H": 4, "D": 64} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "H": 4, "D": 64} for t in (256, 1024)],
    cuda_shapes=[
        {"B": max(1, 16384 // t), "T": t, "H": 16, "D": 64} for t in (1024, 2048, 4096, 8192, 16384)
    ],
    kwargs={"causal": True},
)


def causal_conv1d_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, d, w = shape["B"], shape["T"], shape["D"], shape["W"]
    return {
        "x": torch.randn(b, t, d, dtype=dtype, device=device),
        # The scale of nn.Conv1d's default init for a depthwise filter of width w.
        "weight": torch.randn(d, w, dtype=dtype, device=device) * w**-0.5,
        "bias": torch.randn(d, dtype=dtype, device=device) * 0.1,
    }


register_bench(
    "causal_conv1d",
    causal_conv1d_inputs,
    shapes=[{"B": 2, "T": t, "D": 512, "W": 4} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "D": 256, "W": 4} for t in (256, 1024)],
    cuda_shapes=[
        {"B": max(1, 32768 // t), "T": t, "D": 2048, "W": 4} for t in (1024, 2048, 4096, 8192, 16384)
    ],
    kwargs={"activation": "silu"},
)


def flow_attention_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h, d = shape["B"], shape["T"], shape["H"], shape["D"]
    # q, k through the layer's sigmoid feature map (the op expects non-negative features).
    return {
        "q": torch.sigmoid(torch.randn(b, t, h, d, device=device)).to(dtype),
        "k": torch.sigmoid(torch.randn(b, t, h, d, device=device)).to(dtype),
        "v": torch.randn(b, t, h, d, dtype=dtype, device=device),
    }


# The same B, H, D as the attention bench (and its GPU grid exactly), so the two tables line up; on a CPU,
# `seqzoo bench attention --set T=8192,16384` extends attention to the longer sequences.
for _causal in (True, False):
    register_bench(
        "flow_attention",
        flow_attention_inputs,
        label="flow_attention" if _causal else "flow_attention_noncausal",
        shapes=[{"B": 2, "T": t, "H": 4, "D": 64} for t in (1024, 2048, 4096, 8192, 16384)],
        quick_shapes=[{"B": 1, "T": t, "H": 4, "D": 64} for t in (256, 1024)],
        cuda_shapes=[
            {"B": max(1, 16384 // t), "T": t, "H": 16, "D": 64} for t in (1024, 2048, 4096, 8192, 16384)
        ],
        kwargs={"causal": _causal},
    )


def linear_scan_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, d = shape["B"], shape["T"], shape["D"]
    # Decays as RG-LRU makes them: a per-channel base in [0.9, 0.999] raised to c * r_t, c = 8, r_t a gate.
    base = torch.empty(d, device=device).uniform_(0.9, 0.999)
    a = base ** (8 * torch.sigmoid(torch.randn(b, t, d, device=device)))
    return {
        "a": a.to(dtype),
        "x": torch.randn(b, t, d, dtype=dtype, device=device),
        "initial_state": torch.randn(b, d, device=device),
    }


# reverse=False; the reverse scan runs the same kernels with the time index mirrored.
register_bench(
    "linear_scan",
    linear_scan_inputs,
    shapes=[{"B": 2, "T": t, "D": 256} for t in (1024, 2048, 4096, 8192)],
    quick_shapes=[{"B": 1, "T": t, "D": 256} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 32768 // t), "T": t, "D": 2048} for t in (1024, 2048, 4096, 8192, 16384)],
    kwargs={"output_final_state": True},
)


def gla_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h, dk, dv = shape["B"], shape["T"], shape["H"], shape["K"], shape["V"]
    inputs = {
        "q": torch.randn(b, t, h, dk, dtype=dtype, device=device),
        "k": torch.randn(b, t, h, dk, dtype=dtype, device=device),
        "v": torch.randn(b, t, h, dv, dtype=dtype, device=device),
    }
    if shape.get("decay", "vector") == "vector":
        # GLA's gate: logsigmoid of a projection, over its normaliser 16 (slow forgetting), per key channel.
        inputs["g"] = torch.nn.functional.logsigmoid(torch.randn(b, t, h, dk, device=device)) / 16
    else:
        # RetNet's fixed per-head decays gamma_h = 1 - 2^(-5-h).
        gamma = 1 - 2.0 ** (-5 - torch.arange(h, device=device, dtype=torch.float32))
        inputs["g"] = gamma.log().expand(b, t, h).contiguous()
    return inputs


# Per-channel decays (GLA, HGRN2) and one decay per head (RetNet, lightning): the torch backend takes a
# different intra-chunk path for each.
for _decay in ("vector", "head"):
    register_bench(
        "gla",
        gla_inputs,
        label="gla" if _decay == "vector" else "gla_head_decay",
        shapes=[{"B": 1, "T": t, "H": 4, "K": 64, "V": 64, "decay": _decay} for t in (512, 1024, 2048, 4096)],
        quick_shapes=[{"B": 1, "T": t, "H": 4, "K": 64, "V": 64, "decay": _decay} for t in (256, 1024)],
        cuda_shapes=[
            {"B": max(1, 16384 // t), "T": t, "H": 16, "K": 64, "V": 64, "decay": _decay}
            for t in (512, 1024, 2048, 4096, 8192, 16384)
        ],
        kwargs={"output_final_state": True},
    )
