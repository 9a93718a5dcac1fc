"""Long Range Arena through the recipe: the classifier's pieces (post-norm, BatchNorm, dropout, two towers),
the classification data, a run end to end on generated data with exact resume, and ``seqzoo lra``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from seqzoo import CausalLM, LMConfig
from seqzoo.models.classifier import SequenceClassifier
from seqzoo.train.data import ClassificationData

# -- the model's pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["rms", "layer", "batch"])
def test_postnorm_block_decodes_as_it_runs(norm):
    torch.manual_seed(0)
    lm = CausalLM(LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer="s4d", block="postnorm", norm=norm))
    lm = lm.double().eval()
    ids = torch.randint(0, 17, (2, 9))
    full = lm(ids)
    logits, states = lm.prefill(ids[:, :5])
    torch.testing.assert_close(logits, full[:, :5])
    for t in range(5, 9):
        step_logits, states = lm.step(ids[:, t], states)
        torch.testing.assert_close(step_logits, full[:, t])
    # post-norm: each block ends with its norm and the stack has none of its own
    assert isinstance(lm.backbone.final_norm, torch.nn.Identity)


def test_postnorm_is_norm_of_the_residual_sum():
    clf = SequenceClassifier(
        n_classes=3,
        vocab_size=11,
        d_model=8,
        n_layers=1,
        mixer="s4d",
        block="postnorm",
        norm="layer",
        mlp="none",
    ).double()
    block = clf.backbone.blocks[0]
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(block(h), block.mixer_norm(h + block.mixer(h)))


def test_batchnorm_normalises_over_batch_and_time():
    clf = SequenceClassifier(n_classes=2, vocab_size=11, d_model=8, n_layers=1, mixer="s4d", norm="batch")
    norm = clf.backbone.blocks[0].mixer_norm
    x = torch.randn(4, 7, 8) * 3 + 2
    y = norm(x)  # training mode: the batch's statistics over (B, T), per channel
    torch.testing.assert_close(y.mean((0, 1)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 1), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_dropout_is_active_in_training_only():
    clf = SequenceClassifier(n_classes=2, vocab_size=11, d_model=16, n_layers=2, mixer="s4d", dropout=0.5)
    x = torch.randint(0, 11, (2, 12))
    clf.train()
    assert not torch.equal(clf(x), clf(x))
    clf.eval()
    assert torch.equal(clf(x), clf(x))
    # no dropout: no module, so models saved before the option existed load unchanged
    plain = SequenceClassifier(n_classes=2, vocab_size=11, d_model=16, n_layers=2, mixer="s4d")
    assert isinstance(plain.backbone.blocks[0].dropout, torch.nn.Identity)


def test_two_towers_head_reads_u_v_product_and_difference():
    torch.manual_seed(0)
    clf = SequenceClassifier(
        n_classes=2, vocab_size=11, d_model=8, n_layers=1, mixer="s4d", pairs=True, bidirectional=True
    ).double()
    x = torch.randint(1, 11, (3, 2, 10))
    mask = torch.ones(3, 2, 10, dtype=torch.bool)
    mask[0, 1, 6:] = False
    u = clf._pool(x[:, 0], mask[:, 0])
    v = clf._pool(x[:, 1], mask[:, 1])
    torch.testing.assert_close(clf(x, mask), clf.head(torch.cat([u, v, u * v, u - v], -1)))
    assert not torch.allclose(clf(x, mask), clf(x.flip(1), mask.flip(1)))  # u - v: the order matters
    with pytest.raises(ValueError, match="two-tower"):
        clf(x[:, 0])


# -- the data ----------------------------------------------------------------------------------------------


def _split(n, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    inputs = torch.randint(1, 9, (n, t), generator=g).to(torch.int16)
    inputs[torch.arange(t) >= lengths[:, None]] = 0
    return SimpleNamespace(inputs=inputs, lengths=lengths, labels=torch.randint(0, 3, (n,), generator=g))


def test_classification_batches_walk_epochs_and_cut_padding():
    data = ClassificationData(_split(40, 12), _split(10, 12, 1), _split(10, 12, 2), vocab_size=9, n_classes=3)
    seen = []
    for step in range(5):  # 40 examples / batch 8: one epoch is 5 steps and covers every example once
        x, mask, y = data.train_batch(seed=3, step=step, batch_size=8)
        assert x.dtype == torch.int64 and y.shape == (8,) and mask.dtype == torch.bool
        assert x.shape[1] == int(mask.sum(1).max())  # cut to the batch's longest sequence
        assert (x[~mask] == 0).all()
        seen.append(x)
    x0, m0, _ = data.train_batch(seed=3, step=0, batch_size=8)
    assert torch.equal(x0, seen[0])  # a function of (seed, step): resume draws the same batches
    assert not torch.equal(
        data.train_batch(seed=3, step=5, batch_size=8)[0], seen[0]
    )  # a new epoch, a new order
    rows = {tuple(r[m].tolist()) for x in seen for r, m in zip(x, (x != 0))}
    assert len(rows) >= 30  # (almost) all 40 distinct examples, not draws with replacement
    # rank slices of one global batch
    a = data.train_batch(seed=3, step=1, batch_size=8, rank=0, world=2)[2]
    b = data.train_batch(seed=3, step=1, batch_size=8, rank=1, world=2)[2]
    assert torch.equal(torch.cat([a, b]), data.train_batch(seed=3, step=1, batch_size=8)[2])
    assert sum(y.numel() for _, _, y in data.batches(data.test, 3)) == 10


# -- through the recipe and the command --------------------------------------------------------------------


def tiny_lra_config(tmp_path, data_dir, **train):
    return {
        "name": "lra-tiny",
        "model": {
            "kind": "classifier",
            "d_model": 16,
            "n_layers": 2,
            "mixer": {"name": "s4d", "d_state": 8},
            "mlp": "none",
            "block": "postnorm",
            "norm": "batch",
        },
        "data": {
            "source": "lra",
            "name": "listops",
            "data_dir": str(data_dir),
            "generate": {"num_train": 64, "num_val": 16, "num_test": 16, "min_length": 10, "max_length": 30},
        },
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {
            "steps": 8,
            "batch_size": 8,
            "eval_every": 4,
            "eval_batches": 2,
            "ckpt_every": 4,
            "out_dir": str(tmp_path / "{name}"),
            "threads": 1,
            **train,
        },
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
    }


def test_lra_run_generates_trains_and_reports_test_accuracy(tmp_path):
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train

    data_dir = tmp_path / "listops"
    summary = train(load_config(tiny_lra_config(tmp_path, data_dir)))
    assert (data_dir / "basic_train.tsv").is_file()  # generated on first use, in the release layout
    assert 0 <= summary["test_acc"] <= 1 and summary["n_test"] == 16 and "best_val_acc" in summary
    run = tmp_path / "lra-tiny"
    clf = SequenceClassifier.load(run / "model-best")
    assert (
        clf.config.n_classes == 10 and clf.config.bidirectional
    )  # s4d has a bidirectional mode: auto took it
    saved = json.loads((run / "summary.json").read_text())
    assert saved["test_acc"] == summary["test_acc"]


def test_lra_resume_gives_identical_losses(tmp_path):
    from seqzoo.train.config import load_config
    from seqzoo.train.loop import train
    from seqzoo.train.metrics import read_metrics

    data_dir = tmp_path / "listops"
    ref = load_config(tiny_lra_config(tmp_path, data_dir), ["name=ref"])
    train(ref)
    cut = load_config(tiny_lra_config(tmp_path, data_dir), ["name=cut"])
    train(cut, stop_after=4)
    train(load_config(tiny_lra_config(tmp_path, data_dir), ["name=cut"]), resume=True)

    def losses(name):
        return {r["step"]: r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r}

    assert losses("cut") == losses("ref")


def test_lra_missing_data_is_a_clear_error(tmp_path, capsys):
    from seqzoo.cli import main

    code = main(["lra", "image", "--data-dir", str(tmp_path / "nothing"), "train.steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "data_batch_1" in err and "Traceback" not in err


def test_lra_command_list_generate_and_bad_names(tmp_path, capsys):
    from seqzoo.cli import main

    assert main(["lra", "list"]) == 0
    out = capsys.readouterr().out
    assert "pathx" in out and "59.6" in out  # S4's published ListOps accuracy
    assert main(["lra", "generate", "listops", "--out", str(tmp_path / "l"), "num_train=4", "num_val=2",
                 "num_test=2", "min_length=5", "max_length=20"]) == 0  # fmt: skip
    assert (tmp_path / "l" / "basic_test.tsv").is_file()
    assert main(["lra", "listop"]) == 2
    assert "did you mean 'listops'" in capsys.readouterr().err
    assert main(["lra", "text", "--cpu"]) == 2
    assert "CPU configs" in capsys.readouterr().err
    assert main(["lra", "listops", "--mixer", "atention", "--print-config"]) == 2
    assert "did you mean 'attention'" in capsys.readouterr().err


@pytest.mark.parametrize("mixer", ["s4d", "s4", "attention", "flow", "mamba", "gla"])
def test_every_lra_mixer_builds_into_every_task_config(mixer):
    from seqzoo.eval.lra import TASK_ORDER, TASKS
    from seqzoo.eval.lra.command import build_config
    from seqzoo.train.build import build_model

    for task in TASK_ORDER:
        cfg = build_config(task, mixer)
        assert cfg.model.mixer["name"] == mixer
        if mixer not in ("s4", "s4d"):
            assert "dt_min" not in cfg.model.mixer  # the SSM keys of the task config stay with the SSMs
    # one small model per mixer, as the listops CPU config builds it
    cfg = build_config("listops", mixer, cpu=True, overrides=["model.d_model=16", "model.n_layers=1"])
    data = SimpleNamespace(seq_len=32, vocab_size=18, n_classes=TASKS["listops"].n_classes, pairs=False)
    clf = build_model(cfg, data)
    assert clf(torch.randint(1, 18, (2, 32))).shape == (2, 10)
    assert clf.config.bidirectional == (mixer != "mamba")  # mamba has no bidirectional mode: causal


def test_sweep_table_sits_beside_published_numbers(tmp_path):
    from seqzoo.eval.lra.command import markdown_table, sweep_task
    from seqzoo.eval.sweep import write_outputs

    rows = [
        {"task": "listops", "mixer": "s4d", "seed": 0, "test_acc": 0.41, "best_val_acc": 0.4, "steps": 10,
         "parameters": 1, "wall_time_s": 1.0, "config": "cpu", "note": "S4D-LegS"},
    ]  # fmt: skip
    tasks = ["listops", "pathfinder"]
    table = markdown_table(rows, tasks)
    assert "| s4d (seqzoo, cpu config) | 41.0 |  |" in table
    assert "60.5" in table and "36.4" in table and "| chance | 10.0 | 50.0 |" in table
    write_outputs(tmp_path, rows, sweep_task(tasks, cpu=True))
    assert (tmp_path / "results.csv").is_file() and "CPU configs" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "lra.png").is_file()
    # Over seeds: the median and the range.
    seeds = [{**rows[0], "seed": s, "test_acc": a} for s, a in enumerate([0.43, 0.39, 0.41])]
    assert "| s4d (seqzoo, cpu config) | 41.0 [39.0-43.0] |  |" in markdown_table(seeds, tasks)


def tiny_sweep_overrides(data_dir) -> list[str]:
    return [
        "model.d_model=16", "model.n_layers=1", f"data.data_dir={data_dir}",
        "data.generate={num_train: 64, num_val: 16, num_test: 16, min_length: 10, max_length: 30}",
        "train.steps=2", "train.batch_size=8", "train.eval_every=2", "train.eval_batches=1", "train.ckpt_every=2",
        "train.threads=1", "log.progress=false", "log.tensorboard=false", "log.plot=false",
    ]  # fmt: skip


def test_sweep_plans_todays_folders_and_hashes_and_one_folder_per_seed(tmp_path):
    """One seed (the config's own) keeps the folder and config hash earlier sweeps wrote; other seeds get
    their own folders; the config a worker loads back is the one that was hashed."""
    from seqzoo.eval.lra.command import build_config, plan_sweep
    from seqzoo.eval.sweep import config_hash
    from seqzoo.train.config import load_config

    out = tmp_path / "sweep"
    (run,) = plan_sweep(["listops"], ["s4d"], True, out)
    name = "lra-listops-cpu-s4d"
    today = build_config("listops", "s4d", True, name=name, overrides=[f"train.out_dir={out / name}"])
    assert run["key"] == name and run["dir"] == out / name and run["seed"] == 0
    assert run["hash"] == config_hash(json.loads(json.dumps(today.model_dump(mode="json"))))
    assert load_config(run["config"]).model_dump(mode="json") == run["config"]
    seeded = plan_sweep(["listops"], ["s4d"], True, out, seeds=[0, 2])
    assert [r["key"] for r in seeded] == [name, name + "-seed2"] and seeded[0]["hash"] == run["hash"]
    assert seeded[1]["config"]["train"]["seed"] == 2 and seeded[1]["hash"] != run["hash"]
    with pytest.raises(ValueError, match="--seeds"):
        plan_sweep(["listops"], ["s4d"], True, out, seeds=[1, 1])


def test_two_seed_sweep_through_the_command(tmp_path, capsys):
    from seqzoo.cli import main

    out = tmp_path / "sweep"
    argv = ["lra", "sweep", "--cpu", "--tasks", "listops", "--mixers", "s4d", "--seeds", "0", "1", "--out",
            str(out), "--no-progress", *tiny_sweep_overrides(tmp_path / "listops")]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("task,mixer,seed,test_acc") and len(lines) == 3
    accs = sorted(100 * float(line.split(",")[3]) for line in lines[1:])
    cell = f"{sum(accs) / 2:.1f} [{accs[0]:.1f}-{accs[1]:.1f}]"
    assert f"| s4d (seqzoo, cpu config) | {cell} |" in text and cell in (out / "results.md").read_text()
    assert {p.name for p in out.iterdir()} >= {"lra-listops-cpu-s4d", "lra-listops-cpu-s4d-seed1", "lra.png"}
    # A bad seed list is a usage error, before anything trains.
    assert main(["lra", "sweep", "--cpu", "--tasks", "listops", "--seeds", "0", "0", "--out", str(out)]) == 2
    assert "--seeds" in capsys.readouterr().err
