"""ops.flow_attention: every backend against the reference (outputs and the gradients of q, k, v), the
reference against a literal transcription of the equations, the decoding ops (flow_attention_prefill and
flow_attention_step, every backend), and the memory bound of the chunked backends (the linear attention runs
on ops.gla, whose own tests cover chunk boundaries and its kernels)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import seqzoo
from seqzoo import ops
from seqzoo.ops._dispatch import Op
from seqzoo.ops.flow_attention import recurrent
from seqzoo.ops.flow_attention import reference as flow_reference
from seqzoo.ops.gla import torch as gla_torch
from seqzoo.ops.testing import assert_matches_reference, relative_error

EPS = flow_reference.EPS


def make(b=2, t=37, h=3, d=8, m=None, dtype=torch.float32, device="cpu"):
    """q, k through a sigmoid (non-negative, as the layer makes them), v unit normal."""
    m = m or d
    return {
        "q": torch.sigmoid(torch.randn(b, t, h, d, device=device)).to(dtype),
        "k": torch.sigmoid(torch.randn(b, t, h, d, device=device)).to(dtype),
        "v": torch.randn(b, t, h, m, device=device).to(dtype),
    }


# -- the reference is the equations ------------------------------------------------------------------------


def literal_flow_attention(q, k, v, causal):
    """The issue's equations transcribed with Python loops over positions (B = H = 1 slices, fp64)."""
    q, k, v = q[0, :, 0].double(), k[0, :, 0].double(), v[0, :, 0].double()
    t = q.shape[0]
    out = torch.zeros(t, v.shape[1], dtype=torch.float64)

    def dot(a, b):
        return float((a * b).sum())

    if not causal:
        incoming = [dot(q[i] + EPS, k.sum(0) + EPS) for i in range(t)]
        outgoing = [dot(k[j] + EPS, q.sum(0) + EPS) for j in range(t)]
        k_over_o = sum(k[j] / outgoing[j] for j in range(t))
        q_over_i = sum(q[i] / incoming[i] for i in range(t))
        inc_hat = [dot(q[i] + EPS, k_over_o + EPS) for i in range(t)]
        out_hat = [min(1.0, max(-1.0, dot(k[j] + EPS, q_over_i + EPS))) for j in range(t)]
        z = sum(math.exp(o) for o in out_hat)
        comp = [math.exp(out_hat[j]) / z * t for j in range(t)]
        kv = sum(torch.outer(k[j], v[j] * comp[j]) for j in range(t))
        for i in range(t):
            alloc = 1 / (1 + math.exp(-inc_hat[i]))
            out[i] = alloc * (q[i] / incoming[i]) @ kv
        return out
    incoming, outgoing, comp = [], [], []
    for i in range(t):
        incoming.append(dot(q[i] + EPS, k[: i + 1].sum(0) + EPS))
        outgoing.append(dot(k[i] + EPS, q[: i + 1].sum(0) + EPS))
    out_hat = []
    for i in range(t):
        n = i + 1
        k_flow = sum(k[j] * (j + 1) / outgoing[j] for j in range(n))
        q_flow = sum(q[j] * (j + 1) / incoming[j] for j in range(n))
        inc_hat = dot(q[i] + EPS, k_flow + EPS) / n
        out_hat.append(min(1.0, max(-1.0, dot(k[i] + EPS, q_flow + EPS) / n)))
        comp.append(math.exp(out_hat[i]) / sum(math.exp(o) for o in out_hat) * n)
        kv = sum(torch.outer(k[j], v[j] * comp[j]) for j in range(n))
        alloc = 1 / (1 + math.exp(-inc_hat))
        out[i] = alloc * (q[i] / incoming[i]) @ kv
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t", [1, 6])
def test_reference_is_the_equations(causal, t):
    x = make(b=1, t=t, h=1, d=3, m=2, dtype=torch.float64)
    o = ops.flow_attention(**x, causal=causal, backend="reference")
    torch.testing.assert_close(o[0, :, 0], literal_flow_attention(**x, causal=causal), rtol=1e-12, atol=1e-12)


def test_competition_clamp_binds_in_the_tests():
    # Ô ~ 1 for sigmoid features: about half the positions are clamped, so both sides of the clamp (and its
    # zero gradient) are exercised by the comparisons below.
    x = {n: v.double() for n, v in make(t=64).items()}
    q, k = x["q"], x["k"]
    n = torch.arange(1, 65, dtype=torch.float64)[None, :, None]
    incoming = ((q + EPS) * (k.cumsum(1) + EPS)).sum(-1)
    out_hat = ((k + EPS) * ((q * (n / incoming)[..., None]).cumsum(1) + EPS)).sum(-1) / n
    frac = (out_hat > 1).double().mean().item()
    assert 0.1 < frac < 0.9


