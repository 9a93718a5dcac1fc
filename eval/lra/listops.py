"""ListOps (Nangia & Bowman 2018) as Long Range Arena uses it (Tay et al. 2021): generator, tokenizer, evaluator.

An example is a nested prefix expression over the digits 0-9 with four operators, and its label is the
expression's value (10 classes):

    [MAX 2 9 [MIN 4 7 ] 0 ]          -> 9
    [SM 3 [MED 1 8 4 ] 5 ]           -> (3 + 4 + 5) % 10 = 2

``MAX``/``MIN`` as named, ``MED`` the median (for an even count, the mean of the two middle values rounded
down, as LRA's ``int(np.median(...))``), ``SM`` the sum modulo 10.

**The release format.** LRA's generator (``lra_benchmarks/data/listops.py``) builds each operator node as a
left-nested binary tree, ``((([MAX 2) 9) ...) ])``, and writes it with a parenthesis around every pair, so the
``Source`` strings of ``listops-1000/basic_{train,val,test}.tsv`` (a header line ``Source\\tTarget``, then one
``source\\tlabel`` row per example) read::

    ( ( ( [MAX 2 ) 9 ) ] )                                   # [MAX 2 9 ]

:func:`generate_listops` writes exactly that format. Its tree follows LRA's: the root is level 1; a node below
``max_depth`` is an operator with probability 1/4 (LRA's ``VALUE_P``), with 2..``max_args`` arguments and an
operator drawn uniformly from the four, otherwise a digit; level ``max_depth`` is always a digit (so operators
nest at most ``max_depth - 1`` deep). LRA's length of an example counts the operators, the digits and the
closing brackets, not the parentheses; examples are drawn until that length is in range and duplicates are
dropped (LRA keeps a ``set``). LRA's range is strict (``500 < length < 2000``); ours is inclusive
(``min_length <= length <= max_length``), so pass 501 and 1999 to match it to the token.

**Tokens** (:data:`LISTOPS_VOCAB`, fixed, 18 ids): ``0`` pad, then ``[MAX [MIN [MED [SM ] ( )`` and the digits
``0``..``9``. :func:`tokenize_listops` splits on whitespace and by default drops the parentheses: they carry no
information (the brackets already fix the tree) and would triple the length, and LRA's own tokenizer drops
them too (``tfds``' ``Tokenizer`` keeps alphanumeric runs only, which also loses ``[`` and ``]``; S4 and its
successors keep ``]`` and drop only the parentheses, as we do). With the default the token count is LRA's
length above, so ``max_len=2000`` truncates nothing of the release. ``keep_parens=True`` keeps them.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np

PAD_ID = 0
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
END = "]"
LISTOPS_VOCAB: dict[str, int] = {
    "<pad>": PAD_ID,
    **{op: 1 + i for i, op in enumerate(OPERATORS)},
    END: 5,
    "(": 6,
    ")": 7,
    **{str(d): 8 + d for d in range(10)},
}
LISTOPS_VOCAB_SIZE = len(LISTOPS_VOCAB)  # 18, pad included
LISTOPS_NUM_CLASSES = 10
RELEASE_FILES = ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")

# LRA's generator: a node below the maximum depth is an operator with this probability.
_OPERATOR_P = 0.25
_DIGITS = tuple(str(d) for d in range(10))

# Tokenising by string methods (C speed: the release's train file is ~100k rows of several thousand tokens):
# each known multi-character token becomes one letter, then every remaining whitespace token must be a
# single known character, which bytes.translate maps to its id.
_LETTER_OF = {"[MAX": "A", "[MIN": "I", "[MED": "E", "[SM": "S"}
_ID_OF_CHAR = {"A": 1, "I": 2, "E": 3, "S": 4, "]": 5, "(": 6, ")": 7, **{str(d): 8 + d for d in range(10)}}
_TRANSLATE = bytes(_ID_OF_CHAR.get(chr(c), 255) for c in range(256))
_DROP_PARENS = str.maketrans("", "", "()")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_int(name: str, value, low: int) -> None:
    _check(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low,
        f"{name} must be an integer >= {low}, got {value!r}",
    )


# -- tokenizer -------------------------------------------------------------------------------------------


def _unknown_token(source: str, keep_parens: bool) -> str:
    allowed = set(LISTOPS_VOCAB) - {"<pad>"}
    for tok in source.split():
        if tok not in allowed:
            return tok
    return "?"  # not reached when called on a failing source


def encode_listops(source: str, *, keep_parens: bool = False) -> np.ndarray:
    """``source`` as a uint8 array of token ids (see :func:`tokenize_listops`); ValueError on a token outside
    the vocabulary, naming it."""
    s = source if keep_parens else source.translate(_DROP_PARENS)
    for token, letter in _LETTER_OF.items():
        s = s.replace(token, letter)
    tokens = s.split()
    joined = "".join(tokens)
    ids = None
    if len(joined) == len(tokens) and joined.isascii():
        ids = np.frombuffer(joined.encode("ascii").translate(_TRANSLATE), dtype=np.uint8)
        if (ids == 255).any():
            ids = None
    if ids is None:
        bad = _unknown_token(source, keep_parens)
        raise ValueError(
            f"unknown ListOps token {bad!r} (the vocabulary: {' '.join(t for t in LISTOPS_VOCAB if t != '<pad>')})"
        )
    return ids


def tokenize_listops(source: str, *, keep_parens: bool = False) -> list[int]:
    """Token ids of a ListOps source string (ids from :data:`LISTOPS_VOCAB`; parentheses dropped unless
    ``keep_parens``). Raises ValueError naming an unknown token."""
    return encode_listops(source, keep_parens=keep_parens).tolist()


# -- evaluator -------------------------------------------------------------------------------------------


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    # [MED: LRA's int(np.median(args)): the middle value, or the mean of the two middle ones rounded down
    # (values are non-negative, so int() truncation is floor division).
    s = sorted(args)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


def evaluate_listops(source: str) -> int:
    """The value of a ListOps expression, parsed from its tokens (parentheses are checked for balance and
    otherwise ignored). Independent of the generator: the tests check every generated label with it."""
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    depth_parens = 0
    for tok in source.split():
        if tok == "(":
            depth_parens += 1
        elif tok == ")":
            depth_parens -= 1
            _check(depth_parens >= 0, f"unbalanced ')' in ListOps expression {source[:80]!r}")
        elif tok in OPERATORS:
            _check(result is None, f"ListOps expression has more than one top-level term: {source[:80]!r}")
            stack.append((tok, []))
        elif tok == END:
            _check(bool(stack), f"']' without an operator in ListOps expression {source[:80]!r}")
            op, args = stack.pop()
            _check(bool(args), f"operator {op} without arguments in ListOps expression {source[:80]!r}")
            value = _apply(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif len(tok) == 1 and tok.isdigit():
            if stack:
                stack[-1][1].append(int(tok))
            else:
                _check(
                    result is None, f"ListOps expression has more than one top-level term: {source[:80]!r}"
                )
                result = int(tok)
        else:
            raise ValueError(f"unknown ListOps token {tok!r} in {source[:80]!r}")
    _check(not stack, f"unclosed operator in ListOps expression {source[:80]!r}")
    _check(depth_parens == 0, f"unbalanced '(' in ListOps expression {source[:80]!r}")
    _check(result is not None, f"empty ListOps expression {source[:80]!r}")
    return result


# -- generator -------------------------------------------------------------------------------------------


def _max_reachable_length(max_depth: int, max_args: int) -> int:
    """LRA length of the largest tree the generator can draw (every node below max_depth an operator with
    max_args arguments)."""
    length = 1  # a digit at level max_depth
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


_END_CODE = 14  # a draw's codes: 0-9 digits, 10-13 the operators, 14 the closing bracket


def _draw(rand, max_depth: int, max_args: int, max_length: int) -> list[int] | None:
    """One tree in prefix order as codes, drawn as LRA's ``generate_tree`` draws it; None as soon as its
    length passes ``max_length`` (a rejected draw: no need to finish it). Iterative, without strings:
    most draws are rejected, so only the accepted ones are rendered (:func:`_render`)."""
    out: list[int] = []
    push = out.append
    open_ops: list[int] = []  # per open operator: its arguments still to draw
    length = 0
    n_arg_choices = max_args - 1
    op_levels = max_depth - 1  # operators may open while fewer than this are open
    while True:
        if len(open_ops) < op_levels and rand() < _OPERATOR_P:
            # int(rand() * k) is uniform on 0..k-1, and several times faster than randint
            open_ops.append(2 + int(rand() * n_arg_choices))
            push(10 + int(rand() * 4))
            length += 2  # the operator and its closing bracket
            if length > max_length:
                return None
            continue
        push(int(rand() * 10))
        length += 1
        if length > max_length:
            return None
        # A term is complete: close every operator whose last argument it was.
        while open_ops:
            open_ops[-1] -= 1
            if open_ops[-1]:
                break
            open_ops.pop()
            push(_END_CODE)
        else:
            return out


def _render(codes: list[int]) -> tuple[str, int]:
    """(release-format string, value) of a drawn tree: LRA's binary tree ((op a0) a1) ... ]) printed with a
    parenthesis around every pair."""
    frames: list[tuple[str, list[str], list[int]]] = []
    for code in codes:
        if code < 10:
            term = (_DIGITS[code], code)
        elif code < _END_CODE:
            frames.append((OPERATORS[code - 10], [], []))
            continue
        else:
            op, texts, values = frames.pop()
            text = "( " * (len(texts) + 1) + op + " " + " ) ".join(texts) + " ) ] )"
            term = (text, _apply(op, values))
        if not frames:
            return term
        frames[-1][1].append(term[0])
        frames[-1][2].append(term[1])
    raise AssertionError("unreachable: a draw ends with its root")


def _generate(
    num_examples: int,
    *,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    seed,
    seen: set[bytes] | None = None,
    progress: bool = False,
) -> list[tuple[str, int]]:
    _check_int("num_examples", num_examples, 0)
    _check_int("min_length", min_length, 1)
    _check_int("max_length", max_length, 1)
    _check_int("max_depth", max_depth, 1)
    _check_int("max_args", max_args, 2)
    _check(min_length <= max_length, f"min_length ({min_length}) must be <= max_length ({max_length})")
    reachable = _max_reachable_length(max_depth, max_args)
    _check(
        min_length <= reachable,
        f"min_length={min_length} is impossible with max_depth={max_depth} and max_args={max_args}: the "
        f"longest expression they allow has {reachable} tokens",
    )
    rand = random.Random(seed).random
    # Distinct trees (LRA keeps a set). ``seen``: the trees drawn so far (a release's earlier splits); the
    # new ones are added to it.
    if seen is None:
        seen = set()
    out: list[tuple[str, int]] = []
    # Rejection sampling has no bound of its own: give up, with a clear message, when this many draws in a
    # row bring nothing new (a range almost no tree lands in, or fewer distinct trees than asked for).
    stall_limit = 200_000
    misses = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_examples, desc="listops", unit="ex")
    try:
        while len(out) < num_examples:
            if misses >= stall_limit:
                raise ValueError(
                    f"could draw only {len(out)} of {num_examples} distinct ListOps examples with "
                    f"min_length={min_length}, max_length={max_length}, max_depth={max_depth}, "
                    f"max_args={max_args}: the last {stall_limit} draws brought nothing new; widen the length "
                    f"range or raise max_depth / max_args"
                )
            misses += 1
            codes = _draw(rand, max_depth, max_args, max_length)
            if codes is None or len(codes) < min_length:  # LRA's length: ops, digits and ], as the codes
                continue
            key = bytes(codes)
            if key in seen:
                continue
            misses = 0
            seen.add(key)
            text, value = _render(codes)
            out.append((text, value))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def generate_listops(
    num_examples: int,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> list[tuple[str, int]]:
    """``num_examples`` distinct ListOps examples ``(source, label)`` in the LRA release format.

    Deterministic from ``seed`` (its own ``random.Random``). ``min_length``/``max_length`` bound LRA's length
    (operators, digits and ``]``; parentheses not counted: the length of ``tokenize_listops(source)``),
    inclusive. Invalid arguments, or a range the tree cannot reach, raise ValueError naming the argument."""
    return _generate(
        num_examples,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
        seed=seed,
        progress=progress,
    )


def _split_seed(seed: int, split: int) -> int:
    # Independent, well-mixed streams per split (seed 0's val is not seed 1's train).
    return int(np.random.SeedSequence([int(seed), 0x4C495354, split]).generate_state(1, np.uint64)[0])


def _write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)
    os.replace(tmp, path)  # a reader never sees half a file


def write_listops_release(
    folder: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    progress: bool | None = None,
    **generator_kwargs,
) -> Path:
    """Write ``basic_train.tsv``, ``basic_val.tsv`` and ``basic_test.tsv`` (header ``Source\\tTarget``) into
    ``folder``: the layout of LRA's ``listops-1000`` release folder, which ``loaders.load_listops`` reads.

    Each split is drawn from its own seed (derived from ``seed``), and no example appears in two splits.
    ``generator_kwargs`` go to :func:`generate_listops` (``min_length``, ``max_length``, ``max_depth``,
    ``max_args``). ``progress``: a tqdm bar (default: when there are 10,000 examples or more). Returns the
    folder. LRA's release: 96,000 / 2,000 / 2,000 with the generator's defaults."""
    unknown = set(generator_kwargs) - {"min_length", "max_length", "max_depth", "max_args"}
    _check(not unknown, f"unknown ListOps generator arguments {sorted(unknown)}")
    for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        _check_int(name, n, 0)
    kwargs = {"min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10, **generator_kwargs}
    if progress is None:
        progress = num_train + num_val + num_test >= 10_000
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()  # shared: no example in two splits
    for i, (name, n) in enumerate(zip(RELEASE_FILES, (num_train, num_val, num_test))):
        rows = _generate(n, seed=_split_seed(seed, i), seen=seen, progress=progress, **kwargs)
        _write_tsv(folder / name, rows)
    return folder
