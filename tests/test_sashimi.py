"""SaShiMi (seqzoo.models.Sashimi) and its audio data (seqzoo.train.audio): decoding equals the parallel pass,
causality, the quantisers, the wav loader, the synthetic source, the pooling checks, and a recipe run that
``seqzoo generate`` continues into a .wav and a .png."""

from __future__ import annotations

import json
import math
import wave

import pytest
import torch

from seqzoo.models.sashimi import Sashimi, SashimiConfig
from seqzoo.train import audio
from seqzoo.train.config import ConfigError, load_config


def small(mixer="s4", **kw) -> Sashimi:
    """The acceptance size: pool [4, 4], 2 layers per level, d_model 16, fp64."""
    torch.manual_seed(0)
    kwargs = {"d_state": 8} if mixer in ("s4", "s4d") else {}
    return Sashimi(d_model=16, n_layers=2, pool=[4, 4], seq_len=512, mixer=mixer, mixer_kwargs=kwargs, **kw)


def stepped(model, ids, state=None):
    state = model.init_state(ids.shape[0]) if state is None else state
    out = []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


@torch.no_grad()
def test_step_equals_forward_s4_fp64_T512():
    """Every sample decoded one at a time (each level stepping at its own rate, the pool buffers carrying
    the groups) gives the parallel pass's logits; so does a prefill of any length followed by steps."""
    model = small("s4").double().eval()
    ids = torch.randint(0, 256, (1, 512), generator=torch.Generator().manual_seed(1))
    ref = model(ids)
    out, _ = stepped(model, ids)
    assert (out - ref).abs().max() < 1e-8
    # prefill: the parallel pass over 496 = 31 x 16 samples, then 4 steps; then step on from its state.
    logits, state = model.prefill(ids[:, :500])
    assert int(state["pos"][0]) == 500
    rest, _ = stepped(model, ids[:, 500:], state)
    assert (torch.cat([logits, rest], 1) - ref).abs().max() < 1e-8
    # A prefill from a state at a multiple of 16 runs in parallel too (the UpPool buffers replace the zeros).
    logits, state = model.prefill(ids[:, :256])
    logits2, _ = model.prefill(ids[:, 256:], state)
    assert (torch.cat([logits, logits2], 1) - ref).abs().max() < 1e-8


@torch.no_grad()
@pytest.mark.parametrize("mixer", ["s4d"])
def test_step_equals_forward_other_mixers(mixer):
    model = small(mixer).double().eval()
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(2))
    ref = model(ids)
    out, _ = stepped(model, ids)
    assert (out - ref).abs().max() < 1e-8
    logits, state = model.prefill(ids[:, :21])  # 16 in parallel, 5 stepped
    rest, _ = stepped(model, ids[:, 21:], state)
    assert (torch.cat([logits, rest], 1) - ref).abs().max() < 1e-8


def test_causal_by_gradients():
    """d logits_t / d x_s = 0 for every s > t (the UpPool shift), and not for s <= t, at random t."""
    model = small("s4").double().eval()
    ids = torch.randint(0, 256, (1, 512), generator=torch.Generator().manual_seed(3))
    h = model.embedding(ids).detach().requires_grad_(True)
    out, _ = model._run(h, None, collect=False)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(out.shape[-1], generator=g, dtype=out.dtype)  # (a LayerNorm's outputs sum to a constant)
    times = [*torch.randint(0, 511, (4,), generator=g).tolist(), 3, 15, 16]  # and the group edges
    for t in times:
        (grad,) = torch.autograd.grad(out[0, t] @ w, h, retain_graph=True)
        size = grad[0].abs().amax(-1)  # [T]
        scale = size.max()
        assert size[t + 1 :].max() <= 1e-12 * scale, t
        assert size[t] > 1e-6 * scale and size[: t + 1].min() > 0, t


def test_quantisers_round_trip():
    q = torch.arange(256)
    for kind in ("mu_law", "linear"):
        encode, decode = audio.quantiser(kind)
        assert torch.equal(encode(decode(q)), q), kind
        assert int(encode(torch.zeros(1))) == audio.Q_ZERO and abs(float(decode(torch.tensor([128])))) < 2e-4
        x = torch.linspace(-1, 1, 2001)
        err = (decode(encode(x)) - x).abs()
        if kind == "linear":
            assert err.max() <= 1 / 128 + 1e-6
        else:  # mu-law: fine steps near zero, coarse at full scale
            assert err[x.abs() < 0.01].max() < 3e-4 and err.max() < 0.04
        assert bool((encode(x)[1:] >= encode(x)[:-1]).all())  # monotone
    with pytest.raises(ValueError, match="quantization"):
        audio.quantiser("alaw")


