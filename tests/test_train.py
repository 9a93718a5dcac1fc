"""The training recipe: configs, data sources, tokenizers, the loop, exact resume, DDP, generate."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from seqzoo.train.config import ConfigError, available_configs, load_config
from seqzoo.train.data import IGNORE_INDEX, TaskData, build_data, pack, split_documents
from seqzoo.train.loop import lr_factor, param_groups, train
from seqzoo.train.metrics import read_metrics
from seqzoo.train.tokenizers import ByteTokenizer, HFTokenizer, build_tokenizer

pytest.importorskip("datasets", reason="the train extra is not installed")


def tiny_config(out_dir, **sections):
    """A config small enough to train in seconds on one CPU core."""
    raw = {
        "name": "t",
        "model": {"d_model": 32, "n_layers": 2, "mixer": ["short_conv", {"name": "attention", "n_heads": 2}]},
        "data": {"source": "builtin", "max_bytes": 200_000, "seq_len": 64},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {
            "steps": 30,
            "batch_size": 8,
            "eval_every": 15,
            "eval_batches": 4,
            "ckpt_every": 10,
            "out_dir": str(out_dir),
            "threads": 1,
        },
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


# -- configs -------------------------------------------------------------------------------------------


def test_every_shipped_config_validates():
    names = available_configs()
    assert any(n.startswith("tiny-") for n in names) and any(n.startswith("lm-125m") for n in names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


@pytest.mark.parametrize("name", available_configs())
def test_every_shipped_config_builds_its_model(name):
    from seqzoo import CausalLM, LMConfig
    from seqzoo.train.build import model_config

    cfg = load_config(name)
    model = model_config(cfg, cfg.data.task_args.get("seq_len", cfg.data.seq_len))
    tok = cfg.data.tokenizer
    model["vocab_size"] = model["vocab_size"] or (256 if tok.kind == "bytes" else tok.vocab_size)
    if cfg.data.source == "task":  # the task sets the vocabulary: make the data as training would
        from seqzoo.eval.tasks import get_task

        args = {**cfg.data.task_args, "num_train": 8, "num_test": 8}
        model["vocab_size"] = get_task(cfg.data.name)(**args).vocab_size
    if cfg.model.kind == "classifier":  # LRA: classes and vocabulary come from the task
        from types import SimpleNamespace

        from seqzoo.eval.lra import TASKS
        from seqzoo.train.build import build_model

        info = TASKS[cfg.data.name]
        pairs = cfg.data.name == "retrieval"
        data = SimpleNamespace(seq_len=64, vocab_size=257, n_classes=info.n_classes, pairs=pairs)
        if cfg.model.d_model * cfg.model.n_layers > 1024:  # the GPU configs: built without memory
            with torch.device("meta"):
                build_model(cfg, data)
            return
        clf = build_model(cfg, data).eval()
        x = torch.randint(1, 257, (2, 2, 64) if pairs else (2, 64))
        assert clf(x).shape == (2, info.n_classes)
    elif cfg.model.kind == "sashimi":  # the audio model: its levels' lengths from the config's windows
        from seqzoo.models import Sashimi
        from seqzoo.train.build import sashimi_config

        sashimi = Sashimi(sashimi_config(cfg, cfg.data.seq_len, 256)).eval()
        x = torch.randint(0, 256, (1, cfg.data.seq_len))
        assert sashimi(x).shape == (1, cfg.data.seq_len, 256)
    elif not name.startswith("lm-"):
        lm = CausalLM(LMConfig(**model))
        v = model["vocab_size"]
        assert lm(torch.randint(0, v, (1, 16))).shape == (1, 16, v)
    else:  # the GPU configs: built without memory, and about 125M parameters
        with torch.device("meta"):
            lm = CausalLM(LMConfig(**model))
        assert 80e6 < lm.num_parameters() < 160e6


def test_overrides_apply_and_parse_values():
    cfg = load_config(
        "tiny-attention",
        [
            "optim.lr=1e-3",
            "model.mixer=short_conv",
            "train.steps=7",
            "model.mixer_kwargs={width: 3}",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.model.mixer == "short_conv" and cfg.train.steps == 7
    assert cfg.optim.betas == (0.8, 0.9) and cfg.model.mixer_kwargs == {"width": 3}


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["optim.lrr=1"], ["optim.lrr", "unknown key"]),
        (["optim.lr=-1"], ["optim.lr", "greater than 0"]),
        (["train.steps=many"], ["train.steps", "integer"]),
        (["optim.schedule=step"], ["optim.schedule", "cosine"]),
        (["model.mixer=nope"], ["model.mixer", "unknown mixer"]),
        (["train.batch_size=10", "train.grad_accum=3"], ["batch_size", "grad_accum"]),
        (["data.source=files"], ["data.paths"]),
        (["bogus.key=1"], ["bogus", "unknown key"]),
        (["optim.lr"], ["key.path=value"]),
    ],
)
def test_bad_config_errors_name_the_key(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config("tiny-attention", overrides)
    for w in words:
        assert w in str(e.value)


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match="tiny-attention"):
        load_config("no-such-config")


def test_cli_rejects_bad_config(capsys):
    from seqzoo.cli import main

    assert main(["train", "tiny-attention", "optim.lr=0"]) == 2
    assert "optim.lr" in capsys.readouterr().err


# -- optimisation pieces -------------------------------------------------------------------------------


def test_param_groups_exclude_norms_biases_and_marked_params():
    from seqzoo import CausalLM, LMConfig

    m = CausalLM(LMConfig(d_model=16, n_layers=1, mixer="short_conv"))
    m.backbone.blocks[0].mixer.conv.weight._optim = {"lr": 1e-3, "weight_decay": 0.0}
    groups = param_groups(m, lr=0.01, weight_decay=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.final_norm.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.mixer.conv.bias"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.mixer.in_proj.weight"]["weight_decay"] == 0.1
    assert by_name["backbone.blocks.0.mixer.conv.weight"]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule(schedule):
    cfg = load_config(
        "tiny-attention",
        [f"optim.schedule={schedule}", "optim.warmup_steps=10", "train.steps=100", "optim.min_lr_ratio=0.1"],
    )
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    if schedule == "constant":
        assert f[99] == 1.0
    else:
        assert f[99] == pytest.approx(0.1, abs=0.02) and all(a >= b for a, b in zip(f[10:], f[11:]))


# -- data and tokenizers -------------------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint():
    docs = [(f"k{i}", f"text {i}") for i in range(200)]
    tr, va = split_documents(iter(docs), 0.1)
    tr2, va2 = split_documents(iter(docs), 0.1)
    assert tr == tr2 and va == va2 and not set(tr) & set(va) and 5 < len(va) < 40


def test_packing_separates_documents():
    tok = ByteTokenizer()
    stream = pack(["ab", "c"], tok)
    assert stream.tolist() == [97, 98, 0, 99, 0]


def test_bpe_trains_saves_and_reloads(tmp_path):
    texts = ["def foo(x):\n    return x + 1\n"] * 50 + ["class Bar:\n    pass\n"] * 50
    tok = HFTokenizer.train(texts, vocab_size=300)
    ids = tok.encode("def foo(x): return x")
    assert tok.decode(ids) == "def foo(x): return x"
    tok.save(tmp_path)
    again = build_tokenizer(
        load_config(
            "tiny-attention", ["data.tokenizer.kind=path", f"data.tokenizer.path={tmp_path}"]
        ).data.tokenizer
    )
    assert again.encode("class Bar:") == tok.encode("class Bar:") and again.eos_id == tok.eos_id


def _write_corpus(tmp_path):
    docs = [f"document number {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(60)]
    (tmp_path / "a.txt").write_text(docs[0])
    with open(tmp_path / "b.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"content": d}) + "\n")
    return docs


def test_local_files_and_hub_code_path(tmp_path):
    docs = _write_corpus(tmp_path)
    cfg = load_config(
        tiny_config(
            tmp_path,
            data={
                "source": "files",
                "paths": [str(tmp_path / "*.jsonl")],
                "text_field": "content",
                "seq_len": 32,
            },
        )
    )
    data, tok = build_data(cfg.data, lambda texts: ByteTokenizer())
    assert data.train.numel() + data.val.numel() == sum(len(d) + 1 for d in docs)
    # The hub path streams through load_dataset(name, ...): a local dataset folder takes the same code.
    hub_dir = tmp_path / "hub_dataset"
    (hub_dir / "data").mkdir(parents=True)
    os.replace(tmp_path / "b.jsonl", hub_dir / "data" / "train.jsonl")
    cfg = load_config(
        tiny_config(
            tmp_path,
            data={
                "source": "hub",
                "name": str(hub_dir),
                "text_field": "content",
                "seq_len": 32,
                "max_documents": 30,
            },
        )
    )
    data2, _ = build_data(cfg.data, lambda texts: ByteTokenizer())
    assert data2.train.numel() + data2.val.numel() == sum(len(d) + 1 for d in docs[:30])
    cfg = load_config(
        tiny_config(tmp_path, data={"source": "hub", "name": str(hub_dir), "text_field": "missing"})
    )
    with pytest.raises(KeyError, match="text_field"):
        build_data(cfg.data, lambda texts: ByteTokenizer())


def test_batches_are_a_function_of_step_and_shard_by_rank():
    cfg = load_config(tiny_config("/tmp/unused"))
    data, _ = build_data(cfg.data, lambda texts: ByteTokenizer())
    x1, y1 = data.train_batch(0, 5, 8)
    x2, _ = data.train_batch(0, 5, 8)
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])
    r0, _ = data.train_batch(0, 5, 8, rank=0, world=2)
    r1, _ = data.train_batch(0, 5, 8, rank=1, world=2)
    assert torch.equal(torch.cat([r0, r1]), x1)
    assert not torch.equal(data.train_batch(0, 6, 8)[0], x1)


# -- the loop ------------------------------------------------------------------------------------------


def test_tiny_run_learns_and_writes_everything(tmp_path):
    cfg = load_config(
        tiny_config(
            tmp_path / "run",
            optim={"lr": 1e-2},
            train={"steps": 60, "eval_every": 30, "ckpt_every": 20},
            log={"every": 5, "plot": True, "tensorboard": True, "progress": False},
        )
    )
    summary = train(cfg)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
        "model/model.safetensors",
        "model/config.json",
        "tokenizer.txt",
    ):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000040", "step_00000060"]
    rows = read_metrics(run)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 1.0
    # Well below a uniform guess over bytes (log 256 = 5.55 nats) after 60 tiny steps.
    assert summary["val_loss"] < math.log(256) - 1.5 and summary["tokens"] == 60 * 8 * 64
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2), rel=0.05)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 60


def test_task_source_reports_accuracy(tmp_path, monkeypatch):
    from seqzoo.eval import tasks

    def copy_task(seed=0, n=64, seq_len=16):
        # Predict the token 8 positions back: a labelled task with ignored positions.
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(1, 10, (n, seq_len), generator=g)
        y = torch.full_like(x, IGNORE_INDEX)
        y[:, 8:] = x[:, :-8]
        return TaskData(x[: n - 16], y[: n - 16], x[n - 16 :], y[n - 16 :], vocab_size=10)

    monkeypatch.setitem(tasks._TASKS, "copy8", copy_task)
    cfg = load_config(
        tiny_config(
            tmp_path,
            data={"source": "task", "name": "copy8", "task_args": {"n": 64}},
            train={"steps": 4, "eval_every": 4},
        )
    )
    summary = train(cfg)
    assert 0.0 <= summary["val_acc"] <= 1.0 and "val_bpb" not in summary


def _run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "seqzoo", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_losses(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    raw = tiny_config(tmp_path / "{name}", train={"steps": 24, "ckpt_every": 6, "eval_every": 100})
    raw["train"]["out_dir"] = str(tmp_path / "{name}")
    cfg_path.write_text(yaml.safe_dump(raw))
    # Reference: an uninterrupted run.
    ref = _run_cli([str(cfg_path), "name=ref"])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    # The same run killed with SIGKILL after step 9 was logged (its last checkpoint is step 6)...
    run = tmp_path / "killed"
    proc = _run_cli([str(cfg_path), "name=killed"])
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and max(_losses(run), default=0) >= 9:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(_losses(run)) < 24, "the run finished before it could be killed"
    killed_at = max(_losses(run))
    # ... resumes from its latest checkpoint and ends with exactly the reference's losses.
    resumed = _run_cli([str(cfg_path), "name=killed", "--resume"])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    ref_losses, got = _losses(tmp_path / "ref"), _losses(run)
    assert sorted(got) == list(range(1, 25))
    assert killed_at >= 9 and all(got[s] == ref_losses[s] for s in range(1, 25)), (got, ref_losses)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    raw = tiny_config(
        tmp_path / "{name}", train={"steps": 6, "batch_size": 8, "eval_every": 6, "ckpt_every": 6}
    )
    raw["train"]["out_dir"] = str(tmp_path / "{name}")
    cfg_path.write_text(yaml.safe_dump(raw))
    one = _run_cli([str(cfg_path), "name=one"])
    assert one.wait(timeout=300) == 0, one.stdout.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "seqzoo",
            "train",
            str(cfg_path),
            "name=two",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5), (s, a[s], b[s])
    assert "world_size" in (tmp_path / "two" / "summary.json").read_text()
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_generate_from_a_run(tmp_path, capsys):
    from seqzoo.cli import main

    train(load_config(tiny_config(tmp_path / "run", train={"steps": 3, "eval_every": 3})))
    capsys.readouterr()  # drop the training output
    assert (
        main(["generate", str(tmp_path / "run"), "--prompt", "def ", "--max-new-tokens", "12", "--seed", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("def ") and len(out) > 4
    assert main(["generate", str(tmp_path / "nothing")]) == 2


def test_runs_from_before_the_settings_table_keep_their_bare_layers(tmp_path):
    """A run folder whose config.yaml predates model.mixer_settings was trained with the layers' defaults: its
    model is rebuilt that way (resume, generate from a checkpoint); newer runs record the key."""
    import yaml

    from seqzoo.train.build import model_config, predates_mixer_settings
    from seqzoo.train.config import dump_config, load_config

    cfg = load_config("tiny-gla")
    new = tmp_path / "new.yaml"
    new.write_text(dump_config(cfg))
    assert not predates_mixer_settings(new)
    raw = yaml.safe_load(new.read_text())
    del raw["model"]["mixer_settings"]
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(raw))
    assert predates_mixer_settings(old) and not predates_mixer_settings(tmp_path / "missing.yaml")
    (entry,) = model_config(cfg, 256)["mixer"]
    assert entry["use_short_conv"] is True  # the table's gla
    cfg.model.mixer_settings = "none"
    assert model_config(cfg, 256)["mixer"] == "gla"  # the bare layer, as the old run built it
