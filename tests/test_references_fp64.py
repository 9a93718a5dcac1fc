"""The references are the ground truth, so fp32 inputs must give the exact (fp64) answer (issue 14).

Each reference that lost more than ~1e-5 relative accuracy in fp32 on hard but valid inputs computes in fp64
inside and returns the documented dtypes (outputs in the input's dtype, states in fp32): selective_scan, gla,
delta_rule and linear_scan, whose decays near 1 round the same way at every step in fp32 so that the error
compounds with the length (4e-5 to 9e-5 relative at T = 4096 to 32768), attention (large logits; the
softmax backward cancelling when the values share an offset: 1e-4 in dk) and flow_attention (its non-causal
sums over T with values sharing an offset: 1.3e-5 in dk at T = 4096). Here the cases are cut to a second each;
the fp32 references missed them by 3e-6 to 2e-4, fp64 inside gives ~6e-8. The S4 kernels are tested in
test_s4.py; causal_conv1d stays in fp32 (a sum of W terms: worst measured 1.5e-6).

Each case runs the reference on fp32 inputs and on fp64 copies of the same values and compares outputs, final
states and the gradient of every input (the same cotangents), relative to the largest magnitude.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqzoo.ops.attention.reference import attention
from seqzoo.ops.delta_rule.reference import delta_rule
from seqzoo.ops.flow_attention.reference import flow_attention
from seqzoo.ops.gla.reference import gla
from seqzoo.ops.linear_scan.reference import linear_scan
from seqzoo.ops.selective_scan.reference import selective_scan
from seqzoo.ops.testing import relative_error

T = 256  # long enough that the fp32 recurrences were off by 3e-6 or more; about a second each
TOL = 5e-7


def _selective_scan_inputs(g, complex_A=False):
    b, d, n = 1, 4, 8
    A = -(torch.rand(d, n, generator=g) * 2 + 0.1)
    if complex_A:
        A = torch.complex(A, torch.randn(d, n, generator=g))
    return dict(
        u=torch.randn(b, T, d, generator=g),
        delta=torch.full((b, T, d), 1e-3),  # Mamba's dt_min: exp(dt A) just below 1, the same at every step
        A=A,
        B=torch.randn(b, T, n, generator=g),
        C=torch.randn(b, T, n, generator=g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, T, d, generator=g),
        initial_state=torch.randn(b, d, n, generator=g, dtype=A.dtype) * 10,
    )


def _linear_attention_inputs(g, per_head):
    b, h, k = 1, 2, 8
    return dict(
        q=torch.randn(b, T, h, k, generator=g),
        k=F.normalize(torch.randn(b, T, h, k, generator=g), dim=-1),
        v=torch.randn(b, T, h, k, generator=g),
        g=torch.full((b, T, h) if per_head else (b, T, h, k), -1e-4),  # weak decay, the same at every step
        initial_state=torch.randn(b, h, k, k, generator=g) * 10,
    )


def _delta_rule_inputs(g):
    x = _linear_attention_inputs(g, per_head=True)
    return {**x, "beta": torch.rand(1, T, 2, generator=g) * 1e-2}


def _attention_inputs(g, q_scale, v_offset):
    b, t, h, d = 1, 64, 2, 32
    q, k = (torch.randn(b, t, h, d, generator=g) * s for s in (q_scale, q_scale))
    return dict(q=q, k=k, v=torch.randn(b, t, h, d, generator=g) + v_offset)


CASES = {
    # Logits of ~1e2: the fp32 scores were rounded by ~1e-5 of that.
    "attention-large_logits": lambda g: (attention, _attention_inputs(g, 10.0, 0.0), {"causal": True}),
    # Values sharing an offset: the softmax backward (dp - sum_j p_j dp_j) cancelled in fp32.
    "attention-value_offset": lambda g: (attention, _attention_inputs(g, 1.0, 1e3), {"causal": True}),
    # Sums over T of values sharing an offset: the gradients cancelled in fp32.
    "flow_attention-value_offset": lambda g: (
        flow_attention,
        dict(
            q=torch.rand(1, 4 * T, 1, 16, generator=g),
            k=torch.rand(1, 4 * T, 1, 16, generator=g),
            v=torch.randn(1, 4 * T, 1, 8, generator=g) + 100,
        ),
        {"causal": False},
    ),
    # a near 1 and a state far larger than x: a h rounded the same way at every step in fp32.
    "linear_scan": lambda g: (
        linear_scan,
        dict(
            a=torch.full((1, 16 * T, 2), 1 - 1e-6),
            x=1 + 0.1 * torch.randn(1, 16 * T, 2, generator=g),
            initial_state=torch.randn(1, 2, generator=g) * 1e3,
        ),
        {"output_final_state": True},
    ),
    "selective_scan": lambda g: (selective_scan, _selective_scan_inputs(g), {"output_final_state": True}),
    "selective_scan-complex_A": lambda g: (
        selective_scan,
        _selective_scan_inputs(g, complex_A=True),
        {"output_final_state": True},
    ),
    "gla": lambda g: (gla, _linear_attention_inputs(g, per_head=False), {"output_final_state": True}),
    "gla-per_head": lambda g: (gla, _linear_attention_inputs(g, per_head=True), {"output_final_state": True}),
    "delta_rule": lambda g: (delta_rule, _delta_rule_inputs(g), {"output_final_state": True}),
}


def _run(fn, inputs, kwargs, wide: bool):
    def cast(x):
        if not wide:
            return x
        return x.to(torch.complex128 if x.is_complex() else torch.float64)

    args = {n: cast(x.clone()).requires_grad_(True) for n, x in inputs.items()}
    out = fn(**args, **kwargs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (torch.view_as_real(o) if o.is_complex() else o)
        .double()
        .mul(
            torch.randn(
                (torch.view_as_real(o) if o.is_complex() else o).shape, generator=g, dtype=torch.float64
            )
        )
        .sum()
        for o in outs
    )
    grads = torch.autograd.grad(loss, list(args.values()))
    return outs, dict(zip(args, grads))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_inputs_give_the_fp64_answer(case):
    fn, inputs, kwargs = CASES[case](torch.Generator().manual_seed(0))
    outs, grads = _run(fn, inputs, kwargs, wide=False)
    outs64, grads64 = _run(fn, inputs, kwargs, wide=True)
    # The documented dtypes: the output in the input's dtype, the final state in fp32 (complex64 for complex A).
    assert outs[0].dtype == torch.float32
    if len(outs) > 1:
        assert outs[1].dtype == (torch.complex64 if inputs.get("A", outs[0]).is_complex() else torch.float32)
    for i, (o, ref) in enumerate(zip(outs, outs64)):
        assert relative_error(o, ref) <= TOL, f"output {i}: {relative_error(o, ref):.2e}"
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype
        assert relative_error(grad, grads64[name]) <= TOL, (
            f"d{name}: {relative_error(grad, grads64[name]):.2e}"
        )


def test_attention_reference_keeps_fp64_inputs_in_fp64():
    """It cast every input to fp32 (float()), so an fp64 run was an fp32 one: now fp64 stays fp64."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 16, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * 8**-0.5
    scores = scores.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), float("-inf"))
    expected = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    o = attention(q, k, v, causal=True)
    assert o.dtype == torch.float64
    assert (o - expected).abs().max().item() < 1e-13
