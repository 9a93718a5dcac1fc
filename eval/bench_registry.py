"""The bench registry: :func:`register_bench` records a :class:`Bench` (an op, how to make its inputs for one
shape, and the grids of shapes to run); :func:`mixer_op` wraps a whole mixer as an op for layer benches.

:mod:`seqzoo.eval.benches` registers the built-in benches here and :mod:`seqzoo.eval.bench` (the harness)
reads them, so the dependency runs one way: benches -> bench_registry <- bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

MakeInputs = Callable[[dict, torch.dtype, torch.device], dict[str, torch.Tensor]]


# -- the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One registered benchmark: an op, how to make its inputs, and the grids of shapes to run."""

    label: str
    op_name: str
    make_inputs: MakeInputs
    shapes: tuple[dict, ...]
    quick_shapes: tuple[dict, ...]
    cuda_shapes: tuple[dict, ...] | None = None
    kwargs: dict = field(default_factory=dict)
    # An op of the bench's own (a mixer, a composite such as an SSM run two ways) instead of
    # ``seqzoo.ops.<op_name>``: an :class:`~seqzoo.ops.Op` that is not in the ops registry.
    op: Any = None

    def resolve_op(self, ops: dict) -> Any:
        if self.op is not None:
            return self.op
        op = ops.get(self.op_name)
        if op is None:
            raise ValueError(
                f"bench {self.label!r} times op {self.op_name!r}, which seqzoo.ops does not define"
            )
        return op

    def grid(self, device_type: str, quick: bool) -> list[dict]:
        if quick:
            return [dict(s) for s in self.quick_shapes]
        if device_type == "cuda" and self.cuda_shapes is not None:
            return [dict(s) for s in self.cuda_shapes]
        return [dict(s) for s in self.shapes]


_BENCHES: dict[str, Bench] = {}


def register_bench(
    op_name: str,
    make_inputs: MakeInputs,
    shapes: Iterable[dict],
    *,
    kwargs: dict | None = None,
    label: str | None = None,
    quick_shapes: Iterable[dict] | None = None,
    cuda_shapes: Iterable[dict] | None = None,
    op: Any = None,
) -> Bench:
    """Register a benchmark of ``seqzoo.ops.<op_name>``.

    ``make_inputs(shape, dtype, device)`` returns the op's tensor inputs by keyword for one ``shape`` (a
    dict such as ``{"B": 2, "T": 512, "H": 4, "D": 64}``), and any option whose value depends on the shape
    (combiner's ``segment``); ``kwargs`` are the op's other arguments, the same at every shape (``causal=True``).
    ``shapes`` is the default grid, ``quick_shapes`` the ``--quick`` one (default: the first shape) and
    ``cuda_shapes`` the default on a GPU (default: ``shapes``). ``label`` names the bench on the command line
    and in results (default: ``op_name``); registering a label again replaces it. ``op``, when given, is
    timed instead of ``seqzoo.ops.<op_name>`` (see :func:`mixer_op`).
    """
    shapes = tuple(dict(s) for s in shapes)
    if not shapes:
        raise ValueError(f"register_bench({op_name!r}): shapes must hold at least one shape")
    quick = tuple(dict(s) for s in quick_shapes) if quick_shapes is not None else shapes[:1]
    cuda = tuple(dict(s) for s in cuda_shapes) if cuda_shapes is not None else None
    bench = Bench(label or op_name, op_name, make_inputs, shapes, quick, cuda, dict(kwargs or {}), op)
    _BENCHES[bench.label] = bench
    return bench


def mixer_op(mixer: str, backends: Iterable[str] = ("reference", "torch", "triton"), **mixer_kwargs) -> Any:
    """An op that runs the mixer ``mixer`` on ``x`` [B, T, d_model], for benches of whole layers.

    Its backends are the kernel backends the mixer is built with (``build_mixer(..., backend=name)``, which
    the mixer hands to every op it calls), so a table shows what a backend is worth inside the layer, with
    its projections and gates. The mixer is built once per (backend, d_model, device, dtype), from seed 0.
    ``fwd+bwd`` takes the gradient of x: the backward runs through every kernel and projection, but the
    weight gradients' matmuls are not formed.
    """
    import seqzoo
    from seqzoo.ops._dispatch import Op, triton_unavailable_reason

    op = Op(f"mixer:{mixer}", f"the {mixer} mixer on x [B, T, d_model]")
    built: dict[tuple, torch.nn.Module] = {}

    def runner(backend: str):
        def run(x: torch.Tensor) -> torch.Tensor:
            key = (backend, x.shape[-1], x.device, x.dtype)
            if key not in built:
                torch.manual_seed(0)
                built[key] = (
                    seqzoo.build_mixer(mixer, x.shape[-1], backend=backend, **mixer_kwargs)
                    .to(device=x.device, dtype=x.dtype)
                    .eval()
                )
            return built[key](x)

        return run

    for name in backends:
        op.register(
            name,
            runner(name),
            devices=("cuda",) if name == "cuda" else ("cpu", "cuda"),
            unavailable=triton_unavailable_reason if name == "triton" else None,
        )
    return op
