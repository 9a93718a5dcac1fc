"""ops.delta_rule: the reference against an independent hand-written loop, and the torch and Triton backends
against the reference (outputs, final state, gradients of q, k, v, beta, g and the initial state) for DeltaNet
(g=None) and Gated DeltaNet, lengths that are not multiples of the chunk, T = 1, strong decays, beta near 0 and
near 2, chunked calls with the state handed over, and argument errors. The Triton kernels run under
TRITON_INTERPRET=1 on a CPU (tests/conftest.py), on small shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqzoo import ops
from seqzoo.ops.delta_rule import torch as delta_torch
from seqzoo.ops.delta_rule import triton_chunk as delta_triton
from seqzoo.ops.testing import assert_matches_reference

GATES = ["none", "gated", "strong"]


def make(b=2, t=37, h=2, dk=16, dv=24, gate="gated", dtype=torch.float64, initial_state=True, beta="uniform"):
    """Inputs as a mixer makes them: unit-norm keys (the layer L2-normalises them), beta in (0, 2)."""
    x = {
        "q": torch.randn(b, t, h, dk),
        "k": F.normalize(torch.randn(b, t, h, dk), dim=-1),
        "v": torch.randn(b, t, h, dv),
    }
    if beta == "uniform":
        x["beta"] = torch.rand(b, t, h) * 2
    elif beta == "small":  # barely writes
        x["beta"] = torch.rand(b, t, h) * 1e-3
    elif beta == "large":  # nearly a reflection, I - 2 k k^T
        x["beta"] = 2 - torch.rand(b, t, h) * 1e-3
    if gate == "gated":  # Gated DeltaNet-like: mostly slow forgetting
        x["g"] = F.logsigmoid(torch.randn(b, t, h) + 2.0)
    elif gate == "strong":  # log decays down to -20 per step
        x["g"] = -torch.rand(b, t, h) * 20
    if initial_state:
        x["initial_state"] = torch.randn(b, h, dk, dv)
    return {n: v.to(dtype) for n, v in x.items()}


# -- the reference against an independent loop -------------------------------------------------------------


def hand_loop(q, k, v, beta, g, scale, initial_state):
    """S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t (scale q_t), S [V, K], one (b, h)
    at a time, with explicit matrices."""
    b, t_len, h, dk = q.shape
    dv = v.shape[-1]
    o = torch.zeros(b, t_len, h, dv, dtype=torch.float64)
    final = torch.zeros(b, h, dk, dv, dtype=torch.float64)
    eye = torch.eye(dk, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            S = initial_state[bi, hi].T.clone()  # [V, K]
            for t in range(t_len):
                kt, bt = k[bi, t, hi], beta[bi, t, hi]
                a = 1.0 if g is None else torch.exp(g[bi, t, hi])
                S = a * S @ (eye - bt * torch.outer(kt, kt)) + bt * torch.outer(v[bi, t, hi], kt)
                o[bi, t, hi] = S @ (scale * q[bi, t, hi])
            final[bi, hi] = S.T
    return o, final


@pytest.mark.parametrize("gate", GATES)
def test_reference_is_the_recurrence(gate):
    x = make(b=2, t=9, h=2, dk=4, dv=3, gate=gate)
    o, s = ops.delta_rule(**x, output_final_state=True, backend="reference")
    expect_o, expect_s = hand_loop(**{"g": None, **x}, scale=0.5)  # default scale K^-1/2 = 0.5
    torch.testing.assert_close(o, expect_o, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, expect_s, rtol=1e-12, atol=1e-12)
    # And with a given scale, from a zero state.
    x.pop("initial_state")
    o, _ = ops.delta_rule(**x, scale=0.3, backend="reference")
    zero = torch.zeros(2, 2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(o, hand_loop(**{"g": None, **x}, scale=0.3, initial_state=zero)[0])


def test_reference_one_step_by_hand():
    # One DeltaNet step from a state that stores v_old for a unit key k: beta = 1 overwrites it with v.
    k = F.normalize(torch.randn(1, 1, 1, 4, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 1, 1, 3, dtype=torch.float64)
    v_old = torch.randn(3, dtype=torch.float64)
    state = (k[0, 0, 0][:, None] * v_old[None])[None, None]  # [1, 1, K, V] = k v_old^T
    beta = torch.ones(1, 1, 1, dtype=torch.float64)
    o, s = ops.delta_rule(
        k, k, v, beta, scale=1.0, initial_state=state, output_final_state=True, backend="reference"
    )
    torch.testing.assert_close(s[0, 0], k[0, 0, 0][:, None] * v[0, 0, 0][None])
    torch.testing.assert_close(o[0, 0, 0], v[0, 0, 0])  # reading with the same key gives the new value


# -- the torch backend against the reference ---------------------------------------------------------------


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("t", [1, 37, 64, 131])
def test_torch_matches_reference_fp64(gate, t):
    assert_matches_reference(ops.delta_rule, "torch", make(t=t, gate=gate), output_final_state=True)


@pytest.mark.parametrize("gate", GATES)
def test_torch_matches_reference_fp32(gate):
    x = make(t=100, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "gated"])
def test_torch_matches_reference_bf16(gate):
    x = make(t=100, gate=gate, dtype=torch.bfloat16)
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "strong"])
def test_torch_without_state_and_with_scale(gate):
    x = make(t=70, gate=gate, initial_state=False)
    assert_matches_reference(ops.delta_rule, "torch", x, scale=0.37)
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


@pytest.mark.parametrize("beta", ["small", "large"])
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_torch_beta_near_0_and_2(beta, gate):
    for dtype in (torch.float64, torch.float32):
        x = make(t=150, gate=gate, beta=beta, dtype=dtype)
        assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


def test_torch_extreme_decays_stay_finite():
    # Every chunk decays by thousands in log space: exp(G_i - G_j) for i < j would be exp(+thousands).
    x = make(b=1, t=150, gate="strong", dtype=torch.float32)
    x["g"] = torch.full_like(x["g"], -60.0)
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)
    # Mixed: strong decays (-20 per step) in the middle chunk of mild ones.
    x = make(b=1, t=200, gate="gated", dtype=torch.float32)
    x["g"][:, 64:128] = -torch.rand(1, 64, 2) * 20
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


@pytest.mark.parametrize("chunk", [8, 16])
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_torch_small_chunks(chunk, gate):
    # Many chunks, the last partial, on a short sequence: the state passing between chunks.
    x = make(b=1, t=45, gate=gate)
    ref, ref_s = ops.delta_rule(**x, output_final_state=True, backend="reference")
    o, s = delta_torch.delta_rule(**x, output_final_state=True, chunk=chunk)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_state_carries_over(backend, gate):
    # Two calls with the first one's final state handed over equal one call (split inside a chunk).
    x = make(b=1, t=90, gate=gate, dtype=torch.float32)
    o, s = ops.delta_rule(**x, output_final_state=True, backend=backend)
    first = {n: (v[:, :40] if n != "initial_state" else v) for n, v in x.items()}
    second = {n: v[:, 40:] for n, v in x.items() if n != "initial_state"}
    o1, s1 = ops.delta_rule(**first, output_final_state=True, backend=backend)
    o2, s2 = ops.delta_rule(**second, initial_state=s1, output_final_state=True, backend=backend)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s2, s, rtol=1e-4, atol=1e-4)


def test_dtypes():
    x = make(t=20, dtype=torch.float64)
    o, s = ops.delta_rule(**x, output_final_state=True, backend="torch")
    assert o.dtype == s.dtype == torch.float64
    x = make(t=20, dtype=torch.bfloat16)
    x["initial_state"] = x["initial_state"].float()
    for backend in ("reference", "torch"):
        o, s = ops.delta_rule(**x, output_final_state=True, backend=backend)
        assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
        assert ops.delta_rule(**x, backend=backend)[1] is None


def test_auto_is_torch_on_cpu_and_backends_are_listed():
    ops.delta_rule(**make(t=5, dtype=torch.float32))
    assert ops.delta_rule.last_backend == "torch"
    listed = ops.delta_rule.backends("cpu")
    assert listed["reference"] == "available" and listed["torch"] == "available"
    assert "delta_rule" in ops.list_ops()


# -- the Triton kernels, under TRITON_INTERPRET=1 (small shapes: the interpreter is slow) ---------------------


class ChunkOf:
    """ops.delta_rule with backend="triton" at another chunk size (16: several chunks on short sequences),
    in the shape assert_matches_reference takes; every other backend goes through the op."""

    name = "delta_rule"

    def __init__(self, chunk):
        self.chunk = chunk

    def __call__(self, *args, backend, **kwargs):
        if backend != "triton":
            return ops.delta_rule(*args, backend=backend, **kwargs)
        return delta_triton.chunk_delta_rule(*args, chunk=self.chunk, **kwargs)


CHUNK16 = ChunkOf(16)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("t", [1, 5, 37, 70])
def test_triton_chunk_matches_reference(gate, t):
    # Chunks of 16: T = 37 and 70 end in a partial chunk; dk = 24 and dv = 40 are not powers of two.
    x = make(b=1, t=t, h=2, dk=24, dv=40, gate=gate, dtype=torch.float32)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_chunk_default_chunk_through_the_op(gate):
    # The default chunk of 64, as ops.delta_rule(backend="triton") runs it: two chunks, the second partial.
    x = make(b=2, t=70, h=1, dk=16, dv=16, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "triton", x, output_final_state=True)


def test_triton_chunk_several_key_and_value_tiles():
    # K = 80 and V = 72: two key tiles and two value tiles of 64 in every kernel's loops.
    x = make(b=1, t=40, h=1, dk=80, dv=72, gate="gated", dtype=torch.float32)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


def test_triton_chunk_narrow_reverse_pass_key_tiles(monkeypatch):
    # Before sm_90 the reverse pass (_chunk_bwd_dh_kernel) may take 32-wide key tiles; the interpreter gets
    # H100's 64. K = 80: three of them, the last partial.
    monkeypatch.setattr(delta_triton, "_dh_key_tile", lambda K: delta_triton._block(K, delta_triton.BWD_TILE))
    x = make(b=1, t=40, h=1, dk=80, dv=72, gate="gated", dtype=torch.float32)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "strong"])
def test_triton_chunk_without_state_and_with_scale(gate):
    x = make(b=1, t=37, h=2, dk=16, dv=16, gate=gate, initial_state=False, dtype=torch.float32)
    assert_matches_reference(CHUNK16, "triton", x, scale=0.37)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_chunk_low_precision(dtype, gate):
    # fp16 runs its matmuls in fp16; bf16 in fp32 under the interpreter (numpy has no bf16 matmul; on a GPU
    # they are bf16: test_gpu_matches_reference).
    x = make(b=1, t=37, h=2, dk=16, dv=32, gate=gate, dtype=dtype)
    x["initial_state"] = x["initial_state"].float()
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


@pytest.mark.parametrize("beta", ["small", "large"])
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_chunk_beta_near_0_and_2(beta, gate):
    x = make(b=1, t=40, h=2, dk=16, dv=16, gate=gate, beta=beta, dtype=torch.float32)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


def test_triton_chunk_extreme_decays_and_singular_steps():
    # Every chunk decays by hundreds in log space (exp(G_i - G_j), i < j, would overflow), a chunk of
    # strong decays between mild ones, and beta = 1 on unit keys (I - k k^T singular). No NaN, no inf.
    x = make(b=1, t=40, h=2, dk=16, dv=16, gate="strong", dtype=torch.float32)
    x["g"] = torch.full_like(x["g"], -60.0)
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)
    x = make(b=1, t=48, h=2, dk=16, dv=16, gate="gated", dtype=torch.float32)
    x["g"][:, 16:32] = -torch.rand(1, 16, 2) * 20
    x["beta"] = torch.ones_like(x["beta"])
    assert_matches_reference(CHUNK16, "triton", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_state_carries_over(gate):
    # Two calls of each Triton backend with the state handed over equal one call (split inside a chunk).
    x = make(b=1, t=45, h=1, dk=16, dv=16, gate=gate, dtype=torch.float32)
    first = {n: (v[:, :20] if n != "initial_state" else v) for n, v in x.items()}
    second = {n: v[:, 20:] for n, v in x.items() if n != "initial_state"}
    ref, ref_s = ops.delta_rule(**x, output_final_state=True, backend="reference")
    for run in (CHUNK16, lambda **a: ops.delta_rule(**a, backend="triton_recurrent")):
        kw = {"backend": "triton"} if run is CHUNK16 else {}
        o1, s1 = run(**first, output_final_state=True, **kw)
        o2, s2 = run(**second, initial_state=s1, output_final_state=True, **kw)
        torch.testing.assert_close(torch.cat([o1, o2], 1), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s2, ref_s, rtol=1e-4, atol=1e-4)


def test_triton_chunk_size_must_be_a_power_of_two():
    x = make(b=1, t=8, h=1, dk=16, dv=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        delta_triton.chunk_delta_rule(**x, chunk=24)


# The recurrent kernel:
#
# The recurrent kernel checkpoints the state every SEGMENT = 32 steps: T = 37 and 70 cross segments, the last
# partial. dv = 40 gives two value tiles in its backward (BV = 32), whose partial dq, dk, dbeta, dg are summed;
# dk = 24 is not a power of two (masked key tile).


@pytest.mark.parametrize("gate", GATES)
def test_triton_recurrent_matches_reference(gate):
    x = make(b=1, t=37, h=2, dk=24, dv=40, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_recurrent_two_segments_batch(gate):
    x = make(b=2, t=70, h=1, dk=16, dv=16, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)


@pytest.mark.parametrize("gate", ["none", "strong"])
def test_triton_recurrent_single_token(gate):
    # Decoding: one token, from a state and from none, with a given scale.
    x = make(b=2, t=1, h=2, dk=16, dv=16, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)
    x.pop("initial_state")
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, scale=0.3)


@pytest.mark.parametrize("gate", ["none", "gated"])
def test_triton_recurrent_bf16(gate):
    # No matmuls in the recurrent kernels, so bf16 runs in the interpreter (loads upcast to fp32).
    x = make(b=1, t=20, h=2, dk=16, dv=32, gate=gate, dtype=torch.bfloat16)
    x["initial_state"] = x["initial_state"].float()
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)


@pytest.mark.parametrize("beta", ["small", "large"])
def test_triton_recurrent_beta_near_0_and_2(beta):
    x = make(b=1, t=40, h=1, dk=16, dv=16, gate="gated", beta=beta, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)


def test_triton_recurrent_extreme_decays_and_singular_steps():
    # g = -20 everywhere (the state nearly forgets every step) and beta = 1 on unit keys, where the step
    # I - k k^T is singular: the backward must recompute states, not invert steps. No NaN, no inf.
    x = make(b=1, t=36, h=2, dk=16, dv=16, gate="strong", dtype=torch.float32)
    x["g"] = torch.full_like(x["g"], -20.0)
    x["beta"] = torch.ones_like(x["beta"])
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)
    x.pop("g")
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)


def test_triton_recurrent_some_inputs_without_grad():
    # Only v and the initial state need gradients; beta and g are plain tensors.
    x = make(b=1, t=9, h=2, dk=16, dv=16, gate="gated", dtype=torch.float32)
    assert_matches_reference(
        ops.delta_rule, "triton_recurrent", x, grad=["v", "initial_state"], output_final_state=True
    )
    # No gradient at all: the forward keeps no checkpoints.
    o, s = ops.delta_rule(**x, output_final_state=True, backend="triton_recurrent")
    ref, ref_s = ops.delta_rule(**x, output_final_state=True, backend="reference")
    torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=1e-5)


def test_triton_refuses_what_it_cannot_do():
    for backend in ("triton", "triton_recurrent"):
        x = make(b=1, t=4, dtype=torch.float64)
        with pytest.raises(ValueError, match="float64"):
            ops.delta_rule(**x, backend=backend)
        x = make(b=1, t=4, h=1, dk=16, dv=300, dtype=torch.float32)
        with pytest.raises(ValueError, match="256"):
            ops.delta_rule(**x, backend=backend)
    # auto on a CPU is the torch backend; decoding (delta_rule_step) stays on it too.
    ops.delta_rule(**make(b=1, t=4, dtype=torch.float32))
    assert ops.delta_rule.last_backend == "torch"
    ops.delta_rule_step(**make(b=1, t=1, dtype=torch.float32))
    assert ops.delta_rule_step.last_backend == "torch"
    assert {"triton", "triton_recurrent"} <= set(ops.delta_rule.backends("cpu"))
    assert set(ops.delta_rule_step.backends("cpu")) == set(ops.delta_rule.backends("cpu"))


@pytest.mark.parametrize("backend", ["torch", "triton_recurrent"])
def test_step_matches_reference(backend):
    # delta_rule_step: delta_rule from a state, always returning the new one (a few tokens, Gated DeltaNet).
    # (Its triton backend is chunk_delta_rule with output_final_state, tested above: 10 s interpreted.)
    x = make(b=2, t=3, h=2, dk=16, dv=8, gate="gated", dtype=torch.float32)
    assert_matches_reference(ops.delta_rule_step, backend, x)
    with pytest.raises(ValueError, match="delta_rule_step.*beta"):
        ops.delta_rule_step(**{**x, "beta": x["beta"][:, :2]})


# -- argument checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, exc, word",
    [
        (dict(q=torch.randn(2, 8, 2)), ValueError, "q"),
        (dict(k=torch.randn(2, 8, 2, 8)), ValueError, "k"),
        (dict(v=torch.randn(2, 9, 2, 24)), ValueError, "v"),
        (dict(v=torch.randn(2, 8, 2, 24, dtype=torch.float64)), TypeError, "dtype"),
        (dict(q=torch.randint(0, 3, (2, 8, 2, 16))), TypeError, "q"),
        (dict(beta=torch.rand(2, 8, 3)), ValueError, "beta"),
        (dict(beta=torch.rand(2, 8, 2, 1)), ValueError, "beta"),
        (dict(beta=None), TypeError, "beta"),
        (dict(beta=torch.randint(0, 2, (2, 8, 2))), TypeError, "beta"),
        (dict(g=torch.randn(2, 8, 2, 16)), ValueError, "g"),
        (dict(g=torch.randn(2, 7, 2)), ValueError, "g"),
        (dict(initial_state=torch.randn(2, 2, 24, 16)), ValueError, "initial_state"),
        (dict(initial_state=torch.randn(2, 16, 24)), ValueError, "initial_state"),
        (dict(scale="big"), TypeError, "scale"),
        (
            dict(q=torch.randn(2, 0, 2, 16), k=torch.randn(2, 0, 2, 16), v=torch.randn(2, 0, 2, 24)),
            ValueError,
            "length",
        ),
    ],
)
def test_bad_arguments(change, exc, word):
    x = {
        "q": torch.randn(2, 8, 2, 16),
        "k": torch.randn(2, 8, 2, 16),
        "v": torch.randn(2, 8, 2, 24),
        "beta": torch.rand(2, 8, 2),
    }
    x.update(change)
    with pytest.raises(exc, match=word):
        ops.delta_rule(**x)


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_torch_long_sequence_fp32(gate):
    # Many chunks of head-sized dims: errors that grow with the number of chunks passed through the state.
    x = make(b=1, t=1000, h=2, dk=64, dv=64, gate=gate, dtype=torch.float32)
    assert_matches_reference(ops.delta_rule, "torch", x, output_final_state=True)


# -- on a GPU (compiled kernels; bf16 matmuls) ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["triton", "triton_recurrent"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(backend, gate, dtype):
    x = make(b=2, t=333, h=3, dk=64, dv=128, gate=gate, dtype=dtype)
    x = {n: (v.float() if n == "initial_state" else v).cuda() for n, v in x.items()}
    assert_matches_reference(ops.delta_rule, backend, x, output_final_state=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dk, dv", [(16, 16), (48, 80), (256, 256)])
def test_gpu_head_dims(dk, dv):
    x = {
        n: v.cuda() for n, v in make(b=1, t=200, h=2, dk=dk, dv=dv, gate="gated", dtype=torch.float32).items()
    }
    assert_matches_reference(ops.delta_rule, "triton", x, output_final_state=True)
    assert_matches_reference(ops.delta_rule, "triton_recurrent", x, output_final_state=True)
    few = {n: v[:, :1] for n, v in x.items() if n != "initial_state"}
    ops.delta_rule_step(**few, initial_state=x["initial_state"])
    assert ops.delta_rule_step.last_backend == "triton_recurrent"
