"""CausalLM and SequenceClassifier: configs, hybrids, decoding, sampling, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import seqzoo
from seqzoo import CausalLM, LMConfig, SequenceClassifier
from seqzoo.models.sampling import sample_next

HYBRID = [
    "short_conv",
    {"name": "sliding_window", "window": 4, "n_heads": 2},
    {"name": "attention", "n_heads": 2},
]


def tiny(mixer=HYBRID, **kw):
    return CausalLM(LMConfig(vocab_size=50, d_model=32, n_layers=3, mixer=mixer, **kw))


def test_mixer_pattern_repeats_to_n_layers():
    cfg = LMConfig(mixer=["short_conv", "attention"], n_layers=5, mixer_kwargs={"n_heads": 2})
    assert [n for n, _ in cfg.layer_specs()] == ["short_conv", "attention"] * 2 + ["short_conv"]
    cfg = LMConfig(mixer=[{"name": "attention", "n_heads": 4}], n_layers=2, mixer_kwargs={"n_heads": 2})
    assert cfg.layer_specs()[0] == ("attention", {"n_heads": 4})  # an entry's own kwargs win
    m = tiny()
    assert [type(b.mixer).__name__ for b in m.backbone.blocks] == [
        "ShortConv",
        "SlidingWindowAttention",
        "Attention",
    ]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(mixer="nonexistent"), "nonexistent"),
        (dict(n_layers=0), "n_layers"),
        (dict(mlp="relu"), "mlp"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(bogus=1), "bogus"),
        (dict(mixer=[{"window": 3}]), "name"),
    ],
)
def test_bad_config_names_the_key(kwargs, word):
    with pytest.raises(ValidationError, match=word):
        LMConfig(**kwargs)


def test_forward_prefill_step_agree():
    m = tiny().double()
    ids = torch.randint(0, 50, (2, 10))
    logits = m(ids)
    assert logits.shape == (2, 10, 50)
    lp, states = m.prefill(ids[:, :6])
    torch.testing.assert_close(lp, logits[:, :6])
    for t in range(6, 10):
        lt, states = m.step(ids[:, t], states)
        torch.testing.assert_close(lt, logits[:, t])


def test_greedy_generate_equals_repeated_argmax():
    m = tiny().double()
    prompt = torch.randint(0, 50, (2, 5))
    out = m.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11)
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_recurrent_state_does_not_grow():
    m = tiny(mixer=["short_conv", {"name": "sliding_window", "window": 4, "n_heads": 2}])
    ids = torch.randint(0, 50, (1, 3))
    _, states = m.prefill(ids)
    sizes = []
    for t in range(20):
        _, states = m.step(torch.tensor([t % 50]), states)
        sizes.append(sum(v.numel() for s in states for v in s.values()))
    assert len(set(sizes)) == 1
    assert m.state_size(10) == m.state_size(10_000)
    # Attention's cache does grow, and state_size says so.
    a = tiny(mixer=[{"name": "attention", "n_heads": 2}])
    assert a.state_size(100) == 10 * a.state_size(10)


def test_sampling_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(200, 1)
    top2 = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {3, 4}
    # p(4) = 0.636, p(3) = 0.234: top_p = 0.5 keeps only token 4, 0.8 keeps 3 and 4.
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {4}
    assert set(sample_next(logits, top_p=0.8, generator=g).tolist()) == {3, 4}
    assert set(sample_next(logits, temperature=0).tolist()) == {4}
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_p=1.5)


def test_generate_stops_at_eos():
    m = tiny()
    out = m.generate(torch.randint(0, 50, (1, 3)), max_new_tokens=20, temperature=0, eos_token_id=None)
    eos = int(out[0, 3])  # the first greedy token: make it the end token
    out2 = m.generate(out[:, :3], max_new_tokens=20, temperature=0, eos_token_id=eos)
    assert out2.shape[1] == 4


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_identical_logits(tmp_path, tie):
    m = tiny(tie_embeddings=tie)
    m.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_type"] == "causal_lm"
    assert not list((tmp_path / "run").glob("*.tmp"))
    m2 = CausalLM.load(tmp_path / "run")
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(m(ids), m2(ids))
    assert (m2.head.weight is m2.embedding.weight) == tie


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        CausalLM.load(tmp_path)


def test_bad_token_ids():
    m = tiny()
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.tensor([[0, 50]]))
    with pytest.raises(TypeError, match="input_ids"):
        m(torch.randn(1, 3))


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_classifier(pooling, tmp_path):
    clf = SequenceClassifier(
        n_classes=3,
        vocab_size=20,
        d_model=16,
        n_layers=2,
        mixer={"name": "attention", "n_heads": 2},
        pooling=pooling,
        bidirectional=True,
    )
    x = torch.randint(0, 20, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[0, 5:] = False
    out = clf(x, mask)
    assert out.shape == (4, 3)
    # Padding is ignored: changing padded tokens leaves the first example's logits alone (mean / last).
    if pooling != "cls":
        x2 = x.clone()
        x2[0, 5:] = (x2[0, 5:] + 1) % 20
        clf_causal = SequenceClassifier(clf.config.model_copy(update={"bidirectional": False}))
        torch.testing.assert_close(clf_causal(x2, mask)[0], clf_causal(x, mask)[0])
    clf.save(tmp_path)
    torch.testing.assert_close(SequenceClassifier.load(tmp_path)(x, mask), out)


def test_classifier_position_embeddings(tmp_path):
    """Learned absolute positions (ViG's abs pos embed): each row's tokens at 0, 1, ... whether or not the batch
    is padded; a sequence longer than the table is an error; the run config's key reaches the classifier."""
    from types import SimpleNamespace

    from seqzoo.train.build import build_model
    from seqzoo.train.config import load_config

    kwargs = dict(n_classes=2, vocab_size=20, d_model=16, n_layers=1, mixer="gla", bidirectional=True)
    clf = SequenceClassifier(**kwargs, position_embeddings=9)
    with torch.no_grad():
        clf.position.weight.normal_()  # well away from the init's small scale
    x = torch.randint(0, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    torch.testing.assert_close(clf(x, mask)[0], clf(x[:1, :5])[0])  # packed: the row keeps positions 0..4
    # Positions change what a sequence of one repeated token gives (without them, every position looks alike).
    same = torch.full((1, 9), 3)
    plain = SequenceClassifier(**kwargs)
    plain.load_state_dict({k: v for k, v in clf.state_dict().items() if not k.startswith("position")})
    assert not torch.allclose(clf(same), plain(same))
    with pytest.raises(ValueError, match="10 positions, more than position_embeddings"):
        clf(torch.randint(0, 20, (1, 10)))
    clf.save(tmp_path)
    torch.testing.assert_close(SequenceClassifier.load(tmp_path)(x, mask), clf(x, mask))
    data = SimpleNamespace(seq_len=9, vocab_size=20, n_classes=2, pairs=False)
    base = {"model": {"kind": "classifier", "d_model": 16, "n_layers": 1, "mixer": "gla"},
            "data": {"source": "lra", "name": "pathfinder"}}  # fmt: skip
    built = build_model(load_config(base, ["model.position_embeddings=9"]), data)
    assert built.position.num_embeddings == 9
    # An LM-only option is refused for a classifier, not dropped.
    with pytest.raises(ValueError, match="model.tie_embeddings: a causal LM's option"):
        build_model(load_config(base, ["model.tie_embeddings=false"]), data)


def test_classifier_continuous_inputs_and_bidirectional_mixers():
    clf = SequenceClassifier(
        n_classes=2, d_input=3, d_model=16, n_layers=1, mixer="short_conv", bidirectional=False
    )
    assert clf(torch.randn(2, 7, 3)).shape == (2, 2)
    with pytest.raises(ValidationError, match="vocab_size"):
        SequenceClassifier(n_classes=2, d_model=16)
    blk = seqzoo.build_mixer("attention", 16, n_heads=2, bidirectional=True)
    with pytest.raises(RuntimeError, match="bidirectional"):
        blk.prefill(torch.randn(1, 3, 16))


def test_logits_at_gives_the_full_logits_at_those_positions():
    torch.manual_seed(0)
    model = CausalLM(LMConfig(vocab_size=50, d_model=32, n_layers=2, mixer=["gla", "attention"])).double()
    x = torch.randint(0, 50, (3, 17))
    at = torch.rand(3, 17) < 0.3
    torch.testing.assert_close(model(x, logits_at=at), model(x)[at], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="logits_at"):
        model(x, logits_at=at[:, :5])


def test_zoology_block_with_learned_positions():
    """Zoology's block (LayerNorms, the 'identity' second branch), learned positions, scaled output init."""
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=40,
        d_model=32,
        n_layers=2,
        mlp="none",
        block="zoology",
        position_embeddings=16,
        mixer=[{"name": "attention", "rotary": False, "bias": True}],
    )
    model = CausalLM(cfg).double().eval()
    block = model.backbone.blocks[0]
    assert isinstance(block.mixer_norm, torch.nn.LayerNorm) and isinstance(block.mlp, torch.nn.Identity)
    assert 0.005 < block.mixer.o_proj.weight.std() < 0.015  # 0.02 / sqrt(2 * 2) = 0.01
    x = torch.randint(0, 40, (2, 12))
    h = model._embed(x)
    # The second branch adds a normalised copy of the residual: h + mixer(LN1 h), then + LN2 of that.
    mid = h + block.mixer(block.mixer_norm(h))
    torch.testing.assert_close(block(h), mid + block.mlp_norm(mid))
    # Decoding carries the position: prefill + steps equal the forward pass.
    full = model(x)
    logits, states = model.prefill(x[:, :5])
    outs = [logits]
    for t in range(5, 12):
        step_logits, states = model.step(x[:, t], states)
        outs.append(step_logits[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="position_embeddings"):
        model(torch.randint(0, 40, (1, 17)))


@pytest.mark.parametrize("mixer", ["short_conv", "mamba", "mamba2", "rglru"])
def test_checkpoints_from_before_the_shared_short_convolution_still_load(mixer, tmp_path):
    """short_conv, mamba, mamba2 and rglru held their convolution as conv_weight / conv_bias; it is now
    seqzoo.modules.ShortConvolution (conv.weight / conv.bias). A model saved with the old names loads."""
    from safetensors.torch import load_file, save_file

    from seqzoo.models.io import WEIGHTS_NAME

    torch.manual_seed(0)
    lm = CausalLM(LMConfig(vocab_size=20, d_model=32, n_layers=1, mixer=mixer))
    lm.save(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))  # what save wrote (the tied head once)
    old = {k.replace("mixer.conv.", "mixer.conv_"): v for k, v in saved.items()}  # conv.weight -> conv_weight
    assert "backbone.blocks.0.mixer.conv_weight" in old and "backbone.blocks.0.mixer.conv.weight" not in old
    save_file(old, str(tmp_path / WEIGHTS_NAME), metadata={"format": "pt", "seqzoo_model": "causal_lm"})
    loaded = CausalLM.load(tmp_path)
    ids = torch.randint(0, 20, (2, 7))
    torch.testing.assert_close(loaded(ids), lm(ids))


def test_mixer_name_hawk_is_an_error_naming_rglru_and_the_preset(tmp_path):
    """Issue 14 made ``hawk`` the model (the preset) and ``rglru`` its block; issue 26 removed the deprecated
    mixer name ``hawk``: building it, a model config naming it, a saved model naming it and the tiny config's
    old name all fail with a message that names the mixer ``rglru`` and the preset."""
    import json
    import warnings

    from seqzoo.models.presets import preset
    from seqzoo.train.config import ConfigError, load_config

    says = r"'hawk' was removed.*mixer 'rglru'.*preset\('hawk'\)"
    assert "hawk" not in seqzoo.list_mixers()
    with pytest.raises(ValueError, match=says):
        seqzoo.build_mixer("hawk", 16, n_heads=2)
    with pytest.raises(ValueError, match=says):
        LMConfig(vocab_size=50, d_model=16, n_layers=1, mixer={"name": "hawk", "n_heads": 2})
    # A saved model whose config.json names the mixer hawk: the same error, from load.
    lm = CausalLM(LMConfig(vocab_size=50, d_model=16, n_layers=1, mixer={"name": "rglru", "n_heads": 2}))
    lm.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    text = json.dumps(config).replace('"rglru"', '"hawk"')
    assert text != json.dumps(config)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=says):
        CausalLM.load(tmp_path)
    with pytest.raises(ConfigError, match=says + r".*tiny-rglru"):
        load_config("tiny-hawk")
    with pytest.raises(ConfigError, match=says):
        load_config("tiny", ["model.mixer=hawk", "model.mlp=swiglu"])
    # The current names warn about nothing; the preset is RG-LRU blocks with gated-GeLU MLPs, as before.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seqzoo.build_mixer("rglru", 16, n_heads=2)
        model_config = preset("hawk", d_model=16, n_layers=2, vocab_size=50)
    assert isinstance(model_config, LMConfig) and model_config.mlp == "geglu"
    assert {name for name, _ in model_config.layer_specs()} == {"rglru"}
