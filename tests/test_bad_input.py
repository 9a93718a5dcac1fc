"""Bad input at every public entry point raises an error a user can act on (docs/design.md, "Style to follow"):
a ValueError/TypeError whose message names the argument (or, at the command line, a usage error naming the
option, exit status 2 and no traceback) - never an IndexError, a RuntimeError from inside torch or an
AttributeError from deep in a layer.

Property-based (hypothesis) over

- ``seqzoo.build_mixer`` for every registered mixer: wrong types for every keyword (a bool where an int goes,
  strings, floats that are not finite), sizes <= 0 and values out of range, unknown keywords and names;
- every ``seqzoo.ops`` op: wrong ndim, mismatched shapes, int/bool dtypes, dtypes that must agree and do not,
  a tensor on another device (the meta device: ``check_same_device`` compares devices, so meta stands in for a
  GPU), non-tensors, flags that are not bools, unknown backends;
- the run config (``seqzoo.train.config``): every section's keys with values of the wrong type or range,
  mixer keywords, malformed YAML;
- the ``seqzoo`` command: unknown commands, configs and runs, numeric options out of range.

Small and derandomized (the examples are the same on every run), tiny tensors: the file runs in a few seconds.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqzoo
from seqzoo import ops
from seqzoo.registry import list_mixers
from seqzoo.train.config import ConfigError, load_config

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def names(arg: str) -> str:
    """A regex matching ``arg`` as a whole word (``k`` must not match inside ``kernel``)."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


# ------------------------------------------------------------------------------------------------------------
# build_mixer
# ------------------------------------------------------------------------------------------------------------

D_MODEL = 16
# Each mixer's small test settings, from its record (register_mixer(..., test_kwargs=...)): mamba2's defaults do
# not fit d_model=16; the others' keep the builds fast.
BASE_KWARGS = {name: dict(record.test_kwargs) for name, record in list_mixers().items()}

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JUNK_TEXT = st.text(alphabet="xyzq!", min_size=1, max_size=4)  # never a valid option name
NEGATIVE_INT = st.integers(max_value=-1)
NON_POSITIVE_INT = st.integers(max_value=0)
NON_POSITIVE_FLOAT = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)
NEGATIVE_FLOAT = st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False)

# Values out of range for keywords whose range is the same in every mixer that has them (the type-level bad
# values come from the annotations, below).
RANGES = {
    "n_heads": NON_POSITIVE_INT,
    "n_kv_heads": NON_POSITIVE_INT,
    "head_dim": NON_POSITIVE_INT,
    "lru_width": NON_POSITIVE_INT,
    "d_state": NON_POSITIVE_INT,
    "d_conv": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "conv_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "short_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "cond_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "expand": st.one_of(NON_POSITIVE_INT, st.integers(min_value=17)),
    "expand_k": NON_POSITIVE_FLOAT,
    "expand_v": NON_POSITIVE_FLOAT,
    "expand_ratio": NON_POSITIVE_INT,
    "window": NON_POSITIVE_INT,
    "l_max": st.integers(max_value=1),
    "filter_order": NON_POSITIVE_INT,
    "feature_dim": NON_POSITIVE_INT,
    "gate_low_rank": NON_POSITIVE_INT,
    "headdim": NON_POSITIVE_INT,
    "n_groups": NON_POSITIVE_INT,
    "n_kernels": NON_POSITIVE_INT,
    "n_inner_mlps": NEGATIVE_INT,
    "n_meta": NEGATIVE_INT,
    "order": st.integers(max_value=1),
    "norm_eps": NON_POSITIVE_FLOAT,
    "eps": NEGATIVE_FLOAT,
    "rope_base": NON_POSITIVE_FLOAT,
    "gate_normalizer": NON_POSITIVE_FLOAT,
    "dt_min": NON_POSITIVE_FLOAT,
    "dt_max": NON_POSITIVE_FLOAT,
    "dt_init_floor": NEGATIVE_FLOAT,
    "dt_scale": NON_POSITIVE_FLOAT,
    "dropout": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "lower_bound": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "sin_freq": NON_POSITIVE_FLOAT,
    "a_init_range": st.one_of(
        st.tuples(NON_POSITIVE_FLOAT, st.floats(1.0, 16.0)),  # a_min <= 0
        st.tuples(st.floats(2.0, 16.0), st.floats(0.1, 1.9)),  # a_min > a_max
        st.lists(st.floats(1.0, 16.0), min_size=0, max_size=1).map(tuple),  # not a pair
        st.lists(st.floats(1.0, 16.0), min_size=3, max_size=4).map(tuple),
    ),
}


