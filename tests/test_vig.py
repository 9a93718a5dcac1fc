"""ViG (``seqzoo/layers/vig.py``): the bidirectional core against a materialised reference written without
ops.gla, the one-call (batch-concatenated) path against two calls, the convention difference from
``ops.gla(causal=False)``, the 3 x 3 convolution's 2D neighbourhood, packed images, the layer against its
equations, the errors, ViG's init inside a model and the LRA hook that gives vig the task's grid.

The contract, packed, bad-input and extreme-input suites run on vig automatically (1D, from its record)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo import ops
from seqzoo.layers.vig import bidirectional_gla, flip_documents
from seqzoo.ops._varlen import cu_seqlens_from_lengths

TOL = dict(rtol=1e-10, atol=1e-10)


def _inputs(b=2, t=7, h=2, k=3, v=4, requires_grad=False):
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, kk, vv = rnd(b, t, h, k), rnd(b, t, h, k), rnd(b, t, h, v)
    # Decays from strong (logsigmoid(-3) ~ -3) to weak (~ -0.05), per key channel and direction.
    g_fwd, g_bwd = F.logsigmoid(2 * rnd(b, t, h, k)), F.logsigmoid(2 * rnd(b, t, h, k))
    out = [q, kk, vv, g_fwd, g_bwd]
    return [x.requires_grad_() for x in out] if requires_grad else out


def materialised(q, k, v, g_fwd, g_bwd, scale=None):
    """(Phi_fwd + Phi_bwd) / 2 written out per pair of positions, without ops.gla: position t reads j <= t
    with the decay prod_{i=j+1..t} exp(g_fwd_i) and j >= t with prod_{i=t..j-1} exp(g_bwd_i) (ViG's backward
    state R_t = exp(g_bwd_t) R_{t+1} + k_t^T v_t); both directions hold the self term."""
    t_len, k_dim = q.shape[1], q.shape[-1]
    scale = k_dim**-0.5 if scale is None else scale
    o = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for t in range(t_len):
        for j in range(t_len):
            phi = 0.0
            if j <= t:
                phi = phi + torch.exp(g_fwd[:, j + 1 : t + 1].sum(1))  # [B, H, K]
            if j >= t:
                phi = phi + torch.exp(g_bwd[:, t:j].sum(1))
            a = (scale * q[:, t] * k[:, j] * phi).sum(-1)  # [B, H]
            o[:, t] += 0.5 * a[..., None] * v[:, j]
    return o


def test_core_equals_materialised_reference():
    x = _inputs()
    torch.testing.assert_close(bidirectional_gla(*x), materialised(*x), **TOL)
    torch.testing.assert_close(bidirectional_gla(*x, scale=0.3), materialised(*x, scale=0.3), **TOL)
    # Packed: three documents (lengths 3, 1, 4), each its own reference.
    lengths = (3, 1, 4)
    x = _inputs(b=1, t=sum(lengths))
    got = bidirectional_gla(*x, cu_seqlens=cu_seqlens_from_lengths(lengths))
    parts, start = [], 0
    for n in lengths:
        parts.append(materialised(*[u[:, start : start + n] for u in x]))
        start += n
    torch.testing.assert_close(got, torch.cat(parts, 1), **TOL)


def _two_calls(q, k, v, g_fwd, g_bwd):
    o_fwd, _ = ops.gla(q, k, v, g_fwd)
    o_bwd, _ = ops.gla(q.flip(1), k.flip(1), v.flip(1), g_bwd.flip(1))
    return (o_fwd + o_bwd.flip(1)) / 2


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
def test_one_call_equals_two_calls_outputs_and_gradients(packed):
    """The batch-concatenated (or, packed, time-concatenated) single ops.gla call against a call per direction:
    the outputs and the gradient of every input."""
    x = _inputs(b=1 if packed else 2, t=9, requires_grad=True)
    cu = cu_seqlens_from_lengths((4, 5)) if packed else None
    got = bidirectional_gla(*x, cu_seqlens=cu)
    if packed:
        want = torch.cat([_two_calls(*[u[:, s:e] for u in x]) for s, e in ((0, 4), (4, 9))], 1)
    else:
        want = _two_calls(*x)
    torch.testing.assert_close(got, want, **TOL)
    cot = torch.randn_like(got)
    g_got = torch.autograd.grad((got * cot).sum(), x)
    g_want = torch.autograd.grad((want * cot).sum(), x)
    for name, a, b in zip(("q", "k", "v", "g_fwd", "g_bwd"), g_got, g_want):
        torch.testing.assert_close(a, b, **TOL, msg=name)
        assert a.abs().sum() > 0, name


def test_one_call_runs_on_the_triton_chunk_kernels():
    """The fused two-direction path on a GPU is one launch of gla's Triton chunked kernels over the [x; flip(x)]
    batch: forward and backward through them (the interpreter here, TRITON_INTERPRET=1) equal the torch backend's."""
    if seqzoo.ops.gla.backends("cpu")["triton"] != "available":
        pytest.fail(
            "gla's triton backend should run here under TRITON_INTERPRET=1 (tests/conftest.py sets it)"
        )
    x = [u.float().detach().requires_grad_() for u in _inputs(b=1, t=5, h=1, k=4, v=4)]
    got = bidirectional_gla(*x, backend="triton")
    assert ops.gla.last_backend == "triton"
    want = bidirectional_gla(*x, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cot = torch.randn_like(got)
    g_got = torch.autograd.grad((got * cot).sum(), x)
    g_want = torch.autograd.grad((want * cot).sum(), x)
    for name, a, b in zip(("q", "k", "v", "g_fwd", "g_bwd"), g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_flip_documents_reverses_each_document_in_place():
    x = torch.arange(7.0)[None, :, None]
    got = flip_documents(x, cu_seqlens_from_lengths((3, 1, 3)))
    assert got.flatten().tolist() == [2, 1, 0, 3, 6, 5, 4]
    assert torch.equal(flip_documents(x, None).flatten(), x.flip(1).flatten())


def test_reduces_to_gla_noncausal_with_shifted_gate_and_halved_self_term():
    """ops.gla(causal=False) has one gate with R_t = exp(g_{t+1}) R_{t+1} + k_t^T v_t and counts the self term
    once; ViG's backward gate is that of the arriving token and the self term is in both halves. With
    g_bwd_t = g_{t+1}: 2 o_vig - scale q_t (k_t^T v_t) = o_gla. Unshifted, they differ (the convention matters)."""
    q, k, v, g, _ = _inputs()
    g_bwd = torch.cat([g[:, 1:], torch.zeros_like(g[:, :1])], 1)  # the last one multiplies R_T = 0: unused
    scale = q.shape[-1] ** -0.5
    self_term = scale * (q * k).sum(-1, keepdim=True) * v
    want, _ = ops.gla(q, k, v, g, causal=False)
    torch.testing.assert_close(2 * bidirectional_gla(q, k, v, g, g_bwd) - self_term, want, **TOL)
    unshifted = 2 * bidirectional_gla(q, k, v, g, g) - self_term
    assert (unshifted - want).abs().max() > 1e-2


def _vig(d=8, **kw):
    torch.manual_seed(0)
    return seqzoo.build_mixer("vig", d, n_heads=2, **kw).double()


@pytest.mark.parametrize("pixel", [(0, 0), (0, 2), (1, 2), (2, 4), (3, 4), (3, 0)])
def test_3x3_conv_sees_only_2d_neighbours(pixel):
    """An impulse at pixel (i, j) of a 4 x 5 image changes ``local`` at exactly its grid neighbours (9 inside,
    6 on an edge, 4 in a corner), never at the 1D neighbours across a row break."""
    h, w = 4, 5
    m = _vig(image_size=(h, w))
    x = torch.randn(1, h * w, 8, dtype=torch.float64)
    base = m._local(x, None)
    i, j = pixel
    x2 = x.clone()
    x2[0, i * w + j] += 1.0
    changed = {int(p) for p in ((m._local(x2, None) - base)[0].abs().amax(-1) > 0).nonzero()}
    near = {a * w + b for a in range(i - 1, i + 2) for b in range(j - 1, j + 2) if 0 <= a < h and 0 <= b < w}
    assert changed == near


def test_1d_conv_is_width_3_and_stays_inside_each_document():
    m = _vig()
    cu = cu_seqlens_from_lengths((3, 1, 4))
    x = torch.randn(1, 8, 8, dtype=torch.float64)
    base = m._local(x, [0, 3, 4, 8], cu)
    for t, near in ((0, {0, 1}), (2, {1, 2}), (3, {3}), (5, {4, 5, 6}), (7, {6, 7})):
        x2 = x.clone()
        x2[0, t] += 1.0
        changed = {int(p) for p in ((m._local(x2, [0, 3, 4, 8], cu) - base)[0].abs().amax(-1) > 0).nonzero()}
        assert changed == near, t
    # Unpacked, the taps are nn.Conv1d's (zero padding at both ends).
    want = F.silu(F.conv1d(x.transpose(1, 2), m.conv.weight, padding=1, groups=8)).transpose(1, 2)
    torch.testing.assert_close(m._local(x, None), want, **TOL)


def test_layer_equals_its_equations():
    """The whole layer from its weights and the materialised core: gates split forward first, the global and
    local branches normalised per head and mixed by sigmoid(local Wg + bg)."""
    h, w, d = 3, 4, 8
    m = _vig(d, image_size=(h, w))
    with torch.no_grad():
        for p in (m.g_norm.weight, m.l_norm.weight, m.g_proj.bias, m.gk_proj[1].bias):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, h * w, d, dtype=torch.float64)
    img = x.reshape(2, h, w, d).permute(0, 3, 1, 2)
    local = F.silu(F.conv2d(img, m.conv.weight, padding=1, groups=d)).flatten(2).transpose(1, 2)
    wq, wk, wv = m.qkv_proj.weight.split([4, 4, 8])
    gk = F.logsigmoid(m.gk_proj(local)) / 16

    def heads(u):
        return u.reshape(2, h * w, 2, -1)

    o = materialised(
        *[heads(u) for u in (local @ wq.T, local @ wk.T, local @ wv.T, gk[..., :4], gk[..., 4:])]
    )

    def rms(u, weight):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    gate = heads(torch.sigmoid(local @ m.g_proj.weight.T + m.g_proj.bias))
    mixed = rms(o, m.g_norm.weight) * gate + rms(heads(local), m.l_norm.weight) * (1 - gate)
    torch.testing.assert_close(m(x), mixed.reshape(2, h * w, d) @ m.o_proj.weight.T, **TOL)


def test_packed_images_equal_separate_images():
    m = _vig(image_size=(3, 4))
    x = torch.randn(1, 36, 8, dtype=torch.float64, requires_grad=True)
    y = m(x, cu_seqlens=cu_seqlens_from_lengths((12, 12, 12)))
    want = torch.cat([m(x[:, s : s + 12]) for s in (0, 12, 24)], 1)
    torch.testing.assert_close(y, want, **TOL)
    # ... which is also the three images as a batch of 3.
    torch.testing.assert_close(m(x.reshape(3, 12, 8)).reshape(1, 36, 8), want, **TOL)
    cot = torch.randn_like(y)
    (g1,) = torch.autograd.grad((y * cot).sum(), [x])
    (g2,) = torch.autograd.grad((want * cot).sum(), [x])
    torch.testing.assert_close(g1, g2, **TOL)


def test_errors_name_the_argument():
    m = _vig(image_size=(3, 4))
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(1, 11, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(1, 23, 8, dtype=torch.float64), cu_seqlens=cu_seqlens_from_lengths((12, 11)))
    for bad in ((0, 4), (3,), (3, 4, 1), (2.0, 3)):
        with pytest.raises(ValueError, match="image_size"):
            seqzoo.build_mixer("vig", 8, n_heads=2, image_size=bad)
    for kw, word in (
        ({"bidirectional": False}, "bidirectional"),
        ({"expand_v": 2.0}, "expand_v"),
        ({"conv_act": "relu"}, "conv_act"),
        ({"gate_logit_normalizer": 0.0}, "gate_logit_normalizer"),
        ({"n_heads": 3}, "n_heads"),
    ):
        with pytest.raises(ValueError, match=word):
            seqzoo.build_mixer("vig", 8, **{"n_heads": 2, **kw})
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.prefill(torch.randn(1, 12, 8, dtype=torch.float64))


def test_vigs_init_survives_a_models_init_and_a_causal_lm_refuses_vig():
    from seqzoo import CausalLM, LMConfig
    from seqzoo.models.classifier import SequenceClassifier

    clf = SequenceClassifier(
        n_classes=2, vocab_size=5, d_model=64, n_layers=1, mixer="vig", bidirectional=True
    )
    mixer = clf.backbone.blocks[0].mixer
    for weight in (mixer.qkv_proj.weight, mixer.o_proj.weight, mixer.gk_proj[1].weight):
        fan_out, fan_in = weight.shape
        bound = 2**-2.5 * (6 / (fan_in + fan_out)) ** 0.5
        # xavier_uniform fills [-bound, bound]; the model's normal(0, 0.02) would pass it many times here.
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="bidirectional"):
        CausalLM(LMConfig(vocab_size=5, d_model=16, n_layers=1, mixer={"name": "vig", "n_heads": 2}))


