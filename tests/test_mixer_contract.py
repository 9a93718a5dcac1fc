"""The mixer contract, checked for every registered mixer as the library's configs build it (its paper's
settings from its record, e.g. the short convolutions of the linear-attention family), and for the plain
layers (their own defaults), with each record's small test kwargs.

Adding a mixer is one layer file (its ``register_mixer`` record beside it) plus one line in MIXER_FAMILIES
below: the mixers that exist, with what they are. A registered mixer missing from the table, or a name in the
table that is not registered, fails test_every_mixer_is_in_the_table."""

from __future__ import annotations

import pytest
import torch

import seqzoo
from seqzoo.models.mixer_settings import settings_for, with_paper_settings

D_MODEL = 32
# Every mixer that exists, with its family (what kind of mixer it is; `seqzoo demo` runs one per family).
MIXER_FAMILIES = {
    "attention": "softmax attention",
    "sliding_window": "local attention",
    "combiner": "softmax attention",
    "short_conv": "short convolution",
    "base_conv": "long convolution",
    "hyena": "long convolution",
    "orchid": "long convolution",
    "s4": "time-invariant SSM",
    "s4d": "time-invariant SSM",
    "s5": "time-invariant SSM",
    "mamba": "selective SSM",
    "mamba2": "structured state space duality",
    "gla": "gated linear attention",
    "retnet": "gated linear attention",
    "lightning": "gated linear attention",
    "hgrn2": "gated linear attention",
    "linear_attention": "gated linear attention",
    "liger": "gated linear attention",
    "lizard": "gated linear attention",
    "based": "Taylor linear attention",
    "deltanet": "delta rule",
    "gated_deltanet": "delta rule",
    "rglru": "gated RNN",
    "flow": "flow attention",
    "vig": "gated linear attention",
}
# "name" builds a mixer with its paper's settings; "name:plain" with the layer's own defaults (only where its
# paper settings differ from them).
MIXERS = sorted(MIXER_FAMILIES) + [f"{n}:plain" for n in sorted(MIXER_FAMILIES) if settings_for(n).kwargs]


def small_kwargs(name: str) -> dict:
    """The record's small settings that keep the suite fast."""
    return dict(seqzoo.list_mixers()[name].test_kwargs)


def test_every_mixer_is_in_the_table():
    records = seqzoo.list_mixers()
    assert {n: r.family for n, r in records.items()} == MIXER_FAMILIES
    # One mixer per family is the demo's (a family without one, or with two, changes what make demo runs).
    for family in set(MIXER_FAMILIES.values()):
        assert sum(r.demo for r in records.values() if r.family == family) == 1, family


def build(name, **extra):
    name, _, variant = name.partition(":")
    paper = {} if variant == "plain" else with_paper_settings(name, seq_len=8)
    paper.pop("name", None)
    kwargs = {**paper, **small_kwargs(name), **extra}
    if variant == "plain":
        kwargs.pop("use_short_conv", None)
    return seqzoo.build_mixer(name, D_MODEL, **kwargs).double()


@pytest.fixture(params=MIXERS)
def name(request):
    return request.param


def refuses_to_decode(m) -> bool:
    """True for a mixer that is bidirectional whatever its arguments (vig), after checking that it refuses
    every decoding entry point with the bidirectional error; False for a causal one (the other tests apply)."""
    if not m.bidirectional:
        return False
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    for call in (
        lambda: m.prefill(x),
        lambda: m.step(x[:, 0], {}),
        lambda: m.init_state(2),
        lambda: m.state_size(5),
    ):
        with pytest.raises(RuntimeError, match="bidirectional"):
            call()
    return True


def test_every_mixer_has_description_and_paper(name):
    info = seqzoo.list_mixers()[name.partition(":")[0]]
    assert info.description and info.paper


def test_output_shape(name):
    m = build(name)
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    assert m(x).shape == x.shape


def test_causal(name):
    m = build(name)
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    y = m(x)
    if m.bidirectional:  # an encoder-only mixer: the future matters, at every position
        x2 = x.clone()
        x2[:, 12] += 1.0
        assert ((m(x2) - y)[:, :12].abs().amax(-1) > 1e-9).all()
        return
    for t in (1, 6, 12):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:])
        torch.testing.assert_close(m(x2)[:, :t], y[:, :t], rtol=0, atol=1e-10)
    # ... and the future does matter somewhere, so the check above can fail.
    x3 = x.clone()
    x3[:, :6] += 1.0
    assert (m(x3)[:, 6:] - y[:, 6:]).abs().max() > 1e-6


@pytest.mark.parametrize("split", [0, 1, 6, 13])
def test_prefill_then_step_equals_forward(name, split):
    m = build(name)
    if refuses_to_decode(m):
        return
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    y = m(x)
    if split:
        y_pre, state = m.prefill(x[:, :split])
        torch.testing.assert_close(y_pre, y[:, :split], rtol=1e-9, atol=1e-9)
    else:
        state = m.init_state(2, device=x.device, dtype=x.dtype)
    for t in range(split, 13):
        y_t, state = m.step(x[:, t], state)
        assert y_t.shape == (2, D_MODEL)
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-9, atol=1e-9)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 2 for v in state.values())


def test_prefill_continues_from_state(name):
    m = build(name)
    if refuses_to_decode(m):
        return
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    y = m(x)
    y1, s = m.prefill(x[:, :4])
    y2, s = m.prefill(x[:, 4:9], s)
    y3, s = m.prefill(x[:, 9:], s)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y, rtol=1e-9, atol=1e-9)


