"""Train a tiny language model through the recipe, then score it with lm-eval-harness, offline.

Run it:  python examples/lm_eval_run.py         (needs the eval extra: pip install -e ".[eval]")

The same from the command line:
    seqzoo train tiny-gla train.steps=600
    seqzoo eval runs/tiny-gla --tasks seqzoo_stdlib,seqzoo_stdlib_ppl
A few steps and 20 questions here, so the accuracy stays near chance (25%); the README's table has
trained figures.
"""

import tempfile

from seqzoo.eval.harness.command import format_table, run_eval
from seqzoo.train.config import load_config
from seqzoo.train.loop import train

with tempfile.TemporaryDirectory() as out:
    config = load_config(
        "tiny-gla",
        [
            "train.steps=20",
            "train.eval_every=20",
            "train.eval_batches=2",
            "data.max_bytes=200000",
            f"train.out_dir={out}",
            "log.progress=false",
            "log.tensorboard=false",
            "log.plot=false",
        ],
    )
    train(config)
    # `eval: {tasks: [...]}` in the config would do this at the end of train(); here it is spelled out.
    results = run_eval(out, "seqzoo_stdlib", limit=20)
    print(format_table(results))
    print("accuracy:", results["results"]["seqzoo_stdlib"]["acc,none"])
