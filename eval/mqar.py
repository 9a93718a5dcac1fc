"""``seqzoo mqar SWEEP.yaml``: the Zoology comparison: MQAR accuracy for every mixer on the same data.

A sweep is mixers x d_model x (seq_len, num_kv_pairs) x learning rates. Every run trains through the one
recipe (``seqzoo.train``). A *cell* is (mixer, d_model, seq_len, num_kv_pairs); its result is the best
learning rate's accuracy. What a run trains:

- each mixer with its paper's settings (its record, ``seqzoo.models.mixer_settings``: short convolutions for the
  linear-attention family, S4's kernel length = the task's, ...), then the sweep's ``mixer_kwargs`` for
  that mixer (the task's knobs, such as a sliding window), then the entry's own kwargs;
- a *protocol* (``PROTOCOLS``): ``seqzoo`` (this library's recipe, the default) or ``zoology`` (Zoology's
  own model and optimiser, to put curves beside the paper's), under the sweep's ``model`` / ``optim``.

Outputs in the sweep folder:

- ``results.csv``: every run (one row per learning rate);
- ``results.md``: the best accuracy per cell (a row per mixer, a column per cell), with the protocol named;
- ``mqar.png``: accuracy vs d_model, a line per mixer, a panel per (seq_len, num_kv_pairs) (Zoology fig. 2);
- ``mqar_state.png``: accuracy vs decoding state size (numbers per sequence, from ``state_size``).

Runs go to parallel processes when cores allow (``workers``). A run's folder name ends in the hash of its
whole resolved config, and a finished run (``summary.json``, plus that hash in ``config.sha256``) is reused
only when the hash matches: an interrupted sweep resumes where it stopped, and a changed config trains anew
instead of silently reusing an old result.

Sweep YAML:

    name: mqar-cpu
    mixers: [attention, short_conv, {name: gla, n_heads: 2}]   # names, dicts with kwargs, or 'all'
    mixer_kwargs: {sliding_window: {window: 16}}              # the task's knobs, by mixer name
    protocol: seqzoo                                          # or zoology
    d_models: [32, 64]
    settings: [{seq_len: 64, num_kv_pairs: 4}]                # optional batch_size / steps per setting
    lrs: [1.0e-3, 3.0e-3]
    mixer_lrs: {attention: [1.0e-3]}                          # a mixer's own learning rates, instead
                                                              # (record: each mixer's record's mqar_lr)
    task: {vocab_size: 8192, num_train: 100000, num_test: 3000}          # mqar task_args
    model: {n_layers: 2, mlp: none}                                       # over the protocol's model section
    optim: {weight_decay: 0.1}                                            # over the protocol's optim section
    train: {steps: 2000, batch_size: 64, eval_every: 100, early_stop_acc: 0.99}
    workers: auto                                                         # or an int
    out_dir: runs/mqar/{name}
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from seqzoo.models.mixer_settings import with_paper_settings

CONFIG_DIR = Path(__file__).parent / "configs"

# How a run trains, beneath the sweep's own model / optim sections (which override these keys).
#  - seqzoo: this library's recipe: pre-norm RMSNorm blocks, RoPE attention, AdamW (0.9, 0.95) with weight
#    decay on matrices only, warmup, gradient clipping, cosine to 10%. Learns MQAR several times faster.
#  - zoology: Zoology's own model and optimiser (zoology/model.py, zoology/train.py), so curves can be put
#    beside the paper's: LayerNorm blocks whose second branch adds a normalised copy of the residual, learned
#    absolute positions (attention without RoPE, with biases), embedding dropout 0.1, output projections
#    initialised with std 0.02 / sqrt(2 n_layers), AdamW (0.9, 0.999) with weight decay 0.1 on every
#    parameter, no clipping, no warmup, cosine to 0. Not reproduced: Zoology's attention-probability
#    dropout (0.1 in its MHA; ops.attention has no dropout).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "seqzoo": {
        "model": {"n_layers": 2, "mlp": "none"},
        "optim": {"weight_decay": 0.1, "schedule": "cosine"},
        "mixer_kwargs": {},
    },
    "zoology": {
        "model": {"n_layers": 2, "mlp": "none", "block": "zoology", "embed_dropout": 0.1},
        "optim": {
            "weight_decay": 0.1,
            "weight_decay_on": "all",
            "betas": [0.9, 0.999],
            "grad_clip": None,
            "warmup_steps": 0,
            "schedule": "cosine",
            "min_lr_ratio": 0.0,
        },
        "mixer_kwargs": {
            "attention": {"rotary": False, "bias": True},
            "sliding_window": {"rotary": False, "bias": True},
        },
        "learned_positions": True,
    },
}


def all_mixers() -> list[str]:
    """Every registered mixer."""
    import seqzoo

    return list(seqzoo.list_mixers())


def record_lrs(lrs: list[float]) -> dict[str, list[float]]:
    """``mixer_lrs: record``: each mixer at the MQAR learning rate its record states (``mqar_lr``), written
    out only where it differs from ``lrs`` (the same runs, and the protocol line names only the exceptions)."""
    import seqzoo

    return {
        name: [record.mqar_lr]
        for name, record in seqzoo.list_mixers().items()
        if record.mqar_lr is not None and [record.mqar_lr] != list(lrs)
    }


class Setting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(ge=4)
    num_kv_pairs: int = Field(ge=1)
    # Per-setting training overrides (Zoology halves the batch as the sequence doubles).
    batch_size: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "mqar"
    task_name: str = "mqar"
    mixers: list[str | dict[str, Any]] | str = Field(description="mixer names / dicts with kwargs, or 'all'")
    d_models: list[int] = Field(min_length=1)
    settings: list[Setting] = Field(min_length=1)
    lrs: list[float] = Field(min_length=1)
    mixer_lrs: dict[str, list[float]] | Literal["record"] = Field(
        default_factory=dict,
        description="learning rates by mixer name, instead of lrs for that mixer; record: each mixer's "
        "record's mqar_lr",
    )
    task: dict[str, Any] = Field(default_factory=dict)
    protocol: Literal["seqzoo", "zoology"] = Field(
        "seqzoo", description="how runs train: this library's recipe, or Zoology's model and optimiser"
    )
    mixer_settings: Literal["paper", "none"] = Field(
        "paper", description="paper: each mixer as seqzoo.models.mixer_settings says; none: layer defaults"
    )
    mixer_kwargs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="the task's knobs by mixer name, e.g. {sliding_window: {window: 16}}",
    )
    model: dict[str, Any] = Field(default_factory=dict, description="over the protocol's model section")
    optim: dict[str, Any] = Field(default_factory=dict, description="over the protocol's optim section")
    train: dict[str, Any] = Field(default_factory=dict)
    workers: int | str = "auto"
    threads_per_worker: int | None = None
    out_dir: str = "runs/mqar/{name}"
    seed: int = 0

    @model_validator(mode="after")
    def _record_lrs(self):
        if self.mixer_lrs == "record":
            self.mixer_lrs = record_lrs(self.lrs)
        return self

    def mixer_entries(self) -> list:
        if isinstance(self.mixers, str):
            if self.mixers != "all":
                raise ValueError(f"mixers: give a list of mixers or 'all', got {self.mixers!r}")
            return all_mixers()
        if not self.mixers:
            raise ValueError("mixers: the list is empty")
        return self.mixers


def mixer_label(entry) -> str:
    if isinstance(entry, str):
        return entry
    extra = ",".join(f"{k}={v}" for k, v in sorted(entry.items()) if k != "name")
    return f"{entry['name']}({extra})" if extra else entry["name"]


def mixer_spec(entry, sweep: SweepConfig, seq_len: int) -> list[dict]:
    """The model.mixer value of one run: a list (a pattern) of explicit entries. Each layer gets, in order of
    precedence: the entry's own kwargs, the sweep's ``mixer_kwargs`` for that mixer, the protocol's, and the
    per-mixer settings table (``seqzoo.models.mixer_settings``, the papers' settings)."""
    if isinstance(entry, dict) and "pattern" in entry:
        layers = [e if isinstance(e, dict) else {"name": e} for e in entry["pattern"]]
    else:
        layers = [entry if isinstance(entry, dict) else {"name": entry}]
    protocol = PROTOCOLS[sweep.protocol]["mixer_kwargs"]
    out = []
    for layer in layers:
        name = layer["name"]
        spec = {"name": name, **protocol.get(name, {}), **sweep.mixer_kwargs.get(name, {}), **layer}
        out.append(with_paper_settings(spec, seq_len) if sweep.mixer_settings == "paper" else spec)
    return out


def config_hash(config: dict) -> str:
    """sha256 of everything that decides a run's result (not where it is written or how it logs)."""
    relevant = {
        "model": config["model"],
        "data": config["data"],
        "optim": config["optim"],
        "train": {k: v for k, v in config["train"].items() if k != "out_dir"},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


HASH_FILE = "config.sha256"


def is_finished(run: dict) -> bool:
    """A run is reused only when it finished (summary.json) with exactly this config (its hash)."""
    d = run["dir"]
    return (
        (d / "summary.json").is_file()
        and (d / HASH_FILE).is_file()
        and ((d / HASH_FILE).read_text().strip() == run["hash"])
    )


def load_sweep(path_or_name: str | Path, overrides=()) -> SweepConfig:
    path = Path(path_or_name)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{path_or_name}.yaml"
        if not shipped.is_file():
            names = sorted(p.stem for p in CONFIG_DIR.glob("mqar*.yaml"))
            raise ValueError(f"no sweep config {str(path_or_name)!r}; shipped: {names}")
        path = shipped
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    from seqzoo.train.config import apply_override

    for o in overrides:
        apply_override(raw, o)
    try:
        return SweepConfig(**raw)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(map(str, x['loc']))}: {'unknown key' if x['type'] == 'extra_forbidden' else x['msg']}"
            for x in e.errors()
        ]
        raise ValueError("invalid sweep config:\n" + "\n".join(lines)) from None


