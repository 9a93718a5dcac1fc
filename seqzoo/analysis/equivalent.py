"""The dynamical-systems view of a mixer (Sieber et al., NeurIPS 2024, "Understanding the differences in
Foundation Models"): the exact T x T matrix Phi that maps the values to the mixer's core output on one input.

Every mixer's core is a linear time-varying system once its gates are computed from the input,

    h_i = Lambda_i h_{i-1} + B_i u_i,     y_i = C_i h_i + D_i u_i,     h_0 = 0
    =>  y = Phi u,    Phi_ij = C_i Lambda_i ... Lambda_{j+1} B_j  (j < i),   Phi_ii = C_i B_i + D_i,   Phi_ij = 0 (j > i)

so on a given input x the core is y[b, t, g] = sum_s Phi[b, g, t, s] u[b, s, g] (a vector u per head, a scalar
per channel). Softmax attention gives its attention matrix, gated linear attention / the delta rule the
decayed (or delta-corrected) q.k products, a selective or diagonal scan the products of its decays, an LTI
SSM or a convolution a Toeplitz matrix (the kernel on the diagonals).

How Phi is found (the "probe" method, exact by construction, no hook in any layer): the mixer runs once
under :func:`seqzoo.ops.record_calls` (in fp64); every recorded op call whose op is in :data:`PROBES` is
re-run on the op's ``reference`` backend with its value argument replaced by identity probes while the other
arguments (q, k, gates, kernels: functions of x) stay as they were:

- head ops (``attention``, ``gla``, ``delta_rule``, ``flow_attention``): v <- I_T per head (v [B, T, H, T]),
  so o[b, t, h, s] = Phi[b, h, t, s] in one call;
- per-channel ops (``linear_scan``, ``selective_scan``, ``fft_conv``, ``causal_conv1d``): a unit impulse at
  each time s in every channel at once (channels are independent), y[b, t, c] = Phi[b, c, t, s]: T calls.

Whatever the op returns at a zero value argument (a state carried in: ``initial_state``; a convolution's
bias) is the view's ``offset``: output = Phi @ values + offset. The output is the *recorded* one (the backend
the layer chose, e.g. torch), so :meth:`EquivalentView.check` compares two routes, not one with itself.

Only calls made directly by the layer are probed (depth 0 of the recording): flow_attention's torch backend
runs ops.gla inside, and that nested call belongs to flow_attention's view. Kernel producers
(``s4_kernel``, ``s4d_kernel``) are not probed: their output is the convolution's kernel, which the
``fft_conv`` view shows as its Toeplitz matrix.

Adding an op: one line in :data:`PROBES` (``head(value_arg, kind)`` for an op linear in a [B, T, H, V] value,
``channel(value_arg, kind)`` for an op linear per channel in a [B, T, C] input; ``linearize=`` for an op that
is linear only up to a pointwise output nonlinearity, as causal_conv1d's silu). A mixer whose core is a sum of
op calls (liger: a GLA part and a window-attention part on the same v) gets a small adapter in
:data:`ADAPTERS`; a mixer on known ops needs nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import ops
from ..ops._dispatch import OpCall


@dataclass(frozen=True)
class Probe:
    """How to probe one op: its value argument's name, "head" ([B, T, H, V] values, one Phi per head) or
    "channel" ([B, T, C] values, one Phi per channel), the view's ``kind`` and an optional ``linearize``
    (arguments -> (arguments of the linear part, post)): post(matrix, offset, arguments) -> (matrix, offset)
    puts back a pointwise nonlinearity as a row scaling."""

    value: str
    grouping: str
    kind: str
    linearize: Callable | None = None
    # The rank of a core: when a layer makes several probed calls (a short convolution before a scan), the
    # highest rank is the core; ties go to an adapter, else to the last call.
    rank: int = 1


def head(value: str, kind: str, **kw) -> Probe:
    """An op linear in its value argument ``value`` [B, T, H, V] (outputs [B, T, H', V], H' a multiple of H)."""
    return Probe(value, "head", kind, **kw)


def channel(value: str, kind: str, **kw) -> Probe:
    """An op linear per channel in ``value`` [B, T, C] (output [B, T, C], channel c from input channel c)."""
    return Probe(value, "channel", kind, **kw)


def _conv_activation(arguments: dict):
    """causal_conv1d with ``activation="silu"``: y = silu(z), z = W * u + b, is diag(sigmoid(z_t)) (W * u + b):
    the linear part probed without the activation, then every row scaled by sigmoid(z_t) (offset likewise)."""
    act = arguments.get("activation")
    if act is None:
        return arguments, None
    if act != "silu":
        raise ValueError(
            f"equivalent_matrix: causal_conv1d activation {act!r} is not supported (None or 'silu')"
        )

    def post(matrix, offset, values):
        z = torch.einsum("bgts,bsgv->btgv", matrix, values) + (0 if offset is None else offset)
        s = torch.sigmoid(z)  # [B, T, G, 1]
        row = s[..., 0].permute(0, 2, 1)[..., None]  # [B, G, T, 1]
        return matrix * row, None if offset is None else offset * s

    return {**arguments, "activation": None}, post


# The probe of every op the analysis knows (see the module docstring; one line per new op).
PROBES: dict[str, Probe] = {
    "attention": head("v", "softmax", rank=2),
    "gla": head("v", "gla", rank=2),
    "delta_rule": head("v", "delta", rank=2),
    "flow_attention": head("v", "flow", rank=2),
    "selective_scan": channel("u", "selective", rank=2),
    "linear_scan": channel("x", "diag_scan", rank=2),
    "fft_conv": channel("u", "lti", rank=2),
    "causal_conv1d": channel("x", "conv", linearize=_conv_activation, rank=1),
}


# Ops a layer may call whose output is not a mixing of values (a convolution's kernel from SSM parameters): not
# probed, and not an error. Any other op without a probe is an error naming it (the view would miss the core).
NOT_MIXING: set[str] = {"s4_kernel", "s4d_kernel"}


@dataclass
class EquivalentView:
    """Phi of one core (see the module docstring). Shapes (G: the heads or channels kept):

    matrix [B, G, T, T]   Phi[b, g, t, s]: how much value s contributes to output t (zero above the diagonal for
                          a causal core); complex for a complex scan
    values [B, T, G, V]   what Phi multiplies: the op's value argument (v per head, repeated over a GQA group;
                          the per-channel input u_c with V = 1)
    output [B, T, G, V]   the core's output as the layer computed it (recorded, its own backend)
    offset [B, T, G, V] or None   the part not from the values (a carried-in state, a bias)
    grouping "head" | "channel";  kind "softmax" | "gla" | "delta" | "flow" | "selective" | "diag_scan" | "lti"
    | "conv" | "sum";  op: the op(s) probed;  note: where the core sits in the layer;  calls: the recorded
    :class:`~seqzoo.ops.OpCall` (s) probed.
    """

    matrix: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    grouping: str
    kind: str
    op: str
    note: str = ""
    offset: torch.Tensor | None = None
    groups: list[int] = field(default_factory=list)
    mixer: str = ""
    # The recorded op call(s) the view probed (their arguments: q, k, gates... as the layer computed them).
    calls: list = field(default_factory=list)

    @property
    def causal(self) -> bool:
        """False when a probed call ran bidirectionally or backwards (``causal=False``, ``bidirectional=True``,
        ``reverse=True``): then Phi has entries above the diagonal; True: Phi is lower triangular."""
        return not any(
            c.arguments.get("causal", True) is False
            or c.arguments.get("bidirectional", False) is True
            or c.arguments.get("reverse", False) is True
            for c in self.calls
        )

    def __repr__(self) -> str:
        return (
            f"EquivalentView(mixer={self.mixer!r}, op={self.op!r}, kind={self.kind!r}, grouping={self.grouping!r}, "
            f"matrix={tuple(self.matrix.shape)}, values={tuple(self.values.shape)}, "
            f"offset={'None' if self.offset is None else 'yes'})"
        )

    def reconstruct(self) -> torch.Tensor:
        """einsum('bgts,bsgv->btgv', matrix, values) (+ offset): equals ``output``."""
        y = torch.einsum("bgts,bsgv->btgv", self.matrix, self.values.to(self.matrix.dtype))
        return y if self.offset is None else y + self.offset

    def error(self) -> float:
        return (self.reconstruct() - self.output).abs().max().item()

    def check(self, atol: float = 1e-10) -> float:
        """Assert matrix @ values (+ offset) == the recorded output to ``atol``; returns the max error."""
        err = self.error()
        if not err <= atol:
            raise AssertionError(
                f"equivalent_matrix({self.mixer or self.op}): Phi @ values differs from the core output by "
                f"{err:.3g} > atol {atol:g} (op {self.op}, kind {self.kind})"
            )
        return err


# -- probing one op call -------------------------------------------------------------------------------


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def _run_reference(call: OpCall, arguments: dict):
    op = ops.list_ops()[call.name]
    return _first(op(**arguments, backend="reference", cu_seqlens=call.cu_seqlens))


def _state_free(call: OpCall, arguments: dict) -> dict:
    """The arguments without a carried-in state (probe values change the value width, which the state's
    shape is tied to; the state's share of the output is the offset)."""
    spec = ops.list_ops()[call.name].spec
    state_arg = getattr(spec, "state_arg", None) or "initial_state"
    out = dict(arguments)
    if state_arg in out:
        out[state_arg] = None
    for flag in ("output_final_state",):
        if flag in out:
            out[flag] = False
    return out


def _offset(call: OpCall, arguments: dict, value: torch.Tensor) -> torch.Tensor | None:
    """The op's output at a zero value argument (the carried-in state's or a bias's share); None when zero."""
    zero = _first(_run_reference(call, {**arguments, PROBES[call.name].value: torch.zeros_like(value)}))
    return None if not bool((zero != 0).any()) else zero


def probe_call(call: OpCall) -> EquivalentView:
    """The view of one recorded op call (its op must be in :data:`PROBES`)."""
    if call.name not in PROBES:
        raise ValueError(
            f"equivalent_matrix: no probe for op {call.name!r}; known ops: {sorted(PROBES)} (add a line to "
            "seqzoo.analysis.PROBES)"
        )
    probe = PROBES[call.name]
    arguments, post = (probe.linearize or (lambda a: (a, None)))(dict(call.arguments))
    value = arguments[probe.value]
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"equivalent_matrix: op {call.name}'s value argument {probe.value!r} is not a tensor"
        )
    output = _first(call.result)
    free = _state_free(call, arguments)
    b, t = value.shape[:2]
    if probe.grouping == "head":
        hv = value.shape[2]
        eye = torch.eye(t, dtype=value.dtype, device=value.device)
        v_probe = eye[None, :, None, :].expand(b, t, hv, t).contiguous()
        o = _first(_run_reference(call, {**free, probe.value: v_probe}))  # [B, T, H, T]
        matrix = o.permute(0, 2, 1, 3)  # [B, H, T(out), T(in)]
        h = output.shape[2]
        values = value.repeat_interleave(h // hv, dim=2) if h != hv else value
        out = output
        offset = _offset(call, arguments, value)
    else:
        cols = []
        for s in range(t):
            impulse = torch.zeros_like(value)
            impulse[:, s] = 1
            cols.append(_first(_run_reference(call, {**free, probe.value: impulse})))  # [B, T, C]
        matrix = torch.stack(cols, dim=-1).permute(0, 2, 1, 3)  # [B, C, T, T]
        values, out = value[..., None], output[..., None]
        offset = _offset(call, arguments, value)
        offset = None if offset is None else offset[..., None]
    if post is not None:
        matrix, offset = post(matrix, offset, values)
    return EquivalentView(
        matrix=matrix,
        values=values,
        output=out,
        grouping=probe.grouping,
        kind=probe.kind,
        op=call.name,
        offset=offset,
        groups=list(range(matrix.shape[1])),
        calls=[call],
    )


# -- composing a mixer's calls --------------------------------------------------------------------------


def _sum_adapter(weights: Callable):
    """A core that is a weighted sum of head calls on the same values (liger: gla_weight * GLA part +
    swa_weight * window-attention part): Phi = sum_i w_i Phi_i."""

    def compose(mixer, views: list[EquivalentView]) -> EquivalentView:
        ws = weights(mixer)
        if len(views) != len(ws):
            raise ValueError(f"equivalent_matrix: expected {len(ws)} core calls, recorded {len(views)}")
        base = views[0]
        for v in views[1:]:
            if v.values.shape != base.values.shape or not torch.equal(v.values, base.values):
                raise ValueError("equivalent_matrix: the parts of a sum adapter do not share their values")
        return EquivalentView(
            matrix=sum(w * v.matrix for w, v in zip(ws, views)),
            values=base.values,
            output=sum(w * v.output for w, v in zip(ws, views)),
            grouping="head",
            kind="sum",
            op="+".join(v.op for v in views),
            offset=None
            if all(v.offset is None for v in views)
            else sum(w * (0 if v.offset is None else v.offset) for w, v in zip(ws, views)),
            groups=base.groups,
            calls=[c for v in views for c in v.calls],
            note=" + ".join(f"{w:g} * {v.op}" for w, v in zip(ws, views)) + ";",
        )

    return compose


# Per-mixer composition of its core calls (by registered name); a mixer not listed takes its top-ranked call.
ADAPTERS: dict[str, Callable] = {
    "liger": _sum_adapter(lambda m: [float(m.gla_weight), float(m.swa_weight)]),
}

# Where the core sits in each layer (the view's note): what precedes it and what follows it.
NOTES: dict[str, str] = {
    "attention": "softmax(q k^T / sqrt(d)) per head after the q/k/v projections (RoPE on q, k); o_proj follows",
    "sliding_window": "windowed softmax attention per head; o_proj follows",
    "liger": "0.5 GLA (softmax feature maps, gate from k) + 0.5 window softmax attention on one v; o_proj follows",
    "lizard": "the GLA part only: lizard's window attention with sinks is plain torch (not an op), so it is "
    "not in Phi",
    "mamba": "per channel of the inner width: selective scan with D on the diagonal and silu(z) as row scaling; "
    "the short convolution before it and out_proj after it are outside",
    "rglru": "per channel: h_t = a_t h_{t-1} + x_t with x_t = sqrt(1 - a_t^2) (i_t * u_t) (the input gate and "
    "normalisation are in the values); the gelu branch and out_proj follow",
    "s4": "per channel: the Toeplitz matrix of the kernel (s4_kernel) with D on the diagonal; the activation "
    "and output projection follow",
    "s4d": "per channel: the Toeplitz matrix of the kernel (s4d_kernel) with D on the diagonal; the activation "
    "and output projection follow",
    "hyena": "the last long convolution (Toeplitz per channel, with its bias on the diagonal); hyena's gates "
    "(row / column scalings diag(x1) Phi diag(x2)) are elementwise products outside the op",
    "orchid": "the data-dependent long convolution (Toeplitz per channel); the gates are outside the op",
    "base_conv": "the long convolution (Toeplitz per channel); the gating projection is outside the op",
    "short_conv": "the depthwise causal convolution (banded Toeplitz per channel, silu as row scaling)",
}


# The note of a mixer without its own line in NOTES, by the probed op.
OP_NOTES: dict[str, str] = {
    "gla": "per head: ops.gla on the layer's q, k (after feature maps / short convolutions) and decay; "
    "Phi_ij = scale q_i . (prod of decays) k_j; an output norm / gate (row scalings) and o_proj follow",
    "delta_rule": "per head: ops.delta_rule (Lambda_i = decay (I - beta_i k_i k_i^T)); the output norm / gate and "
    "o_proj follow",
    "attention": "per head: softmax attention rows; o_proj follows",
    "flow_attention": "per head: flow attention's normalised q.k weights (competition and allocation included); "
    "o_proj follows",
    "selective_scan": "per channel: selective scan with D on the diagonal and the z gate as row scaling",
    "linear_scan": "per channel: diagonal scan h_t = a_t h_{t-1} + x_t",
    "fft_conv": "per channel: the Toeplitz matrix of the long convolution's kernel, D on the diagonal",
    "causal_conv1d": "per channel: banded Toeplitz of the short convolution",
}


def _mixer_name(mixer) -> str:
    from ..registry import list_mixers

    names = [n for n, r in list_mixers().items() if r.cls is type(mixer)]
    return names[0] if names else type(mixer).__name__


def _to_dtype(mixer, dtype: torch.dtype):
    """A copy of ``mixer`` in ``dtype`` (complex parameters to the matching complex dtype)."""
    cdtype = {torch.float64: torch.complex128, torch.float32: torch.complex64}.get(dtype, torch.complex64)
    m = copy.deepcopy(mixer)
    m._apply(lambda t: t.to(dtype) if t.is_floating_point() else (t.to(cdtype) if t.is_complex() else t))
    return m.eval()


def record_core_calls(mixer, x: torch.Tensor, *, cu_seqlens=None, dtype=torch.float64):
    """Run a ``dtype`` copy of ``mixer`` on x under :func:`seqzoo.ops.record_calls`; returns (name, the
    layer's output, the depth-0 calls with a probe)."""
    name = _mixer_name(mixer)
    m = _to_dtype(mixer, dtype)
    x = x.to(dtype)
    with torch.no_grad(), ops.record_calls() as calls:
        y = m(x) if cu_seqlens is None else m(x, cu_seqlens=cu_seqlens)
    top = [c for c in calls if c.depth == 0]
    unknown = sorted({c.name for c in top if c.name not in PROBES and c.name not in NOT_MIXING})
    if unknown:
        raise ValueError(
            f"equivalent_matrix: mixer {name!r} calls op(s) {unknown} that have no probe (add a line to "
            f"seqzoo.analysis.PROBES, or to NOT_MIXING for an op that does not mix values); probed ops: "
            f"{sorted(PROBES)}"
        )
    probed = [c for c in top if c.name in PROBES]
    if not probed:
        seen = sorted({c.name for c in calls}) or ["none"]
        raise ValueError(
            f"equivalent_matrix: mixer {name!r} made no op call the analysis can probe (ops called: "
            f"{', '.join(seen)}; probed ops: {sorted(PROBES)}): its core is plain torch, not a seqzoo.ops op"
        )
    return name, y, probed


def equivalent_matrices(
    mixer, x: torch.Tensor, *, cu_seqlens=None, dtype=torch.float64
) -> list[EquivalentView]:
    """The view of every probed op call the mixer makes on x, in call order (short convolutions included)."""
    name, _, probed = record_core_calls(mixer, x, cu_seqlens=cu_seqlens, dtype=dtype)
    views = [probe_call(c) for c in probed]
    for v in views:
        v.mixer = name
    return views


def equivalent_matrix(
    mixer,
    x: torch.Tensor,
    *,
    heads: list[int] | None = None,
    channels: list[int] | None = None,
    cu_seqlens: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> EquivalentView:
    """The mixer's core on input x [B, T, d_model] as one matrix per head or channel (see the module docstring).

    Runs a ``dtype`` copy of the mixer (eval mode; the mixer itself is untouched), records its op calls, and
    probes the core: the top-ranked probed call (a scan over a short convolution before it), or the mixer's
    adapter in :data:`ADAPTERS` when its core is a sum of calls. ``heads`` / ``channels``: keep those groups
    (default all). ``cu_seqlens``: packed documents (batch 1); Phi is then block diagonal.
    Raises ValueError naming the mixer when its core is not an op the analysis knows.
    """
    if heads is not None and channels is not None:
        raise ValueError("equivalent_matrix: pass heads= or channels=, not both")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"equivalent_matrix: x must be a [B, T, d_model] tensor, got {getattr(x, 'shape', x)!r}"
        )
    name, _, probed = record_core_calls(mixer, x, cu_seqlens=cu_seqlens, dtype=dtype)
    top = max(PROBES[c.name].rank for c in probed)
    core = [c for c in probed if PROBES[c.name].rank == top]
    if name in ADAPTERS:
        view = ADAPTERS[name](mixer, [probe_call(c) for c in core])
    else:
        view = probe_call(core[-1])
        if len(core) > 1:
            view.note = f"the last of {len(core)} {core[-1].name} calls (equivalent_matrices gives each); "
    view.mixer = name
    view.note = (view.note + " " + NOTES.get(name, OP_NOTES.get(view.op, ""))).strip()
    keep = heads if heads is not None else channels
    if keep is not None:
        want = "head" if heads is not None else "channel"
        if view.grouping != want:
            raise ValueError(
                f"equivalent_matrix: mixer {name!r} has one matrix per {view.grouping}; pass "
                f"{view.grouping}s=, not {want}s="
            )
        g = view.matrix.shape[1]
        bad = [i for i in keep if not -g <= int(i) < g]
        if bad:
            raise ValueError(f"equivalent_matrix: {want}s {bad} out of range for {g} {want}s of {name!r}")
        idx = torch.as_tensor([int(i) % g for i in keep], device=view.matrix.device)
        view.matrix = view.matrix.index_select(1, idx)
        view.values, view.output = view.values.index_select(2, idx), view.output.index_select(2, idx)
        if view.offset is not None:
            view.offset = view.offset.index_select(2, idx)
        view.groups = [int(i) % g for i in keep]
    return view


__all__ = [
    "ADAPTERS",
    "EquivalentView",
    "PROBES",
    "Probe",
    "channel",
    "equivalent_matrices",
    "equivalent_matrix",
    "head",
    "probe_call",
    "record_core_calls",
]
