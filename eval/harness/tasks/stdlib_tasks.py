"""Documents of the offline ``seqzoo_stdlib*`` harness tasks, built from the built-in corpus.

The recipe's built-in corpus is the Python standard library's sources; it holds out 5% of the files
(by a hash of their path: ``seqzoo.train.data.is_validation``) for validation. These tasks read only those
held-out files, so a model trained on the built-in corpus never saw them, and they need no network:

- ``seqzoo_stdlib`` (multiple choice, 4 options, chance 25%): the lines before a source line (up to
  ``CONTEXT_CHARS``) and the first half of the line; the options are the line's real second half and the
  second halves of three other lines of the same file of similar length. Scored with acc and acc_norm
  (per-byte normalised).
- ``seqzoo_stdlib_gen`` (generate until a newline): the same context; the target is the rest of the line,
  scored by exact match.
- ``seqzoo_stdlib_ppl`` (rolling log-likelihood): the first ``PPL_CHARS`` characters of each held-out file;
  bits per byte, byte and word perplexity.

Every item is a deterministic function of the Python version's standard library and ``SEED``.
The functions are the tasks' ``custom_dataset`` (lm-eval passes the task's metadata as keywords).
"""

from __future__ import annotations

import functools
import random
import sysconfig
from pathlib import Path

SEED = 1234
VAL_FRACTION = 0.05  # the recipe's default data.val_fraction: the files it never trains on
CONTEXT_CHARS = 160  # fits, with the line, in the 256-token context of the tiny byte-level configs
MIN_LINE, MAX_LINE = 16, 72  # characters of a candidate line, indentation excluded
N_ITEMS = 500
PPL_CHARS = 2000
N_CHOICES = 4


@functools.lru_cache(maxsize=1)
def held_out_files() -> tuple[tuple[str, str], ...]:
    """(key, text) of the standard-library files the built-in corpus holds out for validation.

    Cached: `seqzoo eval` loads each task once to check it and the harness loads it again."""
    from seqzoo.train.data import is_validation, stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in stdlib_files():
        key = str(path.relative_to(root))
        if is_validation(key, VAL_FRACTION):
            out.append((key, path.read_text(encoding="utf-8", errors="replace").replace("\x00", "")))
    if not out:
        raise FileNotFoundError(f"seqzoo_stdlib: no held-out standard-library sources under {root}")
    return tuple(out)


def _candidate(line: str) -> bool:
    body = line.strip()
    return (
        MIN_LINE <= len(body) <= MAX_LINE
        and not body.startswith(("#", '"""', "'''"))
        and body.isascii()
        and any(c.isalpha() for c in body)
    )


@functools.lru_cache(maxsize=4)
def _items(n_items: int) -> tuple[tuple[str, str, str, list[str]], ...]:
    """(file, context, line, distractors) for up to n_items lines of the held-out files (cached)."""
    return tuple(_generate_items(n_items))


def _generate_items(n_items: int):
    rng = random.Random(SEED)
    files = held_out_files()
    pool = [
        (f, i)
        for f, (_, text) in enumerate(files)
        for i, line in enumerate(text.split("\n"))
        if i >= 3 and _candidate(line)
    ]
    rng.shuffle(pool)
    lines_of: dict[int, list[str]] = {}
    bodies_of: dict[int, list[str]] = {}
    seen = set()
    for f, i in pool:
        if f not in lines_of:
            lines_of[f] = files[f][1].split("\n")
            bodies_of[f] = sorted({ln.strip() for ln in lines_of[f] if _candidate(ln)})
        lines, line = lines_of[f], lines_of[f][i]
        body = line.strip()
        if body in seen:  # a line that recurs (``return self``) would be a duplicate question
            continue
        similar = [b for b in bodies_of[f] if b != body and 0.5 <= len(b) / len(body) <= 2.0]
        if len(similar) < N_CHOICES - 1:
            continue
        seen.add(body)
        before = "\n".join(lines[:i]) + "\n"
        cut = before.rfind("\n", 0, max(0, len(before) - CONTEXT_CHARS))
        indent = line[: len(line) - len(line.lstrip())]
        yield files[f][0], before[cut + 1 :] + indent, body, rng.sample(similar, N_CHOICES - 1)
        if len(seen) >= n_items:
            return


def _dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def multiple_choice(n_items: int = N_ITEMS, **metadata):
    """Rows {file, context, choices, label}: the context ends halfway through a line; which option is its rest?

    The distractors are the second halves of other lines of the same file of similar length."""
    rng = random.Random(SEED + 1)
    rows = []
    for key, context, body, distractors in _items(n_items):
        half = len(body) // 2
        real = body[half:]
        choices = [real, *(d[len(d) // 2 :] for d in distractors)]
        if len(set(choices)) < N_CHOICES:  # two lines that end alike: no single right answer
            continue
        rng.shuffle(choices)
        rows.append(
            {"file": key, "context": context + body[:half], "choices": choices, "label": choices.index(real)}
        )
    return _dataset(rows)


def completion(n_items: int = N_ITEMS, **metadata):
    """Rows {file, context, target}: the context ends inside a line; the target is the line's rest."""
    rows = []
    for key, context, body, _ in _items(n_items):
        half = len(body) // 2
        rows.append({"file": key, "context": context + body[:half], "target": body[half:]})
    return _dataset(rows)


def documents(**metadata):
    """Rows {file, text}: the start of every held-out file, for rolling perplexity."""
    rows = []
    for key, text in held_out_files():
        head = text[:PPL_CHARS]
        if len(head.strip()) >= 200:
            rows.append({"file": key, "text": head})
    return _dataset(rows)
