"""seqzoo.analysis.equivalent_matrix (issue 29, the dynamical-systems view): for every registered mixer, Phi @
values (+ offset) equals the core output the layer computed (its own backend) to 1e-10 in fp64, Phi is zero
above the diagonal for the causal builds, and the structure the theory predicts holds: S4/S4D Toeplitz,
softmax attention rows a distribution, RetNet Phi_ij = scale q_i.k_j gamma^(i-j). Also ops.record_calls."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo import analysis, ops
from seqzoo.models.mixer_settings import with_paper_settings

D_MODEL = 16
T = 12
# Mixers whose paper init makes the core's output too small for the non-vacuity check below.
SMALL_INIT = {"vig"}


def build(name: str, **extra):
    paper = with_paper_settings(name, seq_len=T)
    paper.pop("name", None)
    kwargs = {**paper, **dict(seqzoo.list_mixers()[name].test_kwargs), **extra}
    torch.manual_seed(0)
    mixer = seqzoo.build_mixer(name, D_MODEL, **kwargs)
    if name in SMALL_INIT:  # ViG's xavier gain 2^-2.5 leaves a core output ~1e-6 at d 16: give it signal
        with torch.no_grad():
            for p in mixer.parameters():
                if p.dim() >= 2:
                    p.normal_(0, p[0].numel() ** -0.5)
    return mixer


def _close(a, b, atol):
    err = (a - b).abs().max().item()
    assert err <= atol, f"max |a - b| = {err:.3g} > {atol:g}"


def x_input(batch=2, t=T, seed=1):
    return torch.randn(batch, t, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(seqzoo.list_mixers()))
def test_phi_times_values_is_the_core_output(name):
    view = analysis.equivalent_matrix(build(name), x_input())
    b, g, t, s = view.matrix.shape
    assert (b, t, s) == (2, T, T) and view.values.shape[:3] == (2, T, g) == view.output.shape[:3]
    assert view.matrix.dtype in (torch.float64, torch.complex128)
    # Not vacuous: the core carries signal, and Phi is not diagonal (it mixes positions).
    assert view.output.abs().max() > 1e-3
    assert torch.tril(view.matrix, -1).abs().max() > 1e-6
    view.check(atol=1e-10)
    # Causal builds (the default of every mixer but a vision one's): nothing from the future.
    if view.causal:
        assert torch.triu(view.matrix, 1).abs().max() == 0
    assert view.mixer == name and view.note
    if view.after_norm is not None:  # Phi after the output RMSNorm (gla, retnet, deltanet, ...)
        view.after_norm.check(atol=1e-10)


def test_check_can_fail():
    view = analysis.equivalent_matrix(build("gla"), x_input())
    view.matrix = view.matrix.clone()
    view.matrix[0, 0, 5, 2] += 1e-6
    with pytest.raises(AssertionError, match="gla"):
        view.check(1e-10)


@pytest.mark.parametrize("name", ["s4", "s4d"])
def test_lti_is_toeplitz(name):
    view = analysis.equivalent_matrix(build(name), x_input())
    m = view.matrix
    _close(m[:, :, 1:, 1:], m[:, :, :-1, :-1], 1e-12)
    # ... and the same for both batch rows (time-invariant, input-independent).
    _close(m[0], m[1], 1e-12)


def test_bidirectional_s4d_is_toeplitz_both_ways():
    view = analysis.equivalent_matrix(build("s4d", bidirectional=True), x_input())
    view.check(1e-10)
    assert not view.causal
    m = view.matrix
    assert torch.triu(m, 1).abs().max() > 1e-6
    _close(m[:, :, 1:, 1:], m[:, :, :-1, :-1], 1e-12)


def test_attention_rows_are_distributions():
    view = analysis.equivalent_matrix(build("attention"), x_input())
    assert view.kind == "softmax" and view.matrix.min() >= 0
    _close(view.matrix.sum(-1), torch.ones_like(view.matrix[..., 0]), 1e-12)


def test_retnet_is_decayed_qk():
    m = build("retnet")
    view = analysis.equivalent_matrix(m, x_input())
    args = view.calls[0].arguments
    q, k = args["q"], args["k"]
    scale = args.get("scale") or q.shape[-1] ** -0.5
    gamma = m.log_decay.double().exp()  # [H], the layer's own decays, not the recorded gate
    i = torch.arange(T)
    lag = (i[:, None] - i[None, :]).clamp(min=0).double()
    expected = scale * torch.einsum("bihd,bjhd->bhij", q, k) * gamma[None, :, None, None] ** lag
    expected = torch.tril(expected)
    _close(view.matrix, expected, 1e-11)


@pytest.mark.parametrize("name", ["gla", "mamba", "hyena", "lizard"])
def test_packed_documents_are_blocks(name):
    cu = torch.tensor([0, 5, T], dtype=torch.int32)
    view = analysis.equivalent_matrix(build(name), x_input(batch=1), cu_seqlens=cu)
    view.check(1e-10)
    assert view.matrix[..., 5:, :5].abs().max() == 0
    # The second document alone gives its own block.
    alone = analysis.equivalent_matrix(build(name), x_input(batch=1)[:, 5:])
    _close(view.matrix[..., 5:, 5:], alone.matrix, 1e-12)


def test_heads_and_channels_selection():
    view = analysis.equivalent_matrix(build("gla"), x_input(), heads=[1])
    full = analysis.equivalent_matrix(build("gla"), x_input())
    assert view.groups == [1] and view.matrix.shape[1] == 1
    _close(view.matrix[:, 0], full.matrix[:, 1], 0)
    view.check(1e-10)
    with pytest.raises(ValueError, match="head"):
        analysis.equivalent_matrix(build("gla"), x_input(), channels=[0])
    with pytest.raises(ValueError, match="out of range"):
        analysis.equivalent_matrix(build("gla"), x_input(), heads=[7])


def test_carried_state_is_the_offset():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    gate = -torch.rand(1, 6, 2, generator=g, dtype=torch.float64)
    s0 = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    with ops.record_calls() as calls:
        ops.gla(q, k, v, gate, initial_state=s0)
    view = analysis.probe_call(calls[0])
    assert view.offset is not None and view.offset.abs().max() > 1e-3
    view.check(1e-10)


def test_complex_scan():
    """S5's kind of core: ops.linear_scan with complex a and x gives a complex Phi, exact."""
    g = torch.Generator().manual_seed(4)
    a = torch.polar(
        torch.rand(2, 8, 3, generator=g, dtype=torch.float64), torch.randn(2, 8, 3, generator=g).double()
    )
    x = torch.randn(2, 8, 3, generator=g, dtype=torch.complex128)
    with ops.record_calls() as calls:
        ops.linear_scan(a, x)
    view = analysis.probe_call(calls[0])
    assert view.matrix.is_complex() and view.grouping == "channel"
    view.check(1e-12)
    # Phi[c, t, s] = a_{s+1} ... a_t
    expected = a[0, 2:6, 1].prod()
    assert abs(view.matrix[0, 1, 5, 1] - expected) < 1e-12


