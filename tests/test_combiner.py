"""Combiner (ops.combiner and the ``combiner`` mixer): with one-token segments it is softmax attention; its implied
matrix is row-stochastic with full support where the sparse pattern it starts from has holes; a segment never
reads its own summary; the blocked backend equals the dense definition; decoding equals the forward pass; and
the blocked backend's logits and largest intermediate grow as T^1.5."""

from __future__ import annotations

import math

import pytest
import torch

import seqzoo
from seqzoo import ops
from seqzoo.ops.combiner import reference as ref_mod
from seqzoo.ops.combiner import torch as torch_mod
from seqzoo.ops.combiner.step import init_state

BACKENDS = ("reference", "torch")
VARIANTS = ("fixed", "axial")


def _qkv(b=1, t=11, h=2, d=4, e=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, d, generator=g, dtype=dtype) for _ in range(2))
    return q, k, torch.randn(b, t, h, e or d, generator=g, dtype=dtype)


def _implied(q, k, variant, causal, segment, backend="torch"):
    """P [B, H, T, T] read off the op by identity probes: v = e_j gives column j (the op is linear in v)."""
    b, t, h, _ = q.shape
    probes = torch.eye(t, dtype=q.dtype)[None, :, None, :].expand(b, t, h, t)
    o = ops.combiner(q, k, probes, segment=segment, variant=variant, causal=causal, backend=backend)
    return o.permute(0, 2, 1, 3)  # o[b, i, h, j] = P[b, h, i, j]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_segment_one_is_attention(variant, backend, causal):
    """Every abstraction is one token (its pooled key is the key, its span value the value): exact attention."""
    q, k, v = _qkv(t=9, e=3)
    got = ops.combiner(q, k, v, segment=1, variant=variant, causal=causal, backend=backend)
    want = ops.attention(q, k, v, causal=causal, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # ... and a longer segment is not attention, so the check above can fail.
    other = ops.combiner(q, k, v, segment=3, variant=variant, causal=causal, backend=backend)
    assert (other - want).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_implied_matrix_is_stochastic_with_full_support(variant, causal):
    """T = 11 in segments of 3 (the last one short, its padding masked out of the pools): rows sum to 1, every
    j <= i (every j bidirectional) has p(j|i) > 0, nothing above the diagonal when causal; the probes through
    the blocked backend give the reference's dense matrix."""
    t, s = 11, 3
    q, k, _ = _qkv(b=2, t=t)
    P = _implied(q, k, variant, causal, s)
    torch.testing.assert_close(P, ref_mod.implied_matrix(q, k, s, variant, causal), rtol=0, atol=1e-12)
    torch.testing.assert_close(P.sum(-1), torch.ones_like(P[..., 0]), rtol=0, atol=1e-12)
    allowed = torch.ones(t, t, dtype=torch.bool)
    if causal:
        allowed = torch.tril(allowed)
    assert (P[..., allowed] > 0).all()
    assert (P[..., ~allowed] == 0).all()


def test_sparse_fixed_pattern_has_holes_combiner_fills():
    """The sparse Fixed pattern Combiner starts from (Child et al. 2019: own segment plus each earlier segment's
    last token) leaves most of the causal triangle at probability 0; Combiner-Fixed with the same segments has
    no zero there."""
    t, s = 12, 4
    q, k, _ = _qkv(t=t)
    pos = torch.arange(t)
    seg = pos // s
    sparse = (seg[:, None] == seg[None, :]) | (pos[None, :] % s == s - 1)
    sparse &= pos[None, :] <= pos[:, None]
    logits = torch.einsum("bihd,bjhd->bhij", q, k).masked_fill(~sparse, float("-inf"))
    P_sparse = torch.softmax(logits, -1)
    tri = torch.tril(torch.ones(t, t, dtype=torch.bool))
    assert (P_sparse[..., tri] == 0).sum() > 0
    assert (_implied(q, k, "fixed", True, s)[..., tri] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_segment_never_reads_its_own_summary(variant, backend):
    """Causality by gradients: o_i depends on no q, k, v at a later position, in particular on no later token of
    its own segment (whose pooled query and key mix them); and it does depend on earlier segments."""
    t, s = 10, 4
    q, k, v = (x.requires_grad_() for x in _qkv(t=t))
    o = ops.combiner(q, k, v, segment=s, variant=variant, causal=True, backend=backend)
    for i in range(t):
        grads = torch.autograd.grad(o[:, i].sum(), (q, k, v), retain_graph=True)
        for g in grads:
            assert (g[:, i + 1 :] == 0).all(), i
        if i >= s:  # reaches the previous segments through their summaries
            assert grads[1][:, : i // s * s].abs().sum() > 0 and grads[2][:, : i // s * s].abs().sum() > 0


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_equals_reference_outputs_and_grads(variant, causal):
    q, k, v = (x.requires_grad_() for x in _qkv(b=2, t=11, e=3, seed=1))
    outs = {}
    for backend in BACKENDS:
        o = ops.combiner(q, k, v, segment=3, variant=variant, causal=causal, backend=backend)
        cot = torch.randn(o.shape, generator=torch.Generator().manual_seed(2), dtype=o.dtype)
        outs[backend] = (o, *torch.autograd.grad((o * cot).sum(), (q, k, v)))
    for got, want in zip(outs["torch"], outs["reference"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # fp32 inputs: the blocked backend in fp32 near the fp64 reference.
    q32, k32, v32 = (x.detach().float() for x in (q, k, v))
    o32 = ops.combiner(q32, k32, v32, segment=3, variant=variant, causal=causal, backend="torch")
    torch.testing.assert_close(o32.double(), outs["reference"][0].detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_mixer_prefill_and_step_equal_forward(variant, backend):
    """The decoding state (current segment + summaries) gives the forward pass: prefill in pieces that start
    mid-segment, then steps; and rows at different positions (a batch continued one row at a time). Decoding
    runs ``ops.combiner_step`` on the layer's ``backend`` (and only there)."""
    torch.manual_seed(0)
    m = seqzoo.build_mixer("combiner", 16, n_heads=2, segment=3, variant=variant, backend=backend).double()
    x = torch.randn(2, 14, 16, dtype=torch.float64)
    y = m(x)
    assert ops.combiner.last_backend == backend
    y1, st = m.prefill(x[:, :4])
    assert ops.combiner.last_backend == backend
    y2, st = m.prefill(x[:, 4:8], st)
    assert ops.combiner_step.last_backend == backend
    ys = [y1, y2]
    for t in range(8, 14):
        y_t, st = m.step(x[:, t], st)
        ys.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-10, atol=1e-10)
    assert sum(v[0].numel() for v in st.values() if v.dim() > 1) == m.state_size(14)
    # Row 0 at position 5, row 1 at position 7: one prefill continues both.
    _, a = m.prefill(x[:1, :5])
    _, b = m.prefill(x[1:, :7])
    pad = lambda u, n: torch.cat([u, u.new_zeros(1, n - u.shape[1], *u.shape[2:])], 1)  # noqa: E731
    both = {key: torch.cat([a[key], b[key]]) for key in ("q", "k", "v", "pos")}
    both.update(
        {key: torch.cat([pad(a[key], b[key].shape[1]), b[key]]) for key in ("sk", "sv")}
    )  # 1 and 2 done
    z = torch.randn(2, 4, 16, dtype=torch.float64)
    y_both, _ = m.prefill(z, both)
    want0 = m(torch.cat([x[:1, :5], z[:1]], 1))[:, 5:]
    want1 = m(torch.cat([x[1:, :7], z[1:]], 1))[:, 7:]
    torch.testing.assert_close(y_both, torch.cat([want0, want1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_from_the_empty_state_is_stepping_in_parallel(variant, packed):
    """A prompt from position 0 runs as one forward pass and the state is built from its summaries: the same
    outputs and state (every key, the zero padding included) as stepping token by token, for prompts shorter than
    a segment, ending mid-segment and ending on a segment's last token; packed, one state row per document."""
    torch.manual_seed(0)
    m = seqzoo.build_mixer("combiner", 16, n_heads=2, segment=4, variant=variant).double()
    for t in (2, 8, 11):
        x = torch.randn(1 if packed else 2, t if not packed else t + 5, 16, dtype=torch.float64)
        cu = torch.tensor([0, t, t + 5], dtype=torch.int32) if packed else None
        with ops.record_calls() as calls:
            y, st = m.prefill(x, cu_seqlens=cu)
        assert not [c for c in calls if c.name == "combiner_step"]  # in parallel, not stepped
        rows = [x[:, :t], x[:, t:]] if packed else [x]
        ys, sts = [], []
        for row in rows:
            state = m.init_state(row.shape[0], dtype=torch.float64)
            outs = []
            for i in range(row.shape[1]):  # step() from a later state: combiner_step, token by token
                o, state = m.step(row[:, i], state)
                outs.append(o[:, None])
            ys.append(torch.cat(outs, 1))
            sts.append(state)
        want_state = m._stack(sts) if packed else sts[0]
        torch.testing.assert_close(y, torch.cat(ys, 1), rtol=1e-10, atol=1e-10)
        assert set(st) == set(want_state)
        for key in st:
            assert st[key].dtype == want_state[key].dtype, key
            torch.testing.assert_close(st[key], want_state[key], rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("variant", VARIANTS)
def test_combiner_step_is_the_causal_op_row_by_row(variant):
    """``ops.combiner_step`` from the empty state, rows at different positions, gives causal ``ops.combiner``
    (reference, fp64) on both backends and at segments 1 (attention) and 3 (T = 10: a partial last segment);
    the torch backend equals the reference in the outputs and in the state; fp32 near fp64; the given state is
    left unmodified; bad calls are refused naming the argument."""
    torch.manual_seed(0)
    b, t, h, d, e = 2, 10, 2, 4, 3
    q, k, v = (torch.randn(b, t, h, n, dtype=torch.float64) for n in (d, d, e))
    for s in (1, 3):
        want = ops.combiner(q, k, v, segment=s, variant=variant, backend="reference")
        states = {}
        for backend in BACKENDS:
            st = init_state(b, h, d, e, s, variant, dtype=torch.float64)
            # Row 1 starts 2 tokens late: the rows sit at different positions (and summary counts).
            st1 = {key: x[1:] for key, x in st.items()}
            for i in range(2):
                _, st1 = ops.combiner_step(
                    q[1:, i], k[1:, i], v[1:, i], st1, variant=variant, backend=backend
                )
            st = {key: torch.cat(_same_count(st[key][:1], st1[key])) for key in st}
            outs = []
            for i in range(t - 2):
                before = {key: x.clone() for key, x in st.items()}
                j = torch.tensor([i, i + 2])
                qi, ki, vi = (x[torch.arange(b), j] for x in (q, k, v))
                o, new = ops.combiner_step(qi, ki, vi, st, variant=variant, backend=backend)
                assert ops.combiner_step.last_backend == backend
                for key in st:
                    assert torch.equal(st[key], before[key]), key
                outs.append(o)
                st = new
            o = torch.stack(outs, 1)
            torch.testing.assert_close(o[0], want[0, : o.shape[1]], rtol=0, atol=1e-12)
            torch.testing.assert_close(o[1], want[1, 2 : 2 + o.shape[1]], rtol=0, atol=1e-12)
            states[backend] = st
        for key in states["torch"]:
            torch.testing.assert_close(states["torch"][key], states["reference"][key], rtol=0, atol=1e-12)
    st = init_state(b, h, d, e, 3, variant)
    o32, _ = ops.combiner_step(q[:, 0].float(), k[:, 0].float(), v[:, 0].float(), st, variant=variant)
    torch.testing.assert_close(o32.double(), v[:, 0], rtol=0, atol=1e-5)  # the first token sees only itself
    with pytest.raises(ValueError, match=r"state\['k'\]"):
        ops.combiner_step(q[:, 0], k[:, 0], v[:, 0], {**st, "k": st["k"][:, :, :1]}, variant=variant)
    with pytest.raises(ValueError, match="state lacks"):
        ops.combiner_step(q[:, 0], k[:, 0], v[:, 0], {"pos": st["pos"]}, variant=variant)
    other = "axial" if variant == "fixed" else "fixed"
    with pytest.raises(ValueError, match="variant"):
        ops.combiner_step(q[:, 0].float(), k[:, 0].float(), v[:, 0].float(), st, variant=other)


def _same_count(a, b):
    """Two rows' state entries, summaries zero-padded along dimension 1 to the larger count."""
    if a.dim() < 2 or a.shape[1] == b.shape[1]:
        return a, b
    n = max(a.shape[1], b.shape[1])
    return tuple(torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:])], 1) for x in (a, b))


def test_decoding_state_is_sublinear_for_fixed():
    """Fixed keeps O(s + T / s) per head: at T = 4096 and s = 64, 1 + 2 * 64 + 2 * 64 vectors, not 2 T."""
    m = seqzoo.build_mixer("combiner", 64, n_heads=1, l_max=4096)
    assert m.segment == 64
    assert m.state_size(4096) == (1 + 2 * 64 + 2 * 64) * 64
    assert m.state_size(4096) < seqzoo.build_mixer("attention", 64, n_heads=1).state_size(4096) / 10


def _counted(t: int, variant: str) -> tuple[int, int]:
    """Elements the blocked backend's einsums produce (logits, span values, outputs) and the largest, measured by
    wrapping torch.einsum while it runs at T = t, one head, segment ceil(sqrt(t))."""
    sizes = []
    real = torch.einsum

    def counting(eq, *operands):
        out = real(eq, *operands)
        sizes.append(out.numel())
        return out

    q, k, v = _qkv(t=t, h=1, d=2, dtype=torch.float32)
    torch.einsum = counting
    try:
        ops.combiner(q, k, v, segment=ref_mod.default_segment(t), variant=variant, backend="torch")
    finally:
        torch.einsum = real
    return sum(sizes), max(sizes)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cost_grows_as_t_to_the_1_5(variant):
    """Fitted on T = 256 .. 4096: the work (elements computed) and the largest intermediate grow as T^1.5 (a dense
    attention matrix would be T^2), and the analytic count ``torch_mod.cost`` tracks the measured one."""
    ts = [256, 512, 1024, 2048, 4096]
    counts = [_counted(t, variant) for t in ts]
    x = [math.log(t) for t in ts]
    for which in (0, 1):
        y = [math.log(c[which]) for c in counts]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
        assert 1.4 < slope < 1.6, (variant, which, slope)
    for t, (total, largest) in zip(ts, counts):
        est = torch_mod.cost(t, ref_mod.default_segment(t), variant)
        assert est["largest"] == largest
        assert 0.5 < est["logits"] / total < 2, (t, est, total)
