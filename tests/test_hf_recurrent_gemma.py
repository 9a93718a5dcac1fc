"""RecurrentGemma (transformers' RecurrentGemmaForCausalLM) converted to a seqzoo CausalLM and back (issue 30).

A tiny random transformers model (3 layers: recurrent, recurrent, attention; window 6 shorter than every test
sequence) is saved with save_pretrained, read back with safetensors and converted with the recurrent_gemma
HFFamily. The converted model must give transformers' logits (fp32: 1e-5 relative; fp64: 1e-10 once the fp32
casts inside transformers are lifted, see ``_lift_fp32_casts``) and its greedy tokens with prefill + step, for
tied and untied heads; the conversion round-trips exactly; what it cannot represent raises naming the field.
The new layer options default to the old models (pinned state-dict keys and shapes).
"""

from __future__ import annotations

import json

import pytest
import torch

from seqzoo.interop.hf import FAMILIES, UnsupportedHFConfig, family_for
from seqzoo.interop.hf import recurrent_gemma as rg
from seqzoo.models import CausalLM, LMConfig, preset
from seqzoo.modules.mlp import MLP
from seqzoo.modules.rotary import apply_rotary
from seqzoo.registry import build_mixer

VOCAB, WINDOW, PROMPT, NEW = 64, 6, 10, 8

# A transformers 5 config.json of a tiny RecurrentGemma (the test's model; also used without transformers).
HF_CONFIG = {
    "architectures": ["RecurrentGemmaForCausalLM"],
    "model_type": "recurrent_gemma",
    "num_hidden_layers": 3,
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "lru_width": 32,
    "attention_window_size": WINDOW,
    "conv1d_width": 4,
    "logits_soft_cap": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "block_types": ["recurrent", "recurrent", "attention"],
    "attention_dropout": 0.0,
    "attention_bias": False,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "w_init_variance_scale": 0.01,
    "final_w_init_variance_scale": 2 / 3,
    "use_cache": True,
    "dtype": "float32",
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights of order 1 / sqrt(fan-in) (output projections 4x), nonzero norms and biases (transformers starts
    them at zero, which would hide a swapped or dropped one), small embeddings (so a tied head does not just
    repeat the last token); the decay parameter keeps its init. Greedy decoding then moves from token to token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("recurrent_param"):
                continue
            std = (0.3 if "norm" in name else 0.02) if p.dim() == 1 else p.shape[-1] ** -0.5
            if name.endswith(("linear_out.weight", "o_proj.weight", "down_proj.weight")):
                std *= 4
            if name.endswith("embed_tokens.weight"):
                std = 0.3
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request, tmp_path_factory):
    """(transformers model, converted seqzoo model, config.json dict, safetensors state dict), fp32, eval."""
    import transformers  # the test extras include hf
    from safetensors.torch import load_file

    tied = request.param
    config = transformers.RecurrentGemmaConfig(**{**HF_CONFIG, "tie_word_embeddings": tied})
    torch.manual_seed(0)
    hf = transformers.RecurrentGemmaForCausalLM(config).eval()
    _randomise(hf, seed=1)
    directory = tmp_path_factory.mktemp("rg_tied" if tied else "rg_untied")
    hf.save_pretrained(directory)
    hf_config = json.loads((directory / "config.json").read_text())
    hf_weights = load_file(directory / "model.safetensors")
    assert ("lm_head.weight" in hf_weights) == (not tied)
    family = family_for(hf_config)
    model = CausalLM(family.config_from_hf(hf_config)).eval()
    model.load_state_dict(family.weights_from_hf(hf_weights, hf_config), strict=True)
    assert (model.head.weight is model.embedding.weight) == tied
    return hf, model, hf_config, hf_weights, directory


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_logits_fp32(pair):
    hf, model, _, _, _ = pair
    ids = _ids(2, 3 * WINDOW, seed=3)  # past the window, so the window matters
    with torch.no_grad():
        expected = hf(ids, use_cache=False).logits
        got = model(ids)
    assert _rel(expected, got) < 1e-5
    # The soft-cap is in: no logit reaches 30 (and the model's are not trivially small).
    assert got.abs().max() < 30 and got.abs().max() > 1