@pytest.mark.parametrize("conv_init", ["vig", "torch"])
def test_conv_init_decides_whether_the_global_branch_starts_above_its_norms_eps(conv_init):
    """ViG's xavier gain on the depthwise conv leaves the global branch's output (the gla core, before its
    RMSNorm) far below sqrt(eps) at d_model 64 on unit-scale inputs: the branch starts switched off.
    PyTorch's conv init keeps it within a decade of sqrt(eps), 1e4 times larger."""
    torch.manual_seed(0)
    m = seqzoo.build_mixer("vig", 64, image_size=(8, 8), conv_init=conv_init)
    x = torch.randn(2, 64, 64)
    with torch.no_grad(), ops.record_calls() as calls:
        m(x)
    (o,) = [c.result[0] for c in calls if c.name == "gla"]
    rms = o.pow(2).mean().sqrt().item()
    floor = m.g_norm.eps**0.5
    if conv_init == "vig":
        assert rms < 1e-3 * floor, rms
    else:
        assert 1e-2 * floor < rms, rms
    with pytest.raises(ValueError, match="conv_init"):
        seqzoo.build_mixer("vig", 64, conv_init="kaiming")


def test_vig_is_left_out_of_causal_mqar():
    """MQAR trains causal LMs: 'mixers: all' (mqar-zoology-fig2) leaves vig out, and so does the CPU grid."""
    from seqzoo.eval.mqar import all_mixers, load_sweep

    assert "vig" not in all_mixers() and {"gla", "attention", "s4d"} <= set(all_mixers())
    assert "vig" not in load_sweep("mqar-cpu").mixer_entries()
    assert seqzoo.list_mixers()["vig"].mqar_lr is None


