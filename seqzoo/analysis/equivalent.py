"""The dynamical-systems view of a mixer (Sieber et al., NeurIPS 2024, "Understanding the differences in
Foundation Models"): the exact T x T matrix Phi that maps the values to the mixer's core output on one input.

Every mixer's core is a linear time-varying system once its gates are computed from the input,

    h_i = Lambda_i h_{i-1} + B_i u_i,     y_i = C_i h_i + D_i u_i,     h_0 = 0
    =>  y = Phi u,    Phi_ij = C_i Lambda_i ... Lambda_{j+1} B_j  (j < i),   Phi_ii = C_i B_i + D_i,   Phi_ij = 0 (j > i)

so on a given input x the core is y[b, t, g] = sum_s Phi[b, g, t, s] u[b, s, g] (a vector u per head, a scalar
per channel). Softmax attention gives its attention matrix, gated linear attention / the delta rule the
decayed (or delta-corrected) q.k products, a selective or diagonal scan the products of its decays, an LTI
SSM or a convolution a Toeplitz matrix (the kernel on the diagonals).

How Phi is found (the "probe" method, exact by construction): the mixer runs once
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

Cores composed outside the ops. Where a layer combines op calls with plain torch (hyena's and orchid's gate
products, base_conv's gate, lizard's window attention with meta tokens), the layer hands those tensors to the
recorder with one :func:`seqzoo.ops.note` line (nothing when no recorder is open) and its adapter composes the
whole core from the probed ops and the noted tensors (a :class:`Core`): per channel, hyena of order N is
diag(x_0) T_{N-2} diag(x_1) ... T_0 diag(x_{N-1}) (T_o the o-th long convolution with its D), orchid
diag(x_0) (T_0 + sum_m diag(c_m) T_m + diag(bias)) diag(x_1), base_conv diag(g) (T_short + T_long + I) + I; per
head, lizard diag(1/n) Phi_gla + alpha P_window. Their ``output`` is the tensor the layer hands its output
projection (hooked), the layer's output for base_conv (no projection).

Flags: ``include_skip`` (the D terms), ``include_gates`` (gates that are row / column scalings of a per-channel
Phi); the output RMSNorm is a data-dependent row scaling diag(1/rms(o_t)), reported as ``view.after_norm``
(see :func:`equivalent_matrix`). Gates that differ per value column of a head (gla's swish(x W_r)) are no row
scaling of one head's Phi and stay outside.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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
    # Arguments that are a skip (D u on the diagonal) and output gates (row scalings) computed inside the op:
    # set to None in the probe when equivalent_matrix(include_skip=False / include_gates=False).
    skip: tuple[str, ...] = ()
    gates: tuple[str, ...] = ()


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
    "combiner": head("v", "combiner", rank=2),
    "selective_scan": channel("u", "selective", rank=2, skip=("D",), gates=("z",)),
    "linear_scan": channel("x", "diag_scan", rank=2),
    "fft_conv": channel("u", "lti", rank=2, skip=("D",)),
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
    | "conv" | "gated_conv" | "sum";  op: the op(s) probed;  note: where the core sits in the layer;  calls: the recorded
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
    # Phi after the layer's output RMSNorm (when it has one that normalises this core's output per head /
    # channel): matrix diag(1 / rms(o_t)) Phi, values the values times the norm's weight (on the value axis),
    # output the norm's output. None when the layer has no such norm.
    after_norm: EquivalentView | None = None
    # Set by an adapter whose composed core runs both ways from causal calls (vig: a forward and a reversed copy).
    two_way: bool = False

    @property
    def causal(self) -> bool:
        """False when a probed call ran bidirectionally or backwards (``causal=False``, ``bidirectional=True``,
        ``reverse=True``): then Phi has entries above the diagonal; True: Phi is lower triangular."""
        return not self.two_way and not any(
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


def probe_call(call: OpCall, *, include_skip: bool = True, include_gates: bool = True) -> EquivalentView:
    """The view of one recorded op call (its op must be in :data:`PROBES`). ``include_skip=False`` /
    ``include_gates=False`` probe the op without its :attr:`Probe.skip` / :attr:`Probe.gates` arguments (mamba's
    D and z); the view's output is then the op re-run without them on its reference backend."""
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
    dropped = [
        a for a in (probe.skip if not include_skip else ()) + (probe.gates if not include_gates else ())
    ]
    dropped = [a for a in dropped if arguments.get(a) is not None]
    if dropped:
        arguments = {**arguments, **dict.fromkeys(dropped)}
        output = _first(_run_reference(call, arguments))
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

    def compose(core: Core) -> EquivalentView:
        ws = weights(core.mixer)
        views = [probe_call(c) for c in core.top]
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


