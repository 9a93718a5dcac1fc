"""The rglru (Griffin recurrent block) mixer against its equations, its init and gradient bound, and the
hawk / griffin presets: they build, generate, decode consistently with the full forward, and in constant
memory. (The mixer contract itself runs in test_mixer_contract.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo import CausalLM, LMConfig
from seqzoo.layers.rglru import MAX_SQRT_GRAD, RGLRUBlock, decay_at_full_gate, sqrt_bounded_grad
from seqzoo.models import PRESETS, preset


def rglru_by_hand(m: RGLRUBlock, x: torch.Tensor) -> torch.Tensor:
    """The block written out from the paper's equations, step by step, with full block-diagonal matrices; the
    first token resets the recurrence as recurrentgemma's RGLRU does at segment_pos == 0 (h_0 = i_0 * u_0)."""
    b, t, _ = x.shape
    gate = F.gelu(x @ m.gate_proj.weight.T, approximate="tanh")
    v = x @ m.in_proj.weight.T
    width = m.conv_width
    vp = torch.cat([v.new_zeros(b, width - 1, m.lru_width), v], dim=1)
    w_a = torch.block_diag(*m.gate_a_weight)
    w_x = torch.block_diag(*m.gate_x_weight)
    h = v.new_zeros(b, m.lru_width)
    ys = []
    for i in range(t):
        u = sum(m.conv.weight[:, k] * vp[:, i + k] for k in range(width)) + m.conv.bias
        r = torch.sigmoid(u @ w_a + m.gate_a_bias.flatten())
        gi = torch.sigmoid(u @ w_x + m.gate_x_bias.flatten())
        a = torch.sigmoid(-m.a_param) ** (m.c * r)  # exp(-softplus(L)) = sigmoid(-L)
        if i == 0:  # a sequence start (recurrentgemma's reset, issue 27): no decay, the input unscaled
            h = gi * u
        else:
            h = a * h + torch.sqrt(1 - a * a) * (gi * u)
        ys.append(h)
    return (torch.stack(ys, 1) * gate) @ m.out_proj.weight.T


@pytest.mark.parametrize("n_heads", [1, 4])
def test_block_follows_the_equations(n_heads):
    m = RGLRUBlock(16, lru_width=24, n_heads=n_heads).double()
    with torch.no_grad():  # non-zero biases, so a mix-up of the two gates would show
        m.gate_a_bias.normal_()
        m.gate_x_bias.normal_()
        m.conv.bias.normal_()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), rglru_by_hand(m, x), rtol=1e-10, atol=1e-10)


def test_decay_starts_uniform_in_griffins_range():
    decay = decay_at_full_gate(RGLRUBlock(512))
    assert decay.min() >= 0.9 - 1e-9 and decay.max() <= 0.999 + 1e-9
    # Spread over the range rather than stuck at one end.
    assert decay.min() < 0.91 and decay.max() > 0.99
    custom = decay_at_full_gate(RGLRUBlock(64, min_decay=0.5, max_decay=0.6))
    assert custom.min() >= 0.5 - 1e-9 and custom.max() <= 0.6 + 1e-9


def test_square_root_gradient_is_bounded():
    y = torch.tensor([0.0, 1e-12, 0.25, 4.0], dtype=torch.float64, requires_grad=True)
    root = sqrt_bounded_grad(y)
    torch.testing.assert_close(root, y.detach().sqrt())
    (grad,) = torch.autograd.grad(root.sum(), y)
    torch.testing.assert_close(
        grad, torch.tensor([MAX_SQRT_GRAD, MAX_SQRT_GRAD, 1.0, 0.25], dtype=torch.float64)
    )


