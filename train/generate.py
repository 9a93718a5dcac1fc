"""``seqzoo generate RUN_DIR --prompt "..."``: sample text from a trained run (its final model, or its
latest checkpoint while it is still training) with the tokenizer saved beside it.

A SaShiMi run (``model.kind: sashimi``, 8-bit audio) continues audio instead: the prompt is a .wav
(``--prompt-wav``) or a pure tone (``--tone-hz``, ``--prompt-samples`` long); ``--max-new-tokens`` samples are
drawn and written as .wav (16-bit PCM at the run's sample rate) with a PNG of the waveform and spectrogram:

    seqzoo generate runs/sashimi-tones --tone-hz 440 --max-new-tokens 1024 --out gen/
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def configure_parser(p) -> None:
    p.add_argument("run_dir", help="a run folder written by seqzoo train")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    audio = p.add_argument_group("audio (SaShiMi runs)")
    audio.add_argument("--prompt-wav", default=None, help="a .wav to continue (default: a pure tone)")
    audio.add_argument("--tone-hz", type=float, default=440.0, help="the prompt tone's frequency")
    audio.add_argument("--prompt-samples", type=int, default=2048, help="prompt length in samples")
    audio.add_argument("--out", default=None, help="folder for the .wav and .png (default RUN_DIR/generated)")


def is_audio_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a SaShiMi run (its saved model, or its config while training)."""
    import json

    saved = run_dir / "model" / "config.json"
    if saved.is_file():
        return json.loads(saved.read_text()).get("model_type") == "sashimi"
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        return ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("kind") == "sashimi"
    return False


def load_run_model(run_dir: Path, device="cpu"):
    from safetensors.torch import load_model

    from seqzoo import CausalLM, LMConfig

    from .checkpoint import latest_checkpoint

    sashimi = is_audio_run(run_dir)
    if (run_dir / "model" / "model.safetensors").is_file():
        if sashimi:
            from seqzoo.models.sashimi import Sashimi

            return Sashimi.load(run_dir / "model", device=device)
        return CausalLM.load(run_dir / "model", device=device)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds neither a final model nor a checkpoint")
    from .config import load_config

    config = load_config(run_dir / "config.yaml")
    from .build import model_config, predates_mixer_settings
    from .tokenizers import load_run_tokenizer

    if sashimi:
        from seqzoo.models.sashimi import Sashimi

        from .build import sashimi_config

        model = Sashimi(sashimi_config(config, config.data.seq_len, 256))
        load_model(model, str(ckpt / "model.safetensors"))
        return model.to(device)
    if predates_mixer_settings(run_dir / "config.yaml"):
        config.model.mixer_settings = "none"
    seq_len = config.data.task_args.get("seq_len", config.data.seq_len)
    model_cfg = model_config(config, seq_len)
    model_cfg["vocab_size"] = model_cfg["vocab_size"] or load_run_tokenizer(run_dir).vocab_size
    model = CausalLM(LMConfig(**model_cfg))
    load_model(model, str(ckpt / "model.safetensors"))
    return model.to(device)


