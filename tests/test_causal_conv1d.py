"""ops.causal_conv1d: every backend against the F.conv1d reference, outputs, final states and gradients.

The Triton backend runs through the interpreter here (conftest sets TRITON_INTERPRET=1 before triton is
imported), so its cases use small shapes: the interpreter's time grows with the number of programs.
"""

from __future__ import annotations

import importlib
import re

import pytest
import torch

from seqzoo import ops
from seqzoo.ops.testing import assert_matches_reference, compare_with_reference

BACKENDS = ["torch", "triton"]
WIDTHS = [2, 3, 4, 5, 8]
OUTPUTS = ["y", "final_state"]


def make(b=2, t=7, d=24, width=4, bias=True, initial_state=True, dtype=torch.float32):
    inputs = {
        "x": torch.randn(b, t, d, dtype=dtype),
        "weight": torch.randn(d, width, dtype=dtype) / width**0.5,
    }
    if bias:
        inputs["bias"] = torch.randn(d, dtype=dtype)
    if initial_state:
        # States are fp32 whatever the input precision (the ops contract).
        inputs["initial_state"] = torch.randn(b, d, width - 1)
    return inputs


def check(backend, inputs, activation, **kwargs):
    return assert_matches_reference(
        ops.causal_conv1d,
        backend,
        inputs,
        output_names=OUTPUTS,
        activation=activation,
        output_final_state=True,
        **kwargs,
    )