def test_an_op_without_a_probe_is_named(monkeypatch):
    from seqzoo.analysis import equivalent

    monkeypatch.delitem(equivalent.PROBES, "delta_rule")
    with pytest.raises(ValueError, match="deltanet.*delta_rule.*no probe"):
        analysis.equivalent_matrix(build("deltanet"), x_input())


def test_a_core_outside_the_ops_is_named():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x.cumsum(1)

    with pytest.raises(ValueError, match="Plain.*no op call"):
        analysis.equivalent_matrix(Plain(), x_input())


def test_record_calls_depth_and_off():
    m = build("flow").double()
    x = x_input()
    with ops.record_calls() as calls:
        m(x)
    names = [(c.name, c.depth) for c in calls]
    assert ("flow_attention", 0) in names
    assert all(d == 1 for n, d in names if n == "gla")  # flow's torch backend runs ops.gla inside
    n = len(calls)
    m(x)  # outside the block: nothing recorded
    ops.note("outside", a=x)
    assert len(calls) == n and not ops._dispatch._RECORDERS
    with ops.record_calls() as calls:
        build("hyena", order=3).double()(x)
    # ops.note: the gates hyena hands the recorder, in call order between its convolutions
    assert [c.name for c in calls if c.name != "causal_conv1d"] == ["hyena.gate", "fft_conv"] * 2 + [
        "hyena.gate"
    ]
    assert all(c.ran == "note" and c.result is None for c in calls if c.name == "hyena.gate")


