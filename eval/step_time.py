"""Where a CPU training step of an MQAR model spends its time, and what the recipe's choices save.

    python -m seqzoo.eval.step_time                         # every mixer of mqar-cpu, writes JSON
    python -m seqzoo.eval.step_time --mixers gla mamba --profile gla

For each mixer it builds the model a sweep trains (``eval/configs/mqar-cpu.yaml``: its paper's settings,
2 layers, d_model 64, batch 64 x 64 tokens) and times one AdamW step two ways, interleaved in one process
so that the machine's drift hits both alike:

- ``full_head``: logits for every position ([B, T, V]) and a cross-entropy that ignores the unlabelled ones;
- ``scored_head``: logits only where MQAR scores (``CausalLM(..., logits_at=labels != -100)``, what the
  recipe does for task data): the same loss and gradients, a fraction of the LM head and softmax.

It reports the median and the spread (min-max) of the repeats, and with ``--profile NAME`` the operators
that take a step's time (``torch.profiler``), grouped as matrix products, elementwise work and the rest.
Timings are measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def build_step(mixer: list, seq_len: int, num_kv_pairs: int, vocab: int, batch: int, d_model: int):
    """A model as mqar-cpu trains it (``mixer``: the sweep's resolved entries, ``eval.mqar.mixer_spec``), a
    batch of real MQAR data, and a step function per head variant."""
    from seqzoo import CausalLM, LMConfig
    from seqzoo.eval.tasks.synthetic import IGNORE_INDEX, mqar

    torch.manual_seed(0)
    model = CausalLM(
        LMConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=2,
            mlp="none",
            mixer=mixer,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = mqar(batch, seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab, seed=0)
    scored = y != IGNORE_INDEX

    def full_head():
        logits = model(x)
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def scored_head():
        F.cross_entropy(model(x, logits_at=scored), y[scored]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, {"full_head": full_head, "scored_head": scored_head}


def time_variants(steps: dict, repeats: int, inner: int) -> dict[str, list[float]]:
    """Milliseconds per step for each variant; variants alternate within every repeat."""
    for fn in steps.values():  # warm up (allocator, first-call paths)
        fn()
        fn()
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append(1000 * (time.perf_counter() - t) / inner)
    return out


def profile_step(step, n: int = 4) -> list[tuple[str, float]]:
    """(group, ms per step) for matrix products, elementwise/reduction ops and everything else."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(n):
            step()
    groups = {
        "matrix products": 0.0,
        "elementwise and reductions": 0.0,
        "other (optimizer, copies, ...)": 0.0,
    }
    matmuls = ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear")
    elementwise = (
        "mul",
        "add",
        "sub",
        "div",
        "exp",
        "silu",
        "sigmoid",
        "pow",
        "sum",
        "mean",
        "rsqrt",
        "softmax",
        "log_softmax",
        "cumsum",
        "where",
        "fill_",
        "neg",
        "logsigmoid",
        "elu",
        "sqrt",
    )
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1000 / n
        if e.key in matmuls:
            groups["matrix products"] += ms
        elif any(w in e.key for w in elementwise):
            groups["elementwise and reductions"] += ms
        else:
            groups["other (optimizer, copies, ...)"] += ms
    return list(groups.items())


def main(argv=None) -> int:
    from seqzoo.eval.mqar import load_sweep, mixer_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="mqar-cpu", help="the sweep whose models and first setting are timed")
    p.add_argument("--mixers", nargs="*", help="default: the sweep's mixers")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inner", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", nargs="*", default=[], help="mixers to break down by operator group")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (the recipe retains freed memory on CPU: train/cpu_memory.py)",
    )
    p.add_argument("--out", default="bench_results/mqar-step-cpu.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from seqzoo.train.cpu_memory import retain_freed_memory

    retained = False if args.default_malloc else retain_freed_memory()
    sweep = load_sweep(args.sweep)
    setting = sweep.settings[0]
    vocab = sweep.task.get("vocab_size", 8192)
    batch = sweep.train.get("batch_size", 64)
    names = args.mixers or [m if isinstance(m, str) else m["name"] for m in sweep.mixer_entries()]
    rows = []
    print(f"{'mixer':<18} {'full head ms':>16} {'scored head ms':>16} {'speed-up':>8}")
    for name in names:
        spec = mixer_spec(name, sweep, setting.seq_len)
        model, steps = build_step(
            spec, setting.seq_len, setting.num_kv_pairs, vocab, batch, sweep.d_models[0]
        )
        times = time_variants(steps, args.repeats, args.inner)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "mixer": name,
            **{f"{k}_ms": round(med[k], 2) for k in med},
            **{f"{k}_range_ms": [round(min(v), 2), round(max(v), 2)] for k, v in times.items()},
            "speedup": round(med["full_head"] / med["scored_head"], 2),
        }
        if name in args.profile:
            row["profile_ms"] = {g: round(ms, 2) for g, ms in profile_step(steps["scored_head"])}
        rows.append(row)
        print(
            f"{name:<18} {med['full_head']:>8.1f} ({min(times['full_head']):.0f}-{max(times['full_head']):.0f})"
            f" {med['scored_head']:>8.1f} ({min(times['scored_head']):.0f}-{max(times['scored_head']):.0f})"
            f" {row['speedup']:>7.2f}x"
        )
        for g, ms in row.get("profile_ms", {}).items():
            print(f"    {g:<32} {ms:8.1f} ms")
    meta = {
        "what": "one AdamW step of an MQAR model (2 layers, no MLP), median of repeats, ms",
        "sweep": args.sweep,
        "seq_len": setting.seq_len,
        "num_kv_pairs": setting.num_kv_pairs,
        "vocab_size": vocab,
        "batch_size": batch,
        "d_model": sweep.d_models[0],
        "threads": args.threads,
        "retain_freed_memory": retained,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
