"""The compile check (ops/_compile_check.py): every Triton kernel compiled for sm_90 and sm_80 as the wrappers
launch it, without a GPU, failing on a compile error or on shared memory over the target's limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))


def _checked(tmp_path, args, timeout):
    """Run the check for sm_90 and sm_80 in two processes at once (compiling is single-threaded; CI has two
    cores) and return the kernels of both; every failure fails the test with its case and error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it must compile, not interpret
    procs = {}
    for arch in (90, 80):
        out = tmp_path / f"sm{arch}.json"
        cmd = [
            sys.executable,
            "-m",
            "seqzoo.ops._compile_check",
            "--arch",
            str(arch),
            *args,
            "--json",
            str(out),
        ]
        procs[arch] = (
            out,
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        )
    kernels, failures = [], []
    for out, proc in procs.values():
        stdout, stderr = proc.communicate(timeout=timeout)
        assert out.exists(), stdout[-3000:] + stderr[-3000:]
        data = json.loads(out.read_text())
        kernels += data["kernels"]
        failures += [f"sm_{f['arch']} {f['op']} [{f['case']}]: {f['error']}" for f in data["failures"]]
        assert proc.returncode == 0 or failures, stderr[-3000:]
    assert not failures, "\n".join(failures)
    return kernels


def test_representative_kernels_compile_and_fit_on_h100_and_a100(tmp_path):
    kernels = _checked(tmp_path, [], timeout=1500)
    by_arch = {a: {(k["op"], k["kernel"]) for k in kernels if k["arch"] == a} for a in (90, 80)}
    assert by_arch[90] == by_arch[80]
    ops = {op for op, _ in by_arch[90]}
    assert ops == {
        "gla",
        "delta_rule",
        "causal_conv1d",
        "linear_scan",
        "selective_scan",
        "s4d_kernel",
        "s4_kernel",
        "fft_conv",
    }
    for k in kernels:
        assert 0 <= k["shared"] <= k["shared_limit"], k
        assert k["registers"] is None or 0 < k["registers"] <= 255, k


@pytest.mark.slow
@pytest.mark.exhaustive  # too long for CI: `pytest -m exhaustive` or `make compile-check FULL=1`
def test_every_shape_and_dtype_compiles_and_fits(tmp_path):
    _checked(tmp_path, ["--full", "--no-registers"], timeout=5400)


_OVERSIZED = """
import torch, triton, triton.language as tl
from seqzoo.ops import _compile_check as cc

@triton.jit
def _big(x, y, N: tl.constexpr):
    i = tl.arange(0, N)
    a = tl.load(x + i[:, None] * N + i[None, :])
    b = tl.load(x + i[None, :] * N + i[:, None])
    tl.store(y + i[:, None] * N + i[None, :], tl.dot(a, b))

def run():
    x = torch.empty(256, 256)
    _big[(1,)](x, x, N=256)

records, failures = cc.check(90, only=[cc.Case("demo", "256 x 256 fp32 tile", run)], registers=False)
print(len(records), [f.error for f in failures])
"""


def test_a_kernel_over_the_shared_memory_limit_fails_the_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = tmp_path / "oversized.py"  # Triton reads a kernel's source from its file
    script.write_text(_OVERSIZED)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "_big needs" in done.stdout and "limit 232448" in done.stdout, done.stdout
