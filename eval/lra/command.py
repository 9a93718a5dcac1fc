"""``seqzoo lra``: Long Range Arena through the one recipe.

    seqzoo lra TASK [--mixer NAME] [--cpu] [--data-dir DIR] [key=value ...]   train one mixer on one task
    seqzoo lra generate TASK --out DIR [--num-train N ...] [key=value ...]    write ListOps / Pathfinder data
    seqzoo lra sweep [--tasks ...] [--mixers ...] [--cpu] [--seeds ...] [--out DIR]   mixers x tasks, a table
    seqzoo lra list                                                           tasks, configs, published numbers

TASK is listops, text, retrieval, image, pathfinder or pathx. A run trains the task's shipped config
(``train/configs/lra-TASK.yaml``: the S4 paper's settings, a GPU-sized run) or with ``--cpu`` its CPU config
(``lra-TASK-cpu.yaml``: generated data, small enough for 2 cores), with the mixer's LRA settings on top
(``eval/lra/settings.py``). Overrides are the recipe's dotted keys (``train.steps=200``). The sweep trains
through the one sweep runner (``seqzoo.eval.sweep``: a finished run whose config hash matches is reused, a
failed run is reported and the others go on; with ``--seeds 0 1 2`` every run once per seed) and writes
``results.csv`` (a row per run), ``results.md`` (our test accuracy, the median over seeds with its range,
beside the published numbers) and ``lra.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import PUBLISHED, TASK_ORDER, TASKS, check_task, generate_task

CPU_TASKS = ("listops", "pathfinder")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[1] if __doc__ else None
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "target", nargs="?", help="an LRA task (" + ", ".join(TASK_ORDER) + "), generate, sweep or list"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the target's arguments (seqzoo lra TARGET --help)")


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqzoo lra TASK", description="train one mixer on one LRA task")
    p.add_argument(
        "--mixer", default="s4d", help="mixer name (default s4d); its LRA settings: eval/lra/settings.py"
    )
    p.add_argument("--cpu", action="store_true", help="the task's CPU config (listops, pathfinder)")
    p.add_argument("--data-dir", help="the task's data folder (default: the config's, or data/lra/TASK)")
    p.add_argument("--name", help="run name (default lra-TASK[-cpu]-MIXER); the run goes to runs/NAME")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.steps=200")
    return p


def config_name(task: str, cpu: bool) -> str:
    if cpu and task not in CPU_TASKS:
        raise ValueError(
            f"--cpu: only {list(CPU_TASKS)} have CPU configs (generated data); {task!r} needs a GPU"
        )
    return f"lra-{task}-cpu" if cpu else f"lra-{task}"


def build_config(task: str, mixer: str, cpu: bool = False, data_dir=None, name=None, overrides=()):
    """The recipe config of ``mixer`` on ``task``: the task's config, the mixer's LRA settings, overrides."""
    import yaml

    from seqzoo.train.config import load_config, resolve_config_path

    from .settings import overrides_for

    info = check_task(task)
    path = resolve_config_path(config_name(task, cpu))
    raw = yaml.safe_load(path.read_text())
    task_mixer = raw["model"]["mixer"]
    task_mixer = task_mixer if isinstance(task_mixer, dict) else {"name": task_mixer}
    dotted = [f"{k}={json.dumps(v)}" for k, v in overrides_for(mixer, task_mixer, info.image_size).items()]
    raw["name"] = name or f"{path.stem}-{mixer}"
    if data_dir:
        dotted.append(f"data.data_dir={data_dir}")
    return load_config(raw, dotted + list(overrides))


def cmd_run(task: str, argv: list[str]) -> int:
    args = _run_parser().parse_intermixed_args(argv)
    from seqzoo.train.config import ConfigError, dump_config

    from .settings import lra_mixer

    try:
        config = build_config(task, args.mixer, args.cpu, args.data_dir, args.name, args.overrides)
    except (ConfigError, ValueError) as e:
        print(f"seqzoo lra: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(config))
        return 0
    print(f"{task} with {args.mixer}: {lra_mixer(args.mixer).note}")
    return _train(config, args.resume)


def _train(config, resume=False) -> int:
    from seqzoo.train.loop import train

    from .loaders import LRADataMissing

    try:
        summary = train(config, resume=resume)
    except LRADataMissing as e:
        print(f"seqzoo lra: {e}", file=sys.stderr)
        return 2
    print(
        f"test accuracy {summary['test_acc']:.4f} (best validation {summary.get('best_val_acc', float('nan')):.4f})"
    )
    return 0


# -- generate --------------------------------------------------------------------------------------------


def cmd_generate(argv: list[str]) -> int:
    import yaml

    p = argparse.ArgumentParser(
        prog="seqzoo lra generate",
        description="write a synthetic LRA task's data in the LRA release layout (listops, pathfinder, pathx)",
    )
    p.add_argument("task", choices=["listops", "pathfinder", "pathx"])
    p.add_argument("--out", required=True, help="the folder to write (the loaders read it as data.data_dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "args",
        nargs="*",
        help="generator arguments as key=value (listops: num_train=2000 max_length=500; "
        "pathfinder: num_examples=20000 contour_length=6)",
    )
    args = p.parse_intermixed_args(argv)
    kwargs = {"seed": args.seed}
    for item in args.args:
        if "=" not in item:
            p.error(f"generator argument {item!r} must look like key=value")
        key, value = item.split("=", 1)
        kwargs[key] = yaml.safe_load(value)
    try:
        out = generate_task(args.task, args.out, **kwargs)
    except (TypeError, ValueError) as e:
        print(f"seqzoo lra generate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.task} data to {out}")
    return 0


# -- list ------------------------------------------------------------------------------------------------


def cmd_list() -> int:
    from .settings import lra_mixers

    print("Long Range Arena tasks (seqzoo lra TASK --mixer NAME):")
    for name in TASK_ORDER:
        info = TASKS[name]
        cpu = "  [--cpu: generated data]" if name in CPU_TASKS else ""
        print(f"  {name:<11} {info.seq_len:>6} tokens, {info.n_classes:>2} classes: {info.description}{cpu}")
    print("\nMixers with LRA settings (any registered mixer runs; these have a note):")
    for name, entry in lra_mixers().items():
        print(f"  {name:<10} {entry.note}")
    print("\nPublished test accuracy (%): " + " / ".join(TASK_ORDER))
    for name, row in PUBLISHED.items():
        print(f"  {name:<10} " + " / ".join(_published_cell(a) for a in row["acc"]) + f"  ({row['source']})")
    return 0


# -- sweep -----------------------------------------------------------------------------------------------


def cmd_sweep(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="seqzoo lra sweep", description="mixers x tasks through the recipe, and a table"
    )
    p.add_argument(
        "--tasks", nargs="+", default=None, help="default: listops pathfinder with --cpu, else all six"
    )
    p.add_argument("--mixers", nargs="+", default=["s4d", "attention"], help="default: s4d attention")
    p.add_argument("--cpu", action="store_true", help="the CPU configs (listops, pathfinder)")
    p.add_argument(
        "--seeds", nargs="+", type=int, default=None,
        help="train every run once per seed and report the median [range] (default: the config's one seed)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="folder for runs and the table (default runs/lra-sweep[-cpu])")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=100")
    args = p.parse_intermixed_args(argv)
    tasks = args.tasks or (list(CPU_TASKS) if args.cpu else TASK_ORDER)
    out = Path(args.out or ("runs/lra-sweep-cpu" if args.cpu else "runs/lra-sweep"))
    try:
        rows = run_sweep(tasks, args.mixers, args.cpu, out, args.overrides, args.seeds, not args.no_progress)
    except ValueError as e:
        print(f"seqzoo lra sweep: {e}", file=sys.stderr)
        return 2
    print("\n" + markdown_table(rows, tasks) if rows else "no finished runs")
    print(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'lra.png'}")
    return 1 if rows.failures else 0  # the table holds what finished; the failed runs are named above


def plan_sweep(tasks, mixers, cpu: bool, out: Path, overrides=(), seeds=None) -> list[dict]:
    """The sweep's planned runs (``seqzoo.eval.sweep``): every (task, mixer), once per seed. A run's folder
    is ``OUT/lra-TASK[-cpu]-MIXER``, with ``-seedN`` for a seed other than the config's own, so that a
    one-seed sweep's folders are the ones earlier sweeps wrote (and are reused when their hash matches)."""
    from seqzoo.eval.sweep import config_hash

    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError(f"--seeds: each seed once, got {seeds}")
    runs = []
    for task in tasks:
        for mixer in mixers:
            base = f"{config_name(task, cpu)}-{mixer}"
            own_seed = build_config(task, mixer, cpu, name=base, overrides=overrides).train.seed
            for seed in seeds if seeds is not None else [own_seed]:
                name = base if seed == own_seed else f"{base}-seed{seed}"
                config = build_config(
                    task, mixer, cpu, name=name,
                    overrides=[f"train.out_dir={out / name}", *overrides, f"train.seed={seed}"],
                )  # fmt: skip
                as_dict = json.loads(json.dumps(config.model_dump(mode="json")))
                runs.append(
                    {"key": name, "task": task, "mixer": mixer, "seed": seed, "config": as_dict,
                     "hash": config_hash(as_dict), "dir": config.out_path()}
                )  # fmt: skip
    return runs


