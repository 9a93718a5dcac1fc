"""Benchmark harness: time every backend of every op over a grid of shapes, forward and forward+backward.

    seqzoo bench                                   # every registered bench, every backend that runs here
    seqzoo bench attention --quick --modes fwd
    seqzoo bench causal_conv1d --set T=8192,16384 --backends torch,triton --dtype bf16
    seqzoo bench --packing                         # packed vs padded LM training per mixer (eval/packing_bench.py)

Benches are registered in :mod:`seqzoo.eval.benches` with :func:`register_bench`: an op, a function that
makes its tensor inputs for one shape, and the grids of shapes to run. For each op x backend x shape x mode
the harness

- skips, saying why, a backend the op refuses here (``op.backends(device)`` / ``op.resolve``), and the slow
  ``reference`` on sequences longer than ``--max-ref-T``;
- runs it ``--warmup`` times, then times ``--repeats`` runs and keeps the median (CUDA events on a GPU,
  ``time.perf_counter`` on a CPU);
- runs it once more to measure the peak memory it needs beyond what was already allocated (the inputs):
  ``torch.cuda.max_memory_allocated`` on a GPU, the growth of the process's peak RSS on Linux CPUs;
- prints a table (with the speed-up over ``reference`` where both ran) and writes every row, with the
  device, library versions, date and git commit, to a JSON file.

Benchmarks measure; tests assert. Nothing here decides whether a test passes (docs/design.md).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import packing_bench
from .bench_measure import peak_extra_bytes, time_ms
from .bench_registry import _BENCHES, Bench, MakeInputs, mixer_op, register_bench  # noqa: F401 (re-exported)
from .bench_report import (  # noqa: F401 (add_speedups, format_table: the harness's API, as before)
    RESULTS_SCHEMA,
    add_speedups,
    default_output,
    device_name,
    format_table,
    run_metadata,
    shape_str,
)

MODES = ("fwd", "fwd+bwd")
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
DEFAULT_MAX_REF_T = 2048
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 3


def list_benches() -> dict[str, Bench]:
    """Every registered bench by label (the built-in ones in :mod:`seqzoo.eval.benches` included)."""
    importlib.import_module(".benches", __package__)  # registers the built-in benches
    return dict(_BENCHES)


# -- one case ----------------------------------------------------------------------------------------------


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for item in out for t in _tensors(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _tensors(item)]
    return []


def _case_fn(op, backend: str, inputs: dict, kwargs: dict, mode: str) -> Callable[[], Any]:
    """The function timed for one case: a forward without autograd, or a forward and a backward."""
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return op(**inputs, **kwargs, backend=backend)

        return forward

    # Leaves that require grad: every floating-point input, so the backward computes every gradient (an
    # input that is not a tensor is an option the shape sets, passed as it is).
    leaves = {
        name: t.detach().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
        for name, t in inputs.items()
    }
    wrt = [t for t in leaves.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    grad_outputs: list[torch.Tensor] = []

    def forward_backward():
        outs = [t for t in _tensors(op(**leaves, **kwargs, backend=backend)) if t.requires_grad]
        if not outs:
            raise RuntimeError("no output requires grad: nothing to backpropagate")
        if not grad_outputs:
            # Random output gradients (made once): a ones-like gradient can take shortcuts a real one cannot.
            grad_outputs.extend(torch.randn_like(o) for o in outs)
        # autograd.grad rather than backward: nothing accumulates in .grad between repeats.
        return torch.autograd.grad(outs, wrt, grad_outputs)

    return forward_backward


@dataclass
class Case:
    bench: Bench
    backend: str
    shape: dict
    mode: str
    skip: str | None = None


def _row(
    case: Case, dtype: torch.dtype, status: str, reason: str | None = None, times=None, peak=None
) -> dict:
    return {
        "bench": case.bench.label,
        "op": case.bench.op_name,
        "backend": case.backend,
        "shape": dict(case.shape),
        "mode": case.mode,
        "dtype": str(dtype).removeprefix("torch."),
        "status": status,  # "ok", "skipped" or "error"
        "reason": reason,
        "ms": statistics.median(times) if times else None,
        "ms_min": min(times) if times else None,
        "ms_max": max(times) if times else None,
        "repeats": len(times) if times else 0,
        "peak_extra_mib": None if peak is None else peak / 2**20,
        "speedup_vs_reference": None,
    }


# -- selecting what to run ---------------------------------------------------------------------------------


def _split(values: list[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def select_benches(names: Iterable[str]) -> list[Bench]:
    """Benches for the given labels or op names (all registered ones when empty); ValueError if unknown."""
    benches = list_benches()
    names = list(names)
    if not names:
        return list(benches.values())
    chosen: list[Bench] = []
    for name in names:
        matches = [b for b in benches.values() if name in (b.label, b.op_name)]
        if not matches:
            raise ValueError(f"unknown op or bench {name!r}; registered: {', '.join(sorted(benches))}")
        chosen += [b for b in matches if b not in chosen]
    return chosen


def parse_overrides(items: list[str] | None) -> dict[str, list[int]]:
    """``["T=16", "B=1,2"]`` -> ``{"T": [16], "B": [1, 2]}``."""
    out: dict[str, list[int]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--set expects KEY=INT[,INT...] such as T=4096 or B=1,2, got {item!r}"
            ) from None
        if not out[key.strip()]:
            raise ValueError(f"--set {item!r} gives no value")
    return out


def apply_overrides(shapes: list[dict], overrides: dict[str, list[int]]) -> list[dict]:
    """Replace the overridden dimensions in every shape (one copy per value), dropping duplicates."""
    out: list[dict] = []
    for shape in shapes:
        keys = [k for k in overrides if k in shape]
        for values in itertools.product(*(overrides[k] for k in keys)):
            new = {**shape, **dict(zip(keys, values))}
            if new not in out:
                out.append(new)
    return out


def parse_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 is what models train in on a GPU; CPUs are benchmarked in fp32, where their kernels are tuned.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"--dtype must be 'auto' or one of {sorted(set(DTYPES))}, got {name!r}") from None


def parse_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {name!r}")
    return device


def plan_cases(
    benches: list[Bench],
    device: torch.device,
    *,
    backends: list[str] | None = None,
    modes: Iterable[str] = MODES,
    quick: bool = False,
    overrides: dict[str, list[int]] | None = None,
    max_ref_t: int | None = DEFAULT_MAX_REF_T,
) -> list[Case]:
    """Every case to run, in order (shape by shape, so one set of inputs serves every backend), with the
    reason to skip the ones that cannot run here."""
    from seqzoo.ops import list_ops
    from seqzoo.ops._dispatch import triton_interpreting

    ops = list_ops()
    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"--modes must be among {', '.join(MODES)}, got {mode!r}")
    overrides = overrides or {}
    unknown_keys = [
        k for k in overrides if not any(k in s for b in benches for s in b.grid(device.type, quick))
    ]
    if unknown_keys:
        raise ValueError(f"--set {', '.join(unknown_keys)}: no selected bench has such a dimension")
    if backends:
        known = {name for b in benches for name in b.resolve_op(ops).backend_names()}
        unknown = [name for name in backends if name not in known]
        if unknown:
            raise ValueError(
                f"unknown backend(s) {', '.join(unknown)}; the selected ops have {', '.join(sorted(known))}"
            )

    cases: list[Case] = []
    for bench in benches:
        op = bench.resolve_op(ops)
        available = op.backends(device)
        names = [n for n in op.backend_names() if not backends or n in backends]
        for shape in apply_overrides(bench.grid(device.type, quick), overrides):
            for mode in modes:
                for name in names:
                    skip = None if available[name] == "available" else available[name]
                    if skip is None and name == "triton" and device.type == "cpu" and triton_interpreting():
                        skip = (
                            "Triton runs through its interpreter here (TRITON_INTERPRET=1): no timing to take"
                        )
                    if (
                        skip is None
                        and name == "reference"
                        and max_ref_t is not None
                        and shape.get("T", 0) > max_ref_t
                    ):
                        skip = (
                            f"reference is timed only up to T={max_ref_t} (--max-ref-T)"
                            if max_ref_t >= 0
                            else "reference timing is off (--max-ref-T 0)"
                        )
                    cases.append(Case(bench, name, shape, mode, skip))
    return cases


# -- running -----------------------------------------------------------------------------------------------


def run_cases(
    cases: list[Case],
    device: torch.device,
    dtype: torch.dtype,
    *,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    progress: bool = True,
) -> list[dict]:
    """Time every case; returns one row per case (status ok, skipped or error)."""
    from tqdm.auto import tqdm

    from seqzoo.ops import list_ops

    ops = list_ops()
    rows: list[dict] = []
    inputs_for: tuple[Any, dict] | None = None
    bar = tqdm(cases, desc="bench", unit="case", leave=False, disable=None if progress else True)
    for case in bar:
        bar.set_postfix_str(
            f"{case.bench.label} {case.backend} {shape_str(case.shape)} {case.mode}", refresh=False
        )
        if case.skip is not None:
            rows.append(_row(case, dtype, "skipped", case.skip))
            continue
        op = case.bench.resolve_op(ops)
        key = (case.bench.label, tuple(case.shape.items()))
        try:
            if inputs_for is None or inputs_for[0] != key:
                inputs_for = None  # free the previous shape's tensors before making the next ones
                torch.manual_seed(0)
                inputs_for = (key, case.bench.make_inputs(dict(case.shape), dtype, device))
            inputs = inputs_for[1]
            try:
                op.resolve(case.backend, device, (), {**inputs, **case.bench.kwargs})
            except (ValueError, RuntimeError) as refused:
                rows.append(_row(case, dtype, "skipped", str(refused)))
                continue
            fn = _case_fn(op, case.backend, inputs, case.bench.kwargs, case.mode)
            times = time_ms(fn, device, repeats, warmup)
            peak = peak_extra_bytes(fn, device)
            rows.append(_row(case, dtype, "ok", times=times, peak=peak))
        except Exception as e:  # noqa: BLE001  (one failing backend must not end the whole run)
            message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            rows.append(_row(case, dtype, "error", message))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            fn = None  # noqa: F841  (drop the closure's tensors before the next case)
    bar.close()
    add_speedups(rows)
    return rows


# -- command line ------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``seqzoo bench`` options to ``parser``."""
    parser.add_argument(
        "ops", nargs="*", metavar="OP", help="ops (or bench labels) to time; default: all registered"
    )
    parser.add_argument(
        "--backends",
        action="append",
        metavar="NAMES",
        help="comma-separated backends to time (default: every backend of each op)",
    )
    parser.add_argument(
        "--modes",
        action="append",
        metavar="MODES",
        help=f"comma-separated modes among {', '.join(MODES)} (default: both)",
    )
    parser.add_argument(
        "--dtype", default="auto", help="fp32, bf16 or fp16 (default: bf16 on a GPU, fp32 on a CPU)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="each bench's small grid")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=N[,N...]",
        help="replace a dimension in every shape of the grid, e.g. --set T=8192 or --set B=1,8",
    )
    parser.add_argument(
        "--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per case; the median is kept"
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs before timing")
    parser.add_argument(
        "--max-ref-T",
        dest="max_ref_T",
        type=int,
        default=DEFAULT_MAX_REF_T,
        help=f"time the slow reference only up to this T (default {DEFAULT_MAX_REF_T}; 0: never)",
    )
    parser.add_argument("--out", default=None, help="JSON file (default: bench_results/<device>-<date>.json)")
    packing_bench.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    """Run what ``args`` (from :func:`configure_parser`) asks for; returns the results (metadata and rows)."""
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    benches = select_benches(args.ops)
    modes = _split(args.modes) or list(MODES)
    # 0 (or less) turns reference timing off: every T is then above the limit.
    max_ref_t = args.max_ref_T if args.max_ref_T > 0 else -1
    cases = plan_cases(
        benches,
        device,
        backends=_split(args.backends) or None,
        modes=modes,
        quick=args.quick,
        overrides=parse_overrides(args.overrides),
        max_ref_t=max_ref_t,
    )
    # Described before running: the date is the start, and the load average is the machine's, not ours.
    results = run_metadata(device, dtype)
    t0 = time.perf_counter()
    rows = run_cases(
        cases, device, dtype, repeats=args.repeats, warmup=args.warmup, progress=not args.no_progress
    )
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["settings"] = {
        "benches": [b.label for b in benches],
        "modes": modes,
        "quick": args.quick,
        "overrides": parse_overrides(args.overrides),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "max_ref_T": args.max_ref_T,
    }
    results["rows"] = rows
    return results


def main(args: argparse.Namespace) -> int:
    """``seqzoo bench``: run, print the table, write the JSON. Returns the exit status."""
    if getattr(args, "packing", False):
        return packing_bench.run(args)
    try:
        results = run_benchmarks(args)
    except ValueError as e:
        print(f"seqzoo bench: error: {e}", file=sys.stderr)
        return 2
    device = results["device"]
    print(
        f"{device['name']} ({device['type']}), {results['dtype']}, torch {results['torch']}, "
        f"commit {(results['commit'] or 'unknown')[:12]}{' (dirty)' if results['dirty'] else ''}"
    )
    print(format_table(results["rows"]))
    out = Path(args.out) if args.out else default_output(device["name"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")
    errors = [r for r in results["rows"] if r["status"] == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(configure_parser(argparse.ArgumentParser(prog="seqzoo bench")).parse_args()))
