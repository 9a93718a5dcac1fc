"""Convert a transformers checkpoint into seqzoo and check that it computes the same function.

Offline and in seconds: a tiny random Mamba-2 (or Mamba) made with transformers and saved with
save_pretrained stands in for a published checkpoint folder (``huggingface-cli download
state-spaces/mamba-130m-hf --local-dir mamba-130m`` gives a real one). Needs transformers
(``pip install 'seqzoo[hf]'``) for the reference model only: seqzoo's conversion reads config.json and
safetensors itself.

    python examples/hf_convert.py [--family mamba|mamba2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

from seqzoo.interop.hf import load_hf, read_hf_config, save_hf


def tiny_checkpoint(family: str, folder: Path):
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, tie_word_embeddings=False)
    if family == "mamba":
        config = transformers.MambaConfig(state_size=8, **common)
    else:
        config = transformers.Mamba2Config(
            state_size=16, head_dim=16, num_heads=4, n_groups=1, chunk_size=16, **common
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["mamba", "mamba2"], default="mamba2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        reference = tiny_checkpoint(args.family, folder)
        model = load_hf(folder)  # what `seqzoo convert FOLDER --to RUN` does, before writing the run
        print(f"{args.family}: {model.num_parameters():,} parameters, mixer {model.config.mixer}")
        ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref, ours = reference(ids).logits, model(ids)
        err = ((ours - ref).abs().max() / ref.abs().max()).item()
        print(f"logits: max relative difference {err:.2e} (fp32)")
        assert err < 1e-5, err
        # Greedy: no stop at the end-of-text token, no padding mask (every prompt token is real).
        reference.generation_config.eos_token_id = None
        greedy_ref = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
        )
        greedy = model.generate(ids, max_new_tokens=8, temperature=0)  # prefill + step
        print(f"greedy tokens equal to transformers' generate: {torch.equal(greedy, greedy_ref)}")
        assert torch.equal(greedy, greedy_ref)
        # What `seqzoo export RUN --hf FOLDER` writes; the base config carries the fields seqzoo's model does not
        # hold (token ids, Mamba-2's chunk_size), as the run's hf_config.json does for the command.
        save_hf(model, Path(tmp) / "exported", base_config=read_hf_config(folder))
        back = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "exported").eval()
        with torch.no_grad():
            assert torch.equal(back(ids).logits, ref)
        print("exported folder loads in transformers with the same logits")


if __name__ == "__main__":
    main()