def _init_params(cls) -> dict[str, inspect.Parameter]:
    """The keywords a mixer takes (a ``**kwargs`` constructor: those of the class it passes them to)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass in (torch.nn.Module, object):
            continue
        for key, p in inspect.signature(init).parameters.items():
            if key not in ("self", "d_model") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out[key] = p
    own = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
        out = {k: v for k, v in out.items() if k in own}
    return out


def _type_bad(annotation: str) -> st.SearchStrategy | None:
    """Values of the wrong type for a keyword annotated ``annotation`` (a string: the layers use
    ``from __future__ import annotations``)."""
    kinds = {a.strip().split("[")[0] for a in str(annotation).split("|")}
    optional = "None" in kinds
    none = st.nothing() if optional else st.none()
    if "bool" in kinds:
        return st.one_of(st.integers(), JUNK_TEXT, none)
    if "int" in kinds and "float" not in kinds:
        return st.one_of(st.booleans(), st.floats(), JUNK_TEXT, st.just("4"), none)
    if "float" in kinds:
        return st.one_of(st.booleans(), NOT_FINITE, JUNK_TEXT, st.just("1.0"), none)
    if "str" in kinds:
        return st.one_of(st.integers(), st.booleans(), JUNK_TEXT, none)
    if "tuple" in kinds:
        return st.one_of(st.integers(), JUNK_TEXT, st.booleans(), none)
    return None


def _bad_kwargs(name: str) -> st.SearchStrategy:
    """(keyword, bad value) pairs for mixer ``name``."""
    options = []
    for key, p in _init_params(list_mixers()[name].cls).items():
        strategies = [s for s in (_type_bad(p.annotation), RANGES.get(key)) if s is not None]
        if strategies:
            options.append(st.tuples(st.just(key), st.one_of(*strategies)))
    return st.one_of(*options)


MIXERS = sorted(list_mixers())


@pytest.mark.parametrize("name", MIXERS)
@FAST
@given(data=st.data())
def test_build_mixer_bad_keyword_values_name_the_keyword(name, data):
    key, value = data.draw(_bad_kwargs(name), label="keyword, value")
    kwargs = {**BASE_KWARGS.get(name, {}), key: value}
    with pytest.raises((ValueError, TypeError), match=names(key)):
        seqzoo.build_mixer(name, D_MODEL, **kwargs)


def test_build_mixer_defaults_build():
    """The base the bad values are put into is valid: each error above comes from the one bad keyword."""
    for name in MIXERS:
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", MIXERS)
@FAST
@given(key=st.from_regex(r"\A[a-z][a-z_]{0,10}\Z"))
def test_build_mixer_unknown_keyword_named(name, key):
    if key in _init_params(list_mixers()[name].cls):
        return
    with pytest.raises(TypeError, match=names(key)):
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}), **{key: 1})


@FAST
@given(
    name=st.sampled_from(MIXERS),
    d_model=st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(), JUNK_TEXT, st.none()),
)
def test_build_mixer_bad_d_model(name, d_model):
    with pytest.raises((ValueError, TypeError), match="d_model"):
        seqzoo.build_mixer(name, d_model)


@FAST
@given(name=st.text(max_size=12))
def test_build_mixer_unknown_name(name):
    if name in list_mixers():
        return
    with pytest.raises(ValueError, match="unknown mixer"):
        seqzoo.build_mixer(name, D_MODEL)


@FAST
@given(name=st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.just("attention"), max_size=2)))
def test_build_mixer_name_not_a_string(name):
    with pytest.raises(TypeError, match="mixer name"):
        seqzoo.build_mixer(name, D_MODEL)


@FAST
@given(name=st.sampled_from(MIXERS), backend=JUNK_TEXT)
def test_build_mixer_unknown_backend_at_construction(name, backend):
    """An unknown backend is caught when the mixer is built, not at its first forward."""
    with pytest.raises(ValueError, match=names("backend")):
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}), backend=backend)


# ------------------------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------------------------

B, T, H, K, V, D, N, W = 2, 5, 2, 4, 3, 3, 4, 3


def _r(*shape):
    return torch.randn(*shape)


def _neg(*shape):
    return -torch.rand(*shape)


# op name -> (the op, valid keyword arguments). Each bad case below changes one of them.
OPS = {
    "attention": (
        ops.attention,
        lambda: dict(
            q=_r(B, T, H, K), k=_r(B, T, 1, K), v=_r(B, T, 1, V), causal=True, window=None, scale=None
        ),
    ),
    "causal_conv1d": (
        ops.causal_conv1d,
        lambda: dict(
            x=_r(B, T, D),
            weight=_r(D, W),
            bias=_r(D),
            activation="silu",
            initial_state=_r(B, D, W - 1),
            output_final_state=True,
        ),
    ),
    "linear_scan": (
        ops.linear_scan,
        lambda: dict(
            a=torch.rand(B, T, D),
            x=_r(B, T, D),
            initial_state=_r(B, D),
            output_final_state=True,
            reverse=False,
        ),
    ),
    "selective_scan": (
        ops.selective_scan,
        lambda: dict(
            u=_r(B, T, D),
            delta=_r(B, T, D),
            A=_neg(D, N),
            B=_r(B, T, N),
            C=_r(B, T, N),
            D=_r(D),
            z=_r(B, T, D),
            delta_bias=_r(D),
            delta_softplus=True,
            initial_state=_r(B, D, N),
            output_final_state=True,
        ),
    ),
    "selective_state_update": (
        ops.selective_state_update,
        lambda: dict(
            state=_r(B, D, N),
            x=_r(B, D),
            dt=_r(B, D),
            A=_neg(D, N),
            B=_r(B, N),
            C=_r(B, N),
            D=_r(D),
            z=_r(B, D),
            dt_bias=_r(D),
            dt_softplus=True,
        ),
    ),
    "s4d_kernel": (
        ops.s4d_kernel,
        lambda: dict(
            log_dt=_r(D),
            A_re=_neg(D, N),
            A_im=_r(D, N),
            B_re=_r(D, N),
            B_im=_r(D, N),
            C_re=_r(D, N),
            C_im=_r(D, N),
            L=T,
            discretization="zoh",
        ),
    ),
    "s4_kernel": (
        ops.s4_kernel,
        lambda: dict(
            log_dt=_r(D),
            Lambda_re=_neg(D, N),
            Lambda_im=_r(D, N),
            P_re=_r(D, N),
            P_im=_r(D, N),
            B_re=_r(D, N),
            B_im=_r(D, N),
            C_re=_r(D, N),
            C_im=_r(D, N),
            L=T,
        ),
    ),
    "fft_conv": (ops.fft_conv, lambda: dict(u=_r(B, T, D), K=_r(D, T), D=_r(D), bidirectional=False)),
    "gla": (
        ops.gla,
        lambda: dict(
            q=_r(B, T, H, K),
            k=_r(B, T, H, K),
            v=_r(B, T, H, V),
            g=_neg(B, T, H, K),
            scale=None,
            initial_state=_r(B, H, K, V),
            output_final_state=True,
        ),
    ),
    "delta_rule": (
        ops.delta_rule,
        lambda: dict(
            q=_r(B, T, H, K),
            k=_r(B, T, H, K),
            v=_r(B, T, H, V),
            beta=torch.rand(B, T, H),
            g=_neg(B, T, H),
            scale=None,
            initial_state=_r(B, H, K, V),
            output_final_state=True,
        ),
    ),
    "flow_attention": (
        ops.flow_attention,
        lambda: dict(q=torch.rand(B, T, H, K), k=torch.rand(B, T, H, K), v=_r(B, T, H, V), causal=True),
    ),
    "gla_step": (
        ops.gla_step,
        lambda: dict(
            q=_r(B, T, H, K),
            k=_r(B, T, H, K),
            v=_r(B, T, H, V),
            g=_neg(B, T, H),
            scale=None,
            initial_state=_r(B, H, K, V),
        ),
    ),
    "delta_rule_step": (
        ops.delta_rule_step,
        lambda: dict(
            q=_r(B, T, H, K),
            k=_r(B, T, H, K),
            v=_r(B, T, H, V),
            beta=torch.rand(B, T, H),
            g=_neg(B, T, H),
            scale=None,
            initial_state=_r(B, H, K, V),
        ),
    ),
    "flow_attention_prefill": (
        ops.flow_attention_prefill,
        lambda: dict(q=torch.rand(B, T, H, K), k=torch.rand(B, T, H, K), v=_r(B, T, H, V), state=None),
    ),
    "flow_attention_step": (
        ops.flow_attention_step,
        lambda: dict(
            q=torch.rand(B, H, K),
            k=torch.rand(B, H, K),
            v=_r(B, H, V),
            state=ops.flow_attention_prefill(torch.rand(B, T, H, K), torch.rand(B, T, H, K), _r(B, T, H, V))[
                1
            ],
        ),
    ),
}

# Tensors whose shape is the reference others are checked against: changing one of their dimensions is reported
# as the partner's mismatch (covered from the partner's side), or is a valid call (more query heads, a longer
# sequence). Listed as op -> {argument: dims, or None for all}.
SHAPE_REFERENCES = {
    "attention": {"q": None, "k": {1, 2}, "v": {3}},
    "causal_conv1d": {"x": None, "weight": {1}},
    "linear_scan": {},
    "selective_scan": {"u": None, "A": {1}},
    "selective_state_update": {"x": None, "A": {1}},
    "s4d_kernel": {"log_dt": None, "A_re": {1}},
    "s4_kernel": {"log_dt": None, "Lambda_re": {1}},
    "fft_conv": {"u": None, "K": {1}},
    "gla": {"q": None, "v": {3}},
    "delta_rule": {"q": None, "v": {3}},
    "flow_attention": {"q": None, "v": {3}},
    "gla_step": {"q": None, "v": {3}},
    "delta_rule_step": {"q": None, "v": {3}},
    "flow_attention_prefill": {"q": None, "v": {3}},
    "flow_attention_step": {"q": None, "v": {2}},
}

# Tensors that must share one dtype, and the dtypes that must not be mixed in (the others may differ: states
# and parameters in fp32 beside bf16 inputs; the S4 kernels take any mix of fp32/fp16/bf16, not fp64 with them).
FLOATS = (torch.float64, torch.float16, torch.bfloat16)
SAME_DTYPE = {
    "attention": (("q", "k", "v"), FLOATS),
    "gla": (("q", "k", "v"), FLOATS),
    "delta_rule": (("q", "k", "v"), FLOATS),
    "flow_attention": (("q", "k", "v"), FLOATS),
    "gla_step": (("q", "k", "v"), FLOATS),
    "delta_rule_step": (("q", "k", "v"), FLOATS),
    "flow_attention_prefill": (("q", "k", "v"), FLOATS),
    "flow_attention_step": (("q", "k", "v"), FLOATS),
    "s4d_kernel": (("log_dt", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im"), (torch.float64,)),
    "s4_kernel": (
        ("log_dt", "Lambda_re", "Lambda_im", "P_re", "P_im", "B_re", "B_im", "C_re", "C_im"),
        (torch.float64,),
    ),
}

# Non-tensor arguments and values that are wrong for them.
FLAG = st.one_of(st.integers(), JUNK_TEXT, st.just(None))
SCALARS = {
    "causal": FLAG,
    "output_final_state": FLAG,
    "reverse": FLAG,
    "delta_softplus": FLAG,
    "dt_softplus": FLAG,
    "bidirectional": FLAG,
    "window": st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(), JUNK_TEXT),
    "scale": st.one_of(JUNK_TEXT, st.booleans(), st.lists(st.floats(), max_size=2)),
    "L": st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(), JUNK_TEXT),
    "activation": JUNK_TEXT,
    "discretization": JUNK_TEXT,
}


def _shape_cases(op_name: str, kwargs: dict) -> list[tuple[str, str, object]]:
    """(argument, what, bad value): one dimension one larger, one dimension more or fewer."""
    cases = []
    refs = SHAPE_REFERENCES[op_name]
    for arg, x in kwargs.items():
        if not isinstance(x, torch.Tensor):
            continue
        cases.append((arg, "one more dimension", x.unsqueeze(0)))
        if x.dim() > 1:
            cases.append((arg, "one fewer dimension", x[0]))
        if arg in refs and refs[arg] is None:
            continue
        for i in range(x.dim()):
            if arg in refs and i in refs[arg]:
                continue
            shape = list(x.shape)
            shape[i] += 1
            cases.append((arg, f"dim {i} one larger", torch.randn(shape, dtype=x.dtype)))
    return cases


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(data=st.data())
def test_op_bad_shape_names_the_argument(op_name, data):
    op, make = OPS[op_name]
    kwargs = make()
    arg, _what, bad = data.draw(st.sampled_from(_shape_cases(op_name, kwargs)), label="argument, change")
    kwargs[arg] = bad
    with pytest.raises(ValueError, match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(data=st.data())
def test_op_int_or_bool_dtype_names_the_argument(op_name, data):
    op, make = OPS[op_name]
    kwargs = make()
    tensors = [a for a, x in kwargs.items() if isinstance(x, torch.Tensor)]
    arg = data.draw(st.sampled_from(tensors), label="argument")
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool]), label="dtype")
    kwargs[arg] = (kwargs[arg] * 3).to(dtype)
    with pytest.raises(TypeError, match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(SAME_DTYPE))
@FAST
@given(data=st.data())
def test_op_dtype_mismatch_names_the_argument(op_name, data):
    op, make = OPS[op_name]
    kwargs = make()
    group, dtypes = SAME_DTYPE[op_name]
    arg = data.draw(st.sampled_from(group[1:]), label="argument")
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    kwargs[arg] = kwargs[arg].to(dtype)
    with pytest.raises(TypeError, match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(data=st.data())
def test_op_device_mismatch_names_the_argument(op_name, data):
    """A tensor on another device (meta stands in for a GPU: the check compares devices, whatever they are)."""
    op, make = OPS[op_name]
    kwargs = make()
    arg = data.draw(st.sampled_from([a for a, x in kwargs.items() if isinstance(x, torch.Tensor)]))
    kwargs[arg] = kwargs[arg].to("meta")
    with pytest.raises(ValueError, match=names(arg) + " on meta"):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(data=st.data())
def test_op_non_tensor_names_the_argument(op_name, data):
    op, make = OPS[op_name]
    kwargs = make()
    arg = data.draw(st.sampled_from([a for a, x in kwargs.items() if isinstance(x, torch.Tensor)]))
    kwargs[arg] = data.draw(st.sampled_from([kwargs[arg].tolist(), kwargs[arg].numpy(), 1.0, "x"]))
    with pytest.raises(TypeError, match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(data=st.data())
def test_op_bad_scalar_argument_named(op_name, data):
    op, make = OPS[op_name]
    kwargs = make()
    scalars = [a for a in kwargs if a in SCALARS]
    if not scalars:
        return
    arg = data.draw(st.sampled_from(scalars), label="argument")
    value = data.draw(SCALARS[arg], label="value")
    if arg == "window" and kwargs["causal"] is False:
        return
    kwargs[arg] = value
    with pytest.raises((ValueError, TypeError), match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", sorted(OPS))
@FAST
@given(backend=st.one_of(JUNK_TEXT, st.integers(), st.none()))
def test_op_unknown_backend_named(op_name, backend):
    op, make = OPS[op_name]
    with pytest.raises((ValueError, TypeError), match="backend"):
        op(**make(), backend=backend)


@pytest.mark.parametrize(
    "op_name, arg, dim, also",
    [
        ("causal_conv1d", "x", 1, {}),
        ("linear_scan", "x", 1, {"a": 1}),
        ("selective_scan", "u", 0, {"delta": 0, "B": 0, "C": 0, "z": 0, "initial_state": 0}),
        ("selective_scan", "u", 1, {"delta": 1, "B": 1, "C": 1, "z": 1}),
        ("selective_scan", "u", 2, {"delta": 2, "z": 2, "A": 0, "D": 0, "delta_bias": 0, "initial_state": 1}),
        ("fft_conv", "u", 0, {}),
        ("fft_conv", "u", 1, {}),
        ("fft_conv", "u", 2, {"K": 0, "D": 0}),
        ("fft_conv", "K", 1, {}),
        ("s4d_kernel", "log_dt", 0, {n: 0 for n in ("A_re", "A_im", "B_re", "B_im", "C_re", "C_im")}),
        (
            "s4_kernel",
            "log_dt",
            0,
            {n: 0 for n in ("Lambda_re", "Lambda_im", "P_re", "P_im", "B_re", "B_im", "C_re", "C_im")},
        ),
        ("flow_attention", "q", 1, {"k": 1, "v": 1}),
        ("gla", "q", 1, {"k": 1, "v": 1, "g": 1}),
        ("delta_rule", "q", 1, {"k": 1, "v": 1, "beta": 1, "g": 1}),
    ],
)
def test_op_empty_dimension_named(op_name, arg, dim, also):
    """A size-0 dimension the kernels cannot take (an FFT of length 0, a scan over no channels) is refused
    before a backend sees it; ops that take one (attention over no positions) return an empty output."""
    op, make = OPS[op_name]
    kwargs = make()
    # The tensors sharing that size shrink with it, so that the size 0 itself is the only thing wrong.
    for name, d in {arg: dim, **also}.items():
        kwargs[name] = kwargs[name].narrow(d, 0, 0)
    with pytest.raises(ValueError, match=names(arg)):
        op(**kwargs)


@pytest.mark.parametrize("op_name", ["gla", "delta_rule"])
def test_op_output_final_state_must_be_bool_gla_delta_rule(op_name):
    op, make = OPS[op_name]
    with pytest.raises(TypeError, match="output_final_state"):
        op(**{**make(), "output_final_state": "yes"})


@pytest.mark.parametrize("op_name", ["gla", "delta_rule"])
def test_op_zero_head_size_gla_delta_rule(op_name):
    op, make = OPS[op_name]
    kwargs = make()
    for name in ("q", "k", "g", "initial_state"):
        x = kwargs[name]
        if x is not None and x.dim() == 4:
            dim = 3 if name != "initial_state" else 2
            kwargs[name] = x.narrow(dim, 0, 0)
    with pytest.raises(ValueError, match=names("q")):
        op(**kwargs)


def test_every_op_is_covered():
    """A new op joins OPS above (and so every bad-input property here)."""
    assert set(ops.list_ops()) == set(OPS)


def test_op_cases_are_valid_as_built():
    """Each op runs on the arguments the bad cases start from: each error above is the one change's."""
    for op, make in OPS.values():
        op(**make())


