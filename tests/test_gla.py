"""ops.gla: every backend against the sequential reference (outputs, final state, gradients of q, k, v, g and
the initial state), strong decays, lengths that are not multiples of the chunk, bidirectional mode, errors;
and the mixers built on it beyond the contract suite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo import ops
from seqzoo.layers.linear_attention import FEATURE_MAPS
from seqzoo.ops.gla import torch as gla_torch
from seqzoo.ops.testing import assert_matches_reference

DECAYS = ["none", "head", "vector", "strong", "strong_head"]


def make(b=2, t=37, h=2, dk=16, dv=24, decay="vector", dtype=torch.float32, initial_state=True):
    x = {
        "q": torch.randn(b, t, h, dk, dtype=dtype),
        "k": torch.randn(b, t, h, dk, dtype=dtype),
        "v": torch.randn(b, t, h, dv, dtype=dtype),
    }
    if decay == "vector":  # GLA-like gates: mostly slow forgetting
        x["g"] = F.logsigmoid(torch.randn(b, t, h, dk) + 2.0) / 4
    elif decay == "head":
        x["g"] = -torch.rand(b, t, h) * 0.3
    elif decay == "strong":  # log decays down to -20 per step
        x["g"] = -torch.rand(b, t, h, dk) * 20
    elif decay == "strong_head":
        x["g"] = -torch.rand(b, t, h) * 20
    if initial_state:
        x["initial_state"] = torch.randn(b, h, dk, dv)
    return x


# -- the torch backend --------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("t", [1, 37, 64, 131])
def test_torch_matches_reference(decay, t):
    assert_matches_reference(ops.gla, "torch", make(t=t, decay=decay), output_final_state=True)


@pytest.mark.parametrize("t", [1, 37, 131])
def test_torch_no_decay_inference_path(t):
    # Without decay and without autograd, the torch backend walks the chunks one by one (the inference path):
    # outputs and final state against the reference, the given state left as it was.
    x = make(t=t, decay="none")
    s0 = x["initial_state"].clone()
    with torch.no_grad():
        o, S = ops.gla(**x, scale=0.5, output_final_state=True, backend="torch")
        o_ref, S_ref = ops.gla(**x, scale=0.5, output_final_state=True, backend="reference")
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(x["initial_state"], s0)


@pytest.mark.parametrize("decay", ["vector", "strong"])
def test_torch_without_state_and_scale(decay):
    x = make(t=70, decay=decay, initial_state=False)
    assert_matches_reference(ops.gla, "torch", x, scale=0.37)
    assert_matches_reference(ops.gla, "torch", x, output_final_state=True)


@pytest.mark.parametrize("decay", ["vector", "strong", "head"])
def test_torch_bf16(decay):
    assert_matches_reference(
        ops.gla, "torch", make(t=100, decay=decay, dtype=torch.bfloat16), output_final_state=True
    )


def test_torch_chunks_mixing_mild_and_strong_decays():
    # Mild chunks take the one-matmul intra-chunk form, strong ones the halvings: a sequence with both (and a
    # partial last chunk) goes through the mixed path, which must not leak NaN from one form into the other.
    x = make(b=1, t=200, decay="vector")
    g = x["g"].clone()
    g[:, 64:128] = -torch.rand_like(g[:, 64:128]) * 20
    x["g"] = g
    span = lambda c: float(-(g[:, 64 * c : 64 * c + 64].sum(1)).max())  # noqa: E731
    assert span(0) <= gla_torch.MAX_FACTORED_SPAN < span(1)
    assert_matches_reference(ops.gla, "torch", x, output_final_state=True)


def test_torch_extreme_decays_stay_finite():
    # exp(G_i - G_j) for i < j would be exp(+thousands): nothing may compute it unmasked, forward or backward.
    x = make(b=1, t=150, decay="vector")
    x["g"] = torch.full_like(x["g"], -60.0)
    assert_matches_reference(ops.gla, "torch", x, output_final_state=True)


@pytest.mark.parametrize("decay", DECAYS)
def test_torch_bidirectional_matches_reference(decay):
    assert_matches_reference(ops.gla, "torch", make(t=70, decay=decay, initial_state=False), causal=False)


def test_bidirectional_definition():
    # No decay: plain linear attention over all positions; with decays, weights exp(-|G_i - G_j|) per channel.
    x = make(b=1, t=9, h=1, dk=4, dv=3, decay="vector", initial_state=False)
    q, k, v, g = x["q"][0, :, 0], x["k"][0, :, 0], x["v"][0, :, 0], x["g"][0, :, 0]
    o, _ = ops.gla(x["q"], x["k"], x["v"], causal=False, scale=1.0, backend="reference")
    torch.testing.assert_close(o[0, :, 0], q @ (k.T @ v))
    G = g.cumsum(0)
    w = torch.exp(-(G[:, None, :] - G[None, :, :]).abs())  # [i, j, K]
    expect = torch.einsum("ik,jk,ijk,jv->iv", q, k, w, v)
    o, _ = ops.gla(x["q"], x["k"], x["v"], x["g"], causal=False, scale=1.0, backend="reference")
    torch.testing.assert_close(o[0, :, 0], expect)


def test_reference_is_the_recurrence():
    # One step by hand, with a per-head decay and the default scale K^-1/2.
    x = make(b=1, t=1, h=1, dk=4, dv=2, decay="head")
    o, s = ops.gla(**x, output_final_state=True, backend="reference")
    state = (
        x["g"].exp()[0, 0, 0] * x["initial_state"][0, 0] + x["k"][0, 0, 0][:, None] * x["v"][0, 0, 0][None]
    )
    torch.testing.assert_close(s[0, 0], state)
    torch.testing.assert_close(o[0, 0, 0], 0.5 * x["q"][0, 0, 0] @ state)


@pytest.mark.parametrize("decay", ["vector", "head"])
def test_torch_state_carries_over(decay):
    # Running two halves with the state handed over equals running the whole sequence.
    x = make(b=1, t=90, decay=decay)
    o, s = ops.gla(**x, output_final_state=True, backend="torch")
    first = {n: (v[:, :40] if n != "initial_state" else v) for n, v in x.items()}
    second = {n: v[:, 40:] for n, v in x.items() if n != "initial_state"}
    o1, s1 = ops.gla(**first, output_final_state=True, backend="torch")
    o2, s2 = ops.gla(**second, initial_state=s1, output_final_state=True, backend="torch")
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s2, s, rtol=1e-4, atol=1e-4)


def test_float64_stays_float64():
    x = make(t=20, dtype=torch.float64)
    x["g"] = x["g"].double()
    o, s = ops.gla(**x, output_final_state=True, backend="torch")
    ref, ref_s = ops.gla(**x, output_final_state=True, backend="reference")
    assert o.dtype == s.dtype == torch.float64
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, ref_s, rtol=1e-10, atol=1e-10)


# -- the Triton kernels, under TRITON_INTERPRET=1 (small fp32 shapes) -------------------------------------

TRITON_CASES = [
    dict(b=1, t=70, h=1, dk=16, dv=32),  # two chunks, the second partial
    dict(b=2, t=37, h=1, dk=32, dv=16),  # one partial chunk, batch > 1
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
@pytest.mark.parametrize("decay", ["none", "head", "vector", "strong"])
def test_triton_chunk_matches_reference(case, decay):
    assert_matches_reference(ops.gla, "triton", make(**case, decay=decay), output_final_state=True)


def test_triton_chunk_single_token_no_state():
    assert_matches_reference(
        ops.gla, "triton", make(b=1, t=1, h=2, dk=16, dv=16, decay="strong", initial_state=False)
    )


def test_triton_chunk_fp16():
    # The interpreter's bf16 matmuls are wrong (numpy has no bf16), so the low-precision path is checked in
    # fp16 here and in bf16 on a GPU (test_gpu_bf16).
    x = make(b=1, t=40, h=1, dk=16, dv=16, decay="vector", dtype=torch.float16)
    assert_matches_reference(ops.gla, "triton", x, output_final_state=True)


@pytest.mark.parametrize("decay", ["none", "head", "vector", "strong"])
def test_triton_recurrent_matches_reference(decay):
    x = make(b=2, t=23, h=1, dk=16, dv=32, decay=decay)
    assert_matches_reference(ops.gla, "triton_recurrent", x, output_final_state=True)


def test_triton_recurrent_no_state():
    assert_matches_reference(
        ops.gla, "triton_recurrent", make(b=1, t=5, h=2, dk=32, dv=16, initial_state=False), scale=0.5
    )


def test_triton_refuses_what_it_cannot_do():
    x = make(t=8, initial_state=False)
    with pytest.raises(ValueError, match="causal"):
        ops.gla(**x, causal=False, backend="triton")
    x64 = {n: v.double() for n, v in x.items()}
    with pytest.raises(ValueError, match="float64"):
        ops.gla(**x64, backend="triton_recurrent")
    # auto on a CPU is the torch backend; decoding (gla_step) stays on it too.
    ops.gla(**x)
    assert ops.gla.last_backend == "torch"
    ops.gla_step(**{n: v[:, :1] for n, v in x.items()})
    assert ops.gla_step.last_backend == "torch"


# -- gla_step: the decoding op -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, t, decay",
    [("torch", 3, "vector"), ("torch", 70, "head"), ("triton", 3, "head"), ("triton_recurrent", 3, "vector")],
)
def test_step_matches_reference(backend, t, decay):
    # A few tokens from a state (decoding) or a segment longer than a chunk (prefill). The Triton backends are
    # gla's kernels, tested above at length: here only their wiring (interpreted, so small).
    x = make(b=1, t=t, h=1, dk=16, dv=8, decay=decay)
    assert_matches_reference(ops.gla_step, backend, x, scale=0.7)


def test_step_is_gla_with_state():
    x = make(b=1, t=5, h=2, dk=8, dv=8, initial_state=False)
    o, S = ops.gla_step(**x, backend="reference")
    o_gla, S_gla = ops.gla(**x, output_final_state=True, backend="reference")
    assert torch.equal(o, o_gla) and torch.equal(S, S_gla)
    with pytest.raises(ValueError, match="gla_step.*initial_state"):
        ops.gla_step(**x, initial_state=torch.zeros(1, 2, 8, 7))
    with pytest.raises(TypeError):
        ops.gla_step(**x, output_final_state=True)  # always returns the state


def test_step_auto_takes_the_recurrent_kernel_for_a_few_tokens(monkeypatch):
    # What auto picks on a GPU, checked on a CPU by resolving for a cuda device (nothing runs).
    from seqzoo.ops import _dispatch as dispatch

    for op in (ops.gla_step, ops.delta_rule_step):
        for name in ("triton", "triton_recurrent"):
            monkeypatch.setattr(op._backends[name], "unavailable", lambda device: None)
    cuda = torch.device("cuda")
    few, many = make(t=dispatch.RECURRENT_MAX_T), make(t=dispatch.RECURRENT_MAX_T + 1)
    assert ops.gla_step.resolve("auto", cuda, (), few).name == "triton_recurrent"
    assert ops.gla_step.resolve("auto", cuda, (), many).name == "triton"
    assert ops.gla_step.resolve("triton_recurrent", cuda, (), many).name == "triton_recurrent"
    assert ops.gla_step.resolve("auto", torch.device("cpu"), (), few).name == "torch"
    beta = {"beta": torch.rand(2, dispatch.RECURRENT_MAX_T, 2)}
    few_dr = {n: few[n] for n in ("q", "k", "v")} | beta
    assert ops.delta_rule_step.resolve("auto", cuda, (), few_dr).name == "triton_recurrent"


# Compiling every kernel for sm_90 and sm_80, with the tiles the wrapper picks: tests/test_compile_check.py.


# -- argument checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, exc, word",
    [
        (dict(q=torch.randn(2, 8, 2)), ValueError, "q"),
        (dict(k=torch.randn(2, 8, 2, 8)), ValueError, "k"),
        (dict(v=torch.randn(2, 9, 2, 24)), ValueError, "v"),
        (dict(g=torch.randn(2, 8, 2, 8)), ValueError, "g"),
        (dict(g=torch.randn(2, 8)), ValueError, "g"),
        (dict(v=torch.randn(2, 8, 2, 24, dtype=torch.float64)), TypeError, "dtype"),
        (dict(q=torch.randint(0, 3, (2, 8, 2, 16))), TypeError, "q"),
        (dict(initial_state=torch.randn(2, 2, 16, 23)), ValueError, "initial_state"),
        (dict(scale="big"), TypeError, "scale"),
        (dict(causal=False, output_final_state=True), ValueError, "causal"),
        (
            dict(q=torch.randn(2, 0, 2, 16), k=torch.randn(2, 0, 2, 16), v=torch.randn(2, 0, 2, 24), g=None),
            ValueError,
            "length",
        ),
    ],
)
def test_bad_arguments(change, exc, word):
    x = {
        "q": torch.randn(2, 8, 2, 16),
        "k": torch.randn(2, 8, 2, 16),
        "v": torch.randn(2, 8, 2, 24),
        "g": None,
    }
    x.update(change)
    with pytest.raises(exc, match=word):
        ops.gla(**x)


def test_listed_with_backends():
    listed = ops.gla.backends("cpu")
    assert listed["reference"] == "available" and listed["torch"] == "available"
    assert {"triton", "triton_recurrent"} <= set(listed)


# -- the mixers beyond the contract suite --------------------------------------------------------------------

# The linear-attention family on ops.gla with its small test settings (from the records); linear_attention
# with relu features, which are not positive everywhere (bidirectional normalisation still holds).
MIXERS = {
    name: {**seqzoo.list_mixers()[name].test_kwargs, **extra}
    for name, extra in {
        "gla": {},
        "retnet": {},
        "lightning": {},
        "hgrn2": {},
        "linear_attention": {"feature_map": "relu"},
    }.items()
}


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_mixer_bidirectional_sees_the_future(name):
    m = seqzoo.build_mixer(name, 32, bidirectional=True, **MIXERS[name]).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    assert (m(x2)[:, :7] - y[:, :7]).abs().max() > 1e-6
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.prefill(x)


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_linear_attention_takes_every_feature_map(fmap):
    """Every name FEATURE_MAPS lists builds (silu used to be refused), and forward = prefill = step with it."""
    m = seqzoo.build_mixer("linear_attention", 32, n_heads=2, feature_map=fmap).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    y = m(x)
    y_pre, state = m.prefill(x[:, :4])
    steps = []
    for t in range(4, 7):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat([y_pre, torch.stack(steps, 1)], 1), y, rtol=1e-9, atol=1e-9)
    # The map is applied: q = phi(x Wq), with phi written out here.
    phi = {
        "identity": lambda u: u,
        "elu+1": lambda u: torch.where(u > 0, u + 1, u.exp()),
        "relu": lambda u: u.clamp_min(0),
        "silu": lambda u: u * torch.sigmoid(u),
    }[fmap]
    q, _, _, _, _ = m._features(x, None, torch.arange(7), False)
    torch.testing.assert_close(q, phi(m.q_proj(x)).reshape(2, 7, 2, -1))


def test_retnet_decays_follow_the_paper():
    m = seqzoo.build_mixer("retnet", 64, n_heads=4)
    torch.testing.assert_close(m.log_decay.exp(), 1 - 2.0 ** (-5 - torch.arange(4.0)))


def test_hgrn2_gates():
    m = seqzoo.build_mixer("hgrn2", 16, n_heads=2, expand_ratio=4, lower_bound=0.5).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    q, k, v, g, _ = m._features(x, None, torch.arange(5), False)
    f = g.exp()
    assert (f >= 0.5).all() and (f <= 1).all()
    torch.testing.assert_close(k, 1 - f)


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("gla", dict(n_heads=3), "n_heads"),
        ("gla", dict(use_short_conv=True, bidirectional=True), "short"),
        ("hgrn2", dict(lower_bound=1.0), "lower_bound"),
        ("retnet", dict(decay="fast"), "decay"),
        ("linear_attention", dict(feature_map="tanh"), "feature_map"),
    ],
)
def test_mixer_bad_config(name, kwargs, word):
    with pytest.raises(ValueError, match=word):
        seqzoo.build_mixer(name, 32, **kwargs)


# -- on a GPU -----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["triton", "triton_recurrent", "torch"])
@pytest.mark.parametrize("decay", ["vector", "strong", "head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(backend, decay, dtype):
    x = {n: v.cuda() for n, v in make(b=2, t=333, h=3, dk=64, dv=128, decay=decay, dtype=dtype).items()}
    assert_matches_reference(ops.gla, backend, x, output_final_state=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dk, dv", [(16, 16), (48, 80), (256, 256)])
def test_gpu_head_dims(dk, dv):
    x = {n: v.cuda() for n, v in make(b=1, t=200, h=2, dk=dk, dv=dv, decay="vector").items()}
    assert_matches_reference(ops.gla, "triton", x, output_final_state=True)
    assert_matches_reference(ops.gla, "triton_recurrent", x, output_final_state=True)
