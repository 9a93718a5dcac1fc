"""Packed vs padded training throughput on a realistic mix of document lengths (``seqzoo bench --packing``).

    seqzoo bench --packing                              # one mixer per family, the committed CPU figures
    seqzoo bench --packing gla mamba --tokens 4096 --repeats 3

For each mixer a small causal LM (its paper's settings, d_model 128, 2 layers, its record's MLP) takes one
training step's forward and backward (cross-entropy, every real token scored) on the same documents, three ways:

- ``padded``: a batch of the documents, each padded to the longest (the padding computed, its loss masked);
- ``bucketed``: the documents sorted by length in batches of BUCKET, each padded to its own longest (padding done
  well: less of it, more calls);
- ``packed``: the documents in one row with ``cu_seqlens`` (each computed alone: what ``data.pack`` trains);
- ``row``: the same row without boundaries (documents leak into each other: the cost of packing exactly).

Document lengths are drawn from a log-normal (median 256 tokens, sigma 1, clipped to [16, 2048]): many short
documents and a few long ones, as web text and code files have. The time is the median of ``--repeats`` runs
after a warm-up, on one thread (CPU timings on a shared machine swing; one thread keeps the ratios steady), with
the spread (min-max); throughput is real tokens per second. Each row also records how the ops ran packed
(``native``: one pass; ``per-sequence``: one call per document), the backends, and the padding fraction.

Benchmarks measure; tests assert: nothing here decides whether a test passes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench_report import run_metadata

MEDIAN_LENGTH, SIGMA, MIN_LENGTH, MAX_LENGTH = 256, 1.0, 16, 2048
D_MODEL, N_LAYERS, VOCAB = 128, 2, 256
MODES = ("padded", "bucketed", "packed", "row")
BUCKET = 4  # documents per batch of the bucketed mode


def document_lengths(tokens: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (median MEDIAN_LENGTH, clipped to [MIN_LENGTH, MAX_LENGTH]) adding up to ``tokens``."""
    g = torch.Generator().manual_seed(seed)
    lengths, total = [], 0
    while total < tokens:
        z = torch.randn((), generator=g).item()
        n = int(min(max(MEDIAN_LENGTH * math.exp(SIGMA * z), MIN_LENGTH), MAX_LENGTH))
        n = min(n, tokens - total) if tokens - total >= MIN_LENGTH else n
        lengths.append(n)
        total += n
    return lengths


def _model(mixer: str):
    from seqzoo.models import CausalLM
    from seqzoo.models.config import LMConfig
    from seqzoo.models.mixer_settings import lm_mlp_for, with_paper_settings

    torch.manual_seed(0)
    kwargs = with_paper_settings(mixer, seq_len=MAX_LENGTH)
    return CausalLM(
        LMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, mixer=kwargs, mlp=lm_mlp_for(mixer))
    )


def _step(model, mode: str, docs: list[torch.Tensor]):
    """One forward + backward of ``model`` on ``docs`` the ``mode`` way."""
    from seqzoo.ops._varlen import cu_seqlens_from_lengths

    lengths = [d.numel() for d in docs]
    if mode == "bucketed":
        ordered = sorted(docs, key=len)
        for i in range(0, len(ordered), BUCKET):
            _step(model, "padded", ordered[i : i + BUCKET])
        return
    if mode == "padded":
        longest = max(lengths)
        ids = torch.zeros(len(docs), longest, dtype=torch.long)
        labels = torch.full((len(docs), longest), -100, dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, : d.numel()] = d
            labels[i, : d.numel() - 1] = d[1:]
        logits = model(ids)
    else:
        ids = torch.cat(docs)[None]
        labels = torch.cat([torch.cat([d[1:], d.new_full((1,), -100)]) for d in docs])[None]
        logits = model(ids, cu_seqlens=cu_seqlens_from_lengths(lengths) if mode == "packed" else None)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    loss.backward()
    model.zero_grad(set_to_none=True)


def _how_ops_ran() -> dict[str, str]:
    from seqzoo import ops

    return {
        name: f"{op.last_backend} ({op.last_packing})"
        for name, op in ops.list_ops().items()
        if op.last_packing is not None
    }


def bench_mixer(mixer: str, docs: list[torch.Tensor], repeats: int, warmup: int = 1) -> list[dict]:
    from seqzoo import ops
    from seqzoo.layers.base import takes_cu_seqlens

    model = _model(mixer)
    real = sum(d.numel() for d in docs)
    rows = []
    for mode in MODES:
        for op in ops.list_ops().values():
            op.last_packing = None
        try:
            for _ in range(warmup):
                _step(model, mode, docs)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _step(model, mode, docs)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # a mixer that fails one way is reported, the others still run
            rows.append(
                {"mixer": mixer, "mode": mode, "status": "error", "error": f"{type(e).__name__}: {e}"}
            )
            continue
        median = statistics.median(times)
        computed = real
        if mode == "padded":
            computed = len(docs) * max(d.numel() for d in docs)
        elif mode == "bucketed":
            ordered = sorted(d.numel() for d in docs)
            computed = sum(
                len(ordered[i : i + BUCKET]) * ordered[i : i + BUCKET][-1]
                for i in range(0, len(ordered), BUCKET)
            )
        rows.append(
            {
                "mixer": mixer,
                "mode": mode,
                "status": "ok",
                "ms": 1000 * median,
                "ms_min": 1000 * min(times),
                "ms_max": 1000 * max(times),
                "real_tokens": real,
                "computed_tokens": computed,
                "tokens_per_s": real / median,
                "ops": _how_ops_ran() if mode == "packed" else {},
                # A mixer without cu_seqlens runs once per document inside the backbone.
                "per_document_mixers": [
                    b.mixer.mixer_name for b in model.backbone.blocks if not takes_cu_seqlens(b.mixer)
                ]
                if mode == "packed"
                else [],
            }
        )
    return rows