def test_causal_reference_is_causal():
    x = make(t=12)
    o = ops.flow_attention(**x, backend="reference")
    x2 = {n: v.clone() for n, v in x.items()}
    for n in x2:
        x2[n][:, 7:] = x2[n][:, 7:] * 0.5 + 0.2
    o2 = ops.flow_attention(**x2, backend="reference")
    torch.testing.assert_close(o2[:, :7], o[:, :7])
    assert (o2[:, 7:] - o[:, 7:]).abs().max() > 1e-3


# -- backends against the reference ------------------------------------------------------------------------

# T = 1, less than a chunk, and several chunks with a remainder (chunk = 64); D != M.
SHAPES = [dict(t=1), dict(t=37, d=8, m=5), dict(t=150, d=12, m=16)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_matches_reference(shape, causal, dtype):
    assert_matches_reference(ops.flow_attention, "torch", make(**shape, dtype=dtype), causal=causal)


def test_torch_fp64_exact():
    # The comparison helper runs the reference in fp32; in fp64 both sides are exact to rounding, which holds
    # the hand-written chunked backward to ~1e-12 rather than to fp32 noise.
    x = {n: v.double().requires_grad_() for n, v in make(t=70, d=6, m=5).items()}
    xr = {n: v.detach().clone().requires_grad_() for n, v in x.items()}
    cot = torch.randn(2, 70, 3, 5, dtype=torch.float64)
    o = ops.flow_attention(**x, backend="torch")
    o_ref = ops.flow_attention(**xr, backend="reference")
    (o * cot).sum().backward()
    (o_ref * cot).sum().backward()
    assert relative_error(o, o_ref) < 1e-11
    for n in x:
        assert relative_error(x[n].grad, xr[n].grad) < 1e-11, n


# gla's kernels interpreted: small (gla's own tests cover them at length); t=70 crosses a chunk boundary.
TRITON_SHAPES = [dict(t=1, d=8, m=8), dict(t=70, d=20, m=33)]


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
def test_triton_matches_reference(shape):
    # Under TRITON_INTERPRET=1 on a CPU (conftest), for real on a GPU: gla's chunked kernels.
    assert_matches_reference(ops.flow_attention, "triton", make(b=1, h=2, **shape), causal=True)
    assert ops.gla.last_backend == "triton"


def test_triton_tiled_fp16():
    # D, M > 64: several feature tiles per head in gla's kernels; fp16 takes the low-precision dot path.
    # (bf16 is left to the GPU tests: the interpreter does not support tl.dot on bf16.)
    x = make(b=1, t=20, h=1, d=72, m=68, dtype=torch.float16)
    assert_matches_reference(ops.flow_attention, "triton", x, causal=True)


def test_triton_is_causal_only():
    # Non-causal flow-attention is two matmuls (the torch backend, on the GPU's BLAS there): triton says so.
    with pytest.raises(ValueError, match="causal only"):
        ops.flow_attention(**make(t=3), causal=False, backend="triton")


# -- the memory bound --------------------------------------------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any op creates while the mode is on."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def largest_tensors(fn, x: dict) -> tuple[int, int]:
    """Largest tensor created by the forward and by the backward of ``fn(q, k, v)``."""
    leaves = {n: v.detach().clone().requires_grad_() for n, v in x.items()}
    with LargestTensor() as fwd:
        o = fn(**leaves)
    cot = torch.randn_like(o)
    with LargestTensor() as bwd:
        o.backward(cot)
    assert fwd.calls > 0 and bwd.calls > 0, "the mode saw no ops: the check would prove nothing"
    assert all(v.grad is not None for v in leaves.values())
    return fwd.largest, bwd.largest


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_backends_never_allocate_tdm(causal):
    b, t, h, d, m = 1, 256, 2, 16, 16
    x = make(b=b, t=t, h=h, d=d, m=m)
    bound = t * d * m
    ref = largest_tensors(lambda **a: ops.flow_attention(**a, causal=causal, backend="reference"), x)
    # The check can fail: the reference materialises [B, T, H, D, M] prefix sums (causal) or the
    # [B, H, T, T] flow matrix (non-causal).
    assert max(ref) > bound
    fwd, bwd = largest_tensors(lambda **a: ops.flow_attention(**a, causal=causal, backend="torch"), x)
    assert fwd < bound and bwd < bound
    # ... and nothing is larger than an input, or ops.gla's score blocks or chunk-start states of every chunk
    # ([B, H, T_pad, C] and [B, H, T_pad / C, D, M]: linear in T).
    chunk = gla_torch.CHUNK
    t_pad = -(-t // chunk) * chunk
    assert max(fwd, bwd) <= max(b * t * h * max(d, m), b * h * t_pad * chunk, b * h * t_pad // chunk * d * m)


def test_prefill_never_allocates_tdm():
    b, t, h, d, m = 1, 256, 2, 16, 16
    x = make(b=b, t=t, h=h, d=d, m=m)
    fwd, bwd = largest_tensors(lambda **a: ops.flow_attention_prefill(**a)[0], x)
    assert max(fwd, bwd) < t * d * m


# -- the decoding recurrence -------------------------------------------------------------------------------


def _grads(o, cot, leaves):
    return torch.autograd.grad((o * cot).sum(), list(leaves.values()))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_prefill_in_pieces_and_steps_match_reference(backend):
    x = {n: v.double() for n, v in make(t=150, d=6, m=5).items()}
    leaves = {n: v.clone().requires_grad_() for n, v in x.items()}
    o_ref = ops.flow_attention(**leaves, causal=True, backend="reference")
    cot = torch.randn_like(o_ref)
    g_ref = _grads(o_ref, cot, leaves)

    # Prefill in three pieces (the middle one spans chunk boundaries), carrying the state.
    state, outs = None, []
    for a, e in ((0, 1), (1, 100), (100, 150)):
        o, state = ops.flow_attention_prefill(*(leaves[n][:, a:e] for n in "qkv"), state, backend=backend)
        assert ops.flow_attention_prefill.last_backend == backend
        outs.append(o)
    o_pre = torch.cat(outs, 1)
    assert relative_error(o_pre, o_ref) < 1e-11
    for g, gr in zip(_grads(o_pre, cot, leaves), g_ref):
        assert relative_error(g, gr) < 1e-11

    # Token by token through the recurrence.
    step_state = recurrent.init_state(2, 3, 6, 5, dtype=torch.float64)
    outs = []
    for i in range(150):
        o, step_state = ops.flow_attention_step(
            *(leaves[n][:, i] for n in "qkv"), step_state, backend=backend
        )
        outs.append(o)
    o_step = torch.stack(outs, 1)
    assert relative_error(o_step, o_ref) < 1e-11
    for g, gr in zip(_grads(o_step, cot, leaves), g_ref):
        assert relative_error(g, gr) < 1e-11

    # Both end in the same state.
    assert set(state) == set(step_state) == set(recurrent.STATE_KEYS)
    for key in state:
        torch.testing.assert_close(state[key], step_state[key], rtol=1e-11, atol=1e-11)
    assert state["count"].tolist() == [150, 150]


def test_state_positions_are_per_sequence():
    # Two sequences at different positions in one batch: each continues its own sum.
    x = {n: v.double() for n, v in make(b=2, t=9, d=4).items()}
    _, s0 = ops.flow_attention_prefill(*(x[n][:1, :5] for n in "qkv"))
    _, s1 = ops.flow_attention_prefill(*(x[n][1:, :2] for n in "qkv"))
    state = {key: torch.cat([s0[key], s1[key]]) for key in s0}
    o, _ = ops.flow_attention_prefill(*(torch.stack([x[n][0, 5:9], x[n][1, 2:6]]) for n in "qkv"), state)
    ref = ops.flow_attention(**x, backend="reference")
    torch.testing.assert_close(o[0], ref[0, 5:9], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o[1], ref[1, 2:6], rtol=1e-10, atol=1e-10)


def test_state_errors():
    x = make(t=4, d=4)
    with pytest.raises(ValueError, match="state lacks"):
        ops.flow_attention_prefill(**x, state={"kv": torch.zeros(2, 3, 4, 4)})
    state = recurrent.init_state(2, 3, 4, 5)
    with pytest.raises(ValueError, match="kv"):
        ops.flow_attention_prefill(**x, state=state)
    with pytest.raises(ValueError, match="shapes"):
        ops.flow_attention_step(
            x["q"][:, 0], x["k"][:, 0, :2], x["v"][:, 0], recurrent.init_state(2, 3, 4, 4)
        )


def _flat(op) -> Op:
    """``op`` (prefill or step) with the state's sums as tensor arguments and outputs, so that
    assert_matches_reference compares the new state and the gradients of the old one too."""
    keys = [key for key in recurrent.STATE_KEYS if key != "count"]
    flat = Op(f"{op.name}[flat]", "")

    def runner(name):
        def run(q, k, v, count, **sums):
            o, new = op(q, k, v, {**sums, "count": count}, backend=name)
            return (o, *(new[key] for key in keys))

        return run

    for name in op.backend_names():
        flat.register(name, runner(name))
    return flat


@pytest.mark.parametrize("t", [5, 20])
def test_triton_prefill_and_step_match_reference(t):
    # The triton backends on gla's kernels (interpreted here): a segment of a few tokens (the fused recurrent
    # kernel) or a longer one (chunked) after a state, then one step; outputs, new state, every gradient.
    x = make(b=1, t=t + 3, h=1, d=8, m=5)
    _, state = ops.flow_attention_prefill(*(x[n][:, :3] for n in "qkv"), backend="torch")
    sums = {key: val.detach() for key, val in state.items() if key != "count"}
    seg = {n: x[n][:, 3:] for n in "qkv"}
    assert_matches_reference(
        _flat(ops.flow_attention_prefill), "triton", {**seg, **sums}, count=state["count"]
    )
    assert ops.gla_step.last_backend == ("triton_recurrent" if t <= 16 else "triton")
    one = {n: x[n][:, -1] for n in "qkv"}
    assert_matches_reference(_flat(ops.flow_attention_step), "triton", {**one, **sums}, count=state["count"])
    assert ops.gla_step.last_backend == "triton_recurrent"


def test_decoding_backends_listed_and_auto():
    x = make(t=3)
    ops.flow_attention_prefill(**x)
    assert ops.flow_attention_prefill.last_backend == "torch"
    _, state = ops.flow_attention_prefill(**x, backend="reference")
    ops.flow_attention_step(*(x[n][:, 0] for n in "qkv"), state)
    assert ops.flow_attention_step.last_backend == "torch"
    assert set(ops.flow_attention_step.backends("cpu")) == {"reference", "torch", "triton"}
    with pytest.raises(ValueError, match="float64"):
        ops.flow_attention_prefill(**make(t=3, dtype=torch.float64), backend="triton")


# -- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(q=torch.rand(2, 4, 8)), ValueError, "q"),
        (dict(k=torch.rand(2, 4, 3, 6)), ValueError, "k"),
        (dict(v=torch.randn(2, 5, 3, 8)), ValueError, "v"),
        (dict(v=torch.randn(2, 4, 3, 8, dtype=torch.float64)), TypeError, "dtype"),
        (dict(q=torch.randint(0, 3, (2, 4, 3, 8))), TypeError, "q"),
        (
            dict(q=torch.rand(2, 0, 3, 8), k=torch.rand(2, 0, 3, 8), v=torch.rand(2, 0, 3, 8)),
            ValueError,
            "T >= 1",
        ),
        (dict(causal="yes"), TypeError, "causal"),
        (dict(backend="nope"), ValueError, "backend"),
    ],
)
def test_argument_errors(kwargs, exc, word):
    args = {"q": torch.rand(2, 4, 3, 8), "k": torch.rand(2, 4, 3, 8), "v": torch.randn(2, 4, 3, 8)}
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        ops.flow_attention(**args)


def test_backends_listed_and_auto(monkeypatch):
    listed = ops.flow_attention.backends("cpu")
    assert listed["reference"] == listed["torch"] == "available"
    ops.flow_attention(**make(t=3))
    assert ops.flow_attention.last_backend == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in ops.flow_attention.backends("cpu")["triton"]
    with pytest.raises(ValueError, match="triton"):
        ops.flow_attention(**make(t=3), backend="triton")


def test_triton_refuses_fp64_with_reason():
    with pytest.raises(ValueError, match="float64"):
        ops.flow_attention(**make(t=3, dtype=torch.float64), backend="triton")


# -- the mixer (the contract suite covers the causal one) --------------------------------------------------


def test_bidirectional_mixer_sees_the_future_and_refuses_to_decode():
    m = seqzoo.build_mixer("flow", 32, n_heads=4, bidirectional=True).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    assert (m(x2)[:, :7] - y[:, :7]).abs().max() > 1e-6
    # It is exactly non-causal flow-attention on the projections.
    q, k, v = m._project(x)
    torch.testing.assert_close(y, m.o_proj(flow_reference.flow_attention(q, k, v, causal=False).flatten(-2)))
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.prefill(x)


def test_mixer_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_heads"):
        seqzoo.build_mixer("flow", 30, n_heads=4)
    m = seqzoo.build_mixer("flow", 30, n_heads=4, head_dim=8)
    assert m(torch.randn(1, 3, 30)).shape == (1, 3, 30)


# -- GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_backends(backend, dtype, causal):
    x = make(b=2, t=1000, h=4, d=64, m=64, dtype=dtype, device="cuda")
    if backend == "triton" and not causal:
        pytest.skip("triton is causal only (gla's kernels); non-causal runs on torch")
    assert_matches_reference(ops.flow_attention, backend, x, causal=causal)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prefill_with_triton_matches_reference():
    x = make(b=2, t=300, h=2, d=32, m=32, device="cuda")
    _, state = ops.flow_attention_prefill(*(x[n][:, :100] for n in "qkv"), backend="triton")
    o, _ = ops.flow_attention_prefill(*(x[n][:, 100:] for n in "qkv"), state, backend="triton")
    ref = ops.flow_attention(**x, backend="reference")
    assert relative_error(o, ref[:, 100:]) < 2e-4
