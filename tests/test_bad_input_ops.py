"""Bad input at every ``seqzoo.ops`` op raises a ValueError/TypeError naming the argument (docs/design.md, "Style
to follow"), property-based (hypothesis) over each op's spec (``ops/_spec.py``): the valid call it starts from is
the op's example, and each case changes one argument of it: wrong ndim, mismatched shapes, int/bool dtypes,
dtypes that must agree and do not, a tensor on another device (the meta device: ``check_same_device`` compares
devices, so meta stands in for a GPU), non-tensors, flags that are not bools, a size of 0 the kernels cannot
take, unknown backends. A new op is covered by its spec, with nothing to add here.

Small and derandomized (the examples are the same on every run), tiny tensors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_bad_input import FAST, JUNK_TEXT, NON_POSITIVE_INT, names

from seqzoo import ops
from seqzoo.ops._spec import OpSpec

# Every op of the library, with the valid call each bad case changes one argument of (its spec's example).
LIBRARY_OPS = ops.list_ops()
OPS = {name: (op, lambda op=op: op.spec.example()) for name, op in LIBRARY_OPS.items()}
SHAPE_REFERENCES = {name: op.spec.shape_references() for name, op in LIBRARY_OPS.items()}
# Tensors that must share one dtype, and the dtypes that must not be mixed in.
SAME_DTYPE = {
    name: (op.spec.same_dtype, op.spec.foreign_dtypes)
    for name, op in LIBRARY_OPS.items()
    if op.spec.same_dtype
}
# (op, the size letter made 0): the tensors having it shrink with it, and the letter's first tensor is named.
EMPTY_SIZES = [(name, letter) for name, op in LIBRARY_OPS.items() for letter in op.spec.nonempty]


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


@pytest.mark.parametrize("op_name, letter", EMPTY_SIZES)
def test_op_empty_dimension_named(op_name, letter):
    """A size-0 dimension the kernels cannot take (an FFT of length 0, a scan over no channels or no steps, a
    head of size 0) is refused before a backend sees it; ops that take one (attention over no positions) return
    an empty output."""
    op, make = OPS[op_name]
    spec = op.spec
    kwargs = make()
    # Every tensor with that size shrinks with it, so that the size 0 itself is the only thing wrong.
    for name, shape in spec.shapes.items():
        x = kwargs.get(name)
        if isinstance(x, torch.Tensor):
            for dim, token in enumerate(shape.split()):
                if token == letter and x.shape[dim] == make_size(spec, letter):
                    kwargs[name] = x.narrow(dim, 0, 0)
    with pytest.raises(ValueError, match=names(spec.first_with(letter))):
        op(**kwargs)


def make_size(spec: OpSpec, letter: str) -> int:
    return spec.sizes[letter] if letter in spec.sizes else spec.sizes[spec.defaults[letter]]


def test_empty_dimension_cases_cover_the_ops_that_refuse_them():
    """The spec's size letters that may not be 0 reach the ops that refused a 0 before the cases came from specs."""
    covered = set(EMPTY_SIZES)
    for case in [
        ("causal_conv1d", "T"),
        ("linear_scan", "T"),
        ("selective_scan", "B"),
        ("selective_scan", "T"),
        ("selective_scan", "D"),
        ("fft_conv", "B"),
        ("fft_conv", "T"),
        ("fft_conv", "H"),
        ("fft_conv", "L"),
        ("s4d_kernel", "H"),
        ("s4_kernel", "H"),
        ("flow_attention", "T"),
        ("gla", "T"),
        ("delta_rule", "T"),
        ("gla", "K"),
        ("delta_rule", "K"),
    ]:
        assert case in covered, case


@pytest.mark.parametrize("op_name", ["gla", "delta_rule"])
def test_op_output_final_state_must_be_bool_gla_delta_rule(op_name):
    op, make = OPS[op_name]
    with pytest.raises(TypeError, match="output_final_state"):
        op(**{**make(), "output_final_state": "yes"})


def test_every_op_has_a_spec():
    """Every op of the library states its spec (so every property here, the benches, the extreme-input tests and
    the fp64 audit reach it)."""
    missing = [name for name, op in LIBRARY_OPS.items() if not isinstance(op.spec, OpSpec)]
    assert not missing, f"ops without a spec: {missing}"


def test_op_cases_are_valid_as_built():
    """Each op runs on the arguments the bad cases start from: each error above is the one change's."""
    for op, make in OPS.values():
        op(**make())
