"""Backend dispatch shared by every op.

Each mechanism (``ops/<mech>/``) exposes one public function built as an :class:`Op`. Backends register
under fixed names:

- ``reference``: the sequential definition, computed in fp64 where fp32 would lose accuracy (slow; the ground
  truth every test compares to);
- ``torch``: chunked / parallel PyTorch, the CPU default and the fallback anywhere;
- ``triton``: Triton kernels, the GPU default; on a CPU they run only under ``TRITON_INTERPRET=1``;
- ``cuda``: the ``csrc/`` kernels loaded through :mod:`seqzoo.ops._csrc`;
- extra names for optional packages (``flash`` for flash-attn, ``causal_conv1d`` for Dao-AILab's).

``backend="auto"`` walks the op's preference list for the tensors' device and takes the first backend
that is installed and supports the arguments. Every backend computes the same function (tests hold them
to the reference), so the choice changes speed, never results. The backend that ran is kept in
``op.last_backend`` and, with ``SEQZOO_LOG_BACKENDS=1`` in the environment, logged once per
(op, backend, device).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ._checks import no_float64
from ._varlen import check_cu_seqlens, run_per_sequence, state_rows, take_row

log = logging.getLogger("seqzoo.ops")

STANDARD_BACKENDS = ("reference", "torch", "triton", "cuda")

# Preference order of ``auto`` per device type; an op may override it.
DEFAULT_AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("torch",),
}


def triton_interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on ``device`` (None when they can)."""
    if not package_available("triton"):
        return "the 'triton' package is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreting():
        return None
    return (
        f"Triton kernels need a CUDA device (got {device.type}); on a CPU they run only under "
        "TRITON_INTERPRET=1, for testing"
    )


def triton_linear_attention_reason(q: torch.Tensor, v: torch.Tensor, max_head_dim: int = 256) -> str | None:
    """Why the linear-attention Triton kernels (gla, delta_rule) cannot take q [.., K] / v [.., V]; None if they can."""
    reason = no_float64(q, v)
    if reason is not None:
        return reason
    if max(q.shape[-1], v.shape[-1]) > max_head_dim:
        dims = f"K={q.shape[-1]}, V={v.shape[-1]}"
        return f"the Triton kernels take head dims up to {max_head_dim}, got {dims}"
    return None


# Up to this many new tokens, ``auto`` of a step op (``ops.gla_step``, ``ops.delta_rule_step``) on a GPU takes the
# fused recurrent kernel (one launch, no chunk padding); a longer segment (a prompt) takes the chunked kernels.
RECURRENT_MAX_T = 16


def beyond_recurrent_max_t(*args, **kwargs) -> str | None:
    """``auto_skip`` of a fused recurrent backend: why ``auto`` passes it over for these q [B, T, ...] (None when
    T <= RECURRENT_MAX_T). An explicit ``backend=`` still runs it at any T."""
    q = kwargs["q"] if "q" in kwargs else args[0]
    t = q.shape[1]
    if t > RECURRENT_MAX_T:
        return f"T = {t} > RECURRENT_MAX_T = {RECURRENT_MAX_T}: the chunked kernels are faster"
    return None


def returning_state(fn: Callable) -> Callable:
    """A step op's backend from its op's: ``fn(*args, **kwargs, output_final_state=True)``, so decoding always
    gets the new state (a lazily registered ``fn`` still imports its module on the first call)."""

    @functools.wraps(fn)
    def step(*args, **kwargs):
        return fn(*args, **kwargs, output_final_state=True)

    return step


@dataclass
class Backend:
    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...]
    # Why this backend cannot run on a device at all (package missing, ...); None when it can.
    unavailable: Callable[[torch.device], str | None] = lambda device: None
    # Why it cannot take these particular arguments (dtype, window, head size...); None when it can.
    unsupported: Callable[..., str | None] = lambda *args, **kwargs: None
    description: str = ""
    # Why ``auto`` passes it over for these arguments although it could run them (a kernel that is slower
    # there); an explicit ``backend=`` still runs it. None: ``auto`` may take it.
    auto_skip: Callable[..., str | None] = lambda *args, **kwargs: None
    # True when ``fn`` takes ``cu_seqlens=`` itself (one pass over the packed row); otherwise the op runs it once
    # per sequence (``ops/_varlen.py``): the same numbers, more launches.
    varlen: bool = False


