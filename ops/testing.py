"""The one test helper that holds every backend to the reference.

``assert_matches_reference(op, "triton", inputs, **kwargs)`` runs ``op`` with the backend under test and
with ``reference`` on the same inputs, then compares

- every output (final states included: an op returns them as extra outputs),
- the gradient of every floating-point or complex input, through the same random cotangents on every output.

Complex tensors (complex A in selective_scan, complex a/x in linear_scan) are compared by the modulus of the
difference; a complex output gets a complex cotangent, so the loss, sum Re(conj(cot) * out), stays real and
the gradients follow PyTorch's complex convention in both runs.

The reference is given the test's inputs upcast to fp32 (fp64 stays fp64): for a bf16/fp16 test it sees the
same low-precision values, so the error measured is the backend's own. Most references then compute in fp64
inside (where fp32 loses accuracy on long or weakly decaying inputs; see each ``reference.py``). Errors are measured relative to the reference's largest
magnitude, ``max|x - ref| / max(max|ref|, floor)``, with a tolerance per input dtype; any NaN or inf where
the reference is finite fails outright.

Used by the test suite and by anyone adding a kernel; it lives in the package so that it is one import away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ._dispatch import Op

# Relative-to-max tolerances per input dtype, for outputs and for gradients.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 2e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
    torch.complex128: 1e-9,
    torch.complex64: 2e-4,
}
# Below this magnitude the error is measured as absolute rather than relative.
FLOOR = 1e-2


@dataclass
class Comparison:
    name: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance

    def __str__(self) -> str:
        mark = "ok" if self.ok else "MISMATCH"
        return f"{self.name}: error {self.error:.3g} (tolerance {self.tolerance:.3g}) {mark}"


def relative_error(x: torch.Tensor, ref: torch.Tensor, floor: float = FLOOR) -> float:
    """``max|x - ref| / max(max|ref|, floor)``, in fp64 (complex128 when either is complex, |.| the modulus);
    inf when x is non-finite where ref is finite."""
    wide = torch.complex128 if x.is_complex() or ref.is_complex() else torch.float64
    x = x.detach().to(wide)
    ref = ref.detach().to(wide)
    if x.shape != ref.shape:
        raise AssertionError(f"shape {tuple(x.shape)} differs from the reference's {tuple(ref.shape)}")
    finite = torch.isfinite(ref)
    if not torch.isfinite(x[finite]).all():
        return float("inf")
    if x.numel() == 0:
        return 0.0
    scale = max(ref[finite].abs().max().item() if finite.any() else 0.0, floor)
    return (x[finite] - ref[finite]).abs().max().item() / scale


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _is_inexact(x) -> bool:
    """A floating-point or complex tensor: one that can carry a gradient."""
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def _prepare(inputs: Mapping[str, object], grad_names: set[str], upcast: bool) -> dict[str, object]:
    prepared = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            t = value.detach().clone()
            if upcast and _is_inexact(t):
                # fp32 (complex64), or fp64 (complex128) for fp64 tests
                t = t.to(torch.promote_types(t.dtype, torch.float32))
            if name in grad_names:
                t.requires_grad_(True)
            prepared[name] = t
        else:
            prepared[name] = value
    return prepared


def compare_with_reference(
    op: Op,
    backend: str,
    inputs: Mapping[str, object],
    *,
    grad: bool | Iterable[str] = True,
    tolerance: float | None = None,
    grad_tolerance: float | None = None,
    reference: str = "reference",
    output_names: Iterable[str] | None = None,
    seed: int = 0,
    **kwargs,
) -> list[Comparison]:
    """Run ``op`` with ``backend`` and with ``reference``; return one :class:`Comparison` per output and grad.

    ``inputs`` are the op's tensor arguments by name (passed as keywords); ``kwargs`` are the rest.
    ``grad=True`` differentiates every floating-point or complex tensor input; a collection of names picks
    some. The tolerance defaults to :data:`TOLERANCES` of the lowest-precision floating or complex input.
    """
    float_inputs = [n for n, v in inputs.items() if _is_inexact(v)]
    if grad is True:
        grad_names = set(float_inputs)
    elif grad is False:
        grad_names = set()
    else:
        grad_names = set(grad)
        unknown = grad_names - set(float_inputs)
        if unknown:
            raise ValueError(f"grad names {sorted(unknown)} are not floating-point or complex tensor inputs")
    dtypes = [inputs[n].dtype for n in float_inputs]
    tol = tolerance if tolerance is not None else max(TOLERANCES.get(d, 1e-4) for d in dtypes)
    gtol = grad_tolerance if grad_tolerance is not None else tol

    results = {}
    for which, name, upcast in (("test", backend, False), ("ref", reference, True)):
        args = _prepare(inputs, grad_names, upcast)
        outs = _as_tuple(op(**args, backend=name, **kwargs))
        grads = {}
        if grad_names:
            gen = torch.Generator().manual_seed(seed)
            loss = 0.0
            for o in outs:
                if isinstance(o, torch.Tensor) and o.requires_grad:
                    cot = torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device)
                    if o.is_complex():  # Re(conj(cot) * o) = cot.re * o.re + cot.im * o.im: a real loss
                        cot_imag = torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device)
                        loss = loss + (o.real.float() * cot + o.imag.float() * cot_imag).sum()
                    else:
                        loss = loss + (o.float() * cot).sum()
            if isinstance(loss, torch.Tensor):
                loss.backward()
            grads = {n: args[n].grad for n in sorted(grad_names)}
        results[which] = (outs, grads)

    (test_outs, test_grads), (ref_outs, ref_grads) = results["test"], results["ref"]
    if len(test_outs) != len(ref_outs):
        raise AssertionError(f"{backend} returned {len(test_outs)} outputs, the reference {len(ref_outs)}")
    names = list(output_names) if output_names is not None else [f"output[{i}]" for i in range(len(ref_outs))]
    comparisons = []
    for name, t, r in zip(names, test_outs, ref_outs):
        if (t is None) != (r is None):
            raise AssertionError(
                f"{name}: {backend} gave {type(t).__name__}, the reference {type(r).__name__}"
            )
        if t is None:
            continue
        comparisons.append(Comparison(name, relative_error(t, r), tol))
    for n in sorted(grad_names):
        t, r = test_grads[n], ref_grads[n]
        if r is None and t is None:
            raise AssertionError(f"grad[{n}]: no gradient reached this input in either backend")
        if t is None or r is None:
            which = backend if t is None else "reference"
            raise AssertionError(f"grad[{n}]: {which} produced no gradient")
        comparisons.append(Comparison(f"grad[{n}]", relative_error(t, r), gtol))
    return comparisons


def assert_matches_reference(
    op: Op, backend: str, inputs: Mapping[str, object], **kwargs
) -> list[Comparison]:
    """:func:`compare_with_reference`, raising ``AssertionError`` listing every mismatch."""
    comparisons = compare_with_reference(op, backend, inputs, **kwargs)
    bad = [c for c in comparisons if not c.ok]
    if bad:
        report = "\n  ".join(str(c) for c in comparisons)
        raise AssertionError(f"{op.name}[{backend}] differs from the reference:\n  {report}")
    return comparisons
