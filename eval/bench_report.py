"""How the bench harness reports a run: the speed-up over the reference, the text table, and the metadata
written beside the rows (device, library versions, date, git commit, the machine's load)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

RESULTS_SCHEMA = 1


def shape_str(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def add_speedups(rows: list[dict]) -> None:
    """Fill ``speedup_vs_reference`` (reference ms / ms) where the reference ran on the same case."""
    ref = {
        (r["bench"], json.dumps(r["shape"]), r["mode"]): r["ms"]
        for r in rows
        if r["backend"] == "reference" and r["status"] == "ok"
    }
    for r in rows:
        ref_ms = ref.get((r["bench"], json.dumps(r["shape"]), r["mode"]))
        if r["status"] == "ok" and ref_ms and r["ms"]:
            r["speedup_vs_reference"] = ref_ms / r["ms"]


# -- describing the run ------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> dict[str, Any]:
    """The commit of the source tree (and whether it had local changes), when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    # No optional locks: `git status` must not take the index lock from someone committing at the same time.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def run_metadata(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"type": device.type, "name": device_name(device)},
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seqzoo": _version("seqzoo"),
    }
    if device.type == "cuda":
        meta["device"]["capability"] = "sm_{}{}".format(*torch.cuda.get_device_capability(device))
        meta["device"]["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        meta["cuda"] = torch.version.cuda
    else:
        meta["device"]["threads"] = torch.get_num_threads()
        meta["device"]["cpus"] = os.cpu_count()
        if hasattr(os, "getloadavg"):
            # CPU timings are only as good as the machine was idle; this says how busy it was (1/5/15 min).
            meta["device"]["load_average"] = [round(x, 2) for x in os.getloadavg()]
    meta.update(git_commit())
    return meta


def default_output(device_name: str) -> Path:
    """``bench_results/<device-name>-<date>.json`` under the current folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device"
    now = _dt.datetime.now()
    path = Path("bench_results") / f"{slug}-{now:%Y-%m-%d}.json"
    # A second run on the same day keeps the first one's file.
    return path if not path.exists() else path.with_name(f"{slug}-{now:%Y-%m-%d-%H%M%S}.json")


def format_table(rows: list[dict]) -> str:
    """The measured rows as an aligned text table, then one line per distinct reason something was skipped."""
    header = ("op", "backend", "shape", "mode", "ms", "vs ref", "peak MiB")
    lines = []
    for r in rows:
        if r["status"] != "ok":
            continue
        speed = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        peak = f"{r['peak_extra_mib']:.1f}" if r["peak_extra_mib"] is not None else "-"
        lines.append(
            (r["bench"], r["backend"], shape_str(r["shape"]), r["mode"], f"{r['ms']:.3f}", speed, peak)
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    right = {4, 5, 6}

    def fmt(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
    not_run: dict[tuple[str, str, str, str], int] = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r["status"], r["bench"], r["backend"], r["reason"])
            not_run[key] = not_run.get(key, 0) + 1
    if not_run:
        out.append("")
        for (status, bench, backend, reason), n in not_run.items():
            out.append(f"{status}: {bench}/{backend} ({n} case{'s' if n > 1 else ''}): {reason}")
    return "\n".join(out)
