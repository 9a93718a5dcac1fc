"""transformers checkpoints <-> seqzoo (issue 30, Mamba and Mamba-2): tiny random transformers models saved
with save_pretrained convert to the same function, decode the same greedy tokens, export back exactly.

fp64: transformers' Mamba and Mamba-2 cast to fp32 inside the forward whatever the model's dtype: the RMSNorms
(``hidden_states.to(torch.float32)``), the gated norm, ``residual_in_fp32``, and the scans' ``A_log.float()``,
``B.float()``, ``D.float()``, the logits' ``.float()``. An fp64 transformers model is thus only fp32-exact. To
compare at fp64 rounding (1e-10) the transformers side runs under ``_no_fp32_casts``, which makes those casts
of an fp64 tensor return it unchanged (``Tensor.float`` and ``Tensor.to(torch.float32)``) for the duration of
the transformers call only; every other operation is transformers' own.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import transformers  # noqa: E402  (in the test extras: hf)
from safetensors.torch import load_file  # noqa: E402

from seqzoo.cli import main as cli_main  # noqa: E402
from seqzoo.interop.hf import FAMILIES, UnsupportedHFConfig, load_hf, read_hf_config, save_hf  # noqa: E402

VOCAB = 64
T = 12  # prompt length: more than one Mamba-2 chunk (chunk_size 8)


def _configs(tied: bool) -> dict:
    common = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {
        "mamba": transformers.MambaConfig(state_size=4, expand=2, conv_kernel=4, **common),
        "mamba2": transformers.Mamba2Config(
            state_size=8, expand=2, head_dim=8, num_heads=4, n_groups=2, chunk_size=8, conv_kernel=4, **common
        ),
    }


def _tokenizer(folder: Path) -> None:
    """A character-level tokenizer (vocab 40 <= 64) whose eos is '</s>', as a transformers folder holds one."""
    from tokenizers import Tokenizer, models

    chars = "</s> abcdefghijklmnopqrstuvwxyz.,0123456789"
    vocab = {"</s>": 2, "<unk>": 3}
    for c in chars[4:]:
        vocab.setdefault(c, len(vocab) + 2)
    vocab.update({"<pad>": 0, "<s>": 1})
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(family, tied) -> (folder, transformers model in fp32), each saved with save_pretrained."""
    out = {}
    for tied in (True, False):
        for family, config in _configs(tied).items():
            torch.manual_seed(len(out))
            model = transformers.AutoModelForCausalLM.from_config(config).eval()
            with torch.no_grad():  # off the init: every tensor random, so no mapping error hides
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
            folder = tmp_path_factory.mktemp(f"{family}-{'tied' if tied else 'untied'}")
            model.save_pretrained(folder)
            _tokenizer(folder)
            out[family, tied] = (folder, model)
    return out


CASES = [(f, t) for f in ("mamba", "mamba2") for t in (True, False)]
IDS = [f"{f}-{'tied' if t else 'untied'}" for f, t in CASES]


@contextlib.contextmanager
def _no_fp32_casts():
    """transformers' fp32 casts of fp64 tensors (see the module docstring) return the tensor unchanged."""
    to, flt = torch.Tensor.to, torch.Tensor.float

    def keep_to(self, *args, **kwargs):
        target = kwargs.get("dtype", args[0] if args else None)
        if self.dtype == torch.float64 and target is torch.float32:
            return self
        return to(self, *args, **kwargs)

    def keep_float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else flt(self, *args, **kwargs)

    torch.Tensor.to, torch.Tensor.float = keep_to, keep_float
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.float = to, flt


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _ids(batch: int = 2, length: int = T) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_logits_and_greedy_tokens_match(checkpoints, case):
    """Logits in fp32 (1e-5 relative) and fp64 (1e-10, transformers' fp32 casts kept out), and greedy tokens:
    seqzoo's prefill + step (CausalLM.generate, temperature 0) vs transformers' generate with its cache (both
    decode recurrently: transformers' Mamba and Mamba-2 carry conv and SSM states). Greedy runs in fp64, so
    that no near-tie of two logits can flip a token between two correct implementations; examples/
    hf_convert.py checks fp32 greedy tokens too."""
    folder, hf = checkpoints[case]
    ids = _ids()
    hf64 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    hf64.generation_config.eos_token_id = (
        None  # no stop at eos (min_new_tokens would mask eos's logit instead)
    )
    ours64 = load_hf(folder, dtype=torch.float64)
    with torch.no_grad():
        ref = hf(ids).logits
        ours = load_hf(folder)(ids)
        assert ours.dtype == torch.float32
        assert _rel(ours, ref) <= 1e-5
        with _no_fp32_casts():
            ref64 = hf64(ids).logits
        assert ref64.dtype == torch.float64
        assert _rel(ours64(ids), ref64) <= 1e-10
        # The fp32 mismatch is rounding, not a mapping error: it is far above fp64's.
        assert _rel(ours.double(), ref64) > 1e-10
        prompt = ids[:, :5]
        with _no_fp32_casts():
            want = hf64.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
            )
    assert torch.equal(ours64.generate(prompt, max_new_tokens=6, temperature=0), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_export_round_trip_is_exact(checkpoints, case, tmp_path):
    folder, hf = checkpoints[case]
    model = load_hf(folder)
    assert model.config.tie_embeddings == case[1]
    assert (model.head.weight is model.embedding.weight) == case[1]
    save_hf(model, tmp_path, base_config=read_hf_config(folder))
    original, exported = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "model.safetensors")),
    )
    assert sorted(original) == sorted(exported)
    assert all(torch.equal(original[k], exported[k]) for k in original)
    assert ("lm_head.weight" in exported) != case[1]  # a tied head is stored once, as transformers does
    cfg_in, cfg_out = read_hf_config(folder), read_hf_config(tmp_path)
    skip = {"transformers_version", "dtype", "torch_dtype"}
    assert {k: v for k, v in cfg_in.items() if k not in skip} == {
        k: v for k, v in cfg_out.items() if k not in skip
    }
    assert (
        cfg_out["architectures"] == [FAMILIES[case[0]].architecture] and cfg_out["torch_dtype"] == "float32"
    )
    # transformers reads the export with the same function: bit for bit with the base config; without it
    # (fields seqzoo does not hold take transformers' defaults, e.g. Mamba-2's chunk_size, which only orders
    # the sums) to rounding.
    save_hf(model, tmp_path / "bare")
    with torch.no_grad():
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()(_ids()).logits
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert torch.equal(back(_ids()).logits, ref)
        bare = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bare").eval()
        assert _rel(bare(_ids()).logits, ref) <= 1e-5