@dataclass
class Op:
    """One mechanism's public function with its backends. Calling it dispatches."""

    name: str
    signature_doc: str
    auto_order: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_AUTO_ORDER))
    # Checks the arguments (shapes, dtypes, values) once, before any backend sees them; raises
    # ValueError/TypeError naming the argument.
    validate: Callable[..., None] | None = None
    # The facts the benches, the bad-input, extreme-input and fp64 tests and the compile check read
    # (:class:`~seqzoo.ops._spec.OpSpec`); None only for ops made outside the library (a bench's composite).
    spec: Any = None
    _backends: dict[str, Backend] = field(default_factory=dict)
    last_backend: str | None = None
    # With cu_seqlens: "native" (the backend took the packed row) or "per-sequence" (one run per sequence).
    last_packing: str | None = None
    _logged: set = field(default_factory=set)

    def register(
        self,
        name: str,
        fn: Callable[..., Any] | None = None,
        *,
        devices: Sequence[str] = ("cpu", "cuda"),
        unavailable: Callable[[torch.device], str | None] | None = None,
        unsupported: Callable[..., str | None] | None = None,
        description: str = "",
        auto_skip: Callable[..., str | None] | None = None,
        varlen: bool = False,
    ):
        """Register ``fn`` as backend ``name``. Usable as a decorator when ``fn`` is omitted. ``varlen``: ``fn``
        takes ``cu_seqlens=`` itself (else the op runs it once per sequence of a packed call)."""

        def add(f):
            self._backends[name] = Backend(
                name,
                f,
                tuple(devices),
                unavailable or (lambda device: None),
                unsupported or (lambda *a, **k: None),
                description,
                auto_skip or (lambda *a, **k: None),
                varlen,
            )
            return f

        return add(fn) if fn is not None else add

    def register_lazy(self, name: str, module: str, attr: str, **kwargs):
        """Register a backend whose module is imported only when first used (triton, cuda, flash)."""

        def call(*args, **kw):
            return getattr(importlib.import_module(module, package=__package__), attr)(*args, **kw)

        self.register(name, call, **kwargs)

    # -- introspection ---------------------------------------------------------------------------------

    def backends(self, device: str | torch.device | None = None) -> dict[str, str]:
        """Every registered backend and whether it can run on ``device`` (default: cpu, or cuda if present).

        Returns ``{name: "available" | "<reason it is not>"}``.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        out = {}
        for name, b in self._backends.items():
            reason = self._device_reason(b, device)
            out[name] = "available" if reason is None else reason
        return out

    def backend_names(self) -> list[str]:
        return list(self._backends)

    def _device_reason(self, b: Backend, device: torch.device) -> str | None:
        if device.type not in b.devices:
            return f"runs on {'/'.join(b.devices)}, not {device.type}"
        return b.unavailable(device)

    # -- dispatch --------------------------------------------------------------------------------------

    def resolve(self, backend: str, device: torch.device, args=(), kwargs=None) -> Backend:
        """The backend that will run for ``backend`` on ``device`` with these arguments."""
        kwargs = kwargs or {}
        if not isinstance(backend, str):
            raise TypeError(f"{self.name}: backend must be a string, got {type(backend).__name__}")
        if backend == "auto":
            tried = []
            for name in self.auto_order.get(device.type, ("torch",)):
                b = self._backends.get(name)
                if b is None:
                    continue
                reason = (
                    self._device_reason(b, device)
                    or b.unsupported(*args, **kwargs)
                    or b.auto_skip(*args, **kwargs)
                )
                if reason is None:
                    return b
                tried.append(f"{name}: {reason}")
            raise RuntimeError(
                f"{self.name}: no backend can run on {device.type} with these arguments ({'; '.join(tried)})"
            )
        b = self._backends.get(backend)
        if b is None:
            raise ValueError(
                f"{self.name}: unknown backend {backend!r}; expected 'auto' or one of {self.backend_names()}"
            )
        reason = self._device_reason(b, device) or b.unsupported(*args, **kwargs)
        if reason is not None:
            raise ValueError(f"{self.name}: backend {backend!r} cannot run here: {reason}")
        return b

    def __call__(self, *args, backend: str = "auto", cu_seqlens=None, **kwargs):
        if _RECORDERS:  # one truth test when nothing records (the common case)
            return _recorded_call(self, args, kwargs, backend, cu_seqlens)
        return self._call(args, kwargs, backend, cu_seqlens)

    def _call(self, args, kwargs, backend, cu_seqlens):
        if cu_seqlens is not None:
            return self._call_packed(args, kwargs, backend, cu_seqlens)
        if self.validate is not None:
            self.validate(*args, **kwargs)
        device = _first_tensor_device(args, kwargs)
        b = self.resolve(backend, device, args, kwargs)
        self._ran(b, device, None)
        return b.fn(*args, **kwargs)

    def _ran(self, b: Backend, device: torch.device, packing: str | None) -> None:
        self.last_backend, self.last_packing = b.name, packing
        if os.environ.get("SEQZOO_LOG_BACKENDS") and (b.name, device.type, packing) not in self._logged:
            self._logged.add((b.name, device.type, packing))
            how = f" ({packing} packed)" if packing else ""
            log.warning("seqzoo.ops.%s: backend %r on %s%s", self.name, b.name, device.type, how)

    def parameters(self) -> list[str]:
        """The op's argument names in call order (its reference backend's signature)."""
        for b in self._backends.values():
            try:
                sig = inspect.signature(b.fn)
            except (TypeError, ValueError):
                continue
            names = [
                p.name
                for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
            ]
            if names and not any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
                return names
        raise RuntimeError(f"{self.name}: no backend with a plain signature to name its arguments by")

    def packed_args(self) -> tuple[str, ...]:
        """The arguments with a time axis that cu_seqlens cuts (empty: the op takes no cu_seqlens)."""
        if self.spec is None:
            return ()
        return self.spec.packing_args()

    def _call_packed(self, args, kwargs, backend, cu_seqlens):
        """Sequences packed in one row (``ops/_varlen.py``): check cu_seqlens and the per-sequence states, then
        run the backend on the row (``varlen``) or once per sequence."""
        packed = self.packed_args()
        if not packed:
            raise TypeError(f"{self.name}: takes no cu_seqlens (it has no time axis to pack sequences along)")
        names = self.parameters()
        if len(args) > len(names):
            raise TypeError(f"{self.name}: takes at most {len(names)} positional arguments, got {len(args)}")
        dup = [n for n in names[: len(args)] if n in kwargs]
        if dup:
            raise TypeError(f"{self.name}: got multiple values for argument {dup[0]!r}")
        kw = {**dict(zip(names, args)), **kwargs}
        first = next((n for n in packed if kw.get(n) is not None), packed[0])
        bounds = check_cu_seqlens(self.name, cu_seqlens, kw.get(first), first)
        for name in packed:
            other = kw.get(name)
            if (
                isinstance(other, torch.Tensor)
                and other is not kw[first]
                and other.shape[:2] != kw[first].shape[:2]
            ):
                raise ValueError(
                    f"{self.name}: with cu_seqlens, {name} packs the same sequences as {first}: expected its "
                    f"first two dimensions {tuple(kw[first].shape[:2])} (batch 1, T), got {tuple(other.shape)}"
                )
        n_seq = len(bounds) - 1
        state_arg = self.spec.state_arg
        state = kw.get(state_arg) if state_arg else None
        checked = kw
        if state is not None:
            rows = state_rows(state)
            if rows is not None and rows != n_seq:
                raise ValueError(
                    f"{self.name}: with cu_seqlens, {state_arg} holds one state per sequence: expected "
                    f"{n_seq} rows (cu_seqlens has {n_seq} sequences), got {rows}"
                )
            checked = {**kw, state_arg: take_row(state, 0) if rows is not None else state}
        if self.validate is not None:
            self.validate(**checked)
        device = _first_tensor_device((), kw)
        b = self.resolve(backend, device, (), checked)
        if b.varlen:
            self._ran(b, device, "native")
            return b.fn(**kw, cu_seqlens=cu_seqlens)
        self._ran(b, device, "per-sequence")
        return run_per_sequence(b.fn, kw, bounds, packed, state_arg, self.spec.states)

    def __repr__(self) -> str:
        return f"<seqzoo op {self.name}: backends {self.backend_names()}>"


# -- recording op calls (seqzoo.analysis) ----------------------------------------------------------------


@dataclass
class OpCall:
    """One public op call seen by :func:`record_calls`: the op's ``name``, its ``arguments`` bound to the op's
    parameter names (the tensors themselves, not copies), ``cu_seqlens`` and ``backend`` as passed, what it
    returned (``result``), the backend that ran and its nesting ``depth`` (0: called from outside any op;
    1: called by an op's backend, as flow_attention's torch backend calls ``ops.gla``; ...)."""

    name: str
    arguments: dict[str, Any]
    cu_seqlens: Any
    backend: str
    result: Any
    ran: str | None
    depth: int


# The lists open record_calls() contexts append to; empty (falsy) when none is open, so ``Op.__call__`` pays one
# truth test. ``_DEPTH`` counts the op calls in progress, for OpCall.depth.
_RECORDERS: list[list[OpCall]] = []
_DEPTH = [0]


@contextlib.contextmanager
def record_calls():
    """Record every public op call made inside the block, nested ones included (their ``depth`` > 0)::

        with ops.record_calls() as calls:
            y = mixer(x)
        [(c.name, c.depth) for c in calls]      # [("causal_conv1d", 0), ..., ("gla", 0)]

    Yields a list of :class:`OpCall`, in the order the calls *finished* (an op's nested calls come before it).
    Nothing is copied: the arguments are the tensors the caller passed. Costs nothing when no block is open.
    Used by ``seqzoo.analysis.equivalent_matrix`` to re-run a mixer's ops on identity probes."""
    calls: list[OpCall] = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


def note(site: str, **tensors) -> None:
    """Hand named tensors of a layer's plain-torch steps to the open :func:`record_calls` blocks (the gates of
    hyena's chain, the conditioning coefficients of orchid, the inputs of lizard's window attention): what
    happens outside any op, which ``seqzoo.analysis`` needs to compose a mixer's whole core. Recorded in call
    order as an :class:`OpCall` named ``site`` with ``ran="note"`` and no result; one truth test when nothing
    records, and it changes nothing the layer computes."""
    if _RECORDERS:
        call = OpCall(site, dict(tensors), None, "", None, "note", _DEPTH[0])
        for calls in _RECORDERS:
            calls.append(call)


def _recorded_call(op: Op, args, kwargs, backend, cu_seqlens):
    _DEPTH[0] += 1
    try:
        result = op._call(args, kwargs, backend, cu_seqlens)
    finally:
        _DEPTH[0] -= 1
    try:
        names = op.parameters()
    except RuntimeError:
        names = [f"arg{i}" for i in range(len(args))]
    call = OpCall(
        op.name, {**dict(zip(names, args)), **kwargs}, cu_seqlens, backend, result, op.last_backend, _DEPTH[0]
    )
    for calls in _RECORDERS:
        calls.append(call)
    return result


def _first_tensor_device(args, kwargs) -> torch.device:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


_REGISTRY: dict[str, Op] = {}


def define_op(
    name: str,
    signature_doc: str,
    *,
    validate: Callable[..., None] | None = None,
    auto_order: dict[str, tuple[str, ...]] | None = None,
    spec: Any = None,
) -> Op:
    """The op ``name`` (registered for :func:`list_ops`), its ``spec`` an :class:`~seqzoo.ops._spec.OpSpec`."""
    op = Op(
        name, signature_doc, auto_order=dict(auto_order or DEFAULT_AUTO_ORDER), validate=validate, spec=spec
    )
    op.__doc__ = signature_doc
    _REGISTRY[name] = op
    return op


def define_step_op(
    op: Op,
    name: str,
    signature_doc: str,
    *,
    validate: Callable[..., None] | None = None,
    recurrent_backend: str = "triton_recurrent",
) -> Op:
    """The step op of ``op`` (an op with ``initial_state`` and ``output_final_state``): ``op`` from a state that
    always returns the new one, for decoding (``gla_step`` from ``gla``).

    Its backends are ``op``'s, under the same names and with the same availability and refusals, each called with
    ``output_final_state=True``; ``auto`` on a GPU tries ``recurrent_backend`` (the fused recurrent kernel) first
    and passes it over beyond RECURRENT_MAX_T new tokens (``auto_skip``: the chunked kernels are faster there), so
    register ``op``'s backends before deriving. ``validate`` defaults to ``op``'s with ``output_final_state=True``
    (pass one that names the step op in its messages). Its spec is ``op``'s without the flag, the state among
    the outputs, on ``op``'s kernels; not audited or run long again (the same functions as ``op``).
    """
    if validate is None and op.validate is not None:
        base = op.validate

        def validate(*args, **kwargs):
            base(*args, **kwargs, output_final_state=True)

    auto_order = {device: tuple(order) for device, order in op.auto_order.items()}
    if recurrent_backend in op._backends:
        cuda = auto_order.get("cuda", ())
        auto_order["cuda"] = (recurrent_backend, *(b for b in cuda if b != recurrent_backend))
    spec = None
    if op.spec is not None:
        flag, make = op.spec.returns_state_flag, op.spec.make
        spec = op.spec.derive(
            make=lambda sizes, draw: {k: v for k, v in make(sizes, draw).items() if k != flag},
            returns_state_flag="",
            variants={k.replace(op.name, name): v for k, v in op.spec.variants.items()},
            # Decoding: a token, a few, a short prompt.
            bench=op.spec.bench
            and replace(op.spec.bench, t=(1, 16, 256), quick_t=(1, 16), cuda_t=(1, 16, 256), tokens=1024),
            extreme=None,
            audit={},
            audit_exempt=f"the same reference as {op.name}, audited there",
            kernels_of=op.spec.kernels_of or op.name,
        )
    step = define_op(name, signature_doc, validate=validate, auto_order=auto_order, spec=spec)
    for b in op._backends.values():
        recurrent = b.name == recurrent_backend
        step.register(
            b.name,
            returning_state(b.fn),
            devices=b.devices,
            unavailable=b.unavailable,
            unsupported=b.unsupported,
            auto_skip=beyond_recurrent_max_t if recurrent else b.auto_skip,
            description=f"{op.name}'s {b.description}"
            + (f" (auto: up to {RECURRENT_MAX_T} tokens)" if recurrent else ""),
            varlen=b.varlen,
        )
    return step


def list_ops() -> dict[str, Op]:
    """Every op by name (``seqzoo list`` prints them with their backends)."""
    return dict(_REGISTRY)
