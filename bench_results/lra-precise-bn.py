"""A finished LRA run's final weights scored with precise BatchNorm statistics (issue 29).

    python bench_results/lra-precise-bn.py RUN_DIR [RUN_DIR ...] [--batches 32] [--out FILE.json]

For each run folder (what ``seqzoo lra TASK ...`` wrote: config.yaml and ``model/``) the final weights are
scored on the whole validation and test splits twice: with the running BatchNorm averages they were saved with
(what the loop reported), and with every BatchNorm's statistics recomputed over the first ``--batches``
training batches (``seqzoo.train.objectives.recompute_bn_stats``; what ``train.bn_stats_batches`` does before
each evaluation of a run that sets it, and so what its summary's ``final_test_acc`` would be). Runs from
before ``train.bn_stats_batches`` existed (gla's and vig's Pathfinder runs of issue 29) get their
precise-statistics scores here.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqzoo import SequenceClassifier  # noqa: E402
from seqzoo.eval.lra import load_task  # noqa: E402
from seqzoo.train.batches import ClassificationData  # noqa: E402
from seqzoo.train.config import load_config  # noqa: E402
from seqzoo.train.objectives import classifier_accuracy, recompute_bn_stats  # noqa: E402


def score(run: Path, batches: int) -> dict:
    config = load_config(str(run / "config.yaml"))
    d = config.data
    where = ROOT / d.data_dir if d.data_dir else None  # as the loop reads it, from the repository root
    lra = load_task(d.name, where, d.generate, **d.task_args)
    data = ClassificationData(lra.train, lra.val, lra.test, lra.vocab_size, lra.n_classes, lra.pairs)
    model = SequenceClassifier.load(run / "model")
    bs, out = config.train.batch_size, {"run": str(run), "name": config.name}
    for how in ("running averages", f"recomputed over {batches} training batches"):
        if how != "running averages":
            recompute_bn_stats(model, data.batches(data.train, bs, batches * bs), "cpu", nullcontext)
        val = classifier_accuracy(model, data.batches(data.val, bs), "cpu", nullcontext)
        test = classifier_accuracy(model, data.batches(data.test, bs), "cpu", nullcontext)
        out[how] = {
            "val_acc": val["acc"],
            "val_loss": val["loss"],
            "test_acc": test["acc"],
            "n_test": test["n"],
        }
        print(
            f"{config.name}: BatchNorm statistics {how}: validation {val['acc']:.4f} (n {val['n']}), "
            f"test {test['acc']:.4f} (n {test['n']})",
            flush=True,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = [score(run, args.batches) for run in args.runs]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
