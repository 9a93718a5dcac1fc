"""The one sweep runner (seqzoo.eval.sweep): hash reuse, a failing run reported, medians over seeds."""

from __future__ import annotations

import json
import math

import pytest

from seqzoo.eval import sweep as runner


def rows_of(accs: dict) -> list[dict]:
    """Rows of one cell: {lr: [accuracy per seed]}."""
    return [
        {"mixer": "m", "lr": lr, "seed": seed, "accuracy": acc}
        for lr, per_seed in accs.items()
        for seed, acc in enumerate(per_seed)
    ]


def test_the_learning_rate_is_chosen_on_the_median_not_on_one_lucky_seed():
    # lr 1e-2 has the best single run (0.9) but the worse median (0.2); lr 3e-3 is steadier (0.5).
    (cell,) = runner.cell_medians(
        rows_of({1e-2: [0.9, 0.1, 0.2], 3e-3: [0.5, 0.4, 0.6]}), ("mixer",), "accuracy", "lr"
    )
    assert cell["lr"] == 3e-3 and cell["accuracy"] == 0.5
    assert (cell["accuracy_min"], cell["accuracy_max"], cell["seeds"]) == (0.4, 0.6, 3)
    assert [r["seed"] for r in cell["runs"]] == [0, 1, 2]
    assert runner.format_median(cell, "accuracy") == "0.500 [0.400-0.600]"
    assert runner.error_bars([cell], "accuracy", 100) == (
        [50.0],
        [pytest.approx(10.0)],
        [pytest.approx(10.0)],
    )


def test_median_ties_even_counts_and_diverged_runs():
    (tie,) = runner.cell_medians(rows_of({1e-2: [0.3, 0.5], 3e-3: [0.5, 0.3]}), ("mixer",), "accuracy", "lr")
    assert tie["lr"] == 1e-2 and tie["accuracy"] == pytest.approx(0.4)  # a tie keeps the first listed
    assert runner.median([0.1, float("nan"), 0.7]) == 0.1  # a diverged run (NaN) counts as the worst
    assert math.isnan(runner.median([float("nan"), 0.5]))
    (nan_cell,) = runner.cell_medians(rows_of({1e-2: [float("nan"), 0.2, 0.3]}), ("mixer",), "accuracy")
    assert (
        nan_cell["accuracy"] == 0.2
        and math.isnan(nan_cell["accuracy_min"])
        and nan_cell["accuracy_max"] == 0.3
    )
    with pytest.raises(ValueError, match="no values"):
        runner.median([])


def test_format_median_one_seed_and_missing_seeds():
    (one,) = runner.cell_medians(rows_of({1e-2: [0.253]}), ("mixer",), "accuracy")
    assert runner.format_median(one, "accuracy") == "0.253"
    (two,) = runner.cell_medians(rows_of({1e-2: [0.41, 0.43]}), ("mixer",), "accuracy")
    assert runner.format_median(two, "accuracy", 100, 1, seeds=3) == "42.0 [41.0-43.0] (2 seeds)"


def tiny_config(out, mixer="short_conv", seed=0) -> dict:
    return {
        "name": "",
        "model": {"d_model": 16, "n_layers": 1, "mlp": "none", "mixer": [{"name": mixer}]},
        "data": {
            "source": "task",
            "name": "mqar",
            "task_args": {
                "vocab_size": 64,
                "num_train": 32,
                "num_test": 16,
                "seq_len": 16,
                "num_kv_pairs": 2,
            },
        },
        "optim": {"lr": 3e-3},
        "train": {
            "steps": 2,
            "batch_size": 8,
            "eval_every": 2,
            "eval_batches": 1,
            "ckpt_every": 2,
            "seed": seed,
            "device": "cpu",
            "out_dir": str(out / "runs" / "{name}"),
        },  # fmt: skip
        "log": {"progress": False, "tensorboard": False, "plot": False, "every": 1},
    }


def planned(out, mixer, seed=0) -> dict:
    config = tiny_config(out, mixer, seed)
    digest = runner.config_hash(config)
    key = f"{mixer}-s{seed}-{digest[:8]}"
    config["name"] = key
    return {
        "key": key,
        "mixer": mixer,
        "seed": seed,
        "config": config,
        "hash": digest,
        "dir": out / "runs" / key,
    }