@pytest.mark.parametrize(
    "family, field, value",
    [
        ("mamba", "hidden_act", "gelu"),
        ("mamba", "intermediate_size", 48),
        ("mamba", "time_step_rank", 0),
        ("mamba2", "time_step_limit", [0.0, 0.1]),
        ("mamba2", "num_heads", 3),
        ("mamba2", "rms_norm", False),
        ("mamba2", "n_groups", 3),
        ("mamba2", "model_type", "not_a_family"),
    ],
)
def test_unsupported_config_names_the_field(checkpoints, family, field, value):
    folder, _ = checkpoints[family, True]
    hf = {**read_hf_config(folder), field: value}
    with pytest.raises(UnsupportedHFConfig, match=field) as err:
        if field == "model_type":
            from seqzoo.interop.hf import family_for

            family_for(hf)
        else:
            FAMILIES[family].config_from_hf(hf)
    assert err.value.field == field


def test_files_errors(checkpoints, tmp_path):
    folder, _ = checkpoints["mamba", False]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_hf(tmp_path)
    # A folder without tokenizer.json converts, with a warning saying what the run then needs.
    import shutil

    from seqzoo.train.hf_command import convert

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(folder / name, bare / name)
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        run = convert(bare, tmp_path / "run")
    assert (run / "model" / "model.safetensors").is_file() and not (run / "tokenizer.json").exists()
    # A tensor missing from the file (an untied head without lm_head) is named.
    sd = load_file(str(folder / "model.safetensors"))
    del sd["lm_head.weight"]
    with pytest.raises(ValueError, match="head.weight"):
        FAMILIES["mamba"].weights_from_hf(sd, read_hf_config(folder))


def test_sharded_checkpoint_loads(checkpoints, tmp_path):
    folder, hf = checkpoints["mamba2", False]
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (
        tmp_path / "model.safetensors"
    ).exists()
    with torch.no_grad():
        assert torch.equal(load_hf(tmp_path)(_ids()), load_hf(folder)(_ids()))


def test_cli_convert_generate_train_eval_export(checkpoints, tmp_path, capsys):
    folder, hf = checkpoints["mamba", False]
    run = tmp_path / "run"
    assert cli_main(["convert", str(folder), "--to", str(run), "--seq-len", "32"]) == 0
    assert (run / "model" / "config.json").is_file() and (run / "tokenizer.json").is_file()
    assert cli_main(["convert", str(folder), "--to", str(run)]) == 2  # never over a run
    # seqzoo generate with the checkpoint's tokenizer (eos '</s>' from its tokenizer_config.json).
    capsys.readouterr()
    assert (
        cli_main(["generate", str(run), "--prompt", "ab", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    )
    from seqzoo.train.generate import generate_text
    from seqzoo.train.tokenizers import load_run_tokenizer

    tok = load_run_tokenizer(run)
    assert tok.eos_id == 2
    ids = torch.tensor([tok.encode("ab")])
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        want = hf.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)[0, 2:]
    assert generate_text(run, "ab", 4, temperature=0)[0] == tok.decode(want.tolist())
    # The lm-eval model (what seqzoo eval and lm_eval --model seqzoo use) scores with the converted model.
    from lm_eval.api.instance import Instance

    from seqzoo.eval.harness.model import SeqzooLM

    lm = SeqzooLM(path=str(run), max_length=32)
    ((logprob, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("abc", "de"), 0)])
    full = torch.tensor([[tok.eos_id, *tok.encode("abcde")]])  # the harness puts eos before every text
    with torch.no_grad():
        logp = torch.log_softmax(hf(full).logits[0, :-1].double(), -1)
    assert logprob == pytest.approx(logp[-2:].gather(-1, full[0, -2:, None]).sum().item(), rel=1e-5)
    # One fine-tuning step from the converted run (its config.yaml: finetune.init_from = the run).
    out = tmp_path / "ft"
    overrides = [
        f"train.out_dir={out}",
        "train.steps=1",
        "train.batch_size=2",
        "train.eval_every=1",
        "train.eval_batches=1",
        "train.threads=1",
        "data.seq_len=16",
        "data.max_bytes=20000",
        "log.progress=false",
        "log.tensorboard=false",
        "log.plot=false",
    ]
    assert cli_main(["train", str(run / "config.yaml"), *overrides]) == 0
    assert f"init from {run.resolve()}" in capsys.readouterr().out
    # Export the converted run: the same tensors, and transformers reads it with its tokenizer.
    exported = tmp_path / "hf"
    assert cli_main(["export", str(run), "--hf", str(exported)]) == 0
    a, b = load_file(str(folder / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (exported / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