def format_markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Packed vs padded training throughput (CPU)",
        "",
        f"`{results['command']}` on {meta['device']['name']}, torch {meta['torch']}, "
        f"{results['threads']} thread, {meta['date']}, commit {(meta['commit'] or 'unknown')[:12]}{' (dirty)' if meta['dirty'] else ''}.",
        "",
        f"One forward + backward of a causal LM (d_model {D_MODEL}, {N_LAYERS} layers, each mixer's paper "
        f"settings and LM MLP, vocab {VOCAB}, fp32) on {results['n_documents']} documents, "
        f"{results['real_tokens']} real tokens (log-normal lengths: median {MEDIAN_LENGTH}, sigma {SIGMA}, "
        f"[{MIN_LENGTH}, {MAX_LENGTH}]; longest {results['longest']}). padded: a batch padded to the longest "
        f"document ({results['padding_fraction']:.0%} of its positions are padding); bucketed: sorted by length in "
        f"batches of {BUCKET}, each padded to its longest ({results['bucketed_padding_fraction']:.0%}); packed: one row with "
        "cu_seqlens (each document alone, exact); row: one row without boundaries (documents leak; for scale). "
        f"Median of {results['repeats']} runs [min-max], real tokens per second.",
        "",
        "| mixer | padded tok/s | bucketed tok/s | packed tok/s | row tok/s | packed / padded | packed / bucketed "
        "| how the ops ran packed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {}
    for r in results["rows"]:
        by.setdefault(r["mixer"], {})[r["mode"]] = r

    def cell(r):
        if r is None or r["status"] != "ok":
            return "error" if r else "-"
        lo, hi = r["real_tokens"] / (r["ms_max"] / 1000), r["real_tokens"] / (r["ms_min"] / 1000)
        return f"{r['tokens_per_s']:,.0f} [{lo:,.0f}-{hi:,.0f}]"

    def ratio(a, b):
        ok = a and b and a["status"] == b["status"] == "ok"
        return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x" if ok else "-"

    for mixer, modes in by.items():
        pad, bucket, packed = modes.get("padded"), modes.get("bucketed"), modes.get("packed")
        how = ", ".join(f"{k}: {v}" for k, v in (packed or {}).get("ops", {}).items())
        if packed and packed.get("per_document_mixers"):
            how = "the mixer once per document (it takes no cu_seqlens)" + (f"; {how}" if how else "")
        lines.append(
            f"| {mixer} | {cell(pad)} | {cell(bucket)} | {cell(packed)} | {cell(modes.get('row'))} "
            f"| {ratio(packed, pad)} | {ratio(packed, bucket)} | {how} |"
        )
    errors = [r for r in results["rows"] if r["status"] == "error"]
    for r in errors:
        lines.append(f"\n{r['mixer']} {r['mode']}: {r['error']}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from .demo import demo_mqar_mixers

    torch.set_num_threads(args.threads)
    mixers = args.ops or demo_mqar_mixers()
    lengths = document_lengths(args.tokens, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed)
    docs = [torch.randint(1, VOCAB, (n,), generator=g) for n in lengths]
    longest = max(lengths)
    rows = []
    try:
        from tqdm import tqdm

        bar = tqdm(mixers, desc="packing bench", unit="mixer")
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = mixers
    for mixer in bar:
        rows.extend(bench_mixer(mixer, docs, args.repeats))
    results = {
        "meta": run_metadata(torch.device("cpu"), torch.float32),
        "command": "seqzoo bench --packing" + (f" {' '.join(args.ops)}" if args.ops else ""),
        "threads": args.threads,
        "repeats": args.repeats,
        "n_documents": len(lengths),
        "lengths": lengths,
        "real_tokens": sum(lengths),
        "longest": longest,
        "padding_fraction": 1 - sum(lengths) / (len(lengths) * longest),
        "bucketed_padding_fraction": 1
        - sum(lengths)
        / sum(
            len(b) * b[-1] for b in (sorted(lengths)[i : i + BUCKET] for i in range(0, len(lengths), BUCKET))
        ),
        "rows": rows,
    }
    text = format_markdown(results)
    print(text)
    out = Path(args.out) if args.out else Path("bench_results") / "packing-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``seqzoo bench``'s options for ``--packing`` (the mixers are its positional names, --repeats and --out
    are the bench's)."""
    parser.add_argument(
        "--packing",
        action="store_true",
        help="packed vs padded LM training throughput per mixer (NAMES are mixers; default one per family)",
    )
    parser.add_argument("--tokens", type=int, default=8192, help="--packing: real tokens per step")
    parser.add_argument("--threads", type=int, default=1, help="--packing: torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="--packing: seed of the document lengths")


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="seqzoo bench --packing")
    p.add_argument("ops", nargs="*")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    add_arguments(p)
    sys.exit(run(p.parse_args()))
