"""Packed ops (issue 27): each torch backend's one-pass packed path ("native") against the same backend run once
per sequence ("per-sequence", the dispatcher's path for a backend without ``varlen``), forward + backward, one
thread, median of 9 runs with the two called alternately in one process (their ratio is what to read: CPU
timings here swing).

    OMP_NUM_THREADS=1 python bench_results/packed-ops-interleaved.py > bench_results/packed-ops-cpu-interleaved.txt
    FORWARD_ONLY=1 python bench_results/packed-ops-interleaved.py      # without autograd
"""
import math, statistics, sys, time
import torch
torch.set_num_threads(1)
from seqzoo import ops
from seqzoo.ops._varlen import cu_seqlens_from_lengths

def lengths(n, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    return [int(round(math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))))) for x in u.tolist()]

SIZES = {
    "causal_conv1d": dict(D=256, W=4),
    "linear_scan": dict(D=256),
    "attention": dict(H=4, D=64),
    "selective_scan": dict(D=256, N=16),
    "gla": dict(H=4, K=64, V=64),
    "delta_rule": dict(H=4, K=64, V=64),
    "fft_conv": dict(H=256),
    "flow_attention": dict(H=4, D=64),
}

def inputs(name, lens):
    op = ops.list_ops()[name]
    spec = op.spec
    args = spec.example(torch.float32, B=1, T=sum(lens), **SIZES[name])
    if spec.state_arg:
        args[spec.state_arg] = spec.example(torch.float32, B=len(lens), T=3, **SIZES[name])[spec.state_arg]
    for k, v in args.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            args[k] = v.detach().requires_grad_()
    return op, args

import os
FORWARD_ONLY = bool(os.environ.get("FORWARD_ONLY"))

def run(op, args, cu):
    if FORWARD_ONLY:
        with torch.no_grad():
            op(**args, cu_seqlens=cu, backend="torch")
        return op.last_packing
    out = op(**args, cu_seqlens=cu, backend="torch")
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor))
    leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    torch.autograd.grad(loss, leaves, allow_unused=True)
    return op.last_packing

def bench(name, lens, reps):
    op, args = inputs(name, lens)
    cu = cu_seqlens_from_lengths(lens)
    b = op._backends["torch"]
    times = {"native": [], "per-sequence": []}
    for r in range(reps + 1):
        for varlen in ((True, False) if r % 2 else (False, True)):
            b.varlen = varlen
            t0 = time.perf_counter()
            how = run(op, args, cu)
            dt = time.perf_counter() - t0
            if r:
                times[how].append(dt)
    b.varlen = True
    nat, per = (statistics.median(times[k]) * 1e3 for k in ("native", "per-sequence"))
    print(f"{name:15s} N={len(lens):4d} T={sum(lens):5d}  native {nat:8.2f} ms   per-sequence {per:8.2f} ms   x{per / nat:5.2f}", flush=True)

if __name__ == "__main__":
    which = sys.argv[1:] or list(SIZES)
    for n, lo, hi in ((16, 16, 512), (128, 4, 64)):
        lens = lengths(n, lo, hi, 0)
        print(f"# {n} documents, log-uniform in [{lo}, {hi}]: {lens if n <= 16 else str(lens[:12]) + '...'}")
        for name in which:
            bench(name, lens, reps=9)