# ------------------------------------------------------------------------------------------------------------
# the run config
# ------------------------------------------------------------------------------------------------------------

BASE_CONFIG = "tiny-attention"

# key -> bad values (YAML-parsed values, as a config file or an override gives them).
NOT_BOOL = st.one_of(st.integers(), st.sampled_from(["yes", "no", "on"]), st.floats(allow_nan=False))
CONFIG_CASES = {
    "model.d_model": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("64"), st.floats(0.5, 64.5)),
    "model.n_layers": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("2")),
    "model.mlp_ratio": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans(), JUNK_TEXT),
    "model.norm_eps": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans()),
    "model.dropout": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False), st.booleans()),
    "model.tie_embeddings": NOT_BOOL,
    "model.vocab_size": st.one_of(st.integers(max_value=1), st.booleans(), JUNK_TEXT),
    "model.block": JUNK_TEXT,
    "model.norm": JUNK_TEXT,
    "model.kind": JUNK_TEXT,
    "model.mixer_settings": JUNK_TEXT,
    "data.seq_len": st.one_of(st.integers(max_value=1), st.booleans(), st.just("128")),
    "data.source": JUNK_TEXT,
    "data.val_fraction": st.one_of(NON_POSITIVE_FLOAT, st.floats(0.5, 10.0), NOT_FINITE, st.booleans()),
    "data.max_bytes": st.one_of(st.integers(max_value=999), st.booleans()),
    "optim.lr": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans(), JUNK_TEXT),
    "optim.weight_decay": st.one_of(NEGATIVE_FLOAT, NOT_FINITE, st.booleans()),
    "optim.eps": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE),
    "optim.betas": st.one_of(
        st.tuples(st.floats(1.0, 5.0), st.floats(0.0, 0.99)).map(list),
        st.tuples(st.floats(0.0, 0.99), NEGATIVE_FLOAT).map(list),
        st.lists(st.floats(0.0, 0.99), max_size=1),
        JUNK_TEXT,
    ),
    "optim.schedule": JUNK_TEXT,
    "optim.warmup_steps": st.one_of(NEGATIVE_INT, st.booleans(), st.floats(0.5, 10.5)),
    "optim.min_lr_ratio": st.one_of(NEGATIVE_FLOAT, st.floats(1.01, 10.0), NOT_FINITE),
    "optim.grad_clip": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans()),
    "train.steps": st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(0.5, 10.5), st.just("100")),
    "train.batch_size": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("8")),
    "train.grad_accum": st.one_of(NON_POSITIVE_INT, st.booleans(), st.sampled_from([3, 5, 6, 7])),  # 16 % g
    "train.device": JUNK_TEXT,
    "train.precision": JUNK_TEXT,
    "train.compile": NOT_BOOL,
    "train.eval_every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.ckpt_every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.keep_last": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.threads": st.one_of(NON_POSITIVE_INT, st.booleans(), JUNK_TEXT),
    "train.early_stop_acc": st.one_of(NON_POSITIVE_FLOAT, st.floats(1.01, 5.0), NOT_FINITE),
    "log.every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "log.progress": NOT_BOOL,
    "log.tensorboard": NOT_BOOL,
    "eval.batch_size": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "eval.num_fewshot": st.one_of(NEGATIVE_INT, st.booleans()),
    "eval.limit": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE),
}


