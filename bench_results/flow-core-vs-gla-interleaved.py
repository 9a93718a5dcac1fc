"""Issue 14's decision run: flow-attention's own linear-attention core against ops.gla, interleaved.

    OMP_NUM_THREADS=1 python bench_results/flow-core-vs-gla-interleaved.py OUT.json

Flow's chunked causal linear attention (with its hand-written backward) and its non-causal einsums were deleted
by issue 14; this loads them from the commit before (905053c, ops/flow_attention/torch.py) and calls them and
``ops.gla(q, k, v, g=None, scale=1, causal=..., backend="torch")`` alternately in one process, flipping the order
every pair, so that a loaded machine slows both alike; the ratio gla/flow is taken per pair. ``seqzoo bench``
runs one backend's repeats after the other's, which on a shared 2-core VM moved single cases by 2x
(flow-core-vs-gla-cpu.json).
"""

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from seqzoo import ops

BASE = "905053c08068"
src = subprocess.run(
    ["git", "show", f"{BASE}:ops/flow_attention/torch.py"], capture_output=True, text=True, check=True
).stdout
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
spec = importlib.util.spec_from_file_location("flow_before_issue14", f.name)
flow_old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flow_old)


def case(which, causal, mode, q, k, v):
    """One call of ``which`` (flow's old core or ops.gla) as a function of nothing, for timing."""

    def fwd(q, k, v):
        if which == "flow":
            return (flow_old.causal_linear_attention if causal else flow_old.linear_attention)(q, k, v)
        return ops.gla(q, k, v, None, scale=1.0, causal=causal, backend="torch")[0]

    if mode == "fwd":

        def run():
            with torch.no_grad():
                fwd(q, k, v)

        return run
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    cot = torch.randn_like(v)
    return lambda: torch.autograd.grad(fwd(*leaves), leaves, cot)


torch.manual_seed(0)
B, H, D = 2, 4, 64
out = []
for causal in (True, False):
    for T in (1024, 2048, 4096, 8192):
        q, k = torch.sigmoid(torch.randn(B, T, H, D)), torch.sigmoid(torch.randn(B, T, H, D))
        v = torch.randn(B, T, H, D)
        for mode in ("fwd", "fwd+bwd"):
            a, b = case("flow", causal, mode, q, k, v), case("gla", causal, mode, q, k, v)
            a(), b()  # warm-up
            ta, tb, ratios = [], [], []
            for i in range(15 if T <= 2048 else 9):
                t = {}
                for fn in (a, b) if i % 2 == 0 else (b, a):
                    t0 = time.perf_counter()
                    fn()
                    t[fn] = (time.perf_counter() - t0) * 1e3
                ta.append(t[a]), tb.append(t[b]), ratios.append(t[b] / t[a])
            q1, q2, q3 = statistics.quantiles(ratios, n=4)
            row = dict(
                causal=causal,
                T=T,
                mode=mode,
                pairs=len(ratios),
                flow_ms=statistics.median(ta),
                gla_ms=statistics.median(tb),
                flow_min=min(ta),
                gla_min=min(tb),
                ratio_median=q2,
                ratio_q1=q1,
                ratio_q3=q3,
            )
            out.append(row)
            print(
                f"causal={causal!s:5} T={T:5d} {mode:8s} flow {row['flow_ms']:7.1f}  gla {row['gla_ms']:7.1f}  "
                f"gla/flow per pair {q2:.2f} [IQR {q1:.2f}-{q3:.2f}]",
                flush=True,
            )
meta = {
    "what": __doc__.split("\n\n")[0],
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "cpu": platform.processor() or platform.machine(),
    "threads": torch.get_num_threads(),
    "load_average": os.getloadavg(),
    "torch": torch.__version__,
    "base_commit": BASE,
    "inputs": "B=2 H=4 D=M=64 fp32; q, k = sigmoid(randn), v = randn; fwd under no_grad, fwd+bwd = grads of q, k, v",
}
json.dump({**meta, "rows": out}, open(sys.argv[1], "w"), indent=1)
