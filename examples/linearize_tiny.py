"""Linearize a trained attention LM: train ``tiny-attention`` briefly, convert every attention layer to Liger
(gated linear attention + sliding-window attention on the same q/k/v/o weights), fine-tune it with LoRA
through the recipe, and compare the validation losses.

Run it:  python examples/linearize_tiny.py            (a few minutes on 2 CPU cores)
         python examples/linearize_tiny.py --quick    (seconds: a smoke test, the figures mean little)

The same from the command line:
    seqzoo train tiny-attention train.steps=300 data.seq_len=128
    seqzoo linearize runs/tiny-attention --to liger --steps 150
"""

import argparse
import tempfile
import time
from pathlib import Path

from seqzoo.train.config import load_config
from seqzoo.train.linearize import linearize
from seqzoo.train.loop import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--quick", action="store_true", help="a few steps only (the test suite runs this)")
parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
args = parser.parse_args()

steps, ft_steps = (20, 10) if args.quick else (300, 150)
quiet = ["log.progress=false", "log.tensorboard=false", "log.plot=false"]

with tempfile.TemporaryDirectory() as tmp:
    out = Path(args.out or tmp)
    t0 = time.perf_counter()
    config = load_config(
        "tiny-attention",
        [
            f"train.steps={steps}",
            "data.seq_len=128",  # Liger's window is 64: half of each sequence
            "data.max_bytes=1000000",
            "train.eval_every=1000",
            "train.ckpt_every=1000",
            f"train.out_dir={out / 'attention'}",
            *quiet,
        ]
        + (["train.eval_batches=2", "data.max_bytes=200000"] if args.quick else []),
    )
    train(config)
    t_train = time.perf_counter() - t0
    report = linearize(out / "attention", "liger", steps=ft_steps, out_dir=out / "liger", overrides=quiet)
    losses = {k: report[k]["val_loss"] for k in ("original", "converted", "finetuned")}
    print(
        f"\nval loss: original attention {losses['original']:.4f}, converted to liger {losses['converted']:.4f}, "
        f"after {ft_steps} LoRA steps {losses['finetuned']:.4f}"
    )
    print(
        f"time: attention training {t_train:.0f} s ({steps} steps), conversion + fine-tuning + evaluation "
        f"{report['time_s']['total']:.0f} s"
    )
    if not args.quick:  # at this scale fine-tuning recovers most of what the conversion lost
        assert losses["finetuned"] < losses["converted"], losses
