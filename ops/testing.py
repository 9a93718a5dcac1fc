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


# -- packed sequences: one call with cu_seqlens against one call per sequence ------------------------------------

# Issue 27's bounds for a packed call against separate ones (relative to the largest magnitude).
PACKED_TOLERANCES: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-5}


def _leaf(value):
    if _is_inexact(value):
        return value.detach().clone().requires_grad_(True)
    if isinstance(value, dict):
        return {k: _leaf(v) for k, v in value.items()}
    return value


def _grad_leaves(inputs: Mapping[str, object]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in inputs.items():
        if isinstance(value, dict):
            out.update({f"{name}[{k!r}]": v for k, v in value.items() if _is_inexact(v)})
        elif _is_inexact(value):
            out[name] = value
    return out


def _flat(out) -> list:
    flat = []
    for o in _as_tuple(out):
        flat.extend(o.values() if isinstance(o, dict) else [o])
    return flat


def _cotangent_loss(outs: list, cots: list) -> torch.Tensor | float:
    loss = 0.0
    for o, c in zip(outs, cots):
        if isinstance(o, torch.Tensor) and o.requires_grad:
            loss = loss + (o.real * c.real.to(o.real.dtype)).sum()
            if o.is_complex():
                loss = loss + (o.imag * c.imag.to(o.real.dtype)).sum()
    return loss


def compare_packed_with_separate(
    op: Op, backend: str, inputs: Mapping[str, object], cu_seqlens: torch.Tensor, *, seed: int = 0
) -> list[Comparison]:
    """``op(**inputs, cu_seqlens=cu_seqlens)`` (inputs packed in one row, states one row per sequence) against
    ``op`` once per sequence on the same leaves (slices of the packed tensors, a row of the states), both on
    ``backend``: the outputs (per-position outputs joined, states row under row) and the gradient of every
    floating-point input (including the states' and parameters', which the separate runs accumulate)."""
    packed_args, state_arg = op.packed_args(), op.spec.state_arg
    bounds = [int(b) for b in cu_seqlens.tolist()]
    floats = [v.dtype for v in _grad_leaves(inputs).values()]
    tol = max(PACKED_TOLERANCES.get(d, TOLERANCES.get(d, 1e-4)) for d in floats)
    leaves = {k: _leaf(v) for k, v in inputs.items()}
    grads_of = _grad_leaves(leaves)

    packed = _flat(op(**leaves, cu_seqlens=cu_seqlens, backend=backend))
    gen = torch.Generator().manual_seed(seed)
    cots = [
        None
        if o is None
        else torch.randn(
            o.shape, generator=gen, dtype=torch.complex128 if o.is_complex() else torch.float64
        ).to(o.device)
        for o in packed
    ]
    loss = _cotangent_loss(packed, cots)
    packed_grads = torch.autograd.grad(loss, list(grads_of.values()), allow_unused=True) if grads_of else ()

    separate_runs = []
    for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        kw = dict(leaves)
        for name in packed_args:
            if kw.get(name) is not None:
                kw[name] = kw[name][:, s:e]
        if state_arg and kw.get(state_arg) is not None:
            st = kw[state_arg]
            kw[state_arg] = (
                {k: v[n : n + 1] for k, v in st.items()} if isinstance(st, dict) else st[n : n + 1]
            )
        separate_runs.append(_as_tuple(op(**kw, backend=backend)))
    n_out = len(separate_runs[0])
    joined = []
    for i in range(n_out):
        parts = [r[i] for r in separate_runs]
        if all(p is None for p in parts):
            joined.append(None)
        elif i in op.spec.states:
            joined.append(
                {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
                if isinstance(parts[0], dict)
                else torch.cat(parts)
            )
        else:
            joined.append(torch.cat(parts, dim=1))
    separate = _flat(tuple(joined) if n_out > 1 or isinstance(joined[0], dict) else joined[0])
    if len(separate) != len(packed):
        raise AssertionError(f"packed call gave {len(packed)} outputs, the separate calls {len(separate)}")
    loss = _cotangent_loss(separate, cots)
    separate_grads = torch.autograd.grad(loss, list(grads_of.values()), allow_unused=True) if grads_of else ()

    comparisons = []
    for i, (p, s) in enumerate(zip(packed, separate)):
        if (p is None) != (s is None):
            raise AssertionError(f"output[{i}]: packed gave {type(p).__name__}, separate {type(s).__name__}")
        if p is not None:
            comparisons.append(Comparison(f"output[{i}]", relative_error(p, s), tol))
    for name, p, s in zip(grads_of, packed_grads, separate_grads):
        if p is None and s is None:
            continue
        if p is None or s is None:
            raise AssertionError(
                f"grad[{name}]: only the {'separate' if p is None else 'packed'} calls reach it"
            )
        comparisons.append(Comparison(f"grad[{name}]", relative_error(p, s), tol))
    return comparisons


def assert_packed_matches_separate(
    op: Op, backend: str, inputs: Mapping[str, object], cu_seqlens: torch.Tensor, **kwargs
) -> list[Comparison]:
    """:func:`compare_packed_with_separate`, raising ``AssertionError`` listing every mismatch."""
    comparisons = compare_packed_with_separate(op, backend, inputs, cu_seqlens, **kwargs)
    bad = [c for c in comparisons if not c.ok]
    if bad:
        report = "\n  ".join(str(c) for c in comparisons)
        raise AssertionError(f"{op.name}[{backend}] packed differs from separate runs:\n  {report}")
    return comparisons