def _base_raw() -> dict:
    return load_config(BASE_CONFIG).model_dump(mode="json")


def _set(raw: dict, key: str, value) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def test_config_base_is_valid():
    load_config(_base_raw())


@settings(FAST, max_examples=60)
@given(case=st.sampled_from(sorted(CONFIG_CASES)).flatmap(lambda k: st.tuples(st.just(k), CONFIG_CASES[k])))
def test_config_bad_value_names_the_key(case):
    key, value = case
    raw = _base_raw()
    _set(raw, key, value)
    with pytest.raises(ConfigError, match=names(key.split(".")[-1])):
        load_config(raw)


@FAST
@given(
    case=st.sampled_from(
        [
            ("n_heads", st.one_of(st.booleans(), JUNK_TEXT, st.floats(0.5, 3.5))),
            ("window", st.one_of(st.booleans(), JUNK_TEXT)),
            ("rope_base", st.one_of(NOT_FINITE, JUNK_TEXT, st.booleans())),
            ("backend", st.one_of(JUNK_TEXT, st.integers())),
            ("bidirectional", NOT_BOOL),
        ]
    ).flatmap(lambda c: st.tuples(st.just(c[0]), c[1])),
    where=st.sampled_from(["mixer_kwargs", "entry"]),
)
def test_config_bad_mixer_keyword_names_it(case, where):
    """Mixer keywords are checked with the config (types and names; ranges when the model is built)."""
    key, value = case
    raw = _base_raw()
    if where == "mixer_kwargs":
        raw["model"]["mixer_kwargs"] = {key: value}
    else:
        raw["model"]["mixer"] = [{"name": "attention", key: value}]
    with pytest.raises(ConfigError, match=names(key)):
        load_config(raw)


