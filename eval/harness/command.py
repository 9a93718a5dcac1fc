"""``seqzoo eval RUN_DIR --tasks ...``: score a trained run with lm-eval-harness.

    seqzoo eval runs/tiny-attention --tasks seqzoo_stdlib                 # offline: ships with seqzoo
    seqzoo eval runs/lm-125m-gla --tasks lambada_openai,hellaswag --num-fewshot 0 --device cuda
    seqzoo eval --list-tasks                                              # the shipped offline tasks
    lm_eval --model seqzoo --model_args path=runs/tiny-attention --tasks seqzoo_stdlib \
        --include_path "$(seqzoo eval --tasks-path)"                      # the harness's own CLI

It runs the harness on the run's model (``SeqzooLM``, the model the harness knows as ``seqzoo``) with
seqzoo's offline tasks on the harness's task path, prints the harness's table and writes its results JSON
into the run folder (``RUN_DIR/lm_eval/results-<time>.json``). The recipe calls :func:`run_eval` after
training when the config has ``eval.tasks``.

Each task is loaded before the model runs, so a task whose dataset is neither reachable nor cached fails
at once, with the task's name, its dataset and what to provide.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

SHIPPED_TASKS = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = "seqzoo_stdlib"


class EvalError(RuntimeError):
    """A problem the user can fix (an unknown task, a missing dataset, a missing run)."""


def configure_parser(p) -> None:
    p.add_argument("run_dir", nargs="?", help="a run folder written by seqzoo train")
    p.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"comma-separated harness tasks (default: {DEFAULT_TASKS})"
    )
    p.add_argument(
        "--num-fewshot", type=int, default=None, help="examples in each prompt (default: the task's)"
    )
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=8, help="loglikelihood requests per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--max-length", type=int, default=None, help="context in tokens (default: the run's seq_len)"
    )
    p.add_argument("--include-path", action="append", default=[], help="a folder of extra task YAML files")
    p.add_argument(
        "--output", default=None, help="results JSON (default: RUN_DIR/lm_eval/results-<time>.json)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the harness's few-shot sampling")
    p.add_argument("--list-tasks", action="store_true", help="list seqzoo's offline tasks and exit")
    p.add_argument(
        "--tasks-path",
        action="store_true",
        help="print the folder of seqzoo's task files (for lm_eval --include_path) and exit",
    )


def task_manager(include_path: list[str] | tuple[str, ...] = (), names: list[str] | tuple[str, ...] = ()):
    """The harness's task manager with seqzoo's offline tasks (and any extra folders) on its path.

    Indexing the harness's own few thousand task files takes ~10 s; when every task in ``names`` is
    seqzoo's or in ``include_path``, that index is skipped."""
    from lm_eval.tasks import TaskManager

    for folder in include_path:
        if not Path(folder).is_dir():
            raise EvalError(f"--include-path {folder}: no such folder")
    paths = [str(SHIPPED_TASKS), *map(str, include_path)]
    if names:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return TaskManager(include_path=paths)


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in SHIPPED_TASKS.glob("*.yaml"))


def _dataset_of(manager, name: str) -> str | None:
    entry = manager.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if path is None or not Path(path).is_file():
        return None
    match = re.search(r"^dataset_path:\s*(\S+)", Path(path).read_text(), re.MULTILINE)
    return match.group(1) if match else None


def check_tasks(manager, tasks: list[str]) -> None:
    """Every task is known and its data loads; otherwise an :class:`EvalError` that says what to do."""
    for name in tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvalError(
                f"task {name!r}: the harness has no task, group or tag of that name{hint} "
                f"(seqzoo's offline tasks: {', '.join(shipped_tasks())}; `lm_eval ls tasks` lists the rest)"
            )
    for name in tasks:
        try:
            manager.load([name])
        except Exception as e:  # datasets / hub errors come in many types; all mean "the data is not here"
            dataset = _dataset_of(manager, name)
            source = f"the Hugging Face dataset {dataset!r}" if dataset else "its dataset"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise EvalError(
                f"task {name!r}: {source} could not be loaded ({type(e).__name__}: {first[:300]}).\n"
                f"  The harness reads it from the hub or from the local cache ({_hf_cache()}). On a machine "
                "without network, load it once where the hub is reachable (running this same command there "
                "fills the cache), copy that cache folder here and set HF_DATASETS_OFFLINE=1; or point "
                "--include-path at a task YAML that reads local files. seqzoo's offline tasks need no "
                f"download: {', '.join(shipped_tasks())}."
            ) from e


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def _quiet_custom_dataset_notice() -> None:
    """The harness tells about --metadata for every task built by a function (ours take none)."""
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _DropNotice) for f in task_logger.filters):
        task_logger.addFilter(_DropNotice())


def _hf_cache() -> str:
    return os.environ.get("HF_DATASETS_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"


def run_eval(
    run_dir,
    tasks: str | list[str] = DEFAULT_TASKS,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    max_length: int | None = None,
    include_path: list[str] | tuple[str, ...] = (),
    output: str | os.PathLike | None = None,
    seed: int = 0,
    model=None,
) -> dict:
    """Run the harness on a run folder; returns its results dict and writes it as JSON.

    ``model`` may be a ready :class:`SeqzooLM` (the recipe passes the one it just trained)."""
    try:
        from lm_eval import simple_evaluate

        from .model import SeqzooLM
    except ImportError as e:
        raise EvalError(f"lm-eval is not installed ({e}): pip install 'seqzoo[eval]'") from None

    run_dir = Path(run_dir)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    if not names:
        raise EvalError("--tasks: give at least one task")
    if limit is not None and limit <= 0:
        raise EvalError(f"--limit must be > 0, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise EvalError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if model is None:
        try:
            model = SeqzooLM(path=str(run_dir), device=device, batch_size=batch_size, max_length=max_length)
        except FileNotFoundError as e:
            raise EvalError(str(e)) from None
    _quiet_custom_dataset_notice()
    manager = task_manager(include_path, names)
    check_tasks(manager, names)
    results = simple_evaluate(
        model=model,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    results["seqzoo"] = {"run_dir": str(run_dir), "tasks": names, **model.get_model_info()}
    out = Path(output) if output else run_dir / "lm_eval" / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out)  # atomic: a half-written results file never replaces a good one
    results["seqzoo"]["results_file"] = str(out)
    return results


def format_table(results: dict) -> str:
    from lm_eval.utils import make_table

    table = make_table(results)
    if "groups" in results and results["groups"]:
        table += "\n" + make_table(results, "groups")
    return table


def main(args) -> int:
    if args.tasks_path:
        print(SHIPPED_TASKS)
        return 0
    if args.list_tasks:
        for name in shipped_tasks():
            first = (SHIPPED_TASKS / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
            print(f"  {name:<20} {first}")
        return 0
    if not args.run_dir:
        print("seqzoo eval: give a run folder (seqzoo eval runs/NAME --tasks ...)", file=sys.stderr)
        return 2
    try:
        results = run_eval(
            args.run_dir,
            args.tasks,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            max_length=args.max_length,
            include_path=args.include_path,
            output=args.output,
            seed=args.seed,
        )
    except (EvalError, ValueError) as e:
        print(f"seqzoo eval: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"results: {results['seqzoo']['results_file']}")
    return 0