@dataclass
class Core:
    """What an adapter composes a mixer's view from: the ``dtype`` copy of the mixer that ran, its input and
    output, its depth-0 probed op calls (``calls``; ``top`` the top-ranked ones), the tensors the layer handed
    to :func:`seqzoo.ops.note` (``notes``), the input of its output projection (``pre_projection``: the
    tensor Phi claims to produce, when the layer has an ``o_proj`` / ``out_proj``), the RMSNorms that ran
    (``norms``: (module, input, output)) and the flags of :func:`equivalent_matrix`."""

    name: str
    mixer: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    calls: list
    notes: list
    pre_projection: torch.Tensor | None
    norms: list
    include_skip: bool = True
    include_gates: bool = True

    @property
    def top(self) -> list:
        rank = max(PROBES[c.name].rank for c in self.calls)
        return [c for c in self.calls if PROBES[c.name].rank == rank]

    def noted(self, site: str) -> list:
        found = [n for n in self.notes if n.name == site]
        if not found:
            raise ValueError(
                f"equivalent_matrix: mixer {self.name!r} recorded no ops.note({site!r}, ...); its adapter needs it"
            )
        return found

    def op_calls(self, name: str) -> list:
        return [c for c in self.calls if c.name == name]


def _rows(g: torch.Tensor) -> torch.Tensor:
    """A per-channel gate [B, T, C] as the row scaling of Phi [B, C, T, T]: [B, C, T, 1]."""
    return g.permute(0, 2, 1)[..., None]


def _cols(g: torch.Tensor) -> torch.Tensor:
    """A per-channel gate [B, T, C] as the column scaling of Phi [B, C, T, T]: [B, C, 1, T]."""
    return g.permute(0, 2, 1)[:, :, None, :]


def _eye_like(m: torch.Tensor) -> torch.Tensor:
    return torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)