def generate_text(
    run_dir,
    prompt: str,
    max_new_tokens=200,
    temperature=0.8,
    top_k=None,
    top_p=None,
    num_samples=1,
    seed=0,
    device="cpu",
) -> list[str]:
    from .tokenizers import load_run_tokenizer

    run_dir = Path(run_dir)
    tokenizer = load_run_tokenizer(run_dir)
    model = load_run_model(run_dir, device).eval()
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    prompt_ids = torch.tensor([ids] * num_samples, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(prompt_ids, max_new_tokens, temperature, top_k, top_p, generator=g)
    return [tokenizer.decode(row[len(ids) :].tolist()) for row in out]


def generate_audio(
    run_dir,
    prompt_wav=None,
    tone_hz=440.0,
    prompt_samples=2048,
    max_new_tokens=1024,
    temperature=1.0,
    top_k=None,
    top_p=None,
    num_samples=1,
    seed=0,
    device="cpu",
    out=None,
) -> list[dict]:
    """Continue a prompt (a .wav, or a pure tone of ``tone_hz``) with a SaShiMi run's model; writes
    ``sample-{i}.wav`` and ``sample-{i}.png`` into ``out`` (default RUN_DIR/generated). Returns per sample
    {"wav", "png", "prompt_peak_hz", "continuation_peak_hz"} (the spectral peaks of prompt and continuation)."""
    from .audio import quantiser, read_wav, spectral_peak_hz, tone, write_wav
    from .config import load_config

    run_dir = Path(run_dir)
    audio = load_config(run_dir / "config.yaml").data.audio
    encode, decode = quantiser(audio.quantization)
    rate = audio.sample_rate
    if prompt_wav:
        x, _ = read_wav(prompt_wav, rate, audio.resample)
        x = x[-prompt_samples:] if prompt_samples else x
    else:
        x = tone(tone_hz, prompt_samples, rate)
    if len(x) < 1:
        raise ValueError("the prompt is empty: give --prompt-samples >= 1 or a longer .wav")
    model = load_run_model(run_dir, device).eval()
    prompt = encode(x).to(device)[None].expand(num_samples, -1)
    g = torch.Generator(device=device).manual_seed(seed)
    ids = model.generate(prompt, max_new_tokens, temperature, top_k, top_p, generator=g)
    out = Path(out) if out else run_dir / "generated"
    results = []
    for i, row in enumerate(ids.cpu()):
        wav = decode(row)
        n = prompt.shape[1]
        result = {
            "wav": str(write_wav(out / f"sample-{i}.wav", wav, rate)),
            "prompt_peak_hz": spectral_peak_hz(wav[:n], rate),
            "continuation_peak_hz": spectral_peak_hz(wav[n:], rate) if max_new_tokens >= 2 else float("nan"),
        }
        result["png"] = str(plot_audio(out / f"sample-{i}.png", wav, rate, n))
        results.append(result)
    return results


def plot_audio(path: Path, samples: torch.Tensor, sample_rate: int, prompt_len: int) -> Path:
    """The waveform (prompt and continuation) and its spectrogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = samples.double().numpy()
    t = [i / sample_rate for i in range(len(x))]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    ax1.plot(t[:prompt_len], x[:prompt_len], lw=0.6, color="gray", label="prompt")
    ax1.plot(t[prompt_len:], x[prompt_len:], lw=0.6, color="C0", label="generated")
    ax1.set_ylabel("amplitude")
    ax1.set_ylim(-1.05, 1.05)
    ax1.legend(loc="upper right", fontsize=8)
    nfft = min(256, max(16, len(x) // 8))
    ax2.specgram(x, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma")
    ax2.axvline(prompt_len / sample_rate, color="w", lw=0.8, ls="--")
    ax2.set_ylabel("frequency (Hz)")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args) -> int:
    run_dir = Path(args.run_dir)
    if is_audio_run(run_dir):
        try:
            results = generate_audio(
                run_dir, args.prompt_wav, args.tone_hz, args.prompt_samples, args.max_new_tokens,
                args.temperature, args.top_k, args.top_p, args.num_samples, args.seed, args.device, args.out,
            )  # fmt: skip
        except (FileNotFoundError, ValueError) as e:
            print(f"seqzoo generate: {e}", file=sys.stderr)
            return 2
        for r in results:
            print(
                f"wrote {r['wav']} and {r['png']} (spectral peak: prompt {r['prompt_peak_hz']:.1f} Hz, "
                f"continuation {r['continuation_peak_hz']:.1f} Hz)"
            )
        return 0
    try:
        samples = generate_text(
            args.run_dir,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.num_samples,
            args.seed,
            args.device,
        )
    except FileNotFoundError as e:
        print(f"seqzoo generate: {e}", file=sys.stderr)
        return 2
    for i, text in enumerate(samples):
        if len(samples) > 1:
            print(f"--- sample {i + 1} ---")
        print(args.prompt + text)
    return 0
