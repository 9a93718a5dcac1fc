"""Scores the two runs of train/configs/sashimi-tones{,-flat}.yaml and continues a pure tone with SaShiMi.

    seqzoo train sashimi-tones       train.out_dir=runs/sashimi-tones
    seqzoo train sashimi-tones-flat  train.out_dir=runs/sashimi-tones-flat
    python bench_results/sashimi-tones.py runs/sashimi-tones runs/sashimi-tones-flat [SUFFIX]
    python bench_results/sashimi-tones.py runs/sashimi-tones-long - -long     # SaShiMi alone

Writes bench_results/sashimi-tones-cpu.{json,md} and sashimi-tones-cpu-continuation-{sampled,greedy}.png: test bits per sample
(mean cross-entropy / ln 2 over every position of the 64 test windows) of both models against the uniform 8-bit
model (8 bits), and the spectral peak of a 1,024-sample continuation of a pure-tone prompt against the tone, sampled
(temperature 1) and greedy.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqzoo.train.audio import synthetic_audio_data
from seqzoo.train.config import load_config
from seqzoo.train.generate import generate_audio, load_run_model

HERE = Path(__file__).parent


@torch.no_grad()
def test_bits(run_dir: Path) -> tuple[float, int, int]:
    config = load_config(run_dir / "config.yaml")
    data = synthetic_audio_data(config.data, config.train.seed)
    model = load_run_model(run_dir).eval()
    total, count = 0.0, 0
    for x, y in data.test_batches(8):
        total += F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count / math.log(2), count, sum(p.numel() for p in model.parameters())


def main(sashimi_dir: str, flat_dir: str, suffix: str = "", tone_hz: float = 440.0, seed: int = 0) -> None:
    """``flat_dir`` "-": SaShiMi alone (a longer run's bits and continuation); ``suffix`` names the outputs
    (sashimi-tones-cpu{suffix}.*)."""
    torch.set_num_threads(1)
    results = {"uniform_bits_per_sample": 8.0}
    runs = [("sashimi", Path(sashimi_dir))] + ([("flat_s4", Path(flat_dir))] if flat_dir != "-" else [])
    for name, run in runs:
        bits, n, params = test_bits(run)
        summary = json.loads((run / "summary.json").read_text())
        results[name] = {
            "run": str(run),
            "parameters": params,
            "test_bits_per_sample": round(bits, 4),
            "test_samples": n,
            "val_bits_per_sample": round(summary["val_bpb"], 4),
            "steps": summary["steps"],
            "train_wall_time_s": summary["wall_time_s"],
            "unigram_entropy_bits": round(summary["unigram_entropy_bits_per_token"], 4),
        }
    out = HERE / "tmp" / f"sashimi-generate{suffix}"
    png = f"sashimi-tones-cpu{suffix}-continuation.png"
    results["continuation"] = {}
    for label, temperature in (("sampled", 1.0), ("greedy", 0.0)):
        t0 = time.perf_counter()
        (r,) = generate_audio(
            sashimi_dir, tone_hz=tone_hz, prompt_samples=1024, max_new_tokens=1024, temperature=temperature,
            seed=seed, out=out / label,
        )  # fmt: skip
        peak = r["continuation_peak_hz"]
        results["continuation"][label] = {
            "tone_hz": tone_hz,
            "prompt_samples": 1024,
            "new_samples": 1024,
            "temperature": temperature,
            "seed": seed,
            "prompt_peak_hz": round(r["prompt_peak_hz"], 2),
            "continuation_peak_hz": round(peak, 2),
            "relative_error": round(abs(peak - tone_hz) / tone_hz, 4),
            "within_5_percent": abs(peak - tone_hz) <= 0.05 * tone_hz,
            "generate_wall_time_s": round(time.perf_counter() - t0, 1),
        }
        shutil.copy(r["png"], HERE / png.replace(".png", f"-{label}.png"))
    results["command"] = " ".join(["python", *sys.argv])
    (HERE / f"sashimi-tones-cpu{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    s, c = results["sashimi"], results["continuation"]
    f = results.get("flat_s4")
    md = [
        "# SaShiMi on synthetic tones (CPU)",
        "",
        "train/configs/sashimi-tones.yaml and sashimi-tones-flat.yaml: mu-law 8-bit mixtures of 1-3 sinusoids "
        "(100-1000 Hz at 8 kHz, noise sigma 0.01), 1,024-sample windows, same data and optimiser (the steps "
        "and training times are in the table; both runs on one thread each, side by side); "
        f"test = 64 held-out windows. `{results['command']}`.",
        "",
        "| model | parameters | steps | train s | test bits/sample | val bits/sample |",
        "|---|---|---|---|---|---|",
        f"| SaShiMi (s4, pool [4, 4]) | {s['parameters']:,} | {s['steps']} | {s['train_wall_time_s']:.0f} | "
        f"{s['test_bits_per_sample']:.3f} | {s['val_bits_per_sample']:.3f} |",
        *(
            [
                f"| flat s4 stack (CausalLM) | {f['parameters']:,} | {f['steps']} | {f['train_wall_time_s']:.0f} | "
                f"{f['test_bits_per_sample']:.3f} | {f['val_bits_per_sample']:.3f} |"
            ]
            if f
            else []
        ),
        "| uniform 8-bit | 0 | | | 8.000 | |",
        f"| unigram (validation histogram) | | | | {s['unigram_entropy_bits']:.3f} | |",
        "",
        *(
            f"Continuation of a {tone_hz:g} Hz pure tone ({label}: 1,024-sample prompt, 1,024 new samples, "
            f"temperature {v['temperature']:g}, seed {seed}): spectral peak {v['continuation_peak_hz']:.1f} Hz, "
            f"{100 * v['relative_error']:.1f}% off ({'within' if v['within_5_percent'] else 'NOT within'} 5%). "
            f"![{label}]({png.replace('.png', f'-{label}.png')})\n"
            for label, v in c.items()
        ),
        "",
    ]
    (HERE / f"sashimi-tones-cpu{suffix}.md").write_text("\n".join(md))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:4])