def test_plots(tmp_path):
    views = {n: analysis.equivalent_matrix(build(n), x_input()) for n in ("attention", "s4d")}
    fig = analysis.plot(views["attention"], scale="abs-minmax")
    assert len(fig.axes) >= 2
    path = analysis.plot_mixers(views, tmp_path / "grid.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="scale"):
        analysis.plot(views["s4d"], scale="softmax")


def test_explain_cli(tmp_path):
    """seqzoo explain on a saved (untrained) 2-layer gla MQAR run: the PNG, the JSON with a rate per layer."""
    import json

    import yaml

    from seqzoo.cli import main
    from seqzoo.models.lm import CausalLM

    run = tmp_path / "run"
    torch.manual_seed(0)
    CausalLM(d_model=16, n_layers=2, vocab_size=64, mixer=[{"name": "gla", "n_heads": 2}], mlp="none").save(
        run / "model"
    )
    task = {"vocab_size": 64, "num_train": 4, "num_test": 8, "seq_len": 16, "num_kv_pairs": 2}
    config = {
        "name": "tiny",
        "data": {"source": "task", "name": "mqar", "task_args": task},
        "train": {"seed": 0},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["explain", str(run), "--num", "8", "--groups", "2"]) == 0
    assert (run / "explain.png").stat().st_size > 1000
    report = json.loads((run / "explain.json").read_text())
    assert [r["kind"] for r in report["layers"]] == ["gla", "gla"] and report["examples"] == 8
    assert all(0 <= r["hit_rate"] <= 1 and 0 <= r["best_group_hit_rate"] <= 1 for r in report["layers"])
    assert main(["explain", str(tmp_path / "nothing")]) == 2


# -- the whole mixing core: gated convolutions, lizard's two parts, the flags, the output norm ------------------


def _pre_projection(mixer, x):
    """The tensor the layer hands its output projection (the layer's output when it has none), captured by a
    hook on an fp64 copy independent of the analysis's own."""
    import copy

    m = copy.deepcopy(mixer).double().eval()
    proj = getattr(m, "out_proj", None) or getattr(m, "o_proj", None)
    seen = []
    if proj is None:
        with torch.no_grad():
            return m(x)
    handle = proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        m(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    "name, extra",
    [
        ("hyena", {}),
        ("hyena", {"order": 3}),
        ("orchid", {}),
        ("base_conv", {}),
        ("base_conv", {"use_act": True}),
        ("lizard", {}),
    ],
)
def test_the_whole_core_is_the_tensor_before_the_projection(name, extra):
    mixer = build(name, **extra)
    if name == "lizard":  # give the meta tokens values, so that their share (the offset) is not zero
        with torch.no_grad():
            mixer.meta_v.normal_()
    x = x_input()
    view = analysis.equivalent_matrix(mixer, x)
    target = _pre_projection(mixer, x).reshape(view.output.shape)
    _close(view.output, target, 0)
    view.check(1e-10)
    _close(view.reconstruct(), target, 1e-10)
    assert view.kind in ("gated_conv", "sum") and view.causal
    assert torch.triu(view.matrix, 1).abs().max() == 0
    if name == "lizard":
        assert view.offset is not None and view.offset.abs().max() > 1e-3


def test_hyena_order2_is_gate_toeplitz_gate():
    """Phi = diag(x_0) (Toeplitz(K) + D I) diag(x_1), built here from the layer's own filter and projections."""
    mixer = build("hyena").double().eval()
    x = x_input()
    view = analysis.equivalent_matrix(mixer, x)
    with torch.no_grad():
        u, _ = mixer.short_filter(mixer.in_proj(x), None, False)
        x0, x1, v = u.split(D_MODEL, -1)
        K, D = mixer._filters(T)
    i = torch.arange(T)
    lag = i[:, None] - i[None, :]
    toeplitz = torch.where(lag >= 0, K[0][:, lag.clamp(min=0)], 0.0) + torch.diag_embed(
        D[0][:, None].expand(-1, T)
    )
    expected = x0.permute(0, 2, 1)[..., None] * toeplitz * x1.permute(0, 2, 1)[:, :, None, :]
    _close(view.matrix, expected, 1e-12)
    _close(view.values[..., 0], v, 0)


def test_include_skip():
    """Without the skip, Phi loses exactly its D terms (s4d: D_c I; mamba: D silu(z_t) on the diagonal; hyena:
    the Ds inside the chain, not only on the diagonal) and check() still holds on the layer's tensor."""
    x = x_input(batch=1)
    for name in ("s4d", "mamba", "hyena"):
        m = build(name)
        full = analysis.equivalent_matrix(m, x)
        bare = analysis.equivalent_matrix(m, x, include_skip=False)
        bare.check(1e-10)
        diff = full.matrix - bare.matrix
        assert diff.abs().max() > 1e-3
        if name != "hyena":
            _close(diff, torch.diag_embed(torch.diagonal(diff, dim1=-2, dim2=-1)), 0)
        if name == "s4d":  # D_c on every step
            d = torch.diagonal(diff, dim1=-2, dim2=-1)
            _close(d, d[..., :1].expand_as(d), 1e-12)


def test_include_gates():
    x = x_input(batch=1)
    # mamba: without silu(z) the rows are unscaled: Phi_gated = diag(silu(z_t)) Phi.
    gated = analysis.equivalent_matrix(build("mamba"), x)
    plain = analysis.equivalent_matrix(build("mamba"), x, include_gates=False)
    plain.check(1e-10)
    z = gated.calls[0].arguments["z"]
    _close(gated.matrix, plain.matrix * torch.nn.functional.silu(z).permute(0, 2, 1)[..., None], 1e-12)
    # hyena: the last long convolution alone (Toeplitz plus D), on its own input.
    conv = analysis.equivalent_matrix(build("hyena"), x, include_gates=False)
    conv.check(1e-10)
    assert conv.kind == "lti"
    _close(conv.matrix[:, :, 1:, 1:], conv.matrix[:, :, :-1, :-1], 1e-12)
    for name in ("orchid", "base_conv"):
        view = analysis.equivalent_matrix(build(name), x, include_gates=False)
        view.check(1e-10)
        assert view.kind == "conv"
    with pytest.raises(TypeError, match="include_gates"):
        analysis.equivalent_matrix(build("gla"), x, include_gates=1)


def test_after_the_output_norm():
    """gla: norm(o) = diag(1/rms(o_t)) Phi (v * w), the norm's own output; a layer without a norm has none."""
    m = build("gla")
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
    view = analysis.equivalent_matrix(m, x_input(), heads=[1])
    after = view.after_norm
    assert after is not None and after.groups == [1]
    after.check(1e-10)
    rms = view.output.pow(2).mean(-1).add(m.norm.eps).sqrt()  # [B, T, 1]
    _close(after.matrix, view.matrix / rms.permute(0, 2, 1)[..., None], 1e-12)
    assert analysis.equivalent_matrix(build("s4d"), x_input()).after_norm is None
