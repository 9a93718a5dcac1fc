"""``seqzoo demo``: a quick comparison of mixers on built-in data, on CPU.

Trains one tiny byte-level language model per mixer on the Python standard library's sources (no
download), with the same data, steps and optimiser, and prints validation loss before and after, in bits
per byte next to the data's unigram entropy (what a model without context reaches). The loss falling far
below that line is the model learning from context.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm.auto import tqdm

from seqzoo import CausalLM, LMConfig
from seqzoo.train.data import builtin_corpus, random_windows, unigram_entropy_bits

DEFAULT_MIXERS = ["attention", "sliding_window", "short_conv", "hybrid"]
# Named presets beyond the registry: a hybrid is a list of mixers.
PRESETS = {"hybrid": ["short_conv", "attention"]}
MIXER_KWARGS = {"attention": {"n_heads": 2}, "sliding_window": {"n_heads": 2, "window": 32}}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mixers", nargs="+", default=DEFAULT_MIXERS, help="mixer names (or 'hybrid')")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=8)


def _mixer_spec(name: str):
    names = PRESETS.get(name, [name])
    return [{"name": n, **MIXER_KWARGS.get(n, {})} for n in names]


@torch.no_grad()
def _val_loss(model, val, args, seed=1234):
    g = torch.Generator().manual_seed(seed)  # the same validation windows for every model
    model.eval()
    losses = []
    for _ in range(args.eval_batches):
        x, y = random_windows(val, args.batch_size, args.seq_len, g)
        losses.append(model.loss(model(x), y).item())
    model.train()
    return sum(losses) / len(losses)


def train_one(name, train, val, args):
    torch.manual_seed(args.seed)
    config = LMConfig(vocab_size=256, d_model=args.d_model, n_layers=args.n_layers, mixer=_mixer_spec(name))
    model = CausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    g = torch.Generator().manual_seed(args.seed)
    before = _val_loss(model, val, args)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"{name:>14}", leave=False, dynamic_ncols=True)
    for step in bar:
        x, y = random_windows(train, args.batch_size, args.seq_len, g)
        loss = model.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    after = _val_loss(model, val, args)
    tokens = args.steps * args.batch_size * args.seq_len
    return {
        "mixer": name,
        "params": model.num_parameters(),
        "before": before,
        "after": after,
        "tok_s": tokens / seconds,
        "state": model.state_size(args.seq_len),
    }


def main(args) -> int:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    train, val = builtin_corpus(max_bytes=2_000_000)
    entropy = unigram_entropy_bits(val)
    print(f"built-in corpus: {train.numel():,} train bytes, {val.numel():,} validation bytes (stdlib sources)")
    print(f"unigram entropy of the validation bytes: {entropy:.3f} bits/byte")
    print(f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens, d_model={args.d_model}, {args.n_layers} layers\n")
    rows = [train_one(name, train, val, args) for name in tqdm(args.mixers, desc="mixers", dynamic_ncols=True)]
    bits = 1 / math.log(2)
    header = f"| {'mixer':<14} | {'params':>8} | {'val bits/byte before':>20} | {'after':>6} | {'tokens/s':>9} | {'state @T':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['mixer']:<14} | {r['params']:>8,} | {r['before'] * bits:>20.3f} | {r['after'] * bits:>6.3f} "
            f"| {r['tok_s']:>9,.0f} | {r['state']:>9,} |"
        )
    print(f"\nunigram entropy: {entropy:.3f} bits/byte; lower is better; 'state @T' = numbers held per sequence "
          f"to decode at T={args.seq_len}")
    return 0
