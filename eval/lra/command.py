"""``seqzoo lra``: Long Range Arena through the one recipe.

    seqzoo lra TASK [--mixer NAME] [--cpu] [--data-dir DIR] [key=value ...]   train one mixer on one task
    seqzoo lra generate TASK --out DIR [--num-train N ...] [key=value ...]    write ListOps / Pathfinder data
    seqzoo lra sweep [--tasks ...] [--mixers ...] [--cpu] [--out DIR]         mixers x tasks, with a table
    seqzoo lra list                                                           tasks, configs, published numbers

TASK is listops, text, retrieval, image, pathfinder or pathx. A run trains the task's shipped config
(``train/configs/lra-TASK.yaml``: the S4 paper's settings, a GPU-sized run) or with ``--cpu`` its CPU config
(``lra-TASK-cpu.yaml``: generated data, small enough for 2 cores), with the mixer's LRA settings on top
(``eval/lra/settings.py``). Overrides are the recipe's dotted keys (``train.steps=200``). The sweep writes
``results.csv``, ``results.md`` (our test accuracy beside the published numbers) and ``lra.png``.
"""

from __future__ import annotations

import argparse
import csv
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

    check_task(task)
    path = resolve_config_path(config_name(task, cpu))
    raw = yaml.safe_load(path.read_text())
    task_mixer = raw["model"]["mixer"]
    task_mixer = task_mixer if isinstance(task_mixer, dict) else {"name": task_mixer}
    dotted = [f"{k}={json.dumps(v)}" for k, v in overrides_for(mixer, task_mixer).items()]
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
    p.add_argument("--out", default=None, help="folder for runs and the table (default runs/lra-sweep[-cpu])")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=100")
    args = p.parse_intermixed_args(argv)
    tasks = args.tasks or (list(CPU_TASKS) if args.cpu else TASK_ORDER)
    out = Path(args.out or ("runs/lra-sweep-cpu" if args.cpu else "runs/lra-sweep"))
    try:
        rows = run_sweep(tasks, args.mixers, args.cpu, out, args.overrides)
    except ValueError as e:
        print(f"seqzoo lra sweep: {e}", file=sys.stderr)
        return 2
    print("\n" + markdown_table(rows, tasks))
    print(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'lra.png'}")
    return 0


def run_sweep(tasks, mixers, cpu: bool, out: Path, overrides=()) -> list[dict]:
    """Train every (task, mixer) not already finished with the same config; write the table; return its rows."""
    from seqzoo.eval.mqar import config_hash
    from seqzoo.train.loop import train

    from .settings import lra_mixer

    plans = []
    for task in tasks:
        for mixer in mixers:
            name = f"{config_name(task, cpu)}-{mixer}"
            config = build_config(
                task, mixer, cpu, name=name, overrides=[f"train.out_dir={out / name}", *overrides]
            )
            plans.append((task, mixer, config))
    rows = []
    for task, mixer, config in plans:
        run_dir = config.out_path()
        digest = config_hash(json.loads(json.dumps(config.model_dump(mode="json"))))
        summary_file, hash_file = run_dir / "summary.json", run_dir / "config.sha256"
        if summary_file.is_file() and hash_file.is_file() and hash_file.read_text().strip() == digest:
            summary = json.loads(summary_file.read_text())
            print(f"{config.name}: finished before, reused")
        else:
            print(f"{config.name}: {lra_mixer(mixer).note}")
            summary = train(config)
            hash_file.write_text(digest)
        rows.append(
            {
                "task": task,
                "mixer": mixer,
                "test_acc": summary["test_acc"],
                "best_val_acc": summary.get("best_val_acc"),
                "steps": summary["steps"],
                "parameters": summary["parameters"],
                "wall_time_s": summary["wall_time_s"],
                "config": "cpu" if cpu else "paper",
                "note": lra_mixer(mixer).note,
            }
        )
        write_outputs(out, rows, tasks)
    return rows


def _published_cell(acc) -> str:
    if acc is None:
        return "-"  # not reported
    return acc if isinstance(acc, str) else f"{acc:.1f}"


def markdown_table(rows: list[dict], tasks) -> str:
    """Test accuracy (%) per mixer and task, ours first, then the published rows for the same tasks."""
    idx = {t: i for i, t in enumerate(TASK_ORDER)}
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    by = {(r["task"], r["mixer"]): r for r in rows}
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in mixers:
        cells = [f"{100 * by[(t, m)]['test_acc']:.1f}" if (t, m) in by else "" for t in tasks]
        config = next(r["config"] for r in rows if r["mixer"] == m)
        lines.append(f"| {m} (seqzoo, {config} config) | " + " | ".join(cells) + " |")
    for m, pub in PUBLISHED.items():
        cells = [_published_cell(pub["acc"][idx[t]]) for t in tasks]
        lines.append(f"| {m} (published: {pub['source']}) | " + " | ".join(cells) + " |")
    chance = [f"{100 / TASKS[t].n_classes:.1f}" for t in tasks]
    lines.append("| chance | " + " | ".join(chance) + " |")
    notes = "\n".join(f"- {m}: {next(r['note'] for r in rows if r['mixer'] == m)}" for m in mixers)
    return "\n".join(lines) + "\n\n" + notes + "\n"


def write_outputs(out: Path, rows: list[dict], tasks) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cpu = any(r["config"] == "cpu" for r in rows)
    head = "# Long Range Arena: test accuracy (%)\n\n" + (
        "CPU configs: generated data, shorter and easier than the paper's tasks (see the configs): the "
        "published numbers are for the full tasks and are not comparable cell by cell.\n\n"
        if cpu
        else ""
    )
    (out / "results.md").write_text(head + markdown_table(rows, tasks))
    plot(out, rows, tasks)


def plot(out: Path, rows: list[dict], tasks) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'seqzoo[eval]')")
        return None
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    by = {(r["task"], r["mixer"]): r["test_acc"] for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.2))
    width = 0.8 / max(1, len(mixers))
    for i, m in enumerate(mixers):
        xs = [j + i * width for j, t in enumerate(tasks) if (t, m) in by]
        ys = [100 * by[(t, m)] for t in tasks if (t, m) in by]
        ax.bar(xs, ys, width, label=m)
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
