"""``ops.combiner``: Combiner attention (Ren et al. 2021, "Combiner: Full Attention Transformer with Sparse
Computation Cost"): softmax attention's full support at O(T sqrt T) cost.

    o = combiner(q, k, v, segment=None, variant="fixed", causal=True, scale=None, backend="auto")

q, k [B, T, H, D], v [B, T, H, E] -> o [B, T, H, E]. Positions are cut into segments of ``segment`` tokens
(default ceil(sqrt(T)); the last one shorter when it does not divide T, its padding masked out of every pool).
Each query attends exactly to its own segment (causal: j <= i) and, in the same softmax, to one abstraction per
other segment (causal: per earlier segment), which spreads its weight over that segment's tokens:

- ``variant="fixed"``: the abstraction of segment r has key max_{j in r} k_j and value
  softmax_{j in r}(scale qbar_r . k_j) v_j with qbar_r = max_{j in r} q_j (max-pooling, a true max);
- ``variant="axial"``: segments are rows; from column c the abstraction of row r has key k_(r, c) and value the
  complete row-r attention output at (r, c) (``row_summary = none`` of the reference code).

Every position j <= i (every j when ``causal=False``) gets probability > 0 (equations in :mod:`.reference`);
with ``segment=1`` both variants are exactly softmax attention. The op is linear in ``v``. ``scale`` defaults
to D ** -0.5.

Backends: ``reference`` (builds the implied T x T probability matrix in fp64 and applies it) and ``torch``
(blocked einsums, O(T s + T^2 / s) logits and memory: :mod:`.torch`; the default everywhere). With ``cu_seqlens``
each document runs alone (per sequence), its segments counted from its own start.

Decoding (causal): ``combiner_step(q_t, k_t, v_t, state, variant="fixed", scale=None)``, one token per row
from a state of the current segment and one summary per finished segment (:mod:`.step`).
"""

from __future__ import annotations

import torch as _pt  # not `torch`: that name is this package's torch.py backend

from .._checks import check_bool, check_same_device, check_tensor
from .._dispatch import define_op
from .._spec import BenchGrid, OpSpec, draw_values, size_of
from . import reference as _reference
from . import step as _step
from . import torch as _torch
from .reference import VARIANTS, default_segment


def _validate(q, k, v, segment=None, variant="fixed", causal=True, scale=None):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor("combiner", name, x, 4)
    check_same_device("combiner", q=q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(
            f"combiner: k must have the shape of q {tuple(q.shape)} [B, T, H, D], got {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"combiner: v must have shape [B, T, H, E] with [B, T, H] = {tuple(q.shape[:3])}, got {tuple(v.shape)}"
        )
    if q.shape[1] < 1:
        raise ValueError(f"combiner: q, k, v need at least one position (T >= 1), got T = {q.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"combiner: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if segment is not None and (not isinstance(segment, int) or isinstance(segment, bool) or segment < 1):
        raise ValueError(f"combiner: segment must be a positive int or None (ceil(sqrt(T))), got {segment!r}")
    if variant not in VARIANTS:
        raise ValueError(f"combiner: variant must be one of {VARIANTS}, got {variant!r}")
    check_bool("combiner", "causal", causal)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"combiner: scale must be a number or None, got {scale!r}")


def _example(s: dict, draw) -> dict:
    """Regime "strong" / "large_logits": q and k scaled (peaked softmaxes, logits ~1e2), as attention's."""
    scale = {"strong": 3.0, "large_logits": 10.0}.get(draw.regime, 1.0)
    return dict(
        q=draw("q") * scale,
        k=draw("k") * scale,
        v=draw("v"),
        segment=s.get("segment", 2),
        variant=s.get("variant", "fixed"),
        causal=s.get("causal", True),
        scale=None,
    )


SPEC = OpSpec(
    shapes={"q": "B T H D", "k": "B T H D", "v": "B T H E"},
    make=_example,
    sizes={"B": 2, "T": 5, "H": 2, "D": 4},
    defaults={"E": "D"},
    # segment None: ceil(sqrt(T)) at each benched length.
    bench=BenchGrid(cpu={"B": 2, "H": 4, "D": 64, "segment": None}, cuda={"H": 16, "D": 64, "segment": None}),
    same_dtype=("q", "k", "v"),
    nonempty=("T",),
    variants={
        "": {"variant": "fixed"},
        "combiner_axial": {"variant": "axial"},
        "combiner_bidirectional": {"variant": "fixed", "causal": False},
    },
    # O(T^1.5): T = 16,384 at s = 128 is 4M logits per head, well within the budget of a CPU test.
    extreme={"B": 1, "T": 16384, "H": 1, "D": 8, "segment": 128, "regime": "strong"},
    audit={
        "large_logits": {"B": 1, "T": 64, "H": 2, "D": 32, "segment": 8, "regime": "large_logits"},
        "axial_large_logits": {
            "B": 1,
            "T": 64,
            "H": 2,
            "D": 32,
            "segment": 8,
            "variant": "axial",
            "regime": "large_logits",
        },
    },
)

combiner = define_op(
    "combiner", __doc__, validate=_validate, spec=SPEC, auto_order={"cuda": ("torch",), "cpu": ("torch",)}
)
combiner.register(
    "reference", _reference.combiner, description="the implied T x T probability matrix, fp64 inside"
)
combiner.register(
    "torch", _torch.combiner, description="blocked einsums, O(T s + T^2 / s) (packed: per sequence)"
)

__all__ = ["combiner", "default_segment"]


# -- decoding ------------------------------------------------------------------------------------------------

STEP_DOC = """``ops.combiner_step``: causal Combiner decoding, one token per row.

    o_t, state = combiner_step(q_t, k_t, v_t, state, variant="fixed", scale=None, backend="auto")

q_t, k_t [B, H, D], v_t [B, H, E] -> o_t [B, H, E] in q_t's dtype, and the new state (a dict, see
:mod:`.step`: the current segment's queries/keys/values, one summary per finished segment, "pos" [B]; every row
at its own position; :func:`.step.init_state` builds the empty one; the given one is left unmodified). The
segment length is the state's (its "k" is [B, s, H, D]). o_t is row ``pos`` of causal ``ops.combiner`` over the
tokens so far. Backends: ``reference`` (each row alone, fp64 inside: the definition) and ``torch`` (every row
at once by masks; the default). One token has no time axis: ``cu_seqlens`` is refused.
"""


def _validate_step(q, k, v, state, variant="fixed", scale=None):
    fn = "combiner_step"
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(fn, name, x, 3)
    check_same_device(fn, q=q, k=k, v=v)
    if k.shape != q.shape:
        raise ValueError(f"{fn}: k must have the shape of q {tuple(q.shape)} [B, H, D], got {tuple(k.shape)}")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"{fn}: v must have shape [B, H, E] with [B, H] = {tuple(q.shape[:2])}, got {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{fn}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if variant not in VARIANTS:
        raise ValueError(f"{fn}: variant must be one of {VARIANTS}, got {variant!r}")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"{fn}: scale must be a number or None, got {scale!r}")
    _step.check_state(fn, state, q, v, variant)


