"""Adding a mixer in one file: an exponential moving average, registered as "ema".

Run it:  python examples/custom_mixer.py
Inside the library the file would go in seqzoo/layers/ and be imported from seqzoo/layers/__init__.py.
"""

import torch
from torch import nn

import seqzoo
from seqzoo import Mixer, register_mixer


@register_mixer("ema", description="per-channel exponential moving average", paper="(your paper)")
class EMA(Mixer):
    def __init__(self, d_model: int, decay: float = 0.9):
        super().__init__(d_model)
        self.decay = decay
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):  # [B, T, D] -> [B, T, D]
        self.check_input(x)
        return self.prefill(x)[0]

    def init_state(self, batch_size, device=None, dtype=None):
        return {"h": torch.zeros(batch_size, self.d_model, device=device, dtype=dtype or torch.float32)}

    def prefill(self, x, state=None):
        self.check_input(x)
        h = self.init_state(x.shape[0], x.device, x.dtype)["h"] if state is None else state["h"]
        ys = []
        for t in range(x.shape[1]):
            h = self.decay * h + (1 - self.decay) * x[:, t]
            ys.append(h)
        return self.proj(torch.stack(ys, 1)), {"h": h}

    def step(self, x_t, state):
        self.check_input(x_t, "x_t", ndim=2)
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def state_size(self, seq_len):
        return self.d_model


if __name__ == "__main__":
    mixer = seqzoo.build_mixer("ema", d_model=16, decay=0.8)
    x = torch.randn(2, 10, 16)
    y, state = mixer.prefill(x)
    print("ema:", tuple(y.shape), {k: tuple(v.shape) for k, v in state.items()})
    model = seqzoo.CausalLM(seqzoo.LMConfig(d_model=16, n_layers=2, mixer=["ema", "attention"]))
    print(model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, temperature=0))