@FAST
@given(
    key=st.from_regex(r"\A[a-z][a-z_]{0,10}\Z"), section=st.sampled_from(["", "model.", "optim.", "train."])
)
def test_config_unknown_key_named(key, section):
    raw = _base_raw()
    parent = raw[section[:-1]] if section else raw
    if key in parent:
        return
    _set(raw, section + key, 1)
    with pytest.raises(ConfigError, match=names(key)):
        load_config(raw)


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim: {lr: [1\n", None),  # not YAML
        ("- 1\n- 2\n", None),  # not a mapping
        ("optim:\n  lr: .nan\n", "lr"),
        ("optim:\n  lr: .inf\n", "lr"),
        ("train:\n  steps: yes\n", "steps"),  # YAML 1.1's yes is a bool, not a count
        ("model:\n  mixer: not_a_mixer\n", "not_a_mixer"),
        ("model:\n  mixer_kwargs: {n_heads: two}\n", "n_heads"),
    ],
)
def test_config_file_bad_yaml(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names(key) if key else None):
        load_config(path)


@FAST
@given(value=st.sampled_from(["[1", "{a: ", "abc", ".nan", "true", "-1"]))
def test_config_override_bad_value(value):
    with pytest.raises(ConfigError, match="lr"):
        load_config(BASE_CONFIG, [f"optim.lr={value}"])