def recording_task(seen: dict) -> runner.SweepTask:
    def markdown(rows):
        seen["markdown"] = rows
        return "table\n"

    return runner.SweepTask(
        desc="test runs",
        row=lambda run, summary: {"mixer": run["mixer"], "seed": run["seed"], "accuracy": summary["val_acc"]},
        markdown=markdown,
        plot=lambda out, rows: seen.setdefault("plots", []).append(len(rows)),
    )


# Two workers: each spawned process imports torch anew (seconds; a minute and more on a loaded 2-core machine).
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_broken_run_is_reported_and_the_others_finish_then_are_reused(tmp_path, workers, capsys):
    """In the caller's process (1 worker) and in spawned workers (2): the run that raises is named, the rest
    are written out; a second sweep reuses what finished and tries the broken run again (failing again)."""
    runs = [
        planned(tmp_path, "short_conv"),
        planned(tmp_path, "no_such_mixer"),
        planned(tmp_path, "short_conv", 1),
    ]
    seen: dict = {}
    rows = runner.run_sweep(runs, tmp_path, recording_task(seen), workers=workers, threads=1, progress=False)
    assert [(r["mixer"], r["seed"]) for r in rows] == [("short_conv", 0), ("short_conv", 1)]
    assert len(rows.failures) == 1 and rows.failures[0].startswith(runs[1]["key"] + ": ")
    assert "no_such_mixer" in capsys.readouterr().err
    assert seen["markdown"] == list(rows) and seen["plots"] == [2]
    assert (tmp_path / "results.md").read_text() == "table\n"
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "mixer,seed,accuracy" and len(csv_lines) == 3
    for r in (runs[0], runs[2]):
        assert (r["dir"] / runner.HASH_FILE).read_text().strip() == r["hash"] and runner.is_finished(r)
    assert not runner.is_finished(runs[1])

    mtimes = [(r["dir"] / "summary.json").stat().st_mtime_ns for r in (runs[0], runs[2])]
    # (In the caller's process: a second pool would only repeat the workers' start-up, seconds of imports.)
    again = runner.run_sweep(runs, tmp_path, recording_task({}), workers=1, threads=1, progress=False)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows] and len(again.failures) == 1
    assert [(r["dir"] / "summary.json").stat().st_mtime_ns for r in (runs[0], runs[2])] == mtimes


def test_a_run_is_reused_only_with_its_own_hash(tmp_path):
    run = planned(tmp_path, "short_conv")
    assert not runner.is_finished(run)
    runner.run_sweep([run], tmp_path, recording_task({}), progress=False)
    assert runner.is_finished(run)
    assert not runner.is_finished({**run, "hash": "0" * 64})  # a folder written by another config
    # The hash leaves out where a run is written and how it logs; the seed is in it.
    moved = {**run["config"], "train": {**run["config"]["train"], "out_dir": "elsewhere"}, "log": {}}
    assert runner.config_hash(moved) == run["hash"]
    assert planned(tmp_path, "short_conv", seed=1)["hash"] != run["hash"]
    summary = json.loads((run["dir"] / "summary.json").read_text())
    assert summary["steps"] == 2


def test_a_run_repeats_bit_for_bit_on_one_machine(tmp_path):
    """What the README's determinism sentence rests on: the same planned config, trained twice, logs the same
    loss at every step and the same validation numbers (another CPU may not: see eval/sweep.py)."""
    from seqzoo.train.metrics import read_metrics

    losses, summaries = [], []
    for copy in ("a", "b"):
        run = planned(tmp_path / copy, "short_conv")
        runner.run_worker(run["config"], run["hash"], threads=1)
        losses.append([r["loss"] for r in read_metrics(run["dir"]) if "loss" in r])
        summary = json.loads((run["dir"] / "summary.json").read_text())
        summaries.append({k: summary[k] for k in ("val_loss", "val_acc", "steps")})
    assert len(losses[0]) == 2 and losses[0] == losses[1] and summaries[0] == summaries[1]