def test_gradients_stay_finite_when_the_gate_closes():
    # r -> 0 gives a -> 1, where d sqrt(1 - a^2) / da is unbounded: the clipped derivative keeps it finite.
    m = RGLRUBlock(16, n_heads=2)
    with torch.no_grad():
        m.gate_a_bias.fill_(-200.0)  # sigmoid underflows to 0 in fp32: a = 1 exactly
    x = torch.randn(2, 9, 16, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(x.grad).all()


def test_low_precision_model_keeps_fp32_states():
    m = RGLRUBlock(32, n_heads=2).bfloat16()
    x = torch.randn(2, 7, 32, dtype=torch.bfloat16)
    y, state = m.prefill(x)
    assert y.dtype == torch.bfloat16
    assert state["h"].dtype == torch.float32 and state["conv"].dtype == torch.float32
    y_t, state = m.step(x[:, 0], state)
    assert y_t.dtype == torch.bfloat16 and state["h"].dtype == torch.float32


def test_hawk_is_the_preset_and_rglru_its_block():
    """The block is the mixer rglru (Hawk's width and constant state); the mixer name hawk is gone (an error
    naming rglru and the preset) and tiny-rglru is Hawk at tiny size (gated-GeLU MLPs, from rglru's record)."""
    from seqzoo.train.config import load_config

    m = seqzoo.build_mixer("rglru", 32)
    assert isinstance(m, RGLRUBlock) and m.mixer_name == "rglru"
    assert m.lru_width == 32 and m.state_size(10) == m.state_size(10**6) == 32 * 4
    with pytest.raises(ValueError, match=r"mixer 'rglru'.*preset\('hawk'\)"):
        seqzoo.build_mixer("hawk", 32)
    tiny = load_config("tiny-rglru").model
    assert tiny.mixer == "rglru" and tiny.mlp == preset("hawk").mlp == "geglu"


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(n_heads=3), "n_heads"),
        (dict(lru_width=0), "lru_width"),
        (dict(conv_width=1), "conv_width"),
        (dict(min_decay=0.99, max_decay=0.9), "min_decay"),
        (dict(c=0.0), "c must"),
    ],
)
def test_bad_config_errors_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        seqzoo.build_mixer("rglru", 32, **kwargs)


# -- presets -----------------------------------------------------------------------------------------------


def small(name: str, **kwargs) -> LMConfig:
    extra = {"window": 4} if name == "griffin" else {}
    return preset(name, d_model=32, n_layers=3, vocab_size=50, **{**extra, **kwargs})


def test_presets_are_griffin_and_hawk():
    hawk = preset("hawk")
    assert isinstance(hawk, LMConfig) and hawk.mlp == "geglu" and hawk.mlp_ratio == 3.0
    assert {name for name, _ in hawk.layer_specs()} == {"rglru"}
    griffin = preset("griffin", d_model=512, n_layers=6)
    specs = griffin.layer_specs()
    assert [name for name, _ in specs] == ["rglru", "rglru", "sliding_window"] * 2
    local = specs[2][1]
    assert local["n_kv_heads"] == 1 and local["window"] == 1024 and local["n_heads"] == 4  # head size 128
    assert specs[0][1]["n_heads"] == 4 and specs[0][1]["lru_width"] == 512
    assert griffin.mlp == "geglu"
    assert {"hawk", "griffin"} <= set(PRESETS)


def test_preset_errors():
    with pytest.raises(ValueError, match="gryffin"):
        preset("gryffin")
    with pytest.raises(ValueError, match="mixer"):
        preset("hawk", mixer="attention")
    with pytest.raises(ValueError, match="bogus"):
        preset("hawk", bogus=1)


@pytest.mark.parametrize("name", ["hawk", "griffin"])
def test_preset_generates_consistently_with_the_full_forward(name):
    model = CausalLM(small(name)).double().eval()
    prompt = torch.randint(0, 50, (2, 5))
    out = model.generate(prompt, max_new_tokens=10, temperature=0)
    assert out.shape == (2, 15) and torch.equal(out[:, :5], prompt)
    # Greedy decoding through prefill + step picks what the full forward over the same tokens picks.
    logits = model(out)
    torch.testing.assert_close(logits[:, 4:-1].argmax(-1), out[:, 5:])
    sampled = model.generate(prompt, max_new_tokens=6, temperature=0.8, top_k=10)
    assert sampled.shape == (2, 11) and int(sampled.max()) < 50


@pytest.mark.parametrize("name", ["hawk", "griffin"])
def test_preset_decodes_in_constant_memory(name):
    model = CausalLM(small(name)).eval()
    assert model.state_size(10) == model.state_size(100_000)

    def held(states):
        return sum(v.numel() for state in states for v in state.values())

    with torch.no_grad():
        _, states = model.prefill(torch.randint(0, 50, (2, 3)))
        sizes = [held(states)]
        token = torch.zeros(2, dtype=torch.long)
        for _ in range(12):  # three times the local-attention window
            _, states = model.step(token, states)
            sizes.append(held(states))
    assert len(set(sizes)) == 1, sizes
    # Everything held is the recurrent and convolution states and the ring buffer, plus one number per row for
    # each position counter and each of rglru's "fresh" flags (the 1-D entries, which state_size leaves out).
    assert sizes[0] == 2 * model.state_size(15) + 2 * sum(
        1 for s in states for v in s.values() if v.dim() == 1
    )