def _apply(m: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bgts,bsgv->btgv", m, values.to(m.dtype))


def _channel_view(core, matrix, values, output, kind, op, calls, note, offset=None) -> EquivalentView:
    """A per-channel view; values / output / offset [B, T, C] (a trailing V = 1 is added)."""
    return EquivalentView(
        matrix=matrix,
        values=values[..., None],
        output=output[..., None],
        grouping="channel",
        kind=kind,
        op=op,
        note=note,
        offset=None if offset is None else offset[..., None],
        groups=list(range(matrix.shape[1])),
        calls=calls,
    )


def _without_skip(core: Core, full: torch.Tensor, noskip: torch.Tensor, values, output):
    """(Phi, output) with or without the skip: without it, the output less the skip's share (Phi_full -
    Phi_noskip) @ values, so that check() still tests the layer's own tensor."""
    if core.include_skip:
        return full, output
    return noskip, output - _apply(full - noskip, values[..., None])[..., 0]


def _hyena(core: Core) -> EquivalentView:
    """Hyena of order N: v_{o+1} = T_o diag(x_{N-1-o}) v_o (o = 0..N-2, T_o the o-th long convolution with its
    D on the diagonal), y = diag(x_0) v_{N-1}: Phi = diag(x_0) T_{N-2} diag(x_1) ... T_0 diag(x_{N-1}) per
    channel, values the v of the split (after the short filter), output the tensor out_proj receives."""
    gates, convs = core.noted("hyena.gate"), core.op_calls("fft_conv")
    if len(gates) != len(convs) + 1:
        raise ValueError(f"equivalent_matrix(hyena): {len(gates)} gates for {len(convs)} long convolutions")
    full = [probe_call(c).matrix for c in convs]
    bare = [probe_call(c, include_skip=False).matrix for c in convs] if not core.include_skip else full
    values = gates[0].arguments["value"]
    if not core.include_gates:
        last = probe_call(convs[-1], include_skip=core.include_skip)
        last.note = f"the last of {len(convs)} long convolutions alone (gates excluded);"
        return last

    def chain(ts):
        m = ts[0] * _cols(gates[0].arguments["gate"])
        for t, g in zip(ts[1:], gates[1:-1]):
            m = t @ (m * _rows(g.arguments["gate"]))
        return m * _rows(gates[-1].arguments["gate"])

    output = core.pre_projection
    matrix, output = _without_skip(core, chain(full), chain(bare), values, output)
    return _channel_view(
        core,
        matrix,
        values,
        output,
        "gated_conv",
        "fft_conv",
        convs,
        f"diag(x_0) T_{len(convs) - 1} ... T_0 diag(x_{len(convs)}) (gates as row / column scalings, each "
        "T with its D on the diagonal);",
    )


def _orchid(core: Core) -> EquivalentView:
    """Orchid: w = T_0 z + sum_m diag(c_m) T_m z + diag(bias) z with z = x_1 * v, y = x_0 * w + r:
    Phi = diag(x_0) (T_0 + sum_m diag(c_m) T_m + diag(bias)) diag(x_1) per channel, values v, offset the static
    residual convolution r of the layer's input (not a function of v), output the tensor out_proj receives."""
    note = core.noted("orchid")[-1].arguments
    convs = core.op_calls("fft_conv")
    coef, bias = note["coef"], note["bias"]  # [B, T, D, M], [D]
    b, t, d, m = coef.shape
    bank = probe_call(convs[0]).matrix.unflatten(1, (d, m + 1))  # [B, D, M+1, T, T]
    mix = bank[:, :, 0] + (coef.permute(0, 2, 3, 1)[..., None] * bank[:, :, 1:]).sum(2)
    skip = torch.diag_embed(bias.to(mix.dtype)[None, :, None].expand(b, d, t))
    residual = _first(convs[1].result) if len(convs) > 1 else None
    if not core.include_gates:
        matrix, output = _without_skip(core, mix + skip, mix, note["z"], note["w"])
        return _channel_view(
            core,
            matrix,
            note["z"],
            output,
            "conv",
            "fft_conv",
            convs[:1],
            "the data-dependent convolution w of z = x_1 * v alone (gates excluded);",
        )
    x0, x1 = _rows(note["x0"]), _cols(note["x1"])
    matrix, output = _without_skip(
        core, x0 * (mix + skip) * x1, x0 * mix * x1, note["v"], core.pre_projection
    )
    return _channel_view(
        core,
        matrix,
        note["v"],
        output,
        "gated_conv",
        "fft_conv",
        convs,
        "diag(x_0) (T_0 + sum_m diag(c_m) T_m + diag(bias)) diag(x_1); the static residual convolution of "
        "the input is the offset;",
        offset=residual,
    )


def _base_conv(core: Core) -> EquivalentView:
    """BaseConv: c = (T_s x + b_s) + (T_l x + x), y = p * c + x (silu(p) * silu(c) + x with use_act, silu(c) =
    sigmoid(c) c a row scaling): Phi = diag(g) (T_s + T_l + I) + I per channel, g = p or silu(p) sigmoid(c);
    values the layer's input x, output the layer's output (BaseConv has no output projection), offset the
    short convolution's bias times g."""
    note = core.noted("base_conv")[-1].arguments
    x, c, p = note["values"], note["c"], note["p"]
    mixer = core.mixer
    parts, offset, calls = [], None, []
    for call in core.op_calls("causal_conv1d") + core.op_calls("fft_conv"):
        v = probe_call(call)
        parts.append(v.matrix)
        calls.append(call)
        if v.offset is not None:
            offset = v.offset[..., 0] if offset is None else offset + v.offset[..., 0]
    conv = sum(parts)
    eye = _eye_like(conv)
    unit = eye if mixer.filter is not None else 0 * eye  # Zoology's long convolution adds its input
    if not core.include_gates:
        matrix, output = _without_skip(core, conv + unit, conv, x, c)
        return _channel_view(
            core,
            matrix,
            x,
            output,
            "conv",
            "+".join(cl.name for cl in calls),
            calls,
            "the short plus long convolution c alone (gate excluded);",
            offset=offset,
        )
    gate = F.silu(p) * torch.sigmoid(c) if mixer.use_act else p
    g = _rows(gate)
    matrix, output = _without_skip(core, g * (conv + unit) + eye, g * conv, x, core.y)
    return _channel_view(
        core,
        matrix,
        x,
        output,
        "gated_conv",
        "+".join(cl.name for cl in calls),
        calls,
        "diag(g) (T_short + T_long + I) + I, g the projection gate (times sigmoid(c) with use_act); the "
        "input added back is the last I;",
        offset=None if offset is None else offset * gate,
    )


def _window_sinks_probe(mixer, q, k, v, cu_seqlens):
    """lizard's window attention with sinks as (Phi [B, H, T, T], offset [B, T, H, Dh]): the function itself
    run on v <- I_T per kv head with zero sink values, and on v = 0 with the sinks' values (their share)."""
    from ..layers.lizard import window_attention_with_sinks

    b, t, hk = v.shape[:3]
    h = q.shape[2]
    bounds = [0, t] if cu_seqlens is None else [int(i) for i in cu_seqlens.tolist()]
    matrix = q.new_zeros(b, h, t, t)
    offset = q.new_zeros(b, t, h, v.shape[-1])
    meta_k, meta_v = mixer.meta_k, mixer.meta_v
    for s, e in zip(bounds[:-1], bounds[1:]):
        n = e - s
        eye = torch.eye(n, dtype=v.dtype, device=v.device)[None, :, None, :].expand(b, n, hk, n).contiguous()
        zero_sink = None if meta_v is None else meta_v.new_zeros(meta_v.shape[0], meta_v.shape[1], n)
        o = window_attention_with_sinks(q[:, s:e], k[:, s:e], eye, mixer.window, meta_k, zero_sink)
        matrix[:, :, s:e, s:e] = o.permute(0, 2, 1, 3)
        offset[:, s:e] = window_attention_with_sinks(
            q[:, s:e], k[:, s:e], torch.zeros_like(v[:, s:e]), mixer.window, meta_k, meta_v
        )
    return matrix, offset


def _lizard(core: Core) -> EquivalentView:
    """Lizard: o = diag(1/n_t) Phi_gla v + alpha (P_window v + the meta tokens' share), n_t the GLA normaliser
    (the ones column of ops.gla's value), P_window the window softmax over the keys (the meta tokens take
    their mass: rows sum to less than 1): Phi = diag(1/n) Phi_gla + alpha P_window per head, values v
    (repeated over a GQA group), offset alpha times the meta values' share, output the tensor o_proj receives."""
    (gla,) = core.op_calls("gla")
    g = probe_call(gla)
    norm = _first(gla.result)[..., -1].clamp_min(1e-12)  # [B, T, H]
    win = core.noted("lizard.window")[-1].arguments
    p_win, off = _window_sinks_probe(core.mixer, win["q"], win["k"], win["v"], win["cu_seqlens"])
    alpha = core.mixer.alpha.detach()
    matrix = g.matrix / norm.permute(0, 2, 1)[..., None] + alpha * p_win
    out = core.pre_projection.unflatten(-1, (matrix.shape[1], -1))
    offset = alpha * off
    return EquivalentView(
        matrix=matrix,
        values=g.values[..., :-1],
        output=out,
        grouping="head",
        kind="sum",
        op="gla+window_attention_with_sinks",
        offset=offset if bool((offset != 0).any()) else None,
        groups=list(range(matrix.shape[1])),
        calls=[gla],
        note="diag(1/n) Phi_gla + alpha * P_window (the meta tokens' values are the offset);",
    )


# Per-mixer composition of its core calls (by registered name), each a function of a :class:`Core`; a mixer not
# listed takes its top-ranked call.
def _vig(core: Core) -> EquivalentView:
    """ViG's two directions in one causal ops.gla call (seqzoo/layers/vig.py ``bidirectional_gla``): the call's
    input is the sequence followed by its time-reversed copy F (on the batch axis, or packed as N more
    documents, each reversed in place), and o = (o_fwd + F o_bwd) / 2. With v_bwd = F v:

        Phi = (Phi_fwd + F Phi_bwd F) / 2        (F the per-document reversal, a symmetric permutation)

    values the layer's v, output the tensor ``bidirectional_gla`` returns (before the RMSNorm and the gated mix
    with the local branch)."""
    (call,) = core.op_calls("gla")
    whole = probe_call(call)
    cu = call.cu_seqlens
    if cu is None:  # [x; F x] on the batch axis
        b = whole.matrix.shape[0] // 2
        fwd, bwd = whole.matrix[:b], whole.matrix[b:].flip(-1, -2)
        values, out_f, out_b = whole.values[:b], whole.output[:b], whole.output[b:].flip(1)
        idx = None
    else:  # one row: the N documents, then their N reversed copies
        n = (cu.numel() - 1) // 2
        t = int(cu[n])
        cu_n = cu[: n + 1].long()
        doc = torch.repeat_interleave(torch.arange(n), cu_n[1:] - cu_n[:-1])
        idx = cu_n[doc] + cu_n[doc + 1] - 1 - torch.arange(t)
        fwd = whole.matrix[..., :t, :t]
        bwd = whole.matrix[..., t:, t:][..., idx, :][..., idx]
        values, out_f, out_b = whole.values[:, :t], whole.output[:, :t], whole.output[:, t:][:, idx]
    return EquivalentView(
        matrix=(fwd + bwd) / 2,
        values=values,
        output=(out_f + out_b) / 2,
        grouping="head",
        kind="gla",
        op="gla",
        groups=whole.groups,
        calls=whole.calls,
        note="(Phi_fwd + F Phi_bwd F) / 2 from one causal gla call on [x; reversed x];",
        two_way=True,
    )


ADAPTERS: dict[str, Callable] = {
    "liger": _sum_adapter(lambda m: [float(m.gla_weight), float(m.swa_weight)]),
    "lizard": _lizard,
    "hyena": _hyena,
    "orchid": _orchid,
    "base_conv": _base_conv,
    "vig": _vig,
}

# Where the core sits in each layer (the view's note): what precedes it and what follows it.
NOTES: dict[str, str] = {
    "attention": "softmax(q k^T / sqrt(d)) per head after the q/k/v projections (RoPE on q, k); o_proj follows",
    "sliding_window": "windowed softmax attention per head; o_proj follows",
    "liger": "0.5 GLA (softmax feature maps, gate from k) + 0.5 window softmax attention on one v; o_proj follows",
    "lizard": "normalised GLA (Hedgehog feature maps) + alpha * window softmax attention with meta-token sinks "
    "on one v; o_proj follows",
    "mamba": "per channel of the inner width: selective scan with D on the diagonal and silu(z) as row scaling; "
    "the short convolution before it and out_proj after it are outside",
    "rglru": "per channel: h_t = a_t h_{t-1} + x_t with x_t = sqrt(1 - a_t^2) (i_t * u_t) (the input gate and "
    "normalisation are in the values); the gelu branch and out_proj follow",
    "s4": "per channel: the Toeplitz matrix of the kernel (s4_kernel) with D on the diagonal; the activation "
    "and output projection follow",
    "s4d": "per channel: the Toeplitz matrix of the kernel (s4d_kernel) with D on the diagonal; the activation "
    "and output projection follow",
    "hyena": "per channel of the width: the gated chain from v (after the short filter) to the tensor out_proj "
    "receives",
    "orchid": "per channel: the gated data-dependent long convolution from v to the tensor out_proj receives",
    "base_conv": "per channel: the whole layer (it has no output projection) from its input x",
    "short_conv": "the depthwise causal convolution (banded Toeplitz per channel, silu as row scaling)",
    "vig": "per head: ViG's two gla directions (shared q, k, v; own decays) averaged; the RMSNorm, the gated mix "
    "with the 3x3 local branch and o_proj follow",
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
    "combiner": "per head: Combiner's factorised softmax (direct attention in the own segment, one joint-softmax "
    "entry per earlier segment spread by that segment's own attention); o_proj follows",
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


def _norm_classes():
    from ..modules.norm import GatedRMSNorm, RMSNorm

    return (RMSNorm, GatedRMSNorm)


def record_core(
    mixer, x: torch.Tensor, *, cu_seqlens=None, dtype=torch.float64, include_skip=True, include_gates=True
) -> Core:
    """Run a ``dtype`` copy of ``mixer`` on x under :func:`seqzoo.ops.record_calls` (with hooks on its output
    projection and RMSNorms); returns the :class:`Core` the adapters compose. ValueError naming the mixer
    when it calls an op without a probe or no probed op at all."""
    name = _mixer_name(mixer)
    m = _to_dtype(mixer, dtype)
    x = x.to(dtype)
    seen: dict = {"pre": None, "norms": []}
    hooks = []
    proj = next(
        (getattr(m, a) for a in ("o_proj", "out_proj") if isinstance(getattr(m, a, None), torch.nn.Linear)),
        None,
    )
    if proj is not None:
        hooks.append(proj.register_forward_pre_hook(lambda mod, args: seen.__setitem__("pre", args[0])))
    for mod in m.modules():
        if isinstance(mod, _norm_classes()):
            hooks.append(
                mod.register_forward_hook(lambda mod, args, out: seen["norms"].append((mod, args, out)))
            )
    try:
        with torch.no_grad(), ops.record_calls() as calls:
            y = m(x) if cu_seqlens is None else m(x, cu_seqlens=cu_seqlens)
    finally:
        for hk in hooks:
            hk.remove()
    top = [c for c in calls if c.depth == 0 and c.ran != "note"]
    unknown = sorted({c.name for c in top if c.name not in PROBES and c.name not in NOT_MIXING})
    if unknown:
        raise ValueError(
            f"equivalent_matrix: mixer {name!r} calls op(s) {unknown} that have no probe (add a line to "
            f"seqzoo.analysis.PROBES, or to NOT_MIXING for an op that does not mix values); probed ops: "
            f"{sorted(PROBES)}"
        )
    probed = [c for c in top if c.name in PROBES]
    if not probed:
        seen_ops = sorted({c.name for c in calls if c.ran != "note"}) or ["none"]
        raise ValueError(
            f"equivalent_matrix: mixer {name!r} made no op call the analysis can probe (ops called: "
            f"{', '.join(seen_ops)}; probed ops: {sorted(PROBES)}): its core is plain torch, not a seqzoo.ops op"
        )
    notes = [c for c in calls if c.ran == "note"]
    return Core(name, m, x, y, probed, notes, seen["pre"], seen["norms"], include_skip, include_gates)


def record_core_calls(mixer, x: torch.Tensor, *, cu_seqlens=None, dtype=torch.float64):
    """(name, the layer's output, the depth-0 calls with a probe) of :func:`record_core`."""
    core = record_core(mixer, x, cu_seqlens=cu_seqlens, dtype=dtype)
    return core.name, core.y, core.calls


def equivalent_matrices(
    mixer, x: torch.Tensor, *, cu_seqlens=None, dtype=torch.float64
) -> list[EquivalentView]:
    """The view of every probed op call the mixer makes on x, in call order (short convolutions included)."""
    name, _, probed = record_core_calls(mixer, x, cu_seqlens=cu_seqlens, dtype=dtype)
    views = [probe_call(c) for c in probed]
    for v in views:
        v.mixer = name
    return views


def _after_norm(view: EquivalentView, core: Core) -> EquivalentView | None:
    """The view after the layer's output RMSNorm: an RMSNorm (or a GatedRMSNorm, before its gate) whose input is
    this core's output and whose rms is over a head's (a channel's) own values or over all of them, so that
    it is a row scaling diag(1 / rms(o_t)) of each head's Phi and its weight a scaling of the value axis:
    norm(o) = diag(1/rms) Phi (values * w). None when no norm of the layer fits."""
    out = view.output
    b, t, g, v = out.shape
    for mod, args, res in core.norms:
        xin = args[0]
        if xin.numel() != out.numel() or not torch.equal(xin.reshape(out.shape), out):
            continue
        gs = getattr(mod, "group_size", xin.shape[-1])
        xf = xin.reshape(*xin.shape[:-1], -1, gs)
        inv = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + mod.eps).expand_as(xf).reshape(out.shape)
        if not torch.equal(inv, inv[..., :1].expand_as(inv)):
            continue  # the rms mixes parts of a head's values: not a row scaling of its Phi
        w = mod.weight.to(out.dtype)
        w = w.reshape(g, v) if w.numel() == g * v else w.reshape(1, v)
        gated = len(args) > 1  # GatedRMSNorm(x, z): the output before the gate
        normed = out * inv * w if gated else res.reshape(out.shape)
        return EquivalentView(
            matrix=view.matrix * inv[..., 0].permute(0, 2, 1)[..., None],
            values=view.values * w,
            output=normed,
            grouping=view.grouping,
            kind=view.kind,
            op=view.op,
            note="after the output RMSNorm"
            + (" (before its gate)" if gated else "")
            + ": diag(1/rms(o_t)) Phi, "
            "values times the norm's weight",
            offset=None if view.offset is None else view.offset * inv * w,
            groups=view.groups,
            mixer=view.mixer,
            calls=view.calls,
        )
    return None


def _select(view: EquivalentView, idx: torch.Tensor, keep: list[int]) -> EquivalentView:
    view.matrix = view.matrix.index_select(1, idx)
    view.values, view.output = view.values.index_select(2, idx), view.output.index_select(2, idx)
    if view.offset is not None:
        view.offset = view.offset.index_select(2, idx)
    if view.after_norm is not None:
        view.after_norm = _select(view.after_norm, idx, keep)
    view.groups = keep
    return view


def equivalent_matrix(
    mixer,
    x: torch.Tensor,
    *,
    heads: list[int] | None = None,
    channels: list[int] | None = None,
    include_skip: bool = True,
    include_gates: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> EquivalentView:
    """The mixer's core on input x [B, T, d_model] as one matrix per head or channel (see the module docstring).

    Runs a ``dtype`` copy of the mixer (eval mode; the mixer itself is untouched), records its op calls, and
    probes the core: the top-ranked probed call (a scan over a short convolution before it), or the mixer's
    adapter in :data:`ADAPTERS` when its core is composed of several calls and gates (liger, lizard, hyena,
    orchid, base_conv). ``heads`` / ``channels``: keep those groups (default all). ``cu_seqlens``: packed
    documents (batch 1); Phi is then block diagonal.

    ``include_skip`` (default True): the skip terms on the diagonal (an op's D, hyena's and orchid's bias, base
    conv's unit skips); without them Phi is the mixing alone and ``output`` the core's output less the skip's
    share (Phi_skip @ values), so check() still tests the layer's own tensor. ``include_gates`` (default True):
    the gates that are row / column scalings of a per-channel Phi (mamba's silu(z) inside selective_scan:
    without it the op is re-run without z; hyena's, orchid's and base_conv's gate products: without them the
    view is the (last) convolution alone, on its own input). A head mixer's output gate (gla's swish(x W_r))
    differs per value column, so it is no row scaling of the head's Phi and stays outside either way.
    ``view.after_norm``: Phi after the layer's output RMSNorm, when it has one (see :func:`_after_norm`).
    Raises ValueError naming the mixer when its core is not an op the analysis knows.
    """
    if heads is not None and channels is not None:
        raise ValueError("equivalent_matrix: pass heads= or channels=, not both")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"equivalent_matrix: x must be a [B, T, d_model] tensor, got {getattr(x, 'shape', x)!r}"
        )
    for flag, value in (("include_skip", include_skip), ("include_gates", include_gates)):
        if not isinstance(value, bool):
            raise TypeError(f"equivalent_matrix: {flag} must be a bool, got {value!r}")
    core = record_core(
        mixer, x, cu_seqlens=cu_seqlens, dtype=dtype, include_skip=include_skip, include_gates=include_gates
    )
    name = core.name
    if name in ADAPTERS:
        view = ADAPTERS[name](core)
    else:
        top = core.top
        view = probe_call(top[-1], include_skip=include_skip, include_gates=include_gates)
        if len(top) > 1:
            view.note = f"the last of {len(top)} {top[-1].name} calls (equivalent_matrices gives each); "
    view.mixer = name
    view.note = (view.note + " " + NOTES.get(name, OP_NOTES.get(view.op, ""))).strip()
    view.after_norm = _after_norm(view, core)
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
        view = _select(view, idx, [int(i) % g for i in keep])
    return view
