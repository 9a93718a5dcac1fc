"""Synthetic recall tasks (Zoology, Arora et al. 2023), generated deterministically from a seed.

Every generator returns ``(inputs, labels)`` [N, seq_len] int64 in next-token form: the model reads
``inputs`` and is scored only where ``labels != IGNORE_INDEX`` (-100).

**MQAR** (multi-query associative recall), exactly as Zoology defines it, for vocabulary V:
- keys are drawn without replacement from [1, V/2), values (with replacement across pairs is *not* allowed:
  also without replacement) from [V/2, V);
- the context is k1 v1 k2 v2 ... kN vN (2N tokens);
- the remaining L - 2N positions form (L - 2N) / 2 query slots; each key is queried exactly once, in a
  slot drawn without replacement with probability p(gap) ∝ alpha * gap^(alpha - 1) (a power law that puts
  most queries close to the context, alpha = 0.01 by default);
- the full sequence has L + 1 tokens (context, then the query region with the key at position 2*slot and
  0 elsewhere); inputs = seq[:-1], labels = seq[1:] restricted to the positions right after each query key,
  where the label is that key's value. Every other input position holds a random token from [0, V)
  (``random_non_queries=True``, Zoology's default), or 0 with ``random_non_queries=False``. The filler matters:
  with zeros, 93% of the query region is one token, which makes the task easier than Zoology's.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _rows_without_replacement(g: torch.Generator, n: int, low: int, high: int, k: int) -> torch.Tensor:
    """[n, k] distinct integers from [low, high) per row (random permutations, truncated)."""
    return torch.rand(n, high - low, generator=g).argsort(dim=1)[:, :k] + low


def mqar(
    num_examples: int,
    seq_len: int = 64,
    num_kv_pairs: int = 4,
    vocab_size: int = 8192,
    alpha: float = 0.01,
    random_non_queries: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall: (inputs, labels) [num_examples, seq_len]; random filler by default."""
    _check(
        isinstance(seq_len, int) and seq_len > 0 and seq_len % 2 == 0,
        f"seq_len must be a positive even int, got {seq_len!r}",
    )
    _check(num_kv_pairs >= 1, f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    _check(
        4 * num_kv_pairs <= seq_len, f"4 * num_kv_pairs ({4 * num_kv_pairs}) must be <= seq_len ({seq_len})"
    )
    _check(vocab_size > seq_len, f"vocab_size ({vocab_size}) must be larger than seq_len ({seq_len})")
    _check(
        num_kv_pairs < vocab_size // 2, f"num_kv_pairs ({num_kv_pairs}) must be < vocab_size // 2 - 1 keys"
    )
    _check(alpha > 0, f"alpha must be > 0, got {alpha}")
    _check(num_examples >= 1, f"num_examples must be >= 1, got {num_examples}")
    g = torch.Generator().manual_seed(seed)
    n, half = num_examples, vocab_size // 2
    context = 2 * num_kv_pairs
    keys = _rows_without_replacement(g, n, 1, half, num_kv_pairs)
    values = _rows_without_replacement(g, n, half, vocab_size, num_kv_pairs)

    # Query slots: gaps drawn without replacement with p ∝ alpha * gap^(alpha - 1), gap = 1..space.
    space = (seq_len - context) // 2
    p = alpha * torch.arange(1, space + 1, dtype=torch.float64) ** (alpha - 1)
    gaps = torch.multinomial((p / p.sum()).expand(n, space), num_kv_pairs, replacement=False, generator=g)

    seq = torch.zeros(n, seq_len + 1, dtype=torch.long)
    seq[:, 0:context:2] = keys
    seq[:, 1:context:2] = values
    query_pos = context + 2 * gaps  # where each key is asked again
    seq.scatter_(1, query_pos, keys)
    labels_full = torch.full((n, seq_len + 1), IGNORE_INDEX, dtype=torch.long)
    labels_full.scatter_(1, query_pos + 1, values)
    inputs, labels = seq[:, :-1].clone(), labels_full[:, 1:].clone()
    if random_non_queries:
        filler = torch.randint(0, vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, labels


def single_query_ar(
    num_examples: int, seq_len: int = 64, num_kv_pairs: int = 8, vocab_size: int = 8192, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative recall with one query: k1 v1 ... kN vN, padding, then one key at the last position."""
    _check(
        2 * num_kv_pairs + 1 <= seq_len,
        f"2 * num_kv_pairs + 1 ({2 * num_kv_pairs + 1}) must be <= seq_len ({seq_len})",
    )
    _check(vocab_size > seq_len, f"vocab_size ({vocab_size}) must be larger than seq_len ({seq_len})")
    g = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    keys = _rows_without_replacement(g, num_examples, 1, half, num_kv_pairs)
    values = _rows_without_replacement(g, num_examples, half, vocab_size, num_kv_pairs)
    inputs = torch.zeros(num_examples, seq_len, dtype=torch.long)
    inputs[:, 0 : 2 * num_kv_pairs : 2] = keys
    inputs[:, 1 : 2 * num_kv_pairs : 2] = values
    which = torch.randint(0, num_kv_pairs, (num_examples, 1), generator=g)
    inputs[:, -1:] = keys.gather(1, which)
    labels = torch.full_like(inputs, IGNORE_INDEX)
    labels[:, -1:] = values.gather(1, which)
    return inputs, labels


def induction_heads(
    num_examples: int, seq_len: int = 64, vocab_size: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A special token (0) appears once mid-sequence and again at the end; predict the token that followed
    its first occurrence."""
    _check(seq_len >= 4, f"seq_len must be >= 4, got {seq_len}")
    _check(vocab_size >= 3, f"vocab_size must be >= 3, got {vocab_size}")
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, vocab_size, (num_examples, seq_len), generator=g)
    pos = torch.randint(0, seq_len - 2, (num_examples, 1), generator=g)
    inputs.scatter_(1, pos, 0)
    inputs[:, -1] = 0
    labels = torch.full_like(inputs, IGNORE_INDEX)
    labels[:, -1:] = inputs.gather(1, pos + 1)
    return inputs, labels


def selective_copying(
    num_examples: int, seq_len: int = 64, num_tokens: int = 8, vocab_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_tokens`` content tokens scattered among blanks (0); after a separator (1) the model writes them
    in order. Content tokens are drawn from [2, vocab_size)."""
    region = seq_len - num_tokens
    _check(
        num_tokens >= 1 and region > num_tokens,
        f"seq_len ({seq_len}) must exceed 2 * num_tokens ({2 * num_tokens})",
    )
    _check(vocab_size >= 3, f"vocab_size must be >= 3, got {vocab_size}")
    g = torch.Generator().manual_seed(seed)
    n = num_examples
    tokens = torch.randint(2, vocab_size, (n, num_tokens), generator=g)
    slots = _rows_without_replacement(g, n, 0, region - 1, num_tokens).sort(dim=1).values
    seq = torch.zeros(n, seq_len + 1, dtype=torch.long)
    seq.scatter_(1, slots, tokens)
    seq[:, region - 1] = 1  # separator
    seq[:, region : region + num_tokens] = tokens
    labels_full = torch.full_like(seq, IGNORE_INDEX)
    labels_full[:, region : region + num_tokens] = tokens
    return seq[:, :seq_len], labels_full[:, 1:]


def noisy_recall(
    num_examples: int,
    seq_len: int = 64,
    num_kv_pairs: int = 4,
    vocab_size: int = 8192,
    noise_vocab: int = 16,
    alpha: float = 0.01,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR whose non-query positions hold noise tokens drawn from a separate band at the top of the
    vocabulary (``noise_vocab`` ids), so the model must ignore distractors between queries."""
    _check(noise_vocab >= 1, f"noise_vocab must be >= 1, got {noise_vocab}")
    inputs, labels = mqar(
        num_examples, seq_len, num_kv_pairs, vocab_size, alpha, random_non_queries=False, seed=seed
    )
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randint(vocab_size, vocab_size + noise_vocab, inputs.shape, generator=g)
    return torch.where(inputs == 0, noise, inputs), labels
