"""ops.attention: every backend against the explicit-softmax reference, outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from seqzoo import ops
from seqzoo.ops.testing import assert_matches_reference


def make(b=2, tq=9, tk=None, h=4, hk=None, d=16, dv=None, dtype=torch.float32, device="cpu"):
    tk = tk or tq
    hk = hk or h
    dv = dv or d
    return {
        "q": torch.randn(b, tq, h, d, dtype=dtype, device=device),
        "k": torch.randn(b, tk, hk, d, dtype=dtype, device=device),
        "v": torch.randn(b, tk, hk, dv, dtype=dtype, device=device),
    }


CASES = [
    dict(),  # MHA
    dict(hk=2),  # GQA
    dict(hk=1),  # MQA
    dict(tq=1, tk=13),  # one decoding query against a cache
    dict(tq=5, tk=17, hk=2),  # several queries at the end of a longer key sequence
    dict(tq=1, tk=1),  # T = 1
    dict(d=8, dv=12),  # value head size differs
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 4])
def test_torch_matches_reference(case, causal, window):
    assert_matches_reference(ops.attention, "torch", make(**case), causal=causal, window=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_low_precision(dtype):
    assert_matches_reference(ops.attention, "torch", make(hk=2, dtype=dtype), causal=True, window=3)


def test_scale_is_used():
    x = make()
    o1 = ops.attention(**x, scale=0.1, backend="reference")
    o2 = ops.attention(**x, backend="reference")
    assert (o1 - o2).abs().max() > 1e-3
    assert_matches_reference(ops.attention, "torch", x, scale=0.1)


def test_window_semantics():
    # With window=1 each query sees only itself, so the output is its own value (per head).
    x = make(h=2, hk=2)
    o = ops.attention(**x, causal=True, window=1, backend="reference")
    torch.testing.assert_close(o, x["v"])
    # Non-causal window 1: the same.
    o = ops.attention(**x, causal=False, window=1, backend="reference")
    torch.testing.assert_close(o, x["v"])


def test_causal_reference_is_causal():
    x = make(tq=8)
    o = ops.attention(**x, backend="reference")
    x2 = {k: v.clone() for k, v in x.items()}
    x2["k"][:, 5:] += 1
    x2["v"][:, 5:] += 1
    torch.testing.assert_close(ops.attention(**x2, backend="reference")[:, :5], o[:, :5])


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(q=torch.randn(2, 4, 4)), ValueError, "q"),
        (dict(k=torch.randn(2, 4, 3, 8), v=torch.randn(2, 4, 3, 8)), ValueError, "heads"),
        (dict(v=torch.randn(2, 5, 2, 8)), ValueError, "v"),
        (dict(q=torch.randn(2, 9, 4, 8)), ValueError, "Tq"),
        (dict(window=0), ValueError, "window"),
        (dict(q=torch.randint(0, 3, (2, 4, 4, 8))), TypeError, "q"),
        (dict(backend="nope"), ValueError, "backend"),
    ],
)
def test_argument_errors(kwargs, exc, word):
    args = {"q": torch.randn(2, 4, 4, 8), "k": torch.randn(2, 4, 2, 8), "v": torch.randn(2, 4, 2, 8)}
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        ops.attention(**args)


def test_flash_refused_on_cpu_with_reason():
    with pytest.raises(ValueError, match="flash"):
        ops.attention(**make(), backend="flash")
    assert ops.attention.backends("cpu")["flash"] != "available"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "flash"])
@pytest.mark.parametrize("window", [None, 64])
def test_gpu_backends(backend, window):
    if ops.attention.backends("cuda")[backend] != "available":
        pytest.skip(f"{backend} not installed")
    x = make(b=2, tq=300, h=4, hk=2, d=64, dtype=torch.bfloat16, device="cuda")
    assert_matches_reference(ops.attention, backend, x, causal=True, window=window)
