"""``seqzoo mqar SWEEP.yaml``: the Zoology comparison: MQAR accuracy for every mixer on the same data.

A sweep is mixers x d_model x (seq_len, num_kv_pairs) x learning rates. Every run trains through the one
recipe (``seqzoo.train``). A *cell* is (mixer, d_model, seq_len, num_kv_pairs); its result is the best
learning rate's accuracy. What a run trains:

- each mixer with its paper's settings (its record, ``seqzoo.models.mixer_settings``: short convolutions for the
  linear-attention family, S4's kernel length = the task's, ...), then the sweep's ``mixer_kwargs`` for
  that mixer (the task's knobs, such as a sliding window), then the entry's own kwargs;
- a *protocol* (``PROTOCOLS``): ``seqzoo`` (this library's recipe, the default) or ``zoology`` (Zoology's
  own model and optimiser, to put curves beside the paper's), under the sweep's ``model`` / ``optim``.

Every run is repeated for each of the sweep's ``seeds`` (``seed: N`` is one seed). A cell reports the median
accuracy over its seeds with the range (min-max), at the learning rate whose median is best.

Outputs in the sweep folder:

- ``results.csv``: every run (one row per learning rate and seed);
- ``results.md``: per cell the median accuracy over seeds and its range, ``0.253 [0.126-0.260]`` (a row per
  mixer, a column per cell), with the protocol named;
- ``mqar.png``: median accuracy vs d_model (error bars: the range over seeds), a line per mixer, a panel per
  (seq_len, num_kv_pairs) (Zoology fig. 2);
- ``mqar_state.png``: the same against decoding state size (numbers per sequence, from ``state_size``).

The runs go through the one sweep runner (``seqzoo.eval.sweep``): parallel processes when cores allow
(``workers``); a run's folder name ends in the hash of its whole resolved config, and a finished run is reused
only when that hash matches: an interrupted sweep resumes where it stopped, and a changed config trains anew
instead of silently reusing an old result. The seed is part of the config (and so of the hash).

What is deterministic (measured, ``seqzoo.eval.sweep``'s docstring): on one machine a run is bit-reproducible,
whatever the worker count, and 1 or 2 ``threads_per_worker`` gave the same losses; another CPU's code path
(its instruction set, MKL's kernels) changes the last bits from the first steps on, and over 600 steps that
moved mamba's hard cell from 0.253 to 0.125 (MKL's compatible path forced here). So a table from another
machine matches within the seed ranges, not digit for digit.

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
    seeds: [0, 1, 2]                                                      # or seed: 0 (one seed)
    workers: auto                                                         # or an int
    out_dir: runs/mqar/{name}
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seqzoo.models.mixer_settings import with_paper_settings

from . import sweep as runner
from .sweep import HASH_FILE, config_hash, is_finished  # noqa: F401  (part of this module's API)

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
    """Every registered mixer that can be causal (MQAR trains a causal LM): not an encoder-only one such as
    vig, whose class is bidirectional whatever its arguments."""
    import seqzoo

    return [name for name, record in seqzoo.list_mixers().items() if not record.encoder_only]


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
    seed: int = Field(0, description="one seed; or seeds")
    seeds: list[int] | None = Field(
        None, min_length=1, description="every run once per seed; a cell reports the median over them"
    )

    @model_validator(mode="after")
    def _one_way_to_give_seeds(self):
        if self.seeds is not None:
            if "seed" in self.model_fields_set:
                raise ValueError(f"give seed or seeds, not both (seed={self.seed}, seeds={self.seeds})")
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds: each seed once, got {self.seeds}")
        return self

    def seed_list(self) -> list[int]:
        return self.seeds if self.seeds is not None else [self.seed]

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
            f"  {'.'.join(map(str, x['loc'])) or 'sweep'}: "
            + ("unknown key" if x["type"] == "extra_forbidden" else x["msg"])
            for x in e.errors()
        ]
        raise ValueError("invalid sweep config:\n" + "\n".join(lines)) from None


def learning_rates(sweep: SweepConfig, name: str | None) -> list[float]:
    """The learning rates a mixer runs at: the sweep's ``mixer_lrs`` for it, else ``lrs`` (None: a pattern)."""
    return sweep.mixer_lrs.get(name, sweep.lrs)


def run_config(sweep: SweepConfig, entry, d_model: int, s: Setting, lr: float, seed: int) -> dict:
    """The recipe config of one run (its name and folder filled in by ``plan_runs``)."""
    protocol = PROTOCOLS[sweep.protocol]
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
    return {
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
            "seed": seed,
            "device": sweep.train.get("device", "cpu"),
            "out_dir": "",
        },
        "log": {"progress": False, "tensorboard": False, "plot": False, "every": 50},
    }


def plan_runs(sweep: SweepConfig) -> list[dict]:
    """One dict per run (the runner's planned run, ``seqzoo.eval.sweep``): its key (folder name), cell
    coordinates, learning rate, seed, and its recipe config. A mixer's seeds are planned together, so the
    order of the mixers (slowest first) is the order the workers take them in."""
    runs = []
    out = Path(sweep.out_dir.format(name=sweep.name))
    for entry in sweep.mixer_entries():
        label = mixer_label(entry)
        name = entry if isinstance(entry, str) else entry.get("name")  # None for a pattern
        for d_model in sweep.d_models:
            for s in sweep.settings:
                for lr in learning_rates(sweep, name):
                    for seed in sweep.seed_list():
                        config = run_config(sweep, entry, d_model, s, lr, seed)
                        config["train"]["out_dir"] = str(out / "runs" / "{name}")
                        # The folder name carries the config's hash (and so its seed): a changed config is a
                        # new run, never a stale result reused (and the old run's folder is left as it was).
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
                                "seed": seed,
                                "config": config,
                                "hash": digest,
                                "dir": out / "runs" / key,
                            }
                        )
    return runs


