"""One sweep runner: planned runs -> config-hashed run folders -> rows -> medians over seeds -> outputs.

MQAR (``seqzoo mqar``, and ``seqzoo demo`` through it) and Long Range Arena (``seqzoo lra sweep``) plan their
runs and hand them here. A *planned run* is a dict:

- ``key``: its name (the run folder's name), ``dir``: its folder, ``config``: its recipe config as a dict
  (what ``seqzoo.train.load_config`` reads), ``hash``: ``config_hash(config)``;
- its coordinates, one entry each: the *cell* it belongs to (MQAR: mixer, d_model, seq_len, num_kv_pairs;
  LRA: task, mixer), the *choice* made within a cell (MQAR: the learning rate) and the ``seed``.

The runner:

1. reuses a run only when it finished (``summary.json``) with exactly this config (its hash in
   ``config.sha256``): an interrupted sweep resumes where it stopped, a changed config trains anew;
2. trains the rest through the recipe, in ``workers`` spawned processes of ``threads`` threads each (a
   progress bar counts runs); a run that raises is reported at the end and left unfinished, the others go on;
3. reads every finished run's summary into a row (the task's ``row`` hook), writes ``results.csv`` (one row
   per run, with its seed), then ``results.md`` and the plots through the task's ``markdown`` and ``plot``
   hooks.

Seeds. Each run is repeated for every seed of the sweep (the seed sets the initialisation, the batch order and,
for generated data, the data itself). ``cell_medians`` reports a cell as the median over its seeds with the
range (min-max) beside it, and where a cell has several choices (learning rates) it keeps the one with the
best median: one lucky seed does not pick a learning rate. ``format_median`` writes ``0.253 [0.126-0.260]``.

Determinism, measured with one cheap run (mqar-cpu's mamba on the hard cell, 60 steps, its loss at every
step compared exactly; torch 2.13 CPU, an AMD EPYC with AVX2). On one machine a run is bit-reproducible: run
twice, on 1 or on 2 intra-op threads, in the caller's process or in a spawned worker beside another run, with
``torch.use_deterministic_algorithms(True)`` (nothing on this path objects to it) or another PYTHONHASHSEED,
it gives the same 60 losses and the same validation loss, to the last bit. What changes the numbers is the
CPU's code path: ATen's kernels for another instruction set (``ATEN_CPU_CAPABILITY=default`` instead of
AVX2) change the loss from step 3 on, MKL's (``MKL_CBWR=COMPATIBLE``) from step 9, both in the last bits
(at most 1e-6 after 60 steps, the same accuracy). Another machine (AVX-512, an Intel CPU under MKL) runs such
other code paths. The last bits grow: the full 600-step run (the demo's config and hash) under
``MKL_CBWR=COMPATIBLE`` matches the default path's mean loss over steps 1-50 to 5e-8, differs by 3e-5 at step
100 and by 0.06 at step 200, and ends at accuracy 0.125 where the default path ends at 0.253: the gap the
issue saw between two machines (0.126 and 0.253). Hence cells are medians over seeds, and a table from
another machine matches within the seed ranges, not digit for digit. More than 2 threads were not measured;
the thread count is not in the hash.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing as mp
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

HASH_FILE = "config.sha256"


def config_hash(config: dict) -> str:
    """sha256 of everything that decides a run's result (not where it is written or how it logs, nor its
    thread count, which the runner sets)."""
    relevant = {
        "model": config["model"],
        "data": config["data"],
        "optim": config["optim"],
        "train": {k: v for k, v in config["train"].items() if k != "out_dir"},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def is_finished(run: dict) -> bool:
    """A run is reused only when it finished (summary.json) with exactly this config (its hash)."""
    d = Path(run["dir"])
    return (
        (d / "summary.json").is_file()
        and (d / HASH_FILE).is_file()
        and ((d / HASH_FILE).read_text().strip() == run["hash"])
    )


@dataclass(frozen=True)
class SweepTask:
    """What a task hands the runner besides its runs: small hooks, each a plain function."""

    desc: str  # the progress bar's label, e.g. "mqar runs"
    row: Callable[[dict, dict], dict]  # (planned run, its summary.json) -> its results.csv row
    markdown: Callable[[list[dict]], str]  # rows -> the text of results.md
    plot: Callable[[Path, list[dict]], object]  # (sweep folder, rows) -> writes the plots
    postfix: Callable[[dict, dict], str] = lambda run, summary: run["key"]  # the bar's note after a run


class SweepRows(list):
    """The rows of a sweep's finished runs (a list, in planned order), with ``failures``: one line per run
    that raised this time ("key: ErrorType: message")."""

    def __init__(self, rows=(), failures=()):
        super().__init__(rows)
        self.failures = list(failures)


def run_worker(config: dict, digest: str, threads: int | None) -> dict:
    """Train one run through the recipe, quietly (in its own process, or the caller's with one worker); then
    record its hash beside its summary. ``threads`` None: as the config says."""
    import torch

    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    before = torch.get_num_threads()  # in the caller's process: leave it as found
    if threads is not None:
        config = {**config, "train": {**config["train"], "threads": threads}}
    run_config = load_config(config)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(run_config)
    finally:
        torch.set_num_threads(before)
    (run_config.out_path() / HASH_FILE).write_text(digest + "\n")
    return summary


def run_sweep(
    runs: list[dict],
    out: Path,
    task: SweepTask,
    workers: int = 1,
    threads: int | None = None,
    progress: bool = True,
) -> SweepRows:
    """Train what is not finished, then write ``results.csv`` and the task's outputs; return the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not is_finished(r)]
    bar = tqdm(
        total=len(runs),
        initial=len(runs) - len(todo),
        desc=task.desc,
        disable=not progress,
        dynamic_ncols=True,
    )
    failures: list[str] = []

    def finish(run, result):  # result: a callable that returns the summary or raises the run's error
        try:
            summary = result()
        except Exception as e:  # one broken run must not sink the sweep: it is reported and left unfinished
            failures.append(f"{run['key']}: {type(e).__name__}: {e}")
        else:
            bar.set_postfix_str(task.postfix(run, summary))
        bar.update(1)

    if workers <= 1:
        for r in todo:
            finish(r, lambda r=r: run_worker(r["config"], r["hash"], threads))
    elif todo:
        ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_worker, r["config"], r["hash"], threads): r for r in todo}
            for fut in cf.as_completed(futures):
                finish(futures[fut], fut.result)
    bar.close()
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
    rows = SweepRows(collect(runs, task.row), failures)
    write_outputs(out, rows, task)
    return rows


