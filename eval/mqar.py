"""``seqzoo mqar SWEEP.yaml``: the Zoology comparison: MQAR accuracy for every mixer on the same data.

A sweep is mixers x d_model x (seq_len, num_kv_pairs) x learning rates. Every run trains through the one
recipe (``seqzoo.train``): by default 2 layers, no MLP, AdamW with weight decay 0.1, cosine schedule, early
stop at 0.99 validation accuracy. A *cell* is (mixer, d_model, seq_len, num_kv_pairs); its result is the
best learning rate's accuracy. Outputs in the sweep folder:

- ``results.csv``: every run (one row per learning rate);
- ``results.md``: the best accuracy per cell, a table per setting;
- ``mqar.png``: accuracy vs d_model, a line per mixer, a panel per (seq_len, num_kv_pairs) (Zoology fig. 2);
- ``mqar_state.png``: accuracy vs decoding state size (numbers per sequence, from ``state_size``).

Runs go to parallel processes when cores allow (``workers``); a finished run leaves ``summary.json`` in its
folder and is skipped when the sweep is started again, so an interrupted sweep resumes where it stopped.

Sweep YAML:

    name: mqar-cpu
    mixers: [attention, short_conv, {name: sliding_window, window: 16}]   # names or dicts with kwargs
    d_models: [32, 64]
    settings: [{seq_len: 64, num_kv_pairs: 4}]
    lrs: [1.0e-3, 3.0e-3]
    task: {vocab_size: 8192, num_train: 100000, num_test: 3000}          # mqar task_args
    model: {n_layers: 2, mlp: none}                                       # base model section
    optim: {weight_decay: 0.1}                                            # base optim section
    train: {steps: 2000, batch_size: 64, eval_every: 100, early_stop_acc: 0.99}
    workers: auto                                                         # or an int
    out_dir: runs/mqar/{name}
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

CONFIG_DIR = Path(__file__).parent / "configs"

# Settings that suit MQAR's small models (one attention head, windows shorter than the context); used for
# mixers named without kwargs, and for every mixer when a sweep says ``mixers: all``.
DEFAULT_MIXER_KWARGS: dict[str, dict[str, Any]] = {
    "attention": {"n_heads": 1},
    "sliding_window": {"n_heads": 1, "window": 16},
    # S4 sets its kernel length l_max to the task's length; 64 is the shortest MQAR length here, and a longer
    # sequence doubles it (the layer re-derives its kernel for 128, 256, ...). The layer's default, 1024, would
    # make every MQAR step compute a kernel 16 times longer than the sequence.
    "s4": {"l_max": 64},
}


# Registered names that build the same layer as another name (compared once).
ALIASES = {"hawk"}


def all_mixers() -> list[str]:
    """Every registered mixer, aliases aside."""
    import seqzoo

    return [name for name in seqzoo.list_mixers() if name not in ALIASES]


class Setting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq_len: int = Field(ge=4)
    num_kv_pairs: int = Field(ge=1)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "mqar"
    task_name: str = "mqar"
    mixers: list[str | dict[str, Any]] | str = Field(description="mixer names / dicts with kwargs, or 'all'")
    d_models: list[int] = Field(min_length=1)
    settings: list[Setting] = Field(min_length=1)
    lrs: list[float] = Field(min_length=1)
    task: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=lambda: {"n_layers": 2, "mlp": "none"})
    optim: dict[str, Any] = Field(default_factory=lambda: {"weight_decay": 0.1, "schedule": "cosine"})
    train: dict[str, Any] = Field(default_factory=dict)
    workers: int | str = "auto"
    threads_per_worker: int | None = None
    out_dir: str = "runs/mqar/{name}"
    seed: int = 0

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


def mixer_spec(entry) -> list[dict]:
    """The model.mixer value: a list (a pattern), with each layer's kwargs."""
    if isinstance(entry, str):
        return [{"name": entry, **DEFAULT_MIXER_KWARGS.get(entry, {})}]
    if isinstance(entry, dict) and "pattern" in entry:
        return [e if isinstance(e, dict) else {"name": e} for e in entry["pattern"]]
    return [{**DEFAULT_MIXER_KWARGS.get(entry["name"], {}), **entry}]


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
    for entry in sweep.mixer_entries():
        for d_model in sweep.d_models:
            for s in sweep.settings:
                for lr in sweep.lrs:
                    label = mixer_label(entry)
                    key = f"{label}-d{d_model}-T{s.seq_len}-kv{s.num_kv_pairs}-lr{lr:g}"
                    key = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
                    config = {
                        "name": key,
                        "model": {**sweep.model, "d_model": d_model, "mixer": mixer_spec(entry)},
                        "data": {
                            "source": "task",
                            "name": sweep.task_name,
                            "task_args": {**sweep.task, "seq_len": s.seq_len, "num_kv_pairs": s.num_kv_pairs},
                        },
                        "optim": {**sweep.optim, "lr": lr},
                        "train": {
                            "early_stop_acc": 0.99,
                            **sweep.train,
                            "seed": sweep.seed,
                            "device": sweep.train.get("device", "cpu"),
                            "out_dir": str(out / "runs" / "{name}"),
                        },
                        "log": {"progress": False, "tensorboard": False, "plot": False, "every": 50},
                    }
                    runs.append(
                        {
                            "key": key,
                            "mixer": label,
                            "d_model": d_model,
                            "seq_len": s.seq_len,
                            "num_kv_pairs": s.num_kv_pairs,
                            "lr": lr,
                            "config": config,
                            "dir": out / "runs" / key,
                        }
                    )
    return runs


def _run_one(config: dict, threads: int) -> dict:
    """Worker: train one run through the recipe (in its own process), quietly."""
    import contextlib
    import io

    import torch

    torch.set_num_threads(threads)
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    config = {**config, "train": {**config["train"], "threads": threads}}
    with contextlib.redirect_stdout(io.StringIO()):
        return train(load_config(config))


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
    todo = [r for r in runs if not (r["dir"] / "summary.json").is_file()]
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
                _finish(r, _run_one, (r["config"], threads), bar, failures)
        else:
            ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_one, r["config"], threads): r for r in todo}
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
        path = r["dir"] / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
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
    best = best_per_cell(rows)
    settings = sorted({(r["seq_len"], r["num_kv_pairs"]) for r in best})
    d_models = sorted({r["d_model"] for r in best})
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    lines = []
    for seq_len, kv in settings:
        lines.append(f"\n**seq_len {seq_len}, {kv} key-value pairs** (best accuracy over learning rates)\n")
        lines.append("| mixer | " + " | ".join(f"d={d}" for d in d_models) + " | state @T (largest d) |")
        lines.append("|---|" + "---|" * len(d_models) + "---|")
        for m in mixers:
            cells, state = [], ""
            for d in d_models:
                hit = [
                    r
                    for r in best
                    if (r["mixer"], r["d_model"], r["seq_len"], r["num_kv_pairs"]) == (m, d, seq_len, kv)
                ]
                cells.append(f"{hit[0]['accuracy']:.3f}" if hit else "–")
                if hit:
                    state = f"{hit[0]['state_size']:,}"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {state} |")
    return "\n".join(lines).strip() + "\n"


def write_outputs(out: Path, rows: list[dict], sweep: SweepConfig) -> None:
    if not rows:
        return
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(f"# {sweep.name}\n\n" + markdown_table(rows))
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
    print(
        f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'mqar.png'}, {out / 'mqar_state.png'}"
    )
    return 0