def plan_runs(sweep: SweepConfig) -> list[dict]:
    """One dict per run: its key (folder name), cell coordinates, and its recipe config."""
    runs = []
    out = Path(sweep.out_dir.format(name=sweep.name))
    protocol = PROTOCOLS[sweep.protocol]
    for entry in sweep.mixer_entries():
        for d_model in sweep.d_models:
            for s in sweep.settings:
                name = entry if isinstance(entry, str) else entry.get("name")  # None for a pattern
                for lr in sweep.mixer_lrs.get(name, sweep.lrs):
                    label = mixer_label(entry)
                    model = {
                        **protocol["model"],
                        **sweep.model,
                        "d_model": d_model,
                        "mixer": mixer_spec(entry, sweep, s.seq_len),
                        "mixer_settings": sweep.mixer_settings,
                    }
                    # Zoology gives learned positions to attention, which it runs without RoPE.
                    if protocol.get("learned_positions") and any(
                        m["name"] in ("attention", "sliding_window") for m in model["mixer"]
                    ):
                        model.setdefault("position_embeddings", s.seq_len)
                    config = {
                        "name": "",
                        "model": model,
                        "data": {
                            "source": "task",
                            "name": sweep.task_name,
                            "task_args": {**sweep.task, "seq_len": s.seq_len, "num_kv_pairs": s.num_kv_pairs},
                        },
                        "optim": {**protocol["optim"], **sweep.optim, "lr": lr},
                        "train": {
                            "early_stop_acc": 0.99,
                            **sweep.train,
                            **({"batch_size": s.batch_size} if s.batch_size else {}),
                            **({"steps": s.steps} if s.steps else {}),
                            "seed": sweep.seed,
                            "device": sweep.train.get("device", "cpu"),
                            "out_dir": str(out / "runs" / "{name}"),
                        },
                        "log": {"progress": False, "tensorboard": False, "plot": False, "every": 50},
                    }
                    # The folder name carries the config's hash: a changed config is a new run, never a
                    # stale result reused (and the old run's folder is left as it was).
                    digest = config_hash(config)
                    key = f"{label}-d{d_model}-T{s.seq_len}-kv{s.num_kv_pairs}-lr{lr:g}-{digest[:8]}"
                    key = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
                    config["name"] = key
                    runs.append(
                        {
                            "key": key,
                            "mixer": label,
                            "d_model": d_model,
                            "seq_len": s.seq_len,
                            "num_kv_pairs": s.num_kv_pairs,
                            "lr": lr,
                            "config": config,
                            "hash": digest,
                            "dir": out / "runs" / key,
                        }
                    )
    return runs


