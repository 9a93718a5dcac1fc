"""Fine-tuning from saved weights with LoRA (train/lora.py) and ``seqzoo linearize`` (train/linearize.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from seqzoo import CausalLM, LMConfig
from seqzoo.cli import main
from seqzoo.train.config import ConfigError, FinetuneSection, dump_config, load_config
from seqzoo.train.linearize import convert, linearize, load_run
from seqzoo.train.loop import param_groups, train
from seqzoo.train.lora import LoRALinear, apply_lora, load_init_weights, merge_lora, prepare_finetune
from seqzoo.train.metrics import read_metrics

pytest.importorskip("datasets", reason="the train extra is not installed")

from test_train import tiny_config  # noqa: E402

ATTENTION = {"name": "attention", "n_heads": 2}


def tiny_lm(mixer=ATTENTION, vocab_size=64, n_layers=2) -> CausalLM:
    return CausalLM(LMConfig(vocab_size=vocab_size, d_model=32, n_layers=n_layers, mixer=mixer))


def ids(b=2, t=24, seed=0):
    return torch.randint(0, 64, (b, t), generator=torch.Generator().manual_seed(seed))


# -- LoRA ----------------------------------------------------------------------------------------------


def test_lora_starts_as_the_base_model_and_wraps_the_targets():
    model = tiny_lm()
    x = ids()
    ref = model(x)
    names = apply_lora(model, ["q_proj", "kv_proj", "o_proj"], rank=4, alpha=8)
    assert len(names) == 6 and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(model(x), ref)  # B = 0: exactly the base model
    # A mixer reading its projection's weight (dtype, device) still finds it.
    assert model.backbone.blocks[0].mixer.o_proj.weight.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[.k_proj.\] match no nn.Linear"):
        apply_lora(tiny_lm(), ["k_proj"])


def test_merge_gives_the_trained_wrapped_model_and_a_plain_one(tmp_path):
    model = tiny_lm()
    plain_keys = set(model.state_dict())
    section = FinetuneSection(lora={"rank": 4, "alpha": 8})
    prepare_finetune(model, section)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(5):
        x = ids(seed=step)
        model.loss(model(x)[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    x = ids(seed=99)
    with torch.no_grad():
        wrapped = model(x)
        assert model.backbone.blocks[0].mixer.q_proj.lora_B.abs().sum() > 0  # it did train
        merged = merge_lora(copy.deepcopy(model))
        torch.testing.assert_close(merged(x), wrapped, atol=1e-5, rtol=1e-5)
    assert set(merged.state_dict()) == plain_keys
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    merged.save(tmp_path / "m")
    torch.testing.assert_close(CausalLM.load(tmp_path / "m")(x), wrapped, atol=1e-5, rtol=1e-5)


def test_only_lora_and_train_only_parameters_train():
    model = tiny_lm({"name": "lizard", "n_heads": 2, "window": 8})
    section = FinetuneSection(lora={"rank": 2}, train_only=["mixer.phi_q", "mixer.g_proj"])
    prepare_finetune(model, section)
    x = ids()
    model.loss(model(x)[:, :-1], x[:, 1:]).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {
        n for n, _ in model.named_parameters() if "lora_" in n or "mixer.phi_q" in n or "mixer.g_proj" in n
    }
    assert trained == expected and len(expected) == 2 * (6 + 1 + 2)
    assert {n for g in param_groups(model, 1e-3, 0.1) for n in g["names"]} == expected


def test_init_from_is_strict_and_names_the_keys(tmp_path):
    source = tiny_lm()
    source.save(tmp_path / "attn")
    # liger has attention's parameter names: the weights load as they are (a run folder works too).
    liger = tiny_lm({"name": "liger", "n_heads": 2})
    assert load_init_weights(liger, tmp_path / "attn") == []
    assert torch.equal(
        liger.backbone.blocks[1].mixer.kv_proj.weight, source.backbone.blocks[1].mixer.kv_proj.weight
    )
    # lizard has new parameters: an error naming them, unless they are listed as new.
    with pytest.raises(ValueError, match=r"missing from the file: .*mixer\.phi_q"):
        load_init_weights(tiny_lm({"name": "lizard", "n_heads": 2}), tmp_path / "attn")
    new = ["phi_q", "phi_k", "g_proj", "meta_k", "meta_v", "alpha"]
    missing = load_init_weights(tiny_lm({"name": "lizard", "n_heads": 2}), tmp_path / "attn", new)
    assert len(missing) == 2 * 7
    # A smaller model: the file's extra layer is named.
    with pytest.raises(ValueError, match=r"not in the model: .*backbone\.blocks\.1\."):
        load_init_weights(tiny_lm(n_layers=1), tmp_path / "attn")
    # Other shapes are named with both shapes.
    with pytest.raises(ValueError, match=r"embedding\.weight \(64, 32\) vs \(80, 32\)"):
        load_init_weights(tiny_lm(vocab_size=80), tmp_path / "attn")
    with pytest.raises(FileNotFoundError, match="neither a saved model folder"):
        load_init_weights(tiny_lm(), tmp_path / "nowhere")
    source.save(tmp_path / "run" / "model")  # a run folder: its final model
    assert load_init_weights(tiny_lm(), tmp_path / "run") == []


def test_finetune_section_validates_and_takes_overrides():
    cfg = load_config(tiny_config("x"), ["finetune.lora.rank=4", "finetune.init_from=runs/a"])
    assert cfg.finetune.lora.rank == 4 and cfg.finetune.lora.targets == ["q_proj", "kv_proj", "o_proj"]
    assert load_config(tiny_config("x")).finetune.lora is None  # off unless asked for
    saved = yaml.safe_load(dump_config(load_config(tiny_config("x"))))  # a run's config.yaml: lora: null
    assert load_config(saved, ["finetune.lora.alpha=4"]).finetune.lora.alpha == 4
    with pytest.raises(ConfigError, match="finetune.lora.rnk: unknown key"):
        load_config(tiny_config("x"), ["finetune.lora.rnk=4"])


# -- the recipe with finetune: resume ------------------------------------------------------------------


def test_resume_with_lora_gives_identical_losses(tmp_path):
    tiny_lm(["short_conv", ATTENTION], vocab_size=256).save(tmp_path / "init")  # tiny_config's model

    def config(name):
        raw = tiny_config(
            tmp_path / name,
            train={"steps": 12, "ckpt_every": 4, "eval_every": 100},
            finetune={"init_from": str(tmp_path / "init"), "lora": {"rank": 4}, "train_only": ["mixer_norm"]},
        )
        raw["model"]["mixer_settings"] = "none"  # the layers' defaults, as tiny_lm builds them
        return load_config(raw)

    train(config("ref"))
    train(config("cut"), stop_after=6)  # its last checkpoint is step 4
    train(config("cut"), resume=True)
    losses = {
        name: {r["step"]: r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r}
        for name in ("ref", "cut")
    }
    assert sorted(losses["cut"]) == list(range(1, 13)) and losses["cut"] == losses["ref"]
    # model/ is merged: a plain model; the checkpoints hold the adapters.
    CausalLM.load(tmp_path / "cut" / "model")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cut" / "checkpoints" / "step_00000012" / "model.safetensors"), "pt") as f:
        assert any("lora_A" in k for k in f.keys())


# -- seqzoo linearize ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory):
    """A tiny attention LM trained long enough that its attention matters (~15 s on one core)."""
    out = tmp_path_factory.mktemp("lin") / "run"
    raw = tiny_config(
        out,
        model={"mixer": ATTENTION},
        optim={"lr": 1e-2},
        train={"steps": 200, "eval_every": 200, "ckpt_every": 200},
    )
    train(load_config(raw))
    return out


def test_converted_liger_reproduces_the_attention_exactly(attention_run):
    config, model = load_run(attention_run)
    seq_len = config.data.seq_len
    converted, new = convert(model, "liger", {"gla_weight": 0.0, "swa_weight": 1.0, "window": seq_len})
    assert new == [] and converted.config.mixer[0]["name"] == "liger"
    x = torch.randint(0, 256, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


def test_gla_conversion_copies_the_attention_projections():
    model = tiny_lm({"name": "attention", "n_heads": 4, "n_kv_heads": 2})
    converted, new = convert(model, "gla")
    assert new == ["mixer.gk_proj.0", "mixer.gk_proj.1", "mixer.r_proj", "mixer.norm"]
    attn, gla = model.backbone.blocks[0].mixer, converted.backbone.blocks[0].mixer
    assert torch.equal(gla.q_proj.weight, attn.q_proj.weight) and torch.equal(
        gla.o_proj.weight, attn.o_proj.weight
    )
    k, v = attn.kv_proj.weight.view(2, 2, 8, 32)  # [k|v, kv head, head size, d_model]
    assert torch.equal(gla.k_proj.weight.view(4, 8, 32)[[2, 3]], torch.stack([k[1], k[1]]))  # GQA: repeated
    assert torch.equal(gla.v_proj.weight.view(4, 8, 32)[0], v[0])
    assert torch.equal(converted.embedding.weight, model.embedding.weight)


def test_linearize_to_liger_end_to_end(attention_run, tmp_path, capsys):
    out = tmp_path / "lin"
    code = main(
        [
            "linearize",
            str(attention_run),
            "log.progress=false",
            "--to",
            "liger",
            "--steps",
            "40",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "linearize.json").read_text())
    for label in ("original", "converted", "finetuned"):
        assert {"val_loss", "val_bpb", "val_acc"} <= set(report[label])
    assert report["finetune"]["steps"] == 40 and report["finetune"]["lora"]["targets"] == [
        "q_proj",
        "kv_proj",
        "o_proj",
    ]
    # Fine-tuning recovers part of what the conversion lost.
    assert report["finetuned"]["val_loss"] < report["converted"]["val_loss"] - 0.02
    printed = capsys.readouterr().out
    assert "original" in printed and "finetuned" in printed
    # Both saved models are plain CausalLMs of liger layers; the fine-tuned one evaluates as reported.
    for folder in ("converted", "finetuned/model"):
        model = CausalLM.load(out / folder)
        assert all(e["name"] == "liger" for e in model.config.mixer)
    ft_config = yaml.safe_load((out / "finetuned" / "config.yaml").read_text())
    assert ft_config["finetune"]["init_from"] == str(out / "converted")
    assert ft_config["data"] == yaml.safe_load((attention_run / "config.yaml").read_text())["data"]


def test_linearize_refuses_a_layer_that_is_not_attention(tmp_path, capsys):
    # A run folder as the recipe writes it (no training needed to be refused).
    config = load_config(tiny_config(tmp_path / "run"))  # short_conv, attention
    run = config.out_path()
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(config))
    (run / "tokenizer.txt").write_text("bytes\n")
    CausalLM(LMConfig(d_model=32, n_layers=2, mixer=config.model.mixer)).save(run / "model")
    assert main(["linearize", str(run), "--to", "liger"]) == 2
    err = capsys.readouterr().err
    assert "layer 0 is 'short_conv', not attention" in err
    assert not (tmp_path / "run-liger").exists()


def test_linearize_without_finetuning_reports_the_conversion(attention_run, tmp_path):
    report = linearize(attention_run, "lizard", out_dir=tmp_path / "lz", finetune=False)
    assert "finetuned" not in report and report["converted"]["val_loss"] > report["original"]["val_loss"]
    assert report["new_params"] == [
        "mixer.phi_q", "mixer.phi_k", "mixer.meta_k", "mixer.meta_v", "mixer.alpha", "mixer.g_proj"
    ]  # fmt: skip
