"""ops.delta_rule: the reference against an independent hand-written loop, and the torch backend against the
reference (outputs, final state, gradients of q, k, v, beta, g and the initial state) for DeltaNet (g=None) and
Gated DeltaNet, lengths that are not multiples of the chunk, T = 1, strong decays, beta near 0 and near 2,
chunked calls with the state handed over, and argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqzoo import ops
from seqzoo.ops.delta_rule import torch as delta_torch
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