def run_sweep(tasks, mixers, cpu: bool, out: Path, overrides=(), seeds=None, progress: bool = True):
    """Train every planned run not already finished with the same config, one at a time with the threads its
    config gives; write the table; return the rows (``.failures``: the runs that raised)."""
    from seqzoo.eval.sweep import run_sweep as run_all

    from .settings import lra_mixer

    runs = plan_sweep(tasks, mixers, cpu, out, overrides, seeds)
    for mixer in mixers:
        print(f"{mixer}: {lra_mixer(mixer).note}")
    task = sweep_task(tasks, cpu)
    return run_all(runs, out, task, workers=1, threads=None, progress=progress)


def _published_cell(acc) -> str:
    if acc is None:
        return "-"  # not reported
    return acc if isinstance(acc, str) else f"{acc:.1f}"


def sweep_task(tasks, cpu: bool):
    """The LRA sweep's hooks for the runner: a run's row, results.md and lra.png."""
    from seqzoo.eval.sweep import SweepTask

    from .settings import lra_mixer

    def row(run: dict, summary: dict) -> dict:
        return {
            "task": run["task"],
            "mixer": run["mixer"],
            "seed": run["seed"],
            "test_acc": summary["test_acc"],
            "best_val_acc": summary.get("best_val_acc"),
            "steps": summary["steps"],
            "parameters": summary["parameters"],
            "wall_time_s": summary["wall_time_s"],
            "config": "cpu" if cpu else "paper",
            "note": lra_mixer(run["mixer"]).note,
        }

    return SweepTask(
        desc="lra runs",
        row=row,
        markdown=lambda rows: results_markdown(rows, tasks),
        plot=lambda folder, rows: plot(folder, rows, tasks),
        postfix=lambda r, s: f"{r['key']} test acc {s['test_acc']:.3f}",
    )