# -- against the reference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 7, 37])
@pytest.mark.parametrize("initial_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_fp32(backend, width, activation, bias, initial_state, t):
    # D=40 is not a multiple of any channel tile; T=37 spans several time tiles; T=1 is a decoding step
    # (and, for W > 2, shorter than the state, so the final state mixes initial state and x). One sequence
    # keeps the 240 cases quick under the Triton interpreter; the tests below run batches of two.
    check(backend, make(b=1, t=t, d=40, width=width, bias=bias, initial_state=initial_state), activation)


# The Triton interpreter runs bf16 and fp16 kernels too, so both backends take these (states stay fp32).
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", [3, 8])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference_low_precision(backend, width, activation, dtype):
    check(backend, make(t=37, d=40, width=width, dtype=dtype), activation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    b, t, d, w = 2, 11, 24, 4
    inputs = {
        "x": torch.randn(b, d, t).transpose(1, 2),  # [B, T, D] view with channel-first memory
        "weight": torch.randn(w, d).t(),
        "bias": torch.randn(2 * d)[::2],
        "initial_state": torch.randn(b, w - 1, d).transpose(1, 2),
    }
    assert not inputs["x"].is_contiguous() and not inputs["weight"].is_contiguous()
    check(backend, inputs, "silu")


@pytest.mark.parametrize("grad", [["x"], ["weight"], ["bias"], ["initial_state"], ["x", "initial_state"]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_some_inputs(backend, grad):
    # The backward skips the work for inputs that need no gradient; what remains must still be right.
    comparisons = compare_with_reference(
        ops.causal_conv1d,
        backend,
        make(t=9, width=4),
        grad=grad,
        output_names=OUTPUTS,
        activation="silu",
        output_final_state=True,
    )
    assert all(c.ok for c in comparisons), "\n".join(map(str, comparisons))


def test_triton_many_tiles(monkeypatch):
    # Shrink the interpreter's tiles so T=37 spans 5 time tiles, 3 backward chunks of 2 tiles each, and
    # D=40 spans 3 channel tiles: every boundary and partial-sum slot is crossed. W=5 also pads the taps
    # to 8 in the dweight accumulator.
    triton_backend = importlib.import_module("seqzoo.ops.causal_conv1d.triton")
    tiles = triton_backend.Tiles(block_t=8, block_d=16, grad_block_t=8, grad_chunk_t=16)
    monkeypatch.setattr(triton_backend, "INTERPRET_TILES", tiles)
    check("triton", make(t=37, d=40, width=5), "silu")


def test_triton_backward_is_deterministic():
    inputs = make(t=37, d=40, width=5)

    def grads():
        args = {n: v.clone().requires_grad_(True) for n, v in inputs.items()}
        y, s = ops.causal_conv1d(**args, activation="silu", output_final_state=True, backend="triton")
        (y.square().sum() + s.sum()).backward()
        return [args[n].grad for n in sorted(args)]

    for g1, g2 in zip(grads(), grads()):
        assert torch.equal(g1, g2)


def test_without_final_state():
    x = make(t=7)
    for backend in ("reference", *BACKENDS):
        y, s = ops.causal_conv1d(**x, activation="silu", backend=backend)
        assert s is None and y.shape == x["x"].shape and y.dtype == x["x"].dtype


# -- decoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_decoding_matches_full_sequence(backend):
    width = 4
    inputs = make(b=2, t=13, d=24, width=width)
    kw = dict(weight=inputs["weight"], bias=inputs["bias"], activation="silu", backend=backend)
    x = inputs["x"]
    y_full, s_full = ops.causal_conv1d(
        x, initial_state=inputs["initial_state"], output_final_state=True, **kw
    )
    # Splits shorter than the state (1 < W-1), equal to it, and longer.
    for a in (1, width - 1, 8):
        y1, s1 = ops.causal_conv1d(
            x[:, :a], initial_state=inputs["initial_state"], output_final_state=True, **kw
        )
        assert s1.shape == (2, 24, width - 1) and s1.dtype == torch.float32
        y2, s2 = ops.causal_conv1d(x[:, a:], initial_state=s1, output_final_state=True, **kw)
        torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full)
        torch.testing.assert_close(s2, s_full)
    # One token at a time, as a decoder steps.
    state, ys = inputs["initial_state"], []
    for t in range(x.shape[1]):
        y_t, state = ops.causal_conv1d(x[:, t : t + 1], initial_state=state, output_final_state=True, **kw)
        ys.append(y_t)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full)
    torch.testing.assert_close(state, s_full)


def test_final_state_holds_last_inputs():
    x = make(t=6, width=4, initial_state=False)
    _, s = ops.causal_conv1d(x["x"], x["weight"], output_final_state=True, backend="triton")
    torch.testing.assert_close(s, x["x"][:, -3:].transpose(1, 2))


# -- arguments and dispatch --------------------------------------------------------------------------------


def _bad_arguments():
    x, w = torch.randn(2, 5, 8), torch.randn(8, 4)
    return [
        ("width 1", dict(x=x, weight=torch.randn(8, 1)), ValueError, "weight"),
        ("width 9", dict(x=x, weight=torch.randn(8, 9)), ValueError, "weight"),
        ("weight channels", dict(x=x, weight=torch.randn(6, 4)), ValueError, "weight"),
        ("weight 1-D", dict(x=x, weight=torch.randn(8)), ValueError, "weight"),
        (
            "initial_state width",
            dict(x=x, weight=w, initial_state=torch.randn(2, 8, 4)),
            ValueError,
            "initial_state",
        ),
        (
            "initial_state batch",
            dict(x=x, weight=w, initial_state=torch.randn(1, 8, 3)),
            ValueError,
            "initial_state",
        ),
        ("bias shape", dict(x=x, weight=w, bias=torch.randn(7)), ValueError, "bias"),
        ("activation relu", dict(x=x, weight=w, activation="relu"), ValueError, "activation"),
        ("integer x", dict(x=torch.ones(2, 5, 8, dtype=torch.int64), weight=w), TypeError, "x"),
        ("x 2-D", dict(x=torch.randn(5, 8), weight=w), ValueError, "x"),
    ]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("case", _bad_arguments(), ids=lambda c: c[0])
def test_argument_errors_name_the_argument(case, backend):
    _, kwargs, exc, name = case
    with pytest.raises(exc) as info:
        ops.causal_conv1d(**kwargs, backend=backend)
    assert re.search(rf"\b{name}\b", str(info.value)), str(info.value)


def test_backends_are_listed():
    backends = ops.causal_conv1d.backends("cpu")
    assert {"reference", "torch", "triton", "causal_conv1d"} <= set(backends)
    assert backends["reference"] == backends["torch"] == "available"
    assert backends["triton"] == "available"  # through the interpreter (TRITON_INTERPRET=1 in conftest)
    assert backends["causal_conv1d"] != "available"  # CUDA only


@pytest.mark.parametrize(
    "backend, expected", [("auto", "torch"), ("reference", "reference"), *[(b, b) for b in BACKENDS]]
)
def test_last_backend_reports_what_ran(backend, expected):
    x = make(t=3)
    ops.causal_conv1d(**x, backend=backend)
    assert ops.causal_conv1d.last_backend == expected
