"""Packed documents: several sequences in one row, none seeing another (``cu_seqlens``).

    python examples/packed_documents.py

1. an op: ``ops.gla`` on three packed sequences with one initial and one final state per sequence;
2. a mixer and a model: the same numbers as running each document alone, then decoding the three as a batch;
3. the recipe: ``data.pack: true`` (``seqzoo train tiny data.pack=true``) trains on packed windows whose loss never
   predicts across a document boundary.
"""

import torch

import seqzoo
from seqzoo import ops
from seqzoo.models import CausalLM
from seqzoo.models.config import LMConfig
from seqzoo.ops._varlen import cu_seqlens_from_lengths

torch.manual_seed(0)
lengths = [5, 1, 42]
cu = cu_seqlens_from_lengths(lengths)  # tensor([0, 5, 6, 48], dtype=torch.int32)
T, H, K, V = sum(lengths), 2, 8, 8

# 1. An op: inputs [1, T, ...], states [N, ...].
q, k = torch.randn(1, T, H, K), torch.randn(1, T, H, K)
v, g = torch.randn(1, T, H, V), torch.nn.functional.logsigmoid(torch.randn(1, T, H, K))
h0 = torch.randn(len(lengths), H, K, V)
o, S = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
how = (
    f"{ops.gla.last_backend} ({ops.gla.last_packing})"  # e.g. "torch (native)": which backend, how it packed
)
o_alone, S_alone = ops.gla(
    q[:, 6:], k[:, 6:], v[:, 6:], g[:, 6:], initial_state=h0[2:], output_final_state=True
)
print(
    f"ops.gla packed: o {tuple(o.shape)}, final states {tuple(S.shape)}; ran {how}; third sequence vs alone: {(o[:, 6:] - o_alone).abs().max():.1e}, "
    f"{(S[2:] - S_alone).abs().max():.1e}"
)

# 2. A mixer and a model.
mixer = seqzoo.build_mixer("gla", 32)
x = torch.randn(1, T, 32)
y = mixer(x, cu_seqlens=cu)
alone = torch.cat([mixer(part) for part in x.split(lengths, dim=1)], dim=1)
print(f"gla mixer packed vs alone: {(y - alone).abs().max():.1e}")

model = CausalLM(LMConfig(vocab_size=256, d_model=32, n_layers=2, mixer=["short_conv", "gla"]))
ids = torch.randint(1, 256, (1, T))
logits, states = model.prefill(ids, cu_seqlens=cu)  # one state row per prompt
next_logits, states = model.step(logits[0, cu[1:].long() - 1].argmax(-1), states)  # decode the 3 as a batch
print(
    f"CausalLM packed prefill: logits {tuple(logits.shape)}, then one step for {next_logits.shape[0]} prompts"
)