def cells(rows: list[dict]) -> dict[tuple, dict]:
    """(task, mixer) -> the median test accuracy over seeds with its range (``seqzoo.eval.sweep``)."""
    from seqzoo.eval.sweep import cell_medians

    return {(c["task"], c["mixer"]): c for c in cell_medians(rows, ("task", "mixer"), "test_acc")}


def markdown_table(rows: list[dict], tasks) -> str:
    """Test accuracy (%) per mixer and task, ours first (the median over seeds, with the range over several:
    ``41.0 [40.2-42.0]``), then the published rows for the same tasks."""
    from seqzoo.eval.sweep import format_median

    idx = {t: i for i, t in enumerate(TASK_ORDER)}
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    by = cells(rows)
    seeds = max((c["seeds"] for c in by.values()), default=1)
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in mixers:
        row = [format_median(by[(t, m)], "test_acc", 100, 1, seeds) if (t, m) in by else "" for t in tasks]
        config = next(r["config"] for r in rows if r["mixer"] == m)
        lines.append(f"| {m} (seqzoo, {config} config) | " + " | ".join(row) + " |")
    for m, pub in PUBLISHED.items():
        row = [_published_cell(pub["acc"][idx[t]]) for t in tasks]
        lines.append(f"| {m} (published: {pub['source']}) | " + " | ".join(row) + " |")
    chance = [f"{100 / TASKS[t].n_classes:.1f}" for t in tasks]
    lines.append("| chance | " + " | ".join(chance) + " |")
    notes = "\n".join(f"- {m}: {next(r['note'] for r in rows if r['mixer'] == m)}" for m in mixers)
    return "\n".join(lines) + "\n\n" + notes + "\n"


def results_markdown(rows: list[dict], tasks) -> str:
    """The text of results.md: a heading, a caveat for the CPU configs, the table."""
    cpu = any(r["config"] == "cpu" for r in rows)
    head = "# Long Range Arena: test accuracy (%)\n\n" + (
        "CPU configs: generated data, shorter and easier than the paper's tasks (see the configs): the "
        "published numbers are for the full tasks and are not comparable cell by cell.\n\n"
        if cpu
        else ""
    )
    return head + markdown_table(rows, tasks)


def plot(out: Path, rows: list[dict], tasks) -> Path | None:
    """lra.png: a bar per mixer and task at the median test accuracy, error bars over the seeds' range."""
    from seqzoo.eval.sweep import error_bars, pyplot

    plt = pyplot()
    if plt is None:
        return None
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    by = cells(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.2))
    width = 0.8 / max(1, len(mixers))
    for i, m in enumerate(mixers):
        here = [(j, by[(t, m)]) for j, t in enumerate(tasks) if (t, m) in by]
        med, below, above = error_bars([c for _, c in here], "test_acc", 100)
        ax.bar([j + i * width for j, _ in here], med, width, yerr=[below, above], capsize=2, label=m)
    for j, t in enumerate(tasks):
        ax.hlines(100 / TASKS[t].n_classes, j - width / 2, j + 0.8 - width / 2, colors="k", linestyles=":")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Long Range Arena (dotted: chance)")
    fig.tight_layout()
    path = out / "lra.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- entry -----------------------------------------------------------------------------------------------


def main(args) -> int:
    target, rest = args.target, list(args.rest or [])
    if target is None:
        print(__doc__)
        return 2
    if target == "list":
        return cmd_list()
    if target == "generate":
        return cmd_generate(rest)
    if target == "sweep":
        return cmd_sweep(rest)
    try:
        check_task(target)
    except ValueError as e:
        print(f"seqzoo lra: {e} (or: generate, sweep, list)", file=sys.stderr)
        return 2
    return cmd_run(target, rest)
