"""The benchmark harness runs end to end on a tiny grid and records what it measured. Timings are never
asserted on: benchmarks measure, tests assert (docs/design.md)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from seqzoo.eval import bench
from seqzoo.ops import list_ops, record_calls


def parse(*argv: str) -> argparse.Namespace:
    return bench.configure_parser(argparse.ArgumentParser(prog="seqzoo bench")).parse_args(list(argv))


@pytest.fixture
def no_triton_interpreter(monkeypatch):
    # conftest turns the interpreter on for the kernel tests; a benchmark would only time the interpreter.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_tiny_cpu_run_records_every_available_backend_and_mode(tmp_path, capsys, no_triton_interpreter):
    out = tmp_path / "results.json"
    args = parse(
        "attention",
        "causal_conv1d",
        "--quick",
        "--set",
        "T=16",
        "--set",
        "B=1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
    )
    assert bench.main(args) == 0

    results = json.loads(out.read_text())
    assert results["device"]["type"] == "cpu" and results["device"]["name"]
    assert results["torch"] == torch.__version__
    for key in ("date", "triton", "commit", "settings"):
        assert key in results
    rows = results["rows"]
    assert {tuple(r["shape"].items()) for r in rows} == {
        (("B", 1), ("T", 16), ("H", 4), ("D", 64)),
        (("B", 1), ("T", 16), ("D", 256), ("W", 4)),
    }, "--set replaces T and B in every shape and drops the duplicates"

    for op_name in ("attention", "causal_conv1d"):
        op = list_ops()[op_name]
        available = {name for name, status in op.backends("cpu").items() if status == "available"}
        assert {"reference", "torch"} <= available
        for backend in op.backend_names():
            for mode in ("fwd", "fwd+bwd"):
                [row] = [r for r in rows if (r["op"], r["backend"], r["mode"]) == (op_name, backend, mode)]
                if backend in available:
                    assert row["status"] == "ok", row
                    assert row["ms"] > 0 and row["repeats"] == 1
                    assert row["peak_extra_mib"] is None or row["peak_extra_mib"] >= 0
                    assert row["speedup_vs_reference"] > 0
                else:
                    assert row["status"] == "skipped" and row["reason"] and row["ms"] is None

    table = capsys.readouterr().out
    assert "causal_conv1d" in table and "fwd+bwd" in table and str(out) in table


def test_reference_is_skipped_above_max_ref_t(tmp_path, no_triton_interpreter):
    out = tmp_path / "r.json"
    args = parse(
        "causal_conv1d",
        "--set",
        "T=8,32",
        "--set",
        "B=1",
        "--set",
        "D=8",
        "--max-ref-T",
        "16",
        "--backends",
        "reference,torch",
        "--modes",
        "fwd",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        "--quick",
    )
    assert bench.main(args) == 0
    rows = {(r["backend"], r["shape"]["T"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("reference", 8), ("torch", 8), ("reference", 32), ("torch", 32)}
    assert rows[("reference", 8)]["status"] == "ok"
    assert (
        rows[("reference", 32)]["status"] == "skipped" and "--max-ref-T" in rows[("reference", 32)]["reason"]
    )
    assert rows[("torch", 32)]["status"] == "ok" and rows[("torch", 32)]["speedup_vs_reference"] is None


def test_interpreted_triton_is_not_timed(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cases = bench.plan_cases(bench.select_benches(["causal_conv1d"]), torch.device("cpu"), quick=True)
    triton_cases = [c for c in cases if c.backend == "triton"]
    assert triton_cases and all(c.skip for c in triton_cases)


def test_unknown_op_is_a_clear_error(capsys):
    assert bench.main(parse("no_such_op", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "no_such_op" in err and "attention" in err and "causal_conv1d" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attention", "--backends", "nope"], "unknown backend"),
        (["attention", "--modes", "bwd"], "--modes"),
        (["attention", "--dtype", "fp8"], "--dtype"),
        (["attention", "--set", "T"], "--set"),
        (["attention", "--set", "W=4"], "no selected bench"),
    ],
)
def test_bad_options_are_clear_errors(argv, message, capsys):
    assert bench.main(parse(*argv, "--device", "cpu")) == 2
    assert message in capsys.readouterr().err


def test_builtin_benches_and_registration():
    benches = bench.list_benches()
    assert {"attention", "causal_conv1d"} <= set(benches)
    for b in benches.values():
        assert b.op is not None or b.op_name in list_ops(), f"bench {b.label} times an op that does not exist"
        shape = b.grid("cpu", quick=True)[0]
        inputs = b.make_inputs({**shape, "T": 4}, torch.float32, torch.device("cpu"))
        b.resolve_op(list_ops())(**inputs, **b.kwargs)  # the inputs are valid for the op

    def make(shape, dtype, device):
        return {"x": torch.randn(1, shape["T"], 2, dtype=dtype, device=device), "weight": torch.ones(2, 2)}

    try:
        registered = bench.register_bench("causal_conv1d", make, [{"T": 4}], label="test-conv")
        assert bench.select_benches(["test-conv"]) == [registered]
        assert registered.grid("cpu", quick=True) == [{"T": 4}]
        # An op name selects every bench of that op.
        assert registered in bench.select_benches(["causal_conv1d"])
    finally:
        bench._BENCHES.pop("test-conv", None)


def test_overrides_and_table_helpers():
    assert bench.parse_overrides(["T=8,16", "B=2"]) == {"T": [8, 16], "B": [2]}
    grid = bench.apply_overrides([{"B": 1, "T": 4}, {"B": 2, "T": 4}], {"T": [8, 16], "W": [3]})
    assert grid == [{"B": 1, "T": 8}, {"B": 1, "T": 16}, {"B": 2, "T": 8}, {"B": 2, "T": 16}]
    rows = [
        {"bench": "x", "backend": "reference", "shape": {"T": 4}, "mode": "fwd", "status": "ok", "ms": 4.0},
        {"bench": "x", "backend": "torch", "shape": {"T": 4}, "mode": "fwd", "status": "ok", "ms": 1.0},
        {"bench": "x", "backend": "torch", "shape": {"T": 4}, "mode": "fwd+bwd", "status": "ok", "ms": 1.0},
    ]
    for r in rows:
        r.update(speedup_vs_reference=None, peak_extra_mib=None, reason=None)
    bench.add_speedups(rows)
    assert [r["speedup_vs_reference"] for r in rows] == [1.0, 4.0, None]
    assert "4.00x" in bench.format_table(rows)


def test_mixer_benches_time_the_layer_on_each_backend(tmp_path, no_triton_interpreter):
    op = bench.mixer_op("rglru", n_heads=2)
    assert op.backend_names() == ["reference", "torch", "triton"]
    x = torch.randn(2, 9, 8)
    # One layer per backend, built from the same seed: the backends differ in speed, not in what they compute.
    torch.testing.assert_close(op(x, backend="torch"), op(x, backend="reference"), rtol=1e-5, atol=1e-5)
    out = tmp_path / "m.json"
    args = parse("rglru_mixer", "mamba_mixer", "--quick", "--set", "T=8", "--repeats", "1", "--warmup", "0")
    args.out, args.no_progress, args.device = str(out), True, "cpu"
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    ok = {(r["bench"], r["backend"], r["mode"]) for r in rows if r["status"] == "ok"}
    for label in ("rglru_mixer", "mamba_mixer"):
        for backend in ("reference", "torch"):
            assert {(label, backend, "fwd"), (label, backend, "fwd+bwd")} <= ok
        assert all(r["status"] == "skipped" for r in rows if r["bench"] == label and r["backend"] == "triton")


def test_s4d_ssm_bench_runs_one_ssm_two_ways():
    b = bench.list_benches()["s4d_ssm"]
    torch.manual_seed(0)
    inputs = b.make_inputs({"B": 2, "T": 50, "H": 4, "N": 8}, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(
        b.op(**inputs, backend="recurrence"), b.op(**inputs, backend="convolution"), rtol=1e-4, atol=1e-4
    )


def test_mqar_step_time_tool_runs_and_writes_json(tmp_path):
    """The step-time tool (a measurement, not a test of speed): both head variants run and are recorded."""
    import json

    from seqzoo.eval.step_time import main

    out = tmp_path / "step.json"
    assert (
        main(
            [
                "--mixers",
                "short_conv",
                "--repeats",
                "1",
                "--inner",
                "1",
                "--profile",
                "short_conv",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["mixer"] == "short_conv" and row["full_head_ms"] > 0 and row["scored_head_ms"] > 0
    assert set(row["profile_ms"]) >= {"matrix products"} and data["meta"]["sweep"] == "mqar-cpu"


def test_an_option_the_grid_sets_follows_each_shape():
    # combiner's grid says segment None (ceil(sqrt T) at each length): the value must reach the op at every
    # shape, not be frozen at the spec example's default (segment 2 made the committed bench O(T^2)).
    b = bench.list_benches()["combiner"]
    assert "segment" not in b.kwargs
    for segment in (None, 7):
        shape = {"B": 1, "T": 50, "H": 1, "D": 4, "segment": segment}
        inputs = b.make_inputs(shape, torch.float32, torch.device("cpu"))
        assert inputs["segment"] == segment
    for mode in bench.MODES:
        fn = bench._case_fn(list_ops()["combiner"], "torch", inputs, b.kwargs, mode)
        with record_calls() as calls:
            fn()
        assert [c.arguments["segment"] for c in calls if c.name == "combiner"] == [7], mode