def collect(runs: list[dict], row: Callable[[dict, dict], dict]) -> list[dict]:
    """The rows of the finished runs, in planned order."""
    return [row(r, json.loads((Path(r["dir"]) / "summary.json").read_text())) for r in runs if is_finished(r)]


def write_outputs(out: Path, rows: list[dict], task: SweepTask) -> None:
    if not rows:
        return
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(task.markdown(rows))
    task.plot(out, rows)


# -- medians over seeds ----------------------------------------------------------------------------------


def _order(value) -> float:
    """Sort key of a metric: a missing or NaN result (a diverged run) counts as the worst."""
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else value


def median(values: list[float]) -> float:
    """The median (the mean of the two middle values for an even count), NaN/None sorted lowest."""
    if not values:
        raise ValueError("median: no values")
    s = sorted(values, key=_order)
    mid = len(s) // 2
    if len(s) % 2:
        return s[mid]
    lo, hi = s[mid - 1], s[mid]
    return math.nan if _order(lo) == -math.inf else (lo + hi) / 2


def cell_medians(
    rows: list[dict], cell: tuple[str, ...], metric: str, choice: str | None = None
) -> list[dict]:
    """One record per cell, in the rows' order: the cell's coordinates, the chosen ``choice`` (the one whose
    median over seeds is highest; the first listed on a tie), ``metric`` = that median, ``{metric}_min`` /
    ``{metric}_max`` = its range over seeds, ``seeds`` = how many, and ``runs`` = the chosen rows."""
    groups: dict[tuple, dict[object, list[dict]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in cell), {}).setdefault(r[choice] if choice else None, []).append(
            r
        )
    out = []
    for coords, by_choice in groups.items():
        best = None
        for value, runs in by_choice.items():
            m = median([r[metric] for r in runs])
            if best is None or _order(m) > _order(best[1]):
                best = (value, m, runs)
        value, m, runs = best
        ordered = sorted((r[metric] for r in runs), key=_order)
        record = dict(zip(cell, coords))
        if choice:
            record[choice] = value
        record.update(
            {
                metric: m,
                f"{metric}_min": ordered[0],
                f"{metric}_max": ordered[-1],
                "seeds": len(runs),
                "runs": runs,
            }
        )
        out.append(record)
    return out


def format_median(
    record: dict, metric: str, scale: float = 1.0, digits: int = 3, seeds: int | None = None
) -> str:
    """``0.253 [0.126-0.260]``: the median and, over several seeds, the range; with ``seeds`` (the sweep's
    count) a cell that has fewer finished seeds says how many (``(2 seeds)``)."""
    m, lo, hi = (record[k] for k in (metric, f"{metric}_min", f"{metric}_max"))
    text = f"{scale * m:.{digits}f}"
    if record["seeds"] > 1:
        text += f" [{scale * lo:.{digits}f}-{scale * hi:.{digits}f}]"
    if seeds is not None and record["seeds"] < seeds:
        text += f" ({record['seeds']} seed{'s' if record['seeds'] > 1 else ''})"
    return text


def error_bars(records: list[dict], metric: str, scale: float = 1.0) -> tuple[list, list, list]:
    """(medians, [below], [above]) for matplotlib's ``errorbar``: the bars span each record's range."""
    med = [scale * r[metric] for r in records]
    below = [scale * (r[metric] - r[f"{metric}_min"]) for r in records]
    above = [scale * (r[f"{metric}_max"] - r[metric]) for r in records]
    return med, below, above


def pyplot():
    """matplotlib's pyplot on the file backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'seqzoo[eval]')")
        return None
    return plt