@pytest.fixture
def lift_fp32_casts(monkeypatch):
    """transformers computes these in fp32 even in an fp64 model: RMSNorm (x.float()), the RoPE angles (inv_freq
    built and used in fp32) and the RG-LRU scan (acc_dtype fp32). Lifted here so fp64 compares at 1e-10
    (with them, an fp64 transformers model agrees with seqzoo's fp64 model only to ~1e-7)."""
    from transformers.models.recurrent_gemma import modeling_recurrent_gemma as m

    def norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)

    def rope(self, x, position_ids):
        dim = 2 * self.inv_freq.numel()
        base = self.config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].double() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    scan = m.RecurrentGemmaRglru._rnn_scan

    def scan_in_dtype(self, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32):
        return scan(
            self, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=hidden_states.dtype
        )

    monkeypatch.setattr(m.RecurrentGemmaRMSNorm, "forward", norm)
    monkeypatch.setattr(m.RecurrentGemmaRotaryEmbedding, "forward", rope)
    monkeypatch.setattr(m.RecurrentGemmaRglru, "_rnn_scan", scan_in_dtype)


def test_logits_fp64(pair, lift_fp32_casts):
    hf, model, _, _, _ = pair
    ids = _ids(2, 3 * WINDOW, seed=4)
    hf64, model64 = hf.double(), model.double()
    try:
        with torch.no_grad():
            expected = hf64(ids, use_cache=False).logits
            got = model64(ids)
        assert expected.dtype == got.dtype == torch.float64
        assert _rel(expected, got) < 1e-10
    finally:
        hf.float(), model.float()


def test_greedy_decoding_matches_generate(pair):
    """seqzoo prefill + step vs transformers generate(do_sample=False) from a prompt longer than the window: the
    same tokens, and the same logits at every decoded position (1e-5), so the tokens are no accident of ties."""
    hf, model, _, _, _ = pair
    prompt = _ids(2, PROMPT, seed=5)
    with torch.no_grad():
        out = hf.generate(
            prompt,
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            output_logits=True,  # the raw logits (scores would have min_new_tokens' -inf on eos)
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        logits, states = model.prefill(prompt)
        step_logits, tokens = [logits[:, -1]], []
        for i in range(NEW):
            tokens.append(step_logits[-1].argmax(-1))
            if i + 1 < NEW:
                nxt, states = model.step(tokens[-1], states)
                step_logits.append(nxt)
    ours = torch.stack(tokens, dim=1)
    assert torch.equal(out.sequences[:, PROMPT:], ours)
    assert len(set(ours.flatten().tolist())) > 2  # a decoding that moves, not one token repeated
    for expected, got in zip(out.logits, step_logits):
        assert _rel(expected, got) < 1e-5


def test_packed_documents_decode_alone(pair):
    """The converted model takes packed documents like any seqzoo model (cu_seqlens): each as if alone."""
    _, model, _, _, _ = pair
    a, b = _ids(1, 9, seed=6), _ids(1, 7, seed=7)
    cu = torch.tensor([0, 9, 16], dtype=torch.int32)
    with torch.no_grad():
        packed = model(torch.cat([a, b], dim=1), cu_seqlens=cu)
        alone = torch.cat([model(a), model(b)], dim=1)
    assert _rel(alone, packed) < 1e-5


def test_weights_and_config_round_trip(pair):
    hf, model, hf_config, hf_weights, _ = pair
    family = FAMILIES["recurrent_gemma"]
    back = family.weights_to_hf(
        family.weights_from_hf(hf_weights, hf_config), family.config_from_hf(hf_config)
    )
    assert back.keys() == hf_weights.keys()
    for key, tensor in hf_weights.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
    # Config: every field that shapes the model comes back as transformers wrote it.
    cfg = family.config_from_hf(hf_config)
    hf_back = family.config_to_hf(cfg)
    for key, value in hf_back.items():
        if key not in ("architectures",):
            assert hf_config[key] == value, key
    missing = set(hf_config) - set(hf_back) - rg.IGNORED_FIELDS
    assert not missing
    assert family.config_from_hf(hf_back) == cfg
    # Export of the seqzoo model loads into a fresh transformers model, strictly, with the same logits.
    import transformers

    fresh = transformers.RecurrentGemmaForCausalLM(transformers.RecurrentGemmaConfig(**hf_back)).eval()
    loaded = fresh.load_state_dict(family.weights_to_hf(model.state_dict(), cfg), strict=False)
    assert loaded.unexpected_keys == []
    # A tied head is the embedding in transformers too (save_pretrained writes no lm_head.weight either).
    assert loaded.missing_keys == (["lm_head.weight"] if cfg.tie_embeddings else [])
    assert (fresh.lm_head.weight is fresh.model.embed_tokens.weight) == cfg.tie_embeddings
    ids = _ids(1, 2 * WINDOW, seed=8)
    with torch.no_grad():
        assert torch.equal(fresh(ids, use_cache=False).logits, hf(ids, use_cache=False).logits)


# -- without transformers ---------------------------------------------------------------------------------


def test_config_conversion_without_transformers():
    cfg = rg.config_from_hf(HF_CONFIG)
    assert cfg.norm == "gemma" and cfg.mlp == "geglu" and cfg.mlp_hidden == 48 and cfg.mlp_bias
    assert cfg.logits_soft_cap == 30.0 and cfg.embed_scale == float(
        torch.tensor(32**0.5, dtype=torch.bfloat16)
    )
    names = [name for name, _ in cfg.layer_specs()]
    assert names == ["rglru", "rglru", "sliding_window"]
    attention = cfg.layer_specs()[2][1]
    assert attention["rotary_dim"] == 4 and attention["n_kv_heads"] == 1 and attention["window"] == WINDOW
    assert rg.config_from_hf(rg.config_to_hf(cfg)) == cfg
    # transformers 4.x field names (the published checkpoints): top-level rope fields, _block_types.
    old = {k: v for k, v in HF_CONFIG.items() if k not in ("rope_parameters", "block_types")}
    old.update(rope_theta=10000.0, partial_rotary_factor=0.5, embeddings_scale_by_sqrt_dim=True)
    old["_block_types"] = ["recurrent", "recurrent", "attention"]
    assert rg.config_from_hf(old) == cfg


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_activation", "gelu"),
        ("attention_dropout", 0.1),
        ("block_types", ["recurrent", "mamba"]),
        ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.1}),
        ("quantization_config", {"bits": 4}),
        ("_block_types", ["recurrent", "attention"]),
        ("conv1d_width", 9),
        ("num_key_value_heads", 3),
    ],
)
def test_unsupported_config_names_the_field(field, value):
    hf_config = {**HF_CONFIG, field: value}
    if field == "_block_types":  # transformers 4.x's name, alone (with block_types the new name wins)
        del hf_config["block_types"]
    with pytest.raises(UnsupportedHFConfig) as err:
        rg.config_from_hf(hf_config)
    assert field in str(err.value)