def _write_pcm(path, samples: torch.Tensor, rate: int, width: int):
    """samples [T, channels] in [-1, 1] as 8-bit (unsigned) or 16-bit PCM, written with the stdlib directly."""
    if width == 1:
        raw = bytes(((samples * 127).round() + 128).to(torch.uint8).flatten().tolist())
    else:
        raw = bytes((samples * 32767).round().to(torch.int16).flatten().view(torch.uint8).tolist())
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def test_wav_loader(tmp_path):
    left = audio.tone(300, 800, 8000)
    stereo = torch.stack([left, 0.5 * left], 1)
    _write_pcm(tmp_path / "s16.wav", stereo, 8000, 2)
    x, rate = audio.read_wav(tmp_path / "s16.wav", 8000)
    assert rate == 8000 and x.shape == (800,)
    assert (x - 0.75 * left).abs().max() < 1e-4  # downmixed: the channels' mean
    _write_pcm(tmp_path / "u8.wav", left[:, None], 8000, 1)
    x8, _ = audio.read_wav(tmp_path / "u8.wav")
    assert (x8 - left).abs().max() < 1.5 / 128
    with pytest.raises(ValueError, match="data.audio.resample"):
        audio.read_wav(tmp_path / "s16.wav", 16000)
    up, rate = audio.read_wav(tmp_path / "s16.wav", 16000, resample=True)
    assert rate == 16000 and up.shape == (1600,)
    assert abs(audio.spectral_peak_hz(up, 16000) - 300) < 15
    path = audio.write_wav(tmp_path / "out.wav", left, 8000)  # our writer reads back
    back, _ = audio.read_wav(path, 8000)
    assert (back - left).abs().max() < 1e-4
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(ValueError, match="bad.wav"):
        audio.read_wav(tmp_path / "bad.wav")


def test_wav_folder_source(tmp_path):
    for i, f in enumerate((200, 350, 500, 650)):
        _write_pcm(tmp_path / f"clip{i}.wav", audio.tone(f, 700, 8000)[:, None], 8000, 2)
    cfg = load_config(
        "sashimi-tones", ["data.source=audio_wav", f"data.paths=[{tmp_path}]", "data.seq_len=64"]
    )
    data = audio.wav_audio_data(cfg.data)
    n = data.train.shape[0] + data.val.shape[0] + data.test.shape[0]
    assert n == 4 * (700 // 65) and data.train.shape[1] == 65 and data.bytes_per_token == 1.0
    x, y = data.train_batch(0, 0, 4)
    assert x.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])


def test_synthetic_source_is_deterministic():
    a = audio.synthetic_tones(6, 4096, seed=5)
    assert torch.equal(a, audio.synthetic_tones(6, 4096, seed=5))
    assert not torch.equal(a, audio.synthetic_tones(6, 4096, seed=6))
    assert a.abs().max() <= 1
    for clip in a:  # every clip's strongest tone lies in the band
        assert 95 <= audio.spectral_peak_hz(clip, 8000) <= 1005
    cfg = load_config("sashimi-tones", ["data.seq_len=64", "data.audio.n_train=16"])
    d1, d2 = audio.synthetic_audio_data(cfg.data, seed=0), audio.synthetic_audio_data(cfg.data, seed=0)
    assert torch.equal(d1.train, d2.train) and torch.equal(d1.test, d2.test)
    assert not torch.equal(d1.val[: d1.test.shape[0]], d1.test[: d1.val.shape[0]])  # splits differ
    assert torch.equal(d1.train_batch(0, 3, 4)[0], d2.train_batch(0, 3, 4)[0])


def test_pooling_errors_name_the_argument():
    model = Sashimi(d_model=8, n_layers=1, seq_len=64, mixer="s4d", mixer_kwargs={"d_state": 4})
    with pytest.raises(ValueError, match="input_ids.*multiple of prod\\(pool\\) = 16"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_len"):
        SashimiConfig(seq_len=100)
    with pytest.raises(ConfigError, match="data.seq_len"):
        load_config("sashimi-tones", ["data.seq_len=100"])
    with pytest.raises(ConfigError, match="model.pool"):
        load_config("sashimi-tones", ["model.pool=[4, 0]"])
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(torch.zeros(1, 32, dtype=torch.long), cu_seqlens=torch.tensor([0, 16, 32], dtype=torch.int32))
    # Any length decodes: prefill handles what is not a multiple of 16.
    logits, _ = model.prefill(torch.zeros(1, 40, dtype=torch.long))
    assert logits.shape == (1, 40, 256)


def test_recipe_run_then_generate_writes_wav_and_png(tmp_path):
    from seqzoo.train.generate import generate_audio
    from seqzoo.train.loop import train

    cfg = load_config(
        "sashimi-tones",
        [
            "model.d_model=8",
            "model.n_layers=1",
            "model.mixer_kwargs={d_state: 4}",
            "data.seq_len=64",
            "data.audio={n_train: 8, n_val: 2, n_test: 2}",
            "train.steps=2",
            "train.batch_size=2",
            "train.eval_every=2",
            "train.eval_batches=1",
            f"train.out_dir={tmp_path / 'run'}",
            "log.progress=false",
            "log.plot=false",
        ],
    )
    summary = train(cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["val_bpb"])
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2))  # bits per sample
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    # The saved config names the mixer's keywords; each level's l_max comes from seq_len when built.
    assert saved["model_type"] == "sashimi" and saved["mixer"]["name"] == "s4" and saved["seq_len"] == 64
    results = generate_audio(
        tmp_path / "run", tone_hz=500, prompt_samples=40, max_new_tokens=24, out=tmp_path
    )
    (r,) = results
    with wave.open(r["wav"]) as w:
        assert w.getnframes() == 64 and w.getframerate() == 8000
    assert (tmp_path / "sample-0.png").stat().st_size > 1000
