"""The benchmarks ``seqzoo bench`` runs: one per op (and per variant of it) from its spec, and the composites.

Every op of ``seqzoo.ops`` is benched from its spec (``ops/_spec.py``): its inputs are the spec's example (drawn the
way a layer produces them: unit-variance activations, small weights, log-decays <= 0 where an op takes them; the
values decide the work for some kernels, and a bench should time the case that matters) at the sizes of the
spec's :class:`~seqzoo.ops._spec.BenchGrid`, one bench per variant, labelled as the variant (``gla``,
``gla_head_decay``). :data:`BENCH_ARGUMENTS` leaves out what a bench should not time (the initial state training
does not pass). Below them: the benches of composites (Mamba-2's SSD two ways, whole mixers, an S4D layer's SSM
two ways) and the S4 kernels at several lengths.

Grids: ``shapes`` is the CPU default (sizes a CPU finishes in minutes), ``cuda_shapes`` the GPU default
(a fixed number of tokens per batch, so the time per token across T shows the scaling), ``quick_shapes``
what ``--quick`` runs on either device (seconds).
"""

from __future__ import annotations

from typing import Any

import torch

from .bench_registry import mixer_op, register_bench

# Arguments a bench passes instead of the example's: training runs from no state (the decoding benches are the
# step ops').
BENCH_ARGUMENTS = {
    "causal_conv1d": {"initial_state": None, "output_final_state": False},
    "gla": {"initial_state": None},
    "delta_rule": {"initial_state": None},
    "selective_scan": {"initial_state": None},
}


def spec_inputs(op_name: str, leave_out=(), per_shape=()):
    """``make_inputs`` of a bench of ``seqzoo.ops.<op_name>``: the tensors of its spec's example at one shape,
    and the example's options named in ``per_shape`` (those the grid sets, such as combiner's ``segment``)."""

    def make(shape: dict, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        from seqzoo.ops import list_ops
        from seqzoo.ops._spec import tensors

        example = list_ops()[op_name].spec.example(dtype, device, **shape)
        out = {k: v for k, v in tensors(example).items() if k not in leave_out}
        return {**out, **{k: example[k] for k in per_shape}}

    return make


def register_spec_benches(op_name: str, spec) -> None:
    """One bench per variant of the op from its spec (its grid; the example's flags as the bench's arguments)."""
    from seqzoo.ops._spec import options

    for label, variant in spec.labels(op_name).items():
        kwargs = {**options(spec.example(**variant)), **BENCH_ARGUMENTS.get(op_name, {})}
        # An option the grid sets (combiner's segment: None = ceil(sqrt T)) is made with each shape's inputs:
        # taken from the example at the default sizes it would be that example's value at every shape.
        per_shape = tuple(k for k in kwargs if k in spec.bench.keys())
        kwargs = {k: v for k, v in kwargs.items() if k not in per_shape}
        # A variant that sets an argument (flow-attention's causal) is in the arguments, not the shape.
        shape_keys = {k: v for k, v in variant.items() if k not in kwargs}
        shapes, quick, cuda = spec.bench.grids(shape_keys)
        register_bench(
            op_name,
            spec_inputs(op_name, leave_out=kwargs, per_shape=per_shape),
            label=label,
            shapes=shapes,
            quick_shapes=quick,
            cuda_shapes=cuda,
            kwargs=kwargs,
        )


def _register_op_benches() -> None:
    from seqzoo.ops import list_ops

    for name, op in list_ops().items():
        if op.spec is not None and op.spec.bench is not None:
            register_spec_benches(name, op.spec)


_register_op_benches()


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


# The S4 kernels: the kernel length is an argument (the example's L = T): one bench per L, with T = L in each shape
# (the tables' length column, and what --max-ref-T reads); the bench's L stays fixed under --set T=. N counts the
# kept complex modes.
for _L in (1024, 4096, 16384):
    register_bench(
        "s4d_kernel",
        spec_inputs("s4d_kernel"),
        label=f"s4d_kernel_L{_L}",
        shapes=[{"H": h, "N": 32, "T": _L} for h in (256, 512)],
        quick_shapes=[{"H": 16, "N": 32, "T": _L}],
        cuda_shapes=[{"H": h, "N": 32, "T": _L} for h in (256, 1024, 2048)],
        kwargs={"L": _L, "discretization": "zoh"},
    )
    register_bench(
        "s4_kernel",
        spec_inputs("s4_kernel"),
        label=f"s4_kernel_L{_L}",
        shapes=[{"H": h, "N": 32, "kind": "s4", "T": _L} for h in (256, 512)],
        quick_shapes=[{"H": 16, "N": 32, "kind": "s4", "T": _L}],
        cuda_shapes=[{"H": h, "N": 32, "kind": "s4", "T": _L} for h in (256, 1024, 2048)],
        kwargs={"L": _L},
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
    inputs = spec_inputs("s4d_kernel")({"H": h, "N": shape["N"]}, dtype, device)  # S4D-Lin modes
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
