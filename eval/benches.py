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

from .bench_registry import mixer_op, register_bench


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


def delta_rule_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h, dk, dv = shape["B"], shape["T"], shape["H"], shape["K"], shape["V"]
    # As DeltaNet's layer makes them: L2-normalised q and k, beta = sigmoid of a projection.
    inputs = {
        "q": torch.nn.functional.normalize(torch.randn(b, t, h, dk, device=device), dim=-1).to(dtype),
        "k": torch.nn.functional.normalize(torch.randn(b, t, h, dk, device=device), dim=-1).to(dtype),
        "v": torch.randn(b, t, h, dv, dtype=dtype, device=device),
        "beta": torch.sigmoid(torch.randn(b, t, h, device=device)).to(dtype),
    }
    if shape.get("gated", False):
        # Gated DeltaNet's per-head gate, slow forgetting as for gla.
        inputs["g"] = torch.nn.functional.logsigmoid(torch.randn(b, t, h, device=device)) / 16
    return inputs


# DeltaNet (no decay) and Gated DeltaNet (one log decay per head). The reference is timed up to --max-ref-T.
for _gated in (False, True):
    register_bench(
        "delta_rule",
        delta_rule_inputs,
        label="gated_delta_rule" if _gated else "delta_rule",
        shapes=[{"B": 1, "T": t, "H": 4, "K": 64, "V": 64, "gated": _gated} for t in (512, 1024, 2048, 4096)],
        quick_shapes=[{"B": 1, "T": t, "H": 4, "K": 64, "V": 64, "gated": _gated} for t in (256, 1024)],
        cuda_shapes=[
            {"B": max(1, 16384 // t), "T": t, "H": 16, "K": 64, "V": 64, "gated": _gated}
            for t in (512, 1024, 2048, 4096, 8192, 16384)
        ],
        kwargs={"output_final_state": True},
    )


# -- Mamba-2's SSD: on ops.gla (what the mamba2 layer runs) or on Mamba's selective scan ----------------------


def _ssd_by_selective_scan(x, dt, A, B, C, D):
    """The same SSD through ops.selective_scan: every head's P channels share the head's dt and A."""
    from seqzoo import ops

    b, t, h, p = x.shape
    n = B.shape[-1]
    delta = dt[..., None].expand(b, t, h, p).reshape(b, t, h * p)
    a = A[:, None, None].expand(h, p, n).reshape(h * p, n)
    y, _ = ops.selective_scan(x.reshape(b, t, h * p), delta, a, B, C, D.repeat_interleave(p))
    return y.view(b, t, h, p)


def _ssd_op():
    from seqzoo.layers.mamba2 import ssd
    from seqzoo.ops import gla, selective_scan
    from seqzoo.ops._dispatch import Op

    op = Op(
        "ssd",
        "Mamba-2's SSD on x [B, T, H, P], dt [B, T, H], A [H], B/C [B, T, G, N], D [H]",
        auto_order={"cpu": ("torch",), "cuda": ("triton", "torch")},
    )

    def gla_status(device, backend):  # ops.gla's own availability (triton needs a GPU) decides
        status = gla.backends(device)[backend]
        return None if status == "available" else status

    for name in ("reference", "torch", "triton"):
        op.register(
            name,
            lambda *a, _b=name, **k: ssd(*a, **k, backend=_b)[0],
            unavailable=lambda device, _b=name: gla_status(device, _b),
            description=f"ops.gla backend {name} (scalar decay per head)",
        )
    op.register(
        "selective_scan",
        _ssd_by_selective_scan,
        unavailable=lambda device: None,
        description=f"ops.selective_scan ({'/'.join(selective_scan.backends('cpu'))}, auto) with A and dt per head",
    )
    return op


def ssd_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h, p, g, n = shape["B"], shape["T"], shape["H"], shape["P"], shape["G"], shape["N"]
    # As Mamba-2's layer makes them: dt = softplus(. + dt_bias) in [1e-3, 0.1] at init, A in [-16, -1].
    return {
        "x": torch.randn(b, t, h, p, dtype=dtype, device=device),
        "dt": torch.empty(b, t, h, device=device).uniform_(-6.9, -2.3).exp().to(dtype),
        "A": -torch.empty(h, device=device).uniform_(1, 16),
        "B": torch.randn(b, t, g, n, dtype=dtype, device=device),
        "C": torch.randn(b, t, g, n, dtype=dtype, device=device),
        "D": torch.ones(h, device=device),
    }


# Mamba-2 at 130M: 24 heads of 64 channels, N = 128, one group; smaller on CPU.
register_bench(
    "ssd",
    ssd_inputs,
    op=_ssd_op(),
    shapes=[{"B": 1, "T": t, "H": 4, "P": 64, "G": 1, "N": 64} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "H": 4, "P": 64, "G": 1, "N": 64} for t in (256, 1024)],
    cuda_shapes=[
        {"B": max(1, 16384 // t), "T": t, "H": 24, "P": 64, "G": 1, "N": 128}
        for t in (512, 1024, 2048, 4096, 8192, 16384)
    ],
)


def ssm_kernel_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """S4D-Lin / S4-LegS-like parameters: Re(A) = -1/2, Im(A) spread, log dt in [log 1e-3, log 1e-1]."""
    h, n = shape["H"], shape["N"]
    names = ("Lambda", "P", "B", "C") if shape.get("kind") == "s4" else ("A", "B", "C")
    inputs = {"log_dt": torch.empty(h, device=device).uniform_(-6.9, -2.3).to(dtype)}
    for name in names:
        inputs[f"{name}_re"] = torch.randn(h, n, device=device).to(dtype)
        inputs[f"{name}_im"] = torch.randn(h, n, device=device).to(dtype)
    inputs[f"{names[0]}_re"] = torch.full((h, n), -0.5, device=device, dtype=dtype)
    inputs[f"{names[0]}_im"] = (torch.pi * torch.arange(n, device=device)).expand(h, n).to(dtype)
    return inputs


# The kernel length is an argument, not a tensor: one bench per L. Each shape repeats it as "T" (the tables'
# length column, and what --max-ref-T reads); --set T= does not change L. N counts the kept complex modes.
for _L in (1024, 4096, 16384):
    register_bench(
        "s4d_kernel",
        ssm_kernel_inputs,
        label=f"s4d_kernel_L{_L}",
        shapes=[{"H": h, "N": 32, "T": _L} for h in (256, 512)],
        quick_shapes=[{"H": 16, "N": 32, "T": _L}],
        cuda_shapes=[{"H": h, "N": 32, "T": _L} for h in (256, 1024, 2048)],
        kwargs={"L": _L},
    )
    register_bench(
        "s4_kernel",
        ssm_kernel_inputs,
        label=f"s4_kernel_L{_L}",
        shapes=[{"H": h, "N": 32, "kind": "s4", "T": _L} for h in (256, 512)],
        quick_shapes=[{"H": 16, "N": 32, "kind": "s4", "T": _L}],
        cuda_shapes=[{"H": h, "N": 32, "kind": "s4", "T": _L} for h in (256, 1024, 2048)],
        kwargs={"L": _L},
    )


def fft_conv_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h = shape["B"], shape["T"], shape["H"]
    # A decaying kernel as an SSM makes one; its scale does not change the work.
    decay = torch.exp(-torch.arange(t, device=device) / t * 8.0)
    return {
        "u": torch.randn(b, t, h, dtype=dtype, device=device),
        "K": (torch.randn(h, t, device=device) * decay / t**0.5).to(dtype),
        "D": torch.randn(h, dtype=dtype, device=device),
    }


register_bench(
    "fft_conv",
    fft_conv_inputs,
    shapes=[{"B": 2, "T": t, "H": 256} for t in (1024, 2048, 4096, 8192)],
    quick_shapes=[{"B": 1, "T": t, "H": 256} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 32768 // t), "T": t, "H": 1024} for t in (1024, 4096, 16384)],
)


def selective_scan_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    import math

    # As the mamba mixer makes them: A = -(1..N) (S4D-Real), delta before a softplus with dt's init bias
    # (dt ~ 1e-3..1e-1), a gate z and D = 1; B, C shared by all channels (G = 1) unless shape["G"] says.
    b, t, d, n, g = shape["B"], shape["T"], shape["D"], shape["N"], shape.get("G")
    bc = (b, t, n) if g is None else (b, t, g, n)
    dt = torch.exp(torch.empty(d, device=device).uniform_(math.log(1e-3), math.log(1e-1)))
    return {
        "u": torch.randn(b, t, d, dtype=dtype, device=device),
        "delta": 0.1 * torch.randn(b, t, d, dtype=dtype, device=device),
        "A": -torch.arange(1, n + 1, dtype=torch.float32, device=device).repeat(d, 1),
        "B": torch.randn(bc, dtype=dtype, device=device),
        "C": torch.randn(bc, dtype=dtype, device=device),
        "D": torch.ones(d, device=device),
        "z": torch.randn(b, t, d, dtype=dtype, device=device),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # softplus^-1(dt)
    }


register_bench(
    "selective_scan",
    selective_scan_inputs,
    shapes=[{"B": 1, "T": t, "D": 128, "N": 16} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "D": 64, "N": 16} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 16384 // t), "T": t, "D": 1536, "N": 16} for t in (512, 1024, 2048, 4096, 8192)]
    + [{"B": 4, "T": 2048, "D": 1536, "N": n} for n in (64, 256)],
    kwargs={"delta_softplus": True, "output_final_state": True},
)


# -- whole mixers: what a backend is worth inside its layer ------------------------------------------------


def mixer_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(shape["B"], shape["T"], shape["D"], dtype=dtype, device=device)}


# Griffin's recurrent block (linear_scan and causal_conv1d inside) and Mamba's block (causal_conv1d and
# selective_scan inside), at the width of a small model. Neither has a `cuda` causal_conv1d, so the layers are
# timed on reference, torch and triton.
register_bench(
    "mixer:rglru",
    mixer_inputs,
    label="rglru_mixer",
    op=mixer_op("rglru", n_heads=4),
    shapes=[{"B": 1, "T": t, "D": 256} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "D": 64} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 16384 // t), "T": t, "D": 1024} for t in (1024, 2048, 4096, 8192, 16384)],
)
register_bench(
    "mixer:mamba",
    mixer_inputs,
    label="mamba_mixer",
    op=mixer_op("mamba", d_state=16, expand=2),
    shapes=[{"B": 1, "T": t, "D": 128} for t in (512, 1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "D": 32} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 16384 // t), "T": t, "D": 768} for t in (1024, 2048, 4096, 8192, 16384)],
)


# -- one S4D layer's SSM, as a convolution and as a recurrence ---------------------------------------------


def _s4d_by_convolution(u, log_dt, A_re, A_im, B_re, B_im, C_re, C_im, D):
    from seqzoo import ops

    K = ops.s4d_kernel(log_dt, A_re, A_im, B_re, B_im, C_re, C_im, u.shape[1])
    return ops.fft_conv(u, K, D)


def _s4d_by_recurrence(u, log_dt, A_re, A_im, B_re, B_im, C_re, C_im, D):
    """x_t = Abar x_{t-1} + Bbar u_t per complex mode (ops.linear_scan over B x T x H*N), y = 2 Re(C x) + D u."""
    from seqzoo import ops
    from seqzoo.ops.s4.reference import discretize_diagonal

    b, t, h = u.shape
    n = A_re.shape[1]
    Abar, Bbar = discretize_diagonal(log_dt, A_re, A_im, B_re, B_im, "zoh")
    x = (u.float()[..., None] * Bbar).reshape(b, t, h * n)
    states, _ = ops.linear_scan(Abar.reshape(1, 1, h * n).expand(b, t, h * n), x)
    C = torch.complex(C_re.float(), C_im.float())
    y = 2 * torch.einsum("bthn,hn->bth", states.view(b, t, h, n), C).real
    return (y + D * u.float()).to(u.dtype)


def _s4d_ssm_op():
    from seqzoo.ops._dispatch import Op

    op = Op(
        "ssm:s4d",
        "one S4D (ZOH) layer's SSM on u [B, T, H]: convolution or recurrence",
        auto_order={"cpu": ("convolution",), "cuda": ("convolution",)},
    )
    op.register("convolution", _s4d_by_convolution, description="ops.s4d_kernel, then ops.fft_conv")
    op.register("recurrence", _s4d_by_recurrence, description="ops.linear_scan over the complex modes")
    return op


def s4d_ssm_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    b, t, h = shape["B"], shape["T"], shape["H"]
    inputs = ssm_kernel_inputs({"H": h, "N": shape["N"]}, dtype, device)  # S4D-Lin modes
    inputs["u"] = torch.randn(b, t, h, dtype=dtype, device=device)
    inputs["D"] = torch.randn(h, dtype=dtype, device=device)
    return inputs


# The same SSM both ways: the convolution costs O(H N L + B H T log T), the recurrence O(B T H N), so the
# convolution wins as N grows and the recurrence is what decoding runs (N counts complex modes).
register_bench(
    "ssm:s4d",
    s4d_ssm_inputs,
    label="s4d_ssm",
    op=_s4d_ssm_op(),
    shapes=[{"B": 1, "T": t, "H": 256, "N": 32} for t in (1024, 2048, 4096)],
    quick_shapes=[{"B": 1, "T": t, "H": 16, "N": 16} for t in (256, 1024)],
    cuda_shapes=[{"B": max(1, 16384 // t), "T": t, "H": 1024, "N": 32} for t in (1024, 4096, 16384)],
)