# ------------------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------------------


def _run_cli(argv, capsys) -> tuple[int, str]:
    from seqzoo.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


CLI_NUMERIC = [
    ("demo", "--steps", st.one_of(NON_POSITIVE_INT)),
    ("demo", "--batch-size", NON_POSITIVE_INT),
    ("demo", "--seq-len", NON_POSITIVE_INT),
    ("demo", "--d-model", NON_POSITIVE_INT),
    ("demo", "--n-layers", NON_POSITIVE_INT),
    ("demo", "--lr", st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE)),
    ("generate /nonexistent-run", "--temperature", st.one_of(NEGATIVE_FLOAT, NOT_FINITE)),
    ("generate /nonexistent-run", "--top-p", st.one_of(NON_POSITIVE_FLOAT, st.floats(1.01, 10.0))),
    ("generate /nonexistent-run", "--top-k", NON_POSITIVE_INT),
    ("generate /nonexistent-run", "--max-new-tokens", NON_POSITIVE_INT),
    ("generate /nonexistent-run", "--num-samples", NON_POSITIVE_INT),
    ("bench attention", "--repeats", NON_POSITIVE_INT),
    ("bench attention", "--warmup", NEGATIVE_INT),
    ("linearize /nonexistent-run --to gla", "--steps", NON_POSITIVE_INT),
    ("linearize /nonexistent-run --to gla", "--rank", NON_POSITIVE_INT),
]