def test_state_size_matches_state(name):
    m = build(name)
    if refuses_to_decode(m):
        return
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    _, state = m.prefill(x)
    held = sum(v[0].numel() for v in state.values() if v.dim() > 1)  # per sequence; position counters aside
    n = m.state_size(9)
    assert isinstance(n, int) and n > 0
    assert held == n


def test_gradients_reach_every_parameter(name):
    m = build(name)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    m(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize(
    "bad, exc, word",
    [
        (lambda: torch.randn(2, 5), ValueError, "x"),  # wrong rank
        (lambda: torch.randn(2, 5, D_MODEL + 1), ValueError, "d_model"),  # wrong width
        (lambda: torch.randint(0, 5, (2, 5, D_MODEL)), TypeError, "x"),  # integer dtype
        (lambda: [[0.0] * D_MODEL], TypeError, "x"),  # not a tensor
    ],
)
def test_bad_input_errors_name_the_argument(name, bad, exc, word):
    m = build(name)
    with pytest.raises(exc, match=word):
        m(bad())


def test_bad_step_input(name):
    m = build(name)
    if refuses_to_decode(m):
        return
    state = m.init_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x_t"):
        m.step(torch.randn(2, 3, D_MODEL, dtype=torch.float64), state)


def test_unknown_kwarg_and_name():
    with pytest.raises(TypeError, match="bogus"):
        seqzoo.build_mixer("short_conv", 16, bogus=1)
    with pytest.raises(ValueError, match="attentoin"):
        seqzoo.build_mixer("attentoin", 16)


# -- every backend of the op a mixer's ``backend`` names ------------------------------------------------------

# The op whose backend names a mixer's ``backend`` argument takes (the op the layer exists to run). Every other
# op the layer calls (its short convolution, a step op) gets the same name where it has it, else its auto.
BACKEND_OP = {
    "attention": "attention",
    "base_conv": "fft_conv",
    "based": "gla",
    "combiner": "combiner",
    "deltanet": "delta_rule",
    "flow": "flow_attention",
    "gated_deltanet": "delta_rule",
    "gla": "gla",
    "hgrn2": "gla",
    "hyena": "fft_conv",
    "liger": "gla",
    "lightning": "gla",
    "linear_attention": "gla",
    "lizard": "gla",
    "mamba": "selective_scan",
    "mamba2": "gla",
    "orchid": "fft_conv",
    "retnet": "gla",
    "rglru": "linear_scan",
    "s4": "s4_kernel",
    "s4d": "s4d_kernel",
    "s5": "linear_scan",
    "short_conv": "causal_conv1d",
    "vig": "gla",
}
MIXER_BACKENDS = [
    (mixer, backend)
    for mixer, op in sorted(BACKEND_OP.items())
    for backend in getattr(seqzoo.ops, op).backend_names()
]


def test_backend_table_covers_every_mixer_with_a_backend():
    import inspect

    from seqzoo.registry import mixer_class

    takes = {
        n for n in seqzoo.list_mixers() if "backend" in inspect.signature(mixer_class(n).__init__).parameters
    }
    assert takes <= set(BACKEND_OP), f"add {sorted(takes - set(BACKEND_OP))} to BACKEND_OP"
    assert set(BACKEND_OP) <= takes, f"not mixers with a backend: {sorted(set(BACKEND_OP) - takes)}"


@pytest.mark.parametrize("mixer, backend", MIXER_BACKENDS, ids=[f"{m}-{b}" for m, b in MIXER_BACKENDS])
def test_mixer_builds_with_every_backend_of_its_op(mixer, backend):
    """Built with any backend name of its op, a mixer hands its short convolutions a name causal_conv1d has
    (Mamba2(backend="triton_recurrent") used to pass the gla name on, and failed when it ran)."""
    from seqzoo.modules.short_conv import ShortConvolution

    m = build(mixer, backend=backend)
    names = seqzoo.ops.causal_conv1d.backend_names()
    for conv in (c for c in m.modules() if isinstance(c, ShortConvolution)):
        # auto, or the layer's own name where the convolution has it (short_conv's, reference, torch, triton)
        assert conv.backend == "auto" or (conv.backend == backend and backend in names), conv.backend


def _runnable_on_cpu():
    """The (mixer, backend) pairs whose backend runs on a CPU. The chunked Triton kernels take ~100 s through
    the interpreter over every mixer, and their ops' own tests cover them: those runs are exhaustive, but for
    mamba2's (the layer that handed its gla name to its convolution)."""
    out = []
    for m, b in MIXER_BACKENDS:
        if getattr(seqzoo.ops, BACKEND_OP[m]).backends("cpu")[b] != "available":
            continue
        marks = [pytest.mark.exhaustive] if b == "triton" and m != "mamba2" else []
        out.append(pytest.param(m, b, marks=marks, id=f"{m}-{b}"))
    return out


@pytest.mark.parametrize("mixer, backend", _runnable_on_cpu())
def test_mixer_runs_with_every_backend_of_its_op(mixer, backend):
    """Forward, prefill and step of a mixer built with each backend of its op that runs on a CPU (the Triton
    ones under TRITON_INTERPRET=1) agree with the same weights built with ``auto``."""
    torch.manual_seed(0)
    auto = build(mixer).float()
    torch.manual_seed(0)
    m = build(mixer, backend=backend).float()
    m.load_state_dict(auto.state_dict())
    x = torch.randn(1, 6, D_MODEL)
    y = auto(x)
    torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-4)
    if refuses_to_decode(m):
        return
    y_pre, state = m.prefill(x[:, :5])
    y_t, _ = m.step(x[:, 5], state)
    torch.testing.assert_close(torch.cat([y_pre, y_t[:, None]], 1), y, rtol=1e-4, atol=1e-4)
