"""A hybrid language model from configuration: build, generate, save and load.

Run it:  python examples/hybrid_lm.py
"""

import tempfile

import torch

from seqzoo import CausalLM, LMConfig

config = LMConfig(
    vocab_size=256,
    d_model=64,
    n_layers=4,
    mixer=["short_conv", {"name": "sliding_window", "window": 16, "n_heads": 2}],
    mlp="swiglu",
)
model = CausalLM(config)
print(f"{model.num_parameters():,} parameters; decoding state at T=1000: {model.state_size(1000):,} numbers")

prompt = torch.tensor([list(b"def ")])
out = model.generate(
    prompt, max_new_tokens=20, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(0)
)
print(bytes(out[0].tolist()))

with tempfile.TemporaryDirectory() as d:
    model.save(d)
    again = CausalLM.load(d)
    assert torch.equal(again(prompt), model(prompt))
    print("saved and loaded:", d)