@FAST
@given(
    case=st.sampled_from(CLI_NUMERIC).flatmap(lambda c: st.tuples(st.just(c[0]), st.just(c[1]), c[2])),
    junk=st.booleans(),
)
def test_cli_numeric_option_out_of_range(capsys, case, junk):
    """A usage error naming the option, before the command runs (exit status 2, no traceback)."""
    command, option, value = case
    text = "abc" if junk else repr(value) if isinstance(value, float) else str(value)
    code, err = _run_cli([*command.split(), f"{option}={text}"], capsys)
    assert code == 2
    assert re.search(names(option), err), err


@FAST
@given(name=st.from_regex(r"\A[a-z][a-z_-]{0,12}\Z"))
def test_cli_unknown_config_or_command(capsys, name):
    from seqzoo.train.config import available_configs

    if name in available_configs():
        return
    code, err = _run_cli(["train", name, "--print-config"], capsys)
    assert code == 2 and name in err
    code, err = _run_cli([f"zz{name}"], capsys)
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", BASE_CONFIG, "optim.lr=abc", "--print-config"], "lr"),
        (["train", BASE_CONFIG, "optim.lr=[1", "--print-config"], "lr"),
        (["train", BASE_CONFIG, "train.steps=true", "--print-config"], "steps"),
        (["train", BASE_CONFIG, "model.mixer_kwargs={n_heads: abc}", "--print-config"], "n_heads"),
        (["train", BASE_CONFIG, "model.mixer=not_a_mixer", "--print-config"], "not_a_mixer"),
        (["train", BASE_CONFIG, "no_equals_sign", "--print-config"], "no_equals_sign"),
        (["list", "--device", "not_a_device"], "--device"),
        (["bench", "not_an_op"], "not_an_op"),
        (["mqar", "not_a_sweep"], "not_a_sweep"),
        (["lra", "not_a_task"], "not_a_task"),
        (["generate", "/nonexistent-run"], "/nonexistent-run"),
        (["linearize", "/nonexistent-run"], "--to"),
    ],
)
def test_cli_bad_arguments_exit_cleanly(capsys, argv, expect):
    code, err = _run_cli(argv, capsys)
    assert code == 2, err
    assert expect in err