def _step_example(s: dict, draw) -> dict:
    """One token after T tokens (segment 2 by default: finished segments and a partial one); the state drawn
    directly (any values are a valid state), zeros after the current segment's pos mod s tokens."""
    variant = s.get("variant", "fixed")
    b, t, h, d = (s[key] for key in ("B", "T", "H", "D"))
    e = draw.shape("v")[-1]
    seg = s.get("segment", 2)
    c, n = t % seg, t // seg
    per = " S" if variant == "axial" else ""
    sizes = {**s, "S": seg, "N": n, "E": e}

    def state_draw(shape, keep=None):
        x = draw_values(tuple(size_of(tok, sizes) for tok in shape.split()), "normal", "layer", draw.device)
        if keep is not None:
            x[:, keep:] = 0
        return x.to(draw.dtype)

    state = {
        "q": state_draw("B 1 H D" if variant == "fixed" else "B S H D", None if variant == "fixed" else c),
        "k": state_draw("B S H D", c),
        "v": state_draw("B S H E", c),
        "sk": state_draw(f"B N{per} H D"),
        "sv": state_draw(f"B N{per} H E"),
        "pos": _pt.full((b,), t, dtype=_pt.long, device=draw.device),
    }
    return dict(q=draw("q"), k=draw("k"), v=draw("v"), state=state, variant=variant, scale=None)


combiner_step = define_op(
    "combiner_step",
    STEP_DOC,
    validate=_validate_step,
    spec=SPEC.derive(
        shapes={"q": "B H D", "k": "B H D", "v": "B H E"},
        make=_step_example,
        bench=None,  # its state is a dict a bench cannot make at each shape; ops.combiner times the same maths
        nonempty=(),
        variants={"": {"variant": "fixed"}, "combiner_step_axial": {"variant": "axial"}},
        extreme=None,
        audit={},
        audit_exempt="the causal rows of ops.combiner's audited reference, held to it in tests/test_combiner.py",
        states=(1,),
        state_arg="state",
    ),
    auto_order={"cuda": ("torch",), "cpu": ("torch",)},
)
combiner_step.register("reference", _step.step_reference, description="each row alone, fp64 inside")
combiner_step.register("torch", _step.step_torch, description="every row at once, by masks")

__all__ += ["combiner_step"]
