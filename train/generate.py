"""``seqzoo generate RUN_DIR --prompt "..."``: sample text from a trained run (its final model, or its
latest checkpoint while it is still training) with the tokenizer saved beside it."""

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


def load_run_model(run_dir: Path, device="cpu"):
    from safetensors.torch import load_model

    from seqzoo import CausalLM, LMConfig

    from .checkpoint import latest_checkpoint

    if (run_dir / "model" / "model.safetensors").is_file():
        return CausalLM.load(run_dir / "model", device=device)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds neither a final model nor a checkpoint")
    from .config import load_config

    config = load_config(run_dir / "config.yaml")
    from .build import model_config, predates_mixer_settings
    from .tokenizers import load_run_tokenizer

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


def main(args) -> int:
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
