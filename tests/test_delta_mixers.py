"""deltanet, gated_deltanet and mamba2 against direct per-token implementations of their papers' math (fp64),
Mamba-2's SSD (on ops.gla) against its sequential recurrence, the Mamba-2-style initialisations, the hybrid
linear-attention presets and the configs. The mixer contract (prefill / step / state) is checked by
test_mixer_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import seqzoo
from seqzoo.layers.mamba2 import ssd
from seqzoo.layers.ssm_init import a_log_init, dt_bias_init
from seqzoo.models import CausalLM, LMConfig, preset
from seqzoo.models.mixer_settings import with_paper_settings
from seqzoo.registry import mixer_class
from seqzoo.train.config import load_config

D = 32


def build(name, **kwargs):
    torch.manual_seed(0)
    m = seqzoo.build_mixer(name, D, **kwargs).double()
    with torch.no_grad():  # away from the init, so every term of the math shows in the output
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


class DirectConv:
    """A causal depthwise convolution with SiLU, one token at a time: the last W inputs times the filter."""

    def __init__(self, weight, bias, batch):
        self.weight, self.bias = weight, bias
        self.window = weight.new_zeros(batch, weight.shape[0], weight.shape[1])

    def __call__(self, u):
        self.window = torch.cat([self.window[:, :, 1:], u[:, :, None]], dim=2)
        return F.silu((self.window * self.weight).sum(-1) + self.bias)


def direct_delta(m, x):
    """DeltaNet / Gated DeltaNet token by token, in the papers' orientation: M [V, K] maps keys to values,
    M_t = a_t M_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = M_t q_t / sqrt(K)."""
    b, t_len, _ = x.shape
    h, dk, dv = m.n_heads, m.head_k_dim, m.head_v_dim
    convs = {n: DirectConv(c.weight, c.bias, b) for n, c in m.convs.items()}
    M = x.new_zeros(b, h, dv, dk)
    eye = torch.eye(dk, dtype=x.dtype)
    ys = []
    for t in range(t_len):
        xt = x[:, t]
        q, k, v = xt @ m.q_proj.weight.T, xt @ m.k_proj.weight.T, xt @ m.v_proj.weight.T
        if convs:
            q, k, v = convs["conv_q"](q), convs["conv_k"](k), convs["conv_v"](v)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k, v = q.view(b, h, dk), k.view(b, h, dk), v.view(b, h, dv)
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        beta = torch.sigmoid(xt @ m.b_proj.weight.T) * (2.0 if m.allow_neg_eigval else 1.0)
        a = torch.ones_like(beta)
        if hasattr(m, "A_log"):
            a = torch.exp(-torch.exp(m.A_log) * F.softplus(xt @ m.a_proj.weight.T + m.dt_bias))
        bb = beta[..., None, None]
        kk = k[..., :, None] * k[..., None, :]
        M = a[..., None, None] * M @ (eye - bb * kk) + bb * v[..., :, None] * k[..., None, :]
        o = (M @ q[..., None])[..., 0] / math.sqrt(dk)  # [b, h, V]
        normed = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + m.o_norm.eps) * m.o_norm.weight
        if m.use_gate:
            normed = normed * F.silu((xt @ m.g_proj.weight.T).view(b, h, dv))
        ys.append(normed.reshape(b, -1) @ m.o_proj.weight.T)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_short_conv": True},
        {"use_short_conv": True, "allow_neg_eigval": True, "expand_v": 2.0},
        {"use_gate": False, "expand_k": 0.5},
    ],
)
def test_delta_mixers_equal_their_direct_math(name, kwargs):
    m = build(name, n_heads=2, **kwargs)
    x = torch.randn(2, 70, D, dtype=torch.float64)  # crosses the op's 64-token chunk
    torch.testing.assert_close(m(x), direct_delta(m, x), rtol=1e-9, atol=1e-10)


def test_delta_mixers_paper_settings_equal_direct_math():
    for name in ("deltanet", "gated_deltanet"):
        kwargs = with_paper_settings(name)
        kwargs.pop("name")
        m = build(name, **kwargs)
        assert len(m.convs) == 3
        x = torch.randn(2, 9, D, dtype=torch.float64)
        torch.testing.assert_close(m(x), direct_delta(m, x), rtol=1e-9, atol=1e-10)


def test_gated_deltanet_decays_and_deltanet_does_not():
    m = build("gated_deltanet", n_heads=2)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    g = m._log_decay(x)
    assert g.shape == (2, 5, 2) and (g < 0).all()
    assert build("deltanet", n_heads=2)._log_decay(x) is None


def direct_mamba2(m, u):
    """Mamba-2 token by token: h [H, N, P] per sequence, h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T."""
    b, t_len, _ = u.shape
    e, h, p, n, g = m.d_inner, m.n_heads, m.headdim, m.d_state, m.n_groups
    conv = DirectConv(m.conv.weight, m.conv.bias, b)
    state = u.new_zeros(b, h, n, p)
    A = -torch.exp(m.A_log)
    ys = []
    for t in range(t_len):
        z, xbc, dt = (u[:, t] @ m.in_proj.weight.T).split([e, m.conv_dim, h], dim=-1)
        x, B, C = conv(xbc).split([e, g * n, g * n], dim=-1)
        x = x.view(b, h, p)
        B = B.view(b, g, n).repeat_interleave(h // g, dim=1)  # head i reads group i // (H / G)
        C = C.view(b, g, n).repeat_interleave(h // g, dim=1)
        dt = F.softplus(dt + m.dt_bias)
        state = (
            torch.exp(dt * A)[..., None, None] * state
            + dt[..., None, None] * B[..., :, None] * x[..., None, :]
        )
        y = (C[..., :, None] * state).sum(-2) + m.D[:, None] * x
        y = (y.reshape(b, e) * F.silu(z)).view(b, g, e // g)
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps)
        ys.append((y.reshape(b, e) * m.norm.weight) @ m.out_proj.weight.T)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("kwargs", [{"n_groups": 1}, {"n_groups": 2, "headdim": 8}])
def test_mamba2_equals_its_direct_math(kwargs):
    m = build("mamba2", d_state=8, **{"headdim": 16, **kwargs})
    x = torch.randn(2, 70, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), direct_mamba2(m, x), rtol=1e-9, atol=1e-10)


def sequential_ssd(x, dt, A, B, C, D, h0):
    """The SSD recurrence, one step at a time (fp64): h [B, H, N, P]."""
    rep = x.shape[2] // B.shape[2]
    B, C = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    h, ys = h0, []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        h = decay * h + dt[:, t, :, None, None] * B[:, t, :, :, None] * x[:, t, :, None, :]
        ys.append((C[:, t, :, :, None] * h).sum(-2) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("t_len", [1, 37, 130])
def test_ssd_equals_the_sequential_recurrence_with_gradients(t_len):
    torch.manual_seed(t_len)
    b, h, p, g, n = 2, 4, 6, 2, 5
    f64 = {"dtype": torch.float64}
    inputs = {
        "x": torch.randn(b, t_len, h, p, **f64),
        "dt": F.softplus(torch.randn(b, t_len, h, **f64)),
        "A": -torch.exp(torch.randn(h, **f64)),
        "B": torch.randn(b, t_len, g, n, **f64),
        "C": torch.randn(b, t_len, g, n, **f64),
        "D": torch.randn(h, **f64),
        "h0": torch.randn(b, h, n, p, **f64),
    }
    for v in inputs.values():
        v.requires_grad_(True)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D")]
    y, hT = ssd(*args, initial_state=inputs["h0"], output_final_state=True)
    y_ref, h_ref = sequential_ssd(*args, inputs["h0"])
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(hT, h_ref, rtol=1e-9, atol=1e-9)
    wy, wh = torch.randn_like(y), torch.randn_like(hT)
    grads = torch.autograd.grad((y * wy).sum() + (hT * wh).sum(), list(inputs.values()))
    grads_ref = torch.autograd.grad((y_ref * wy).sum() + (h_ref * wh).sum(), list(inputs.values()))
    for name, got, want in zip(inputs, grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8, msg=f"gradient of {name}")


def test_ssd_shape_errors():
    x, dt = torch.randn(1, 3, 4, 2), torch.rand(1, 3, 4)
    A, BC = -torch.rand(4), torch.randn(1, 3, 3, 5)
    with pytest.raises(ValueError, match="G dividing H"):
        ssd(x, dt, A, BC, BC)
    with pytest.raises(ValueError, match="dt"):
        ssd(x, dt[:, :2], A, BC[:, :, :2], BC[:, :, :2])
    with pytest.raises(ValueError, match="A and D"):
        ssd(x, dt, A[:3], BC[:, :, :2], BC[:, :, :2])


# -- initialisation ------------------------------------------------------------------------------------------


def test_mamba2_style_init_ranges():
    torch.manual_seed(0)
    dt = F.softplus(dt_bias_init(20000))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    mid = (math.log(1e-3) + math.log(0.1)) / 2  # log-uniform: log dt uniform around the middle
    assert abs(dt.log().mean().item() - mid) < 0.05
    assert abs(dt.log().std().item() - (math.log(0.1) - math.log(1e-3)) / math.sqrt(12)) < 0.05
    a = a_log_init(20000).exp()
    assert a.min() >= 1.0 - 1e-5 and a.max() <= 16.0 + 1e-4 and abs(a.mean().item() - 8.5) < 0.1
    for bad in ({"dt_min": 0.0}, {"dt_min": 0.2}):
        with pytest.raises(ValueError, match="dt_min"):
            seqzoo.build_mixer("mamba2", 64, **bad)
    with pytest.raises(ValueError, match="a_min"):
        seqzoo.build_mixer("gated_deltanet", 64, a_init_range=(-1.0, 16.0))


@pytest.mark.parametrize("name, kwargs", [("gated_deltanet", {"n_heads": 64}), ("mamba2", {"headdim": 4})])
def test_layer_init_survives_the_model_init(name, kwargs):
    torch.manual_seed(0)
    model = CausalLM(LMConfig(d_model=128, n_layers=1, mixer=[{"name": name, **kwargs}]))
    m = next(mod for mod in model.modules() if isinstance(mod, mixer_class(name)))
    A, dt = m.A_log.exp(), F.softplus(m.dt_bias)
    assert A.min() >= 1 - 1e-5 and A.max() <= 16 + 1e-4 and A.std() > 1
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5) and dt.max() / dt.min() > 5
    assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay
    if name == "mamba2":
        assert torch.equal(m.D.detach(), torch.ones_like(m.D))
        # in_proj back to PyTorch's default (uniform +-1/sqrt(fan_in)), not the generic normal(0.02)
        assert m.in_proj.weight.abs().max() <= 128**-0.5 and m.in_proj.weight.std() > 0.04


def test_bad_configs_name_the_argument():
    with pytest.raises(ValueError, match="headdim"):
        seqzoo.build_mixer("mamba2", 32, headdim=48)
    with pytest.raises(ValueError, match="n_groups"):
        seqzoo.build_mixer("mamba2", 32, headdim=16, n_groups=3)
    with pytest.raises(TypeError, match="allow_neg_eigval"):
        seqzoo.build_mixer("deltanet", 32, allow_neg_eigval=1)
    with pytest.raises(ValueError, match="n_heads"):
        seqzoo.build_mixer("gated_deltanet", 32, n_heads=3)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "mamba2"])
def test_low_precision_forward_and_step(name):
    kwargs = with_paper_settings(name)
    kwargs.pop("name")
    kwargs.update({"mamba2": {"d_state": 16, "headdim": 16}}.get(name, {"n_heads": 2}))
    torch.manual_seed(0)
    m = seqzoo.build_mixer(name, D, **kwargs)
    x = torch.randn(2, 20, D)
    y = m(x)
    y64 = m.double()(x.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    m = m.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    yb, state = m.prefill(xb[:, :19])
    assert yb.dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in state.values())
    y_t, _ = m.step(xb[:, 19], state)
    assert torch.isfinite(y_t.float()).all()
    assert (y_t.float() - y64[:, 19].float()).abs().max() < 0.1 * y64.abs().max()


# -- hybrid presets and configs ---------------------------------------------------------------------------------

HYBRIDS = [
    "hybrid-gated_deltanet-3to1",
    "hybrid-gated_deltanet-6to1",
    "hybrid-hgrn2-3to1",
    "hybrid-hgrn2-6to1",
]


@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_presets_have_the_attention_ratio(name):
    linear, ratio = name.split("-")[1], int(name.split("-")[2][0])
    config = preset(name)
    assert config.d_model == 1024 and config.n_layers % (ratio + 1) == 0 and abs(config.n_layers - 24) <= 3
    names = [n for n, _ in config.layer_specs()]
    assert names.count(linear) == ratio * names.count("attention") and set(names) == {linear, "attention"}
    assert all(names[i] == "attention" for i in range(ratio, len(names), ratio + 1))
    spec = config.layer_specs()[0][1]
    assert spec["use_short_conv"] is True  # the linear mixer's paper settings
    if linear == "gated_deltanet":
        assert spec["n_heads"] == 4 and spec["expand_v"] == 2.0  # key head dim 256 at d_model 1024
    small = preset(name, d_model=32, n_layers=2 * (ratio + 1), vocab_size=50)
    assert [n for n, _ in small.layer_specs()].count("attention") == 2
    with pytest.raises(ValueError, match="n_layers"):
        preset(name, n_layers=ratio + 2)


@pytest.mark.parametrize("name", ["hybrid-gated_deltanet-3to1", "hybrid-hgrn2-6to1"])
def test_hybrid_preset_decodes_consistently_with_the_full_forward(name):
    ratio = int(name.split("-")[2][0])
    torch.manual_seed(0)
    config = preset(name, d_model=32, n_layers=ratio + 1, vocab_size=50, attention_kwargs={"n_heads": 2})
    model = CausalLM(config).double().eval()
    tokens = torch.randint(0, 50, (2, 12))
    logits = model(tokens)
    out, states = model.prefill(tokens[:, :5])
    torch.testing.assert_close(out, logits[:, :5], rtol=1e-8, atol=1e-8)
    for t in range(5, 12):
        out, states = model.step(tokens[:, t], states)
        torch.testing.assert_close(out, logits[:, t], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "mamba2"])
def test_tiny_configs_load(name):
    config = load_config(f"tiny-{name}")
    assert config.model.mixer == name and config.model.d_model == 128


@pytest.mark.parametrize("linear", ["gated_deltanet", "hgrn2"])
@pytest.mark.parametrize("ratio", [3, 6])
def test_lm_125m_hybrid_configs_load_with_the_ratio(linear, ratio):
    config = load_config(f"lm-125m-{linear}-{ratio}to1")
    names = [n for n, _ in config.model.layer_specs()]
    assert names.count(linear) == ratio * names.count("attention") and config.model.d_model == 768