def test_lra_image_tasks_give_vig_their_grid():
    from types import SimpleNamespace

    from seqzoo.eval.lra.command import build_config
    from seqzoo.train.build import build_model

    assert build_config("pathfinder", "vig", cpu=True).model.mixer["image_size"] == [32, 32]
    assert build_config("image", "vig").model.mixer["image_size"] == [32, 32]
    assert build_config("pathx", "vig").model.mixer["image_size"] == [128, 128]
    assert "image_size" not in build_config("listops", "vig", cpu=True).model.mixer
    assert "image_size" not in build_config("pathfinder", "gla", cpu=True).model.mixer
    # The task's norm, not the papers' per-token RMSNorm (bench_results/lra-norm-probe.md: with it no mixer
    # leaves chance on the CPU budget); the block stays their pre-norm one.
    # A longer memory at init than the papers' 16 (a 16-token half-life on 1,024-pixel sequences).
    for mixer, normalizer in (("vig", "gate_logit_normalizer"), ("gla", "gate_normalizer")):
        cfg = build_config("pathfinder", mixer, cpu=True)
        assert (cfg.model.norm, cfg.model.block, cfg.model.mixer[normalizer]) == ("batch", "prenorm", 128.0)
    assert build_config("image", "vig").model.norm == "layer"  # the S4 paper's image block
    cfg = build_config("pathfinder", "vig", cpu=True, overrides=["model.d_model=8", "model.n_layers=1"])
    clf = build_model(cfg, SimpleNamespace(seq_len=1024, vocab_size=256, n_classes=2, pairs=False))
    assert clf.config.bidirectional and clf.backbone.blocks[0].mixer.image_size == (32, 32)
    assert clf(torch.randint(0, 256, (2, 1024))).shape == (2, 2)


def test_no_tiny_language_model_config_for_an_encoder_only_mixer():
    """tiny-<mixer> is a causal LM: vig has none, and asking for it says what to do instead."""
    from seqzoo.train.config import ConfigError, available_configs, load_config

    assert "tiny-vig" not in available_configs() and "tiny-gla" in available_configs()
    with pytest.raises(ConfigError, match="encoder-only.*lra pathfinder --cpu --mixer vig"):
        load_config("tiny-vig")
