"""The seqzoo command and the examples run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from seqzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_mixers_and_op_backends(capsys):
    assert main(["list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("attention", "sliding_window", "short_conv", "causal_conv1d", "reference", "paper:"):
        assert word in out


def test_version(capsys):
    assert main(["version"]) == 0
    assert "seqzoo 0.1.0" in capsys.readouterr().out


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "seqzoo", "version"], capture_output=True, text=True, check=True
    )
    assert "torch" in out.stdout


def test_demo_tiny_run(capsys):
    args = [
        "demo",
        "--task",
        "lm",
        "--mixers",
        "short_conv",
        "hybrid",
        "--steps",
        "30",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--d-model",
        "32",
        "--eval-batches",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| short_conv" in out and "| hybrid" in out and "unigram entropy" in out


# Arguments for examples that have a quick mode (the full run takes minutes).
EXAMPLE_ARGS = {
    "linearize_tiny.py": ["--quick"],
    # a shorter signal and a smaller state (test_hippo.py checks the full size's errors in-process)
    "hippo_reconstruction.py": ["--T", "1.5", "--N", "32", "--no-plot"],
}


# Examples run in this process (runpy) rather than a fresh one: hf_convert.py imports transformers, whose import
# (seconds) tests/test_hf_interop.py pays in this process anyway.
IN_PROCESS = {"hf_convert.py"}


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(example, monkeypatch):
    if example in IN_PROCESS:
        import runpy

        monkeypatch.setattr(sys, "argv", [example, *EXAMPLE_ARGS.get(example, [])])
        runpy.run_path(str(ROOT / "examples" / example), run_name="__main__")
        return
    # A generous limit: lm_eval_run.py trains and scores (~30 s alone), and a loaded 2-core machine is 4x slower.
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), *EXAMPLE_ARGS.get(example, [])],
        check=True,
        capture_output=True,
        timeout=600,
    )


def test_demo_mqar_runs_one_mixer_per_family_or_all(monkeypatch, tmp_path):
    """make demo's default is a mixer of each family from the mqar-cpu grid; --mixers all is the whole grid."""
    from seqzoo.eval import demo, mqar
    from seqzoo.eval.sweep import SweepRows

    seen = {}

    def fake_run_sweep(sweep, progress=True):
        seen["mixers"] = [m if isinstance(m, str) else m["name"] for m in sweep.mixer_entries()]
        seen["seeds"] = sweep.seed_list()
        return SweepRows(failures=seen.get("failures", []))

    monkeypatch.setattr(mqar, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(mqar, "markdown_table", lambda rows: "")
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    # One per family, the records' demo=True, in the grid's order: the list the demo table was made with.
    assert seen["mixers"] == demo.demo_mqar_mixers() == [
        "mamba", "gated_deltanet", "mamba2", "hyena", "based", "gla", "flow", "s4d", "rglru", "attention",
        "sliding_window", "short_conv",
    ]  # fmt: skip
    grid = [m if isinstance(m, str) else m["name"] for m in mqar.load_sweep("mqar-cpu").mixer_entries()]
    assert set(demo.demo_mqar_mixers()) < set(grid)
    assert main(["demo", "--mixers", "all", "--out-dir", str(tmp_path)]) == 0
    assert seen["mixers"] == grid and seen["seeds"] == [0, 1, 2]  # each cell: the median of three seeds
    assert main(["demo", "--seeds", "0", "--out-dir", str(tmp_path)]) == 0
    assert seen["seeds"] == [0]  # a quicker look: one seed
    seen["failures"] = ["mamba-...: RuntimeError: boom"]
    assert main(["demo", "--out-dir", str(tmp_path)]) == 1  # a failed run: the table, then a failing exit
