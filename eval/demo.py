"""``seqzoo demo``: a quick comparison of mixers on built-in data, on CPU.

By default it runs the MQAR CPU sweep (``eval/configs/mqar-cpu.yaml``) over one mixer of each family
(``demo_mqar_mixers()``: the records' ``demo=True``, 12 of the 22, three seeds) and prints the accuracy
table, each cell the median over the seeds with its range: the Zoology comparison, small enough for 2 cores.
``--mixers all`` runs every mixer of the sweep (``seqzoo mqar mqar-cpu`` is the same sweep). How long each takes
on 2 cores: the README's quick start (the one place those figures are kept). The runs go through the one sweep
runner (``seqzoo.eval.sweep``), so an interrupted demo resumes. ``--task lm`` instead trains one tiny byte-level
language model per mixer through the training recipe (``seqzoo.train``) on the
Python standard library's sources (nothing is downloaded), with the same data, steps and optimiser, and
prints validation bits per byte next to the data's unigram entropy (what a model that ignores context
reaches). Ending far below that line is the model learning from context.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

DEFAULT_MIXERS = ["attention", "sliding_window", "short_conv", "hybrid"]  # --task lm
# Named presets beyond the registry: a hybrid is a list of mixers.
PRESETS = {"hybrid": ["short_conv", "attention"]}
# --task lm: the task's knob, a sliding window of a quarter of the sequence (as the tiny configs' 64 of 256
# and the MQAR sweep's 16 of its longer 64); each mixer's own settings come from its record (the recipe fills
# them).
WINDOW_FRACTION = 4


def demo_mqar_mixers() -> list[str]:
    """--task mqar: one mixer per family (the one whose record says ``demo=True``), in the MQAR CPU sweep's
    order: the slowest to train first so that the two workers finish together."""
    import seqzoo

    from .mqar import load_sweep

    records = seqzoo.list_mixers()
    return [m for m in load_sweep("mqar-cpu").mixer_entries() if isinstance(m, str) and records[m].demo]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        choices=["mqar", "lm"],
        default="mqar",
        help="mqar: recall sweep over every mixer (default); lm: byte-level LMs on the stdlib sources",
    )
    p.add_argument(
        "--mixers",
        nargs="+",
        default=None,
        help="mixer names; mqar: default one per family, 'all' for every mixer of the sweep; lm: default "
        "attention sliding_window short_conv hybrid",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="lm: the runs' seed")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="mqar: the seeds each cell is the median of (default: the sweep's, 0 1 2); --seeds 0 is a third "
        "of the time, one seed and no range",
    )
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--out-dir", default=None, help="where the runs go (default: a temporary folder)")


def demo_config(name: str, args, out_dir: Path) -> dict:
    """The recipe config of one demo run."""
    window = {"window": max(1, args.seq_len // WINDOW_FRACTION)}
    mixers = [{"name": n, **(window if n == "sliding_window" else {})} for n in PRESETS.get(name, [name])]
    return {
        "name": name,
        "model": {"d_model": args.d_model, "n_layers": args.n_layers, "mixer": mixers},
        "data": {"source": "builtin", "max_bytes": 2_000_000, "seq_len": args.seq_len},
        "optim": {"lr": args.lr, "weight_decay": 0.01, "warmup_steps": max(1, args.steps // 20)},
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": "cpu",
            "eval_every": args.steps,
            "eval_batches": args.eval_batches,
            "ckpt_every": args.steps,
            "keep_last": 1,
            "out_dir": str(out_dir / "{name}"),
        },
        "log": {"every": 10, "progress": True, "tensorboard": False, "plot": False},
    }


def run_demo(args, out_dir: Path) -> list[dict]:
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    rows = []
    for name in tqdm(args.mixers, desc="mixers", dynamic_ncols=True):
        summary = train(load_config(demo_config(name, args, out_dir)))
        rows.append(summary)
    return rows


def mqar_demo(args) -> int:
    from .mqar import load_sweep, markdown_table, protocol_line, run_sweep

    overrides = [f"out_dir={args.out_dir}/{{name}}"] if args.out_dir else []
    mixers = args.mixers or demo_mqar_mixers()
    if mixers != ["all"]:
        overrides.append("mixers=[" + ", ".join(mixers) + "]")
    if args.seeds:
        overrides.append("seeds=[" + ", ".join(map(str, args.seeds)) + "]")
    sweep = load_sweep("mqar-cpu", overrides)
    rows = run_sweep(sweep)
    print("\n" + markdown_table(rows))
    print(protocol_line(sweep))
    print(
        "MQAR accuracy (1.0 = every query recalled), the median over seeds [min-max]; state: numbers a model "
        "holds per sequence to decode. Results, CSV and plots: " + sweep.out_dir.format(name=sweep.name)
    )
    return 1 if rows.failures else 0  # the table holds what finished; the failed runs are named above


def main(args) -> int:
    if args.task == "mqar":
        return mqar_demo(args)
    args.mixers = args.mixers or DEFAULT_MIXERS
    if args.out_dir:
        rows = run_demo(args, Path(args.out_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="seqzoo-demo-") as d:
            rows = run_demo(args, Path(d))
    entropy = rows[0]["unigram_entropy_bpb"]
    header = f"| {'mixer':<14} | {'params':>8} | {'val bits/byte':>13} | {'val acc':>7} | {'tokens/s':>9} |"
    print("\n" + header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        tok_s = r["tokens"] / r["wall_time_s"]
        print(
            f"| {r['name']:<14} | {r['parameters']:>8,} | {r['val_bpb']:>13.3f} | {r['val_acc']:>7.3f} | {tok_s:>9,.0f} |"
        )
    print(
        f"\nunigram entropy of the validation bytes: {entropy:.3f} bits/byte (a uniform guess: {math.log2(256):.0f}); "
        f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens, d_model={args.d_model}, "
        f"{args.n_layers} layers. Lower is better."
    )
    return 0
