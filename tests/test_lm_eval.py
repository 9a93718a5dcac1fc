"""lm-eval-harness: the ``seqzoo`` harness model against the model's own numbers, the offline tasks,
``seqzoo eval``, ``lm_eval --model seqzoo``, ``eval.tasks`` in the recipe and the errors a user meets."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from seqzoo import CausalLM, LMConfig
from seqzoo.cli import main as cli_main
from seqzoo.eval.harness import plugin
from seqzoo.eval.harness.command import EvalError, run_eval
from seqzoo.eval.harness.model import SeqzooLM
from seqzoo.eval.harness.tasks import stdlib_tasks
from seqzoo.train.data import LMData, is_validation
from seqzoo.train.objectives import LMObjective
from seqzoo.train.tokenizers import ByteTokenizer, HFTokenizer

MIXERS = ["attention", "gla", "mamba"]  # softmax attention (KV cache), a linear RNN, a selective SSM


def make_run(tmp_path: Path, mixer: str = "attention", seed: int = 0, **config) -> Path:
    """A run folder as seqzoo train writes it (model/, tokenizer.txt), with an untrained tiny model."""
    torch.manual_seed(seed)
    model = CausalLM(LMConfig(vocab_size=256, d_model=32, n_layers=2, mixer=mixer, **config))
    run = tmp_path / f"run-{mixer}"
    model.save(run / "model")
    ByteTokenizer().save(run)
    return run


def harness_model(run: Path, **kwargs) -> SeqzooLM:
    return SeqzooLM(path=str(run), max_length=kwargs.pop("max_length", 64), **kwargs)


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def direct_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1]).float(), -1)[0]
    n = len(continuation_ids)
    target = torch.tensor(continuation_ids)
    scored = logp[-n:]
    return scored.gather(-1, target[:, None]).sum().item(), bool((scored.argmax(-1) == target).all())


@pytest.mark.parametrize("mixer", MIXERS)
def test_loglikelihood_equals_the_models_own_logprobs(tmp_path, mixer):
    lm = harness_model(make_run(tmp_path, mixer), batch_size=3)
    pairs = [
        ("def f(x):\n    return", " x + 1"),
        ("import os", "\n"),
        ("a", "bcdefgh"),
        ("class A:\n    pass\n" * 3, "class B"),  # longest: padding for the others in its batch
        ("", "print(1)"),  # empty context: the end-of-text id is the context
        ("x = 1  ", "y"),  # trailing spaces move to the continuation, as the harness does
    ]
    got = lm.loglikelihood(requests("loglikelihood", pairs))
    tok = ByteTokenizer()
    for (context, continuation), (logp, greedy) in zip(pairs, got):
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        want = direct_logprob(lm.model, [tok.eos_id, *tok.encode(context)], tok.encode(continuation))
        assert logp == pytest.approx(want[0], abs=1e-4, rel=1e-5)
        assert greedy == want[1]
        assert logp < 0


def test_loglikelihood_with_a_bpe_tokenizer(tmp_path):
    """A BPE run: the context and continuation split as the harness does (encode the whole, cut at the
    context's length), scored against the model's own log-probabilities."""
    corpus = ["def add(a, b):\n    return a + b\n", "import os\nimport sys\n", "class A:\n    pass\n"] * 20
    tok = HFTokenizer.train(corpus, vocab_size=300)
    torch.manual_seed(0)
    model = CausalLM(LMConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, mixer="gla"))
    run = tmp_path / "bpe-run"
    model.save(run / "model")
    tok.save(run)
    lm = harness_model(run)
    pairs = [("def add(a, b):\n", "    return a + b"), ("import", " sys"), ("", "class A:")]
    got = lm.loglikelihood(requests("loglikelihood", pairs))
    for (context, continuation), (logp, _) in zip(pairs, got):
        spaces = len(context) - len(context.rstrip())  # trailing whitespace moves to the continuation
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if context:
            ctx = [tok.eos_id, *tok.encode(context)]
            cont = [tok.eos_id, *tok.encode(context + continuation)][len(ctx) :]
        else:
            ctx, cont = [tok.eos_id], tok.encode(continuation)
        assert logp == pytest.approx(direct_logprob(lm.model, ctx, cont)[0], abs=1e-4, rel=1e-5)


def test_loglikelihood_keeps_the_last_max_length_tokens(tmp_path):
    lm = harness_model(make_run(tmp_path), max_length=16)
    context, continuation = "0123456789" * 4, "abc"
    ((logp, _),) = lm.loglikelihood(requests("loglikelihood", [(context, continuation)]))
    ids = [0, *ByteTokenizer().encode(context + continuation)][-17:]
    want, _ = direct_logprob(lm.model, ids[:-3], ids[-3:])
    assert logp == pytest.approx(want, abs=1e-4)


def test_greedy_flag_follows_the_argmax(tmp_path):
    lm = harness_model(make_run(tmp_path))
    context = [0, *ByteTokenizer().encode("hello")]
    with torch.no_grad():
        best = int(lm.model(torch.tensor([context]))[0, -1].argmax())
    (_, greedy_best), (_, greedy_other) = lm.score_tokens([(context, [best]), (context, [(best + 1) % 256])])
    assert greedy_best and not greedy_other


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_rolling_loglikelihood_equals_the_recipes_validation_loss(tmp_path, mixer):
    """Windows of the training length: the harness's rolling windows are the recipe's validation windows."""
    seq_len = 32
    lm = harness_model(make_run(tmp_path, mixer), max_length=seq_len)
    text = "".join(chr(32 + (i * 7) % 90) for i in range(3 * seq_len))  # 3 windows of bytes
    (rolling,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    stream = torch.tensor([0, *ByteTokenizer().encode(text)])  # the recipe packs: eos, document
    data = LMData(train=stream, val=stream, seq_len=seq_len, bytes_per_token=1.0, vocab_size=256)
    val = LMObjective(batch_size=2, eval_batches=4).evaluate(lm.model, data, "cpu", contextlib.nullcontext)
    assert rolling == pytest.approx(-val["val_loss"] * 3 * seq_len, rel=1e-5)


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_until_equals_greedy_generate(tmp_path, mixer):
    lm = harness_model(make_run(tmp_path, mixer), max_length=64)
    tok = ByteTokenizer()
    context = "def add(a, b):\n    "
    ids = torch.tensor([[0, *tok.encode(context)]])
    n = 24
    out = lm.model.generate(ids, max_new_tokens=n, temperature=0.0, eos_token_id=0)
    full = tok.decode(out[0, ids.shape[1] :].tolist())
    # A stop string taken from the greedy text itself, so the stop path runs; and one that never occurs.
    stops = [c for c in full[3:] if c.isascii() and c.isprintable()]
    assert stops, f"no printable ASCII character in the greedy output {full!r}"
    stop = stops[0]
    got = lm.generate_until(
        requests(
            "generate_until",
            [
                (context, {"until": [stop], "max_gen_toks": n}),
                (context, {"until": ["\x01"], "max_gen_toks": n}),
            ],
        )
    )
    assert got[0] == full.split(stop)[0]
    assert got[1] == full


def test_generate_until_refuses_sampling(tmp_path):
    lm = harness_model(make_run(tmp_path))
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until(requests("generate_until", [("x", {"until": ["\n"], "do_sample": True})]))


def test_model_args_errors(tmp_path):
    with pytest.raises(ValueError, match="path="):
        SeqzooLM()
    with pytest.raises(FileNotFoundError, match="no run folder"):
        SeqzooLM(path=str(tmp_path / "missing"))
    run = make_run(tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        SeqzooLM(path=str(run), batch_size="many")
    with pytest.raises(ValueError, match="dtype"):
        SeqzooLM(path=str(run), dtype="float8")


def test_max_length_defaults_to_the_runs_training_length(tmp_path):
    run = make_run(tmp_path)
    (run / "config.yaml").write_text("name: r\ndata:\n  seq_len: 48\n")
    assert SeqzooLM(path=str(run)).max_length == 48
    run_pos = make_run(tmp_path, "gla", position_embeddings=40)
    (run_pos / "config.yaml").write_text("name: r\ndata:\n  seq_len: 48\n")
    assert SeqzooLM(path=str(run_pos)).max_length == 40  # learned positions end there


# -- the offline tasks -------------------------------------------------------------------------------


def test_stdlib_tasks_read_only_held_out_files_and_are_deterministic():
    sources = dict(stdlib_tasks.held_out_files())
    assert sources and all(is_validation(key, 0.05) for key in sources)  # never in the training split
    mc = stdlib_tasks.multiple_choice(n_items=40)["test"]
    assert len(mc) >= 35
    assert mc[:] == stdlib_tasks.multiple_choice(n_items=40)["test"][:]
    gen = {row["context"]: row["target"] for row in stdlib_tasks.completion(n_items=40)["test"]}
    for row in mc:
        assert row["file"] in sources
        assert len(row["choices"]) == 4 == len(set(row["choices"]))
        real = row["choices"][row["label"]]
        line = row["context"].split("\n")[-1] + real  # the context ends inside a line of the file
        assert line in [ln.rstrip() for ln in sources[row["file"]].split("\n")]
        assert gen[row["context"]] == real  # the generation task asks for the same rest
    assert len({row["label"] for row in mc}) == 4  # the answer is not always in one place
    docs = stdlib_tasks.documents()["test"]
    assert len(docs) > 10 and all(sources[r["file"]].startswith(r["text"]) for r in docs)


def test_seqzoo_eval_end_to_end(tmp_path, capsys):
    run = make_run(tmp_path)
    out = tmp_path / "results.json"
    code = cli_main(
        [
            "eval",
            str(run),
            "--tasks",
            "seqzoo_stdlib,seqzoo_stdlib_gen,seqzoo_stdlib_ppl",
            "--limit",
            "6",
            "--max-length",
            "64",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for name in (
        "seqzoo_stdlib",
        "seqzoo_stdlib_gen",
        "seqzoo_stdlib_ppl",
        "acc",
        "exact_match",
        "bits_per_byte",
    ):
        assert name in printed
    results = json.loads(out.read_text())
    acc = results["results"]["seqzoo_stdlib"]["acc,none"]
    assert 0 <= acc <= 1
    assert results["results"]["seqzoo_stdlib_ppl"]["bits_per_byte,none"] > 1  # an untrained model
    assert results["seqzoo"]["run_dir"] == str(run)


def test_seqzoo_eval_writes_into_the_run_folder(tmp_path):
    run = make_run(tmp_path)
    results = run_eval(run, "seqzoo_stdlib", limit=2, max_length=256, num_fewshot=1, batch_size=3)
    assert results["n-shot"]["seqzoo_stdlib"] == 1
    written = Path(results["seqzoo"]["results_file"])
    assert written.parent == run / "lm_eval" and written.is_file()
    assert not list(written.parent.glob("*.tmp"))


def test_seqzoo_eval_errors_name_the_problem(tmp_path, capsys):
    run = make_run(tmp_path)
    with pytest.raises(EvalError, match="seqzoo_stdlb.*did you mean seqzoo_stdlib"):
        run_eval(run, "seqzoo_stdlb", max_length=64)
    with pytest.raises(EvalError, match="give at least one task"):
        run_eval(run, " , ")
    with pytest.raises(EvalError, match="neither a final model nor a checkpoint"):
        run_eval(tmp_path, "seqzoo_stdlib")
    assert cli_main(["eval"]) == 2
    assert "give a run folder" in capsys.readouterr().err


def test_a_task_whose_dataset_is_not_reachable_gets_a_clear_error(tmp_path):
    """No network here: a hub task fails at once with the task, its dataset and what to provide."""
    run = make_run(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "seqzoo", "eval", str(run), "--tasks", "lambada_openai", "--limit", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "task 'lambada_openai'" in proc.stderr
    assert "EleutherAI/lambada_openai" in proc.stderr
    assert "HF_DATASETS_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr


def test_lm_eval_cli_finds_the_seqzoo_model(tmp_path):
    """The harness's own command, as users type it: the installed .pth registers `seqzoo`."""
    run = make_run(tmp_path)
    lm_eval = Path(sys.executable).parent / "lm_eval"
    assert lm_eval.is_file(), "lm-eval's console script is missing (pip install 'seqzoo[eval]')"
    tasks_path = subprocess.run(
        [sys.executable, "-m", "seqzoo", "eval", "--tasks-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    proc = subprocess.run(
        [
            str(lm_eval),
            "--model",
            "seqzoo",
            "--model_args",
            f"path={run},max_length=64",
            "--tasks",
            "seqzoo_stdlib",
            "--limit",
            "4",
            "--include_path",
            tasks_path,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seqzoo_stdlib" in proc.stdout and "acc" in proc.stdout


def test_plugin_recognises_the_harness_cli(monkeypatch):
    for argv, orig, want in [
        (["/venv/bin/lm_eval", "--tasks", "x"], ["python", "/venv/bin/lm_eval"], True),
        (["/venv/bin/lm-eval"], ["python", "/venv/bin/lm-eval"], True),
        (["-m", "--tasks"], ["python", "-m", "lm_eval", "--tasks"], True),
        (["train.py"], ["python", "train.py", "lm_eval"], False),
        (["-c"], ["python", "-c", "pass"], False),
    ]:
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert plugin.harness_cli_running() is want, argv


# -- the recipe --------------------------------------------------------------------------------------


def test_recipe_runs_the_harness_after_training(tmp_path):
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    config = load_config(
        {
            "name": "t",
            "model": {"d_model": 32, "n_layers": 1, "mixer": "gla"},
            "data": {"source": "builtin", "max_bytes": 60_000, "seq_len": 64},
            "train": {"steps": 2, "batch_size": 4, "eval_batches": 1, "out_dir": str(tmp_path / "run")},
            "log": {"progress": False, "tensorboard": False, "plot": False},
            "eval": {"tasks": ["seqzoo_stdlib"], "limit": 3},
        }
    )
    summary = train(config)
    assert set(summary["lm_eval"]["seqzoo_stdlib"]) >= {"acc,none", "acc_norm,none"}
    assert list((tmp_path / "run" / "lm_eval").glob("results-*.json"))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(saved["lm_eval"]["seqzoo_stdlib"]["acc,none"])


def test_eval_tasks_are_refused_for_task_runs():
    from seqzoo.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.tasks"):
        load_config({"data": {"source": "task", "name": "mqar"}, "eval": {"tasks": ["seqzoo_stdlib"]}})