def _run_one(config: dict, digest: str, threads: int) -> dict:
    """Worker: train one run through the recipe (in its own process), quietly; then record its hash."""
    import contextlib
    import io

    import torch

    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    before = torch.get_num_threads()  # with one worker this runs in the caller's process: leave it as found
    run_config = load_config({**config, "train": {**config["train"], "threads": threads}})
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(run_config)
    finally:
        torch.set_num_threads(before)
    (run_config.out_path() / HASH_FILE).write_text(digest + "\n")
    return summary


def resolve_workers(sweep: SweepConfig, n_runs: int) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    workers = max(1, cores // 2) if sweep.workers == "auto" else int(sweep.workers)
    workers = max(1, min(workers, n_runs))
    threads = sweep.threads_per_worker or max(1, cores // workers)
    return workers, threads


def run_sweep(sweep: SweepConfig, progress: bool = True) -> list[dict]:
    out = Path(sweep.out_dir.format(name=sweep.name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    runs = plan_runs(sweep)
    todo = [r for r in runs if not is_finished(r)]
    done = len(runs) - len(todo)
    workers, threads = resolve_workers(sweep, max(1, len(todo)))
    print(
        f"{sweep.name}: {len(runs)} runs ({done} already finished), {workers} worker(s) x {threads} thread(s)"
    )
    bar = tqdm(total=len(runs), initial=done, desc="mqar runs", disable=not progress, dynamic_ncols=True)
    failures = []
    if todo:
        if workers == 1:
            for r in todo:
                _finish(r, _run_one, (r["config"], r["hash"], threads), bar, failures)
        else:
            ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_one, r["config"], r["hash"], threads): r for r in todo}
                for fut in cf.as_completed(futures):
                    _finish(futures[fut], fut.result, (), bar, failures)
    bar.close()
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
    rows = collect(runs)
    write_outputs(out, rows, sweep)
    return rows


def _finish(run, fn, args, bar, failures):
    try:
        summary = fn(*args)
        bar.set_postfix(
            last=f"{run['mixer']} d{run['d_model']} acc {summary.get('val_acc', float('nan')):.2f}"
        )
    except Exception as e:  # one broken run must not sink the sweep: it is reported and left unfinished
        failures.append(f"{run['key']}: {type(e).__name__}: {e}")
    bar.update(1)


def collect(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        if not is_finished(r):
            continue
        s = json.loads((r["dir"] / "summary.json").read_text())
        rows.append(
            {
                "mixer": r["mixer"],
                "d_model": r["d_model"],
                "seq_len": r["seq_len"],
                "num_kv_pairs": r["num_kv_pairs"],
                "lr": r["lr"],
                "accuracy": s.get("val_acc"),
                "val_loss": s.get("val_loss"),
                "steps": s.get("steps"),
                "state_size": s.get("state_size"),
                "parameters": s.get("parameters"),
                "wall_time_s": s.get("wall_time_s"),
            }
        )
    return rows


def best_per_cell(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["mixer"], r["d_model"], r["seq_len"], r["num_kv_pairs"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    return list(best.values())


def markdown_table(rows: list[dict]) -> str:
    """One row per mixer, one column per cell (setting x d_model): the best accuracy over learning rates, and
    the decoding state (numbers per sequence) at the longest setting and the largest width."""
    best = {(r["mixer"], r["d_model"], r["seq_len"], r["num_kv_pairs"]): r for r in best_per_cell(rows)}
    cells = sorted({(r["seq_len"], r["num_kv_pairs"], r["d_model"]) for r in rows})
    several_d = len({c[2] for c in cells}) > 1
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    header = [f"T={t}, {kv} pairs" + (f", d={d}" if several_d else "") for t, kv, d in cells]
    last = cells[-1] if cells else None
    lines = [
        "| mixer | " + " | ".join(header) + f" | state (T={last[0]}) |" if last else "| mixer |",
        "|---|" + "---|" * (len(cells) + 1),
    ]
    for m in mixers:
        accs, state = [], ""
        for t, kv, d in cells:
            hit = best.get((m, d, t, kv))
            accs.append(f"{hit['accuracy']:.3f}" if hit else "–")
            if hit and (t, kv, d) == last:
                state = f"{hit['state_size']:,}"
        lines.append(f"| {m} | " + " | ".join(accs) + f" | {state} |")
    return "\n".join(lines) + "\n"


def protocol_line(sweep: SweepConfig) -> str:
    """What the numbers were trained with: a line to print beside every table."""
    t, tr = sweep.task, sweep.train
    filler = "random filler" if t.get("random_non_queries", True) else "zero filler"
    lrs = ", ".join(f"{lr:g}" for lr in sweep.lrs)
    if sweep.mixer_lrs:
        lrs += (
            " ("
            + "; ".join(f"{m}: {', '.join(f'{x:g}' for x in v)}" for m, v in sweep.mixer_lrs.items())
            + ")"
        )
    return (
        f"Protocol: {sweep.protocol} (eval/mqar.py PROTOCOLS), mixers with "
        f"{'their papers' + chr(39) + ' settings' if sweep.mixer_settings == 'paper' else 'layer defaults'}; "
        f"MQAR with vocabulary {t.get('vocab_size', 8192)}, {t.get('num_train', 10000):,} training examples, "
        f"{filler}; up to {tr.get('steps', 1000)} steps of batch {tr.get('batch_size', 16)}"
        f"{' (or as each setting says)' if any(x.steps or x.batch_size for x in sweep.settings) else ''}, lr {lrs}, "
        f"early stop at {tr.get('early_stop_acc', 0.99)} accuracy."
    )


def write_outputs(out: Path, rows: list[dict], sweep: SweepConfig) -> None:
    if not rows:
        return
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(f"# {sweep.name}\n\n{protocol_line(sweep)}\n\n" + markdown_table(rows))
    plot(out, rows)


def plot(out: Path, rows: list[dict]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'seqzoo[eval]')")
        return []
    best = best_per_cell(rows)
    settings = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in best})
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    # One colour and marker per mixer: with more mixers than a palette has colours, markers keep them apart.
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xhp<>"
    style = {m: (colors[i % len(colors)], markers[i % len(markers)]) for i, m in enumerate(mixers)}
    paths = []
    for xkey, xlabel, fname in (
        ("d_model", "model dimension", "mqar.png"),
        ("state_size", "decoding state size (numbers per sequence)", "mqar_state.png"),
    ):
        fig, axes = plt.subplots(
            1, len(settings), figsize=(4.2 * len(settings) + 1.6, 3.6), squeeze=False, sharey=True
        )
        for ax, (seq_len, kv) in zip(axes[0], settings):
            for m in mixers:
                pts = sorted(
                    (r[xkey], r["accuracy"])
                    for r in best
                    if r["mixer"] == m and (r["seq_len"], r["num_kv_pairs"]) == (seq_len, kv)
                )
                if pts:
                    color, marker = style[m]
                    ax.plot(*zip(*pts), "-", marker=marker, color=color, label=m)
            ax.set_xscale("log", base=2)
            ax.set_title(f"seq_len {seq_len}, {kv} KV pairs")
            ax.set_xlabel(xlabel)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("MQAR accuracy")
        # Outside the axes: a dot in the lower right must not hide behind the legend.
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML path or shipped name (mqar-cpu, mqar-zoology-fig2)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. workers=2 train.steps=500")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    try:
        sweep = load_sweep(args.config, args.overrides)
    except ValueError as e:
        print(f"seqzoo mqar: {e}", file=sys.stderr)
        return 2
    rows = run_sweep(sweep, progress=not args.no_progress)
    out = Path(sweep.out_dir.format(name=sweep.name))
    print("\n" + markdown_table(rows) if rows else "no finished runs")
    print(protocol_line(sweep))
    print(
        f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'mqar.png'}, {out / 'mqar_state.png'}"
    )
    return 0