def test_unsupported_seqzoo_config_names_the_field():
    with pytest.raises(UnsupportedHFConfig, match="norm"):
        rg.config_to_hf(preset("griffin", d_model=32, n_layers=3, vocab_size=VOCAB))
    cfg = rg.config_from_hf(HF_CONFIG)
    bad = LMConfig(**{**cfg.model_dump(), "embed_scale": 1.0})
    with pytest.raises(UnsupportedHFConfig, match="embed_scale"):
        rg.config_to_hf(bad)
    mixers = [dict(m) for m in cfg.mixer]
    mixers[1]["n_heads"] = 2
    with pytest.raises(UnsupportedHFConfig, match=r"mixer\[1\]\.n_heads"):
        rg.config_to_hf(LMConfig(**{**cfg.model_dump(), "mixer": mixers}))


def test_missing_and_unexpected_weights_name_the_key():
    cfg = rg.config_from_hf(HF_CONFIG)
    hf_weights = rg.weights_to_hf(CausalLM(cfg).state_dict(), cfg)
    broken = dict(hf_weights)
    del broken["model.layers.1.temporal_block.rg_lru.recurrent_param"]
    with pytest.raises(KeyError, match="recurrent_param"):
        rg.weights_from_hf(broken, HF_CONFIG)
    with pytest.raises(KeyError, match="extra.weight"):
        rg.weights_from_hf({**hf_weights, "model.extra.weight": torch.zeros(1)}, HF_CONFIG)


def test_recurrentgemma_2b_preset():
    cfg = preset("recurrentgemma-2b")
    with torch.device("meta"):
        model = CausalLM(cfg)
    assert 2.6e9 < model.num_parameters() < 2.8e9  # RecurrentGemma 2B: 2.7B parameters
    attention = cfg.layer_specs()[2][1]
    assert (attention["head_dim"], attention["rotary_dim"], attention["window"]) == (256, 128, 2048)
    assert cfg.mlp_hidden == 3 * cfg.d_model and cfg.embed_scale == 50.5 and cfg.logits_soft_cap == 30.0


# -- the options default to the models of before ---------------------------------------------------------