def resolve_workers(sweep: SweepConfig, n_runs: int) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    workers = max(1, cores // 2) if sweep.workers == "auto" else int(sweep.workers)
    workers = max(1, min(workers, n_runs))
    threads = sweep.threads_per_worker or max(1, cores // workers)
    return workers, threads


def run_sweep(sweep: SweepConfig, progress: bool = True) -> runner.SweepRows:
    """Train the sweep's unfinished runs (``seqzoo.eval.sweep``), write its outputs, return the rows (one per
    finished run; ``.failures`` lists the runs that raised)."""
    out = Path(sweep.out_dir.format(name=sweep.name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    runs = plan_runs(sweep)
    todo = sum(not is_finished(r) for r in runs)
    workers, threads = resolve_workers(sweep, max(1, todo))
    seeds = len(sweep.seed_list())
    print(
        f"{sweep.name}: {len(runs)} runs ({seeds} seed{'s' if seeds > 1 else ''} each; {len(runs) - todo} "
        f"already finished), {workers} worker(s) x {threads} thread(s)"
    )
    task = runner.SweepTask(
        desc="mqar runs",
        row=run_row,
        markdown=lambda rows: f"# {sweep.name}\n\n{protocol_line(sweep)}\n\n" + markdown_table(rows),
        plot=plot,
        postfix=lambda r, s: f"{r['mixer']} d{r['d_model']} acc {s.get('val_acc', float('nan')):.2f}",
    )
    return runner.run_sweep(runs, out, task, workers, threads, progress)


def run_row(run: dict, summary: dict) -> dict:
    """A finished run's row of results.csv."""
    return {
        "mixer": run["mixer"],
        "d_model": run["d_model"],
        "seq_len": run["seq_len"],
        "num_kv_pairs": run["num_kv_pairs"],
        "lr": run["lr"],
        "seed": run["seed"],
        "accuracy": summary.get("val_acc"),
        "val_loss": summary.get("val_loss"),
        "steps": summary.get("steps"),
        "state_size": summary.get("state_size"),
        "parameters": summary.get("parameters"),
        "wall_time_s": summary.get("wall_time_s"),
    }


CELL = ("mixer", "d_model", "seq_len", "num_kv_pairs")


def best_per_cell(rows: list[dict]) -> list[dict]:
    """Per cell: the median accuracy over seeds (with ``accuracy_min`` / ``accuracy_max``) at the learning rate
    whose median is best, and that cell's ``state_size``."""
    cells = runner.cell_medians(rows, CELL, "accuracy", choice="lr")
    return [{**c, "state_size": c["runs"][0]["state_size"]} for c in cells]


def markdown_table(rows: list[dict]) -> str:
    """One row per mixer, one column per cell (setting x d_model): the median accuracy over seeds at the best
    learning rate, with its range over seeds (``0.253 [0.126-0.260]``), and the decoding state (numbers per
    sequence) at the longest setting and the largest width."""
    best = {tuple(r[k] for k in CELL): r for r in best_per_cell(rows)}
    seeds = max((c["seeds"] for c in best.values()), default=1)
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
            accs.append(runner.format_median(hit, "accuracy", seeds=seeds) if hit else "–")
            if hit and (t, kv, d) == last:
                state = f"{hit['state_size']:,}"
        lines.append(f"| {m} | " + " | ".join(accs) + f" | {state} |")
    return "\n".join(lines) + "\n"


def protocol_line(sweep: SweepConfig) -> str:
    """What the numbers were trained with: a line to print beside every table."""
    t, tr = sweep.task, sweep.train
    seeds = ", ".join(map(str, sweep.seed_list()))
    seeds = f"median [range] over seeds {seeds}" if len(sweep.seed_list()) > 1 else f"seed {seeds}"
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
        f"early stop at {tr.get('early_stop_acc', 0.99)} accuracy; {seeds}."
    )


def plot(out: Path, rows: list[dict]) -> list[Path]:
    """mqar.png (median accuracy vs d_model) and mqar_state.png (vs decoding state size), a panel per setting,
    a line per mixer; the error bars span the range over seeds."""
    plt = runner.pyplot()
    if plt is None:
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
                    (
                        r
                        for r in best
                        if r["mixer"] == m and (r["seq_len"], r["num_kv_pairs"]) == (seq_len, kv)
                    ),
                    key=lambda r: r[xkey],
                )
                if pts:
                    color, marker = style[m]
                    med, below, above = runner.error_bars(pts, "accuracy")
                    ax.errorbar(
                        [r[xkey] for r in pts], med, yerr=[below, above], fmt="-", marker=marker, color=color,
                        capsize=2, label=m,
                    )  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_title(f"seq_len {seq_len}, {kv} KV pairs")
            ax.set_xlabel(xlabel)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("MQAR accuracy (median over seeds)")
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
    return 1 if rows.failures else 0  # the table holds what finished; the failed runs are named above
