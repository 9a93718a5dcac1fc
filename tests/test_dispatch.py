"""The backend dispatch shared by every op: listing, auto choice, reporting, refusals."""

from __future__ import annotations

import pytest
import torch

from seqzoo import ops
from seqzoo.ops._dispatch import Op
from seqzoo.ops.testing import assert_matches_reference, compare_with_reference


def test_list_ops_and_backends():
    names = ops.list_ops()
    assert {"attention", "causal_conv1d"} <= set(names)
    for op in names.values():
        listed = op.backends("cpu")
        assert "reference" in listed and listed["reference"] == "available"
        assert "torch" in listed


def test_auto_picks_torch_on_cpu_and_reports_it():
    x = torch.randn(1, 4, 2, 8)
    ops.attention(x, x, x)
    assert ops.attention.last_backend == "torch"
    ops.attention(x, x, x, backend="reference")
    assert ops.attention.last_backend == "reference"


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in ops.causal_conv1d.backends("cpu")["triton"]
    with pytest.raises(ValueError, match="triton"):
        ops.causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), backend="triton")


# The toy ops are built as plain Op objects, not with define_op: they must not join the library's op registry
# (list_ops), which other tests walk (every op has a spec, an fp64 audit, ...).
def _toy_op(broken: bool):
    op = Op("toy_" + ("broken" if broken else "ok"), "y = 2 * x * w")
    op.register("reference", lambda x, w: (2 * x * w, x.sum()))
    op.register("torch", lambda x, w: ((2 + (1e-2 if broken else 0)) * x * w, x.sum()))
    return op


def test_helper_passes_an_equal_backend():
    op = _toy_op(broken=False)
    comps = assert_matches_reference(op, "torch", {"x": torch.randn(5), "w": torch.randn(5)})
    assert [c.name for c in comps] == ["output[0]", "output[1]", "grad[w]", "grad[x]"]


def test_helper_catches_a_wrong_backend():
    # The helper must be able to fail: a 1% error in outputs and in the gradient of both inputs.
    op = _toy_op(broken=True)
    with pytest.raises(AssertionError, match="MISMATCH"):
        assert_matches_reference(op, "torch", {"x": torch.randn(5), "w": torch.randn(5)})
    bad = {
        c.name
        for c in compare_with_reference(op, "torch", {"x": torch.randn(5), "w": torch.randn(5)})
        if not c.ok
    }
    assert bad == {"output[0]", "grad[x]", "grad[w]"}


def test_helper_catches_nan():
    op = Op("toy_nan", "")
    op.register("reference", lambda x: x * 2)
    op.register("torch", lambda x: x * 2 + float("nan"))
    with pytest.raises(AssertionError, match="inf"):
        assert_matches_reference(op, "torch", {"x": torch.randn(3)})