def test_defaults_keep_state_dict_keys_and_shapes():
    """Pinned: the griffin preset's parameters (names and shapes) as they were before the new options."""
    model = CausalLM(preset("griffin", d_model=16, n_layers=3, vocab_size=32, window=4))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    common = {
        "mixer_norm.weight": (16,),
        "mlp_norm.weight": (16,),
        "mlp.w1.weight": (32, 16),
        "mlp.w3.weight": (32, 16),
        "mlp.w2.weight": (16, 32),
    }
    recurrent = {
        "mixer.gate_proj.weight": (16, 16),
        "mixer.in_proj.weight": (16, 16),
        "mixer.conv.weight": (16, 4),
        "mixer.conv.bias": (16,),
        "mixer.gate_a_weight": (1, 16, 16),
        "mixer.gate_a_bias": (1, 16),
        "mixer.gate_x_weight": (1, 16, 16),
        "mixer.gate_x_bias": (1, 16),
        "mixer.a_param": (16,),
        "mixer.out_proj.weight": (16, 16),
    }
    attention = {
        "mixer.q_proj.weight": (16, 16),
        "mixer.kv_proj.weight": (32, 16),
        "mixer.o_proj.weight": (16, 16),
    }
    expected = {"embedding.weight": (32, 16), "head.weight": (32, 16), "backbone.final_norm.weight": (16,)}
    for i, block in enumerate([recurrent, recurrent, attention]):
        expected.update({f"backbone.blocks.{i}.{k}": v for k, v in {**common, **block}.items()})
    assert shapes == expected
    assert model.config.logits_soft_cap is None and model.config.embed_scale == 1.0


def test_partial_rotary_and_rotary_defaults():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    pos = torch.arange(5)
    assert torch.equal(apply_rotary(x, pos), apply_rotary(x, pos, rotary_dim=8))
    part = apply_rotary(x, pos, rotary_dim=4)
    assert torch.equal(part[..., 4:], x[..., 4:])  # the second half passes
    assert torch.equal(part[..., :4], apply_rotary(x[..., :4], pos))  # the first half is a head of size 4
    assert part.dtype == torch.float64


def test_option_errors_name_the_argument():
    with pytest.raises(TypeError, match="bias"):
        build_mixer("rglru", 16, bias="yes")
    with pytest.raises(ValueError, match="rotary_dim"):
        build_mixer("sliding_window", 16, n_heads=2, window=4, rotary_dim=3)
    with pytest.raises(ValueError, match="rotary_dim"):
        build_mixer("attention", 16, n_heads=2, rotary_dim=10)
    with pytest.raises(ValueError, match="hidden"):
        MLP(16, "geglu", hidden=0)
    for field, value in (
        ("logits_soft_cap", 0.0),
        ("embed_scale", -1.0),
        ("mlp_hidden", 0),
        ("norm", "gemma2"),
    ):
        with pytest.raises(ValueError, match=field):
            LMConfig(**{field: value})


def test_soft_cap_and_embed_scale_in_every_path():
    """forward, prefill and step all apply the cap (and the scale): decoding equals the full forward."""
    cfg = LMConfig(
        d_model=16,
        n_layers=2,
        vocab_size=32,
        mixer=[
            {"name": "rglru", "n_heads": 2, "bias": True},
            {"name": "sliding_window", "window": 3, "rotary_dim": 4},
        ],
        norm="gemma",
        mlp="geglu",
        mlp_hidden=24,
        mlp_bias=True,
        embed_scale=4.0,
        logits_soft_cap=0.5,
    )
    torch.manual_seed(0)
    model = CausalLM(cfg).eval()
    ids = _ids(2, 7, seed=9) % 32
    with torch.no_grad():
        full = model(ids)
        logits, states = model.prefill(ids[:, :4])
        steps = [logits]
        for t in range(4, 7):
            step, states = model.step(ids[:, t], states)
            steps.append(step[:, None])
    assert full.abs().max() < 0.5
    assert _rel(full, torch.cat(steps, dim=1)) < 1e-5


def test_cli_convert_and_export_round_trip(pair, tmp_path):
    """seqzoo convert / export on a RecurrentGemma folder (the family found by model_type): the run's model gives
    transformers' logits, and the exported folder holds the same tensors and the fields of the config."""
    from safetensors.torch import load_file

    from seqzoo.cli import main as cli_main

    hf, _, hf_config, hf_weights, folder = pair
    run, exported = tmp_path / "run", tmp_path / "hf"
    assert cli_main(["convert", str(folder), "--to", str(run), "--seq-len", "32"]) == 0
    model = CausalLM.load(run / "model").eval()
    ids = _ids(1, 2 * WINDOW, seed=9)
    with torch.no_grad():
        assert _rel(model(ids), hf(ids, use_cache=False).logits) < 1e-5
    assert cli_main(["export", str(run), "--hf", str(exported)]) == 0
    back = load_file(str(exported / "model.safetensors"))
    assert back.keys() == hf_weights.keys() and all(torch.equal(back[k], hf_weights[k]) for k in back)
    exported_config = json.loads((exported / "config.json").read_text())
    assert exported_config["model_type"] == "recurrent_gemma"
    for key in ("hidden_size", "num_hidden_layers", "attention_window_size", "tie_word_embeddings"):
        assert exported_config[key] == hf_config[key], key
