"""An op's spec: the facts about an op that every generic consumer needs, stated once beside its ``define_op``.

    gla = define_op("gla", DOC, validate=_validate, spec=OpSpec(
        shapes={"q": "B T H K", "k": "B T H K", "v": "B T H V", "g": "B T H K", "initial_state": "B H K V"},
        make=_example,                       # (sizes, draw) -> every argument by keyword, valid
        sizes={"B": 2, "T": 5, "H": 2, "K": 4, "V": 3, "decay": "vector"},
        bench=BenchGrid(cpu={"B": 1, "H": 4, "K": 64, "V": 64}), ...))

The consumers read it instead of tables of their own:

- the benches (``seqzoo bench``): one bench per op and variant, its inputs the example at the sizes of its
  :class:`BenchGrid` (``eval/benches.py``);
- the bad-input tests: the valid call each bad case changes one argument of, which tensors fix a size for the
  others (``shape_references``), which must share a dtype, which sizes may not be 0 (``tests/test_bad_input_ops.py``);
- the extreme-input tests: the op at long T with hard but valid values (``extreme``), its windows compared with the
  reference from the state the op carried (``tests/test_extreme_inputs.py``);
- the fp64 audit of the reference (``audit``, ``tests/test_references_fp64.py``);
- the Triton compile check: each Triton backend on the example at the shapes and dtypes the check lists
  (``ops/_compile_check.py``).

A shape is a string of size letters, one per dimension ("B T H K"); a letter with an offset ("W-1") is a size
derived from another. ``sizes`` maps letters to ints and may carry variant keys the maker reads ("decay",
"regime", ...). The regime key says which values to draw: "layer" (the default: as a layer makes them), "strong"
(the hardest valid ones: log decays down to -20, some exactly 0) or "weak" (decays just below 1, the same at
every step: where fp32 rounding compounds with T); an op's maker may know regimes of its own (attention's
"large_logits").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

# The length the extreme-input tests run an op at, unless its spec's ``extreme`` affords less (attention: O(T^2)).
LONG_T = 65_536
_TOKEN = re.compile(r"^([A-Za-z]+)([+-]\d+)?$")


def size_of(token: str, sizes: dict, defaults: dict | None = None) -> int:
    """The size a shape token stands for: ``"K"`` -> sizes["K"], ``"W-1"`` -> sizes["W"] - 1, ``"2"`` -> 2; a
    letter missing from ``sizes`` takes the size of the letter ``defaults`` names (attention's S: T)."""
    if token.isdigit():
        return int(token)
    m = _TOKEN.match(token)
    if m is None:
        raise ValueError(f"bad shape token {token!r}: a size letter, optionally with an offset such as W-1")
    letter = m.group(1)
    while letter not in sizes and defaults and letter in defaults:
        letter = defaults[letter]
    return sizes[letter] + int(m.group(2) or 0)


def draw_values(shape: tuple[int, ...], kind: str, regime: str, device) -> torch.Tensor:
    """fp32 values of one ``kind`` as the callers of an op make them (see :class:`Draw`)."""
    if kind == "normal":
        return torch.randn(shape, device=device)
    if kind == "uniform":  # (0, 1): write strengths, sigmoid features, decays
        return torch.rand(shape, device=device)
    if kind == "negative":  # (-1, 0]: the real parts of stable poles
        return -torch.rand(shape, device=device)
    if kind == "unit":  # L2-normalised over the last dimension, as the layers normalise keys
        return F.normalize(torch.randn(shape, device=device), dim=-1)
    if kind == "log_decay":
        if regime == "strong":
            # From none (0) to strong (-20): over 65,536 steps the sums reach -1e6.
            g = -20 * torch.rand(shape, device=device) ** 3
            g.view(-1)[::7] = 0.0  # some channels never forget
            return g
        if regime == "weak":
            return torch.full(shape, -1e-4, device=device)  # a decay just below 1, the same at every step
        # GLA's gate: logsigmoid of a projection over its normaliser 16 (slow forgetting).
        return F.logsigmoid(torch.randn(shape, device=device)) / 16
    raise ValueError(f"unknown value kind {kind!r}")


@dataclass
class Draw:
    """What an op's ``make`` draws its tensors with: ``draw("q")`` is a tensor of q's declared shape at the
    example's sizes, in its dtype, on its device. ``kind`` picks the values (:func:`draw_values`: "normal",
    "uniform", "negative", "unit", "log_decay"); ``dtype="fp32"`` keeps a state or parameter in fp32 beside
    bf16 inputs; ``shape`` replaces the declared one (a variant: gla's per-head g "B T H")."""

    shapes: dict[str, str]
    sizes: dict
    defaults: dict
    dtype: torch.dtype
    device: torch.device

    @property
    def regime(self) -> str:
        return self.sizes.get("regime", "layer")

    def shape(self, name: str, shape: str | None = None) -> tuple[int, ...]:
        return tuple(size_of(tok, self.sizes, self.defaults) for tok in (shape or self.shapes[name]).split())

    def __call__(self, name: str, kind: str = "normal", dtype=None, shape: str | None = None) -> torch.Tensor:
        x = draw_values(self.shape(name, shape), kind, self.regime, self.device)
        return x.to(torch.float32 if dtype == "fp32" else (dtype or self.dtype))


@dataclass(frozen=True)
class BenchGrid:
    """The sizes ``seqzoo bench`` times an op at: ``cpu`` with T over ``t``; ``--quick``: ``quick`` (default: cpu
    with B = 1) with T over ``quick_t``; on a GPU ``cuda`` (default: cpu) with T over ``cuda_t`` and
    B = max(1, tokens // T), a fixed number of tokens per batch so the time per token shows the scaling."""

    cpu: dict
    t: tuple[int, ...] = (512, 1024, 2048, 4096)
    quick: dict | None = None
    quick_t: tuple[int, ...] = (256, 1024)
    cuda: dict | None = None
    cuda_t: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    tokens: int = 16384
    # GPU shapes beyond the grid (selective_scan's larger N).
    cuda_extra: tuple[dict, ...] = ()

    def keys(self) -> set[str]:
        """Every size or option some grid sets (B, T and the op's own, such as combiner's segment)."""
        extra = {k for e in self.cuda_extra for k in e}
        return {"B", "T", *self.cpu, *(self.quick or {}), *(self.cuda or {}), *extra}

    def grids(self, variant: dict) -> tuple[list[dict], list[dict], list[dict]]:
        """(cpu, quick, cuda) lists of sizes for one variant."""
        quick = self.quick if self.quick is not None else {**self.cpu, "B": 1}
        cuda = self.cuda if self.cuda is not None else self.cpu

        def shape(b, t, sizes):  # B and T first, as the tables print them
            return {"B": b, "T": t, **{k: v for k, v in sizes.items() if k != "B"}, **variant}

        return (
            [shape(self.cpu.get("B", 1), t, self.cpu) for t in self.t],
            [shape(quick.get("B", 1), t, quick) for t in self.quick_t],
            [shape(max(1, self.tokens // t), t, cuda) for t in self.cuda_t]
            + [{**extra, **variant} for extra in self.cuda_extra],
        )


@dataclass(frozen=True)
class OpSpec:
    """Everything the generic consumers need to know about one op (module docstring)."""

    # Every tensor argument -> its shape letters, in the order the shape references are taken: a letter's first
    # tensor fixes that size for the others.
    shapes: dict[str, str]
    # make(sizes, draw) -> every argument by keyword (optional ones given, so each can be made bad): a valid call.
    make: Callable[[dict, Draw], dict[str, Any]]
    # Small sizes the tests start from (and the variant keys' defaults).
    sizes: dict
    # Size letters that default to another's size when not given (attention's key length S: T).
    defaults: dict = field(default_factory=dict)
    # The sizes ``seqzoo bench`` times it at (each variant).
    bench: BenchGrid | None = None
    # Tensors that must share one dtype (the first is the one the others are compared with), and the dtypes that
    # may not be mixed in (the others may differ: states and parameters in fp32 beside bf16 inputs).
    same_dtype: tuple[str, ...] = ()
    foreign_dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float16, torch.bfloat16)
    # Size letters that may not be 0: a 0 there is refused naming the letter's first tensor.
    nonempty: tuple[str, ...] = ()
    # Overrides the derived shape references (see shape_references) where an op checks more.
    references: dict | None = None
    # Positions of the outputs that are states (fp32; complex64 with a complex A).
    states: tuple[int, ...] = ()
    # The argument a run continues from and the flag that returns the state ("" when the op has none).
    state_arg: str = ""
    returns_state_flag: str = ""
    # Variants of the example (label -> sizes overrides; "" is the op's own name): each is benched under its
    # label and run long on its own.
    variants: dict[str, dict] = field(default_factory=lambda: {"": {}})
    # The long, hard-but-valid case (sizes; T defaults to LONG_T); None: the op has no length to stretch.
    extreme: dict | None = None
    # The fp64 audit (label suffix -> sizes): fp32 inputs through the reference give its fp64 answer. Empty with
    # audit_exempt saying why (a reference in fp32 by design, one audited through another op).
    audit: dict[str, dict] = field(default_factory=lambda: {"": {"T": 256, "regime": "weak"}})
    audit_exempt: str = ""
    # The tensors cu_seqlens cuts along time (None: those with T at dimension 1; () for an op without a time axis,
    # which takes no cu_seqlens): attention's k and v have their own letter S.
    packed_args: tuple[str, ...] | None = None
    # The op whose Triton kernels this op's Triton backends run (a step op, flow-attention on gla's): the compile
    # check compiles them there.
    kernels_of: str | None = None

    def example(self, dtype: torch.dtype = torch.float32, device="cpu", **sizes) -> dict[str, Any]:
        """Every argument of a valid call at ``self.sizes`` updated by ``sizes``."""
        merged = {**self.sizes, **sizes}
        return self.make(merged, Draw(self.shapes, merged, self.defaults, dtype, torch.device(device)))

    def shape_references(self) -> dict[str, set[int] | None]:
        """Tensor -> the dimensions whose size it fixes for the others (None: all of them). Changing such a
        dimension is reported as a partner's mismatch, or is a valid call: the bad-shape cases leave them."""
        if self.references is not None:
            return dict(self.references)
        seen: set[str] = set()
        out: dict[str, set[int] | None] = {}
        for name, shape in self.shapes.items():
            tokens = shape.split()
            own = {i for i, tok in enumerate(tokens) if tok.isalpha() and tok not in seen}
            seen |= {tok for tok in tokens if tok.isalpha()}
            if own:
                out[name] = None if len(own) == len(tokens) else own
        return out

    def time_args(self) -> tuple[str, ...]:
        """The tensors with a time axis (T at dimension 1): what a window of positions slices."""
        return tuple(n for n, s in self.shapes.items() if s.split()[1:2] == ["T"])

    def packing_args(self) -> tuple[str, ...]:
        """The tensors a packed call (``cu_seqlens``) cuts into sequences along dimension 1."""
        return self.time_args() if self.packed_args is None else tuple(self.packed_args)

    def first_with(self, letter: str) -> str:
        """The first tensor that has size ``letter``."""
        return next(n for n, s in self.shapes.items() if letter in s.split())

    def labels(self, op_name: str) -> dict[str, dict]:
        """``{label: sizes}`` of the variants ("" stands for ``op_name``)."""
        return {k or op_name: v for k, v in self.variants.items()}

    def derive(self, **changes) -> OpSpec:
        return replace(self, **changes)


def tensors(args: dict) -> dict[str, torch.Tensor]:
    """The tensor arguments of a call (what a bench times the gradients of)."""
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor)}


def options(args: dict) -> dict[str, Any]:
    """The other arguments of a call (flags, sizes, None for a tensor left out)."""
    return {k: v for k, v in args.items() if not isinstance(v, torch.Tensor)}
