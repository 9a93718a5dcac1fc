"""Packed documents laid out on whole chunks, for the chunked torch backends (``ops.gla``, ``ops.delta_rule``),
and run a cache-sized group of documents at a time (:func:`run_in_groups`).

Each document of a packed row [1, T, ...] is zero-padded to a whole number of chunks of C positions inside one
padded row [1, P, ...]: every chunk then holds one document only, so the chunked algorithm runs unchanged, over
all documents at once, as long as the state it carries from chunk to chunk is restarted (from the document's
initial state) at each chunk that begins a document, and read off at each document's last chunk. The padding is
zeros (k = v = 0, beta = 0, log decay g = 0), which leaves a state as it is, and comes after the document's tokens
inside its last chunk, where no real query reaches it (queries see earlier positions only); its outputs are
dropped. The cost is the padding: under C - 1 positions per document.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ChunkPacking:
    chunk: int
    n_chunks: int
    # The chunk each document begins at, in document order (the chunk after a document's last one is the next's).
    first_chunk: list[int]
    # [P]: the packed position each padded position takes (T: padding).
    source: torch.Tensor
    # [T]: the padded position of each packed token (to read outputs back).
    token_at: torch.Tensor

    def __post_init__(self):
        # {chunk index: document} for the chunks that begin a document.
        self.restarts = {c: n for n, c in enumerate(self.first_chunk)}

    def pad(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """x [1, T, ...] -> [1, P, ...] with each document on whole chunks, zeros between (autograd-tracked)."""
        if x is None:
            return None
        # Tokens copied into zeros (one pass; the backward is one gather of the gradient).
        padded = x.new_zeros(1, self.source.numel(), *x.shape[2:])
        return padded.index_copy_(1, self.token_at, x)

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """y [1, P, ...] -> [1, T, ...]: the real positions' values, in packed order."""
        return y.index_select(1, self.token_at)


def choose_chunk(lengths: list[int], costs: dict[int, float]) -> int:
    """The chunk length C of ``costs`` (C -> the relative cost of a position at that chunk length) that makes the
    padded row cheapest: sum over documents of ceil(L / C) C, times costs[C] (ties: the first listed)."""
    return min(costs, key=lambda c: sum(-(-n // c) * c for n in lengths) * costs[c])


def pack_chunks(bounds: list[int], chunk: int, device) -> ChunkPacking:
    """The padded layout of the documents of ``bounds`` (cu_seqlens as ints) on chunks of ``chunk``."""
    total = bounds[-1]
    first_chunk, source, token_at, n_chunks = [], [], [], 0
    for s, e in zip(bounds[:-1], bounds[1:]):
        n = -(-(e - s) // chunk)
        first_chunk.append(n_chunks)
        token_at.append(torch.arange(n_chunks * chunk, n_chunks * chunk + e - s))
        src = torch.full((n * chunk,), total, dtype=torch.long)
        src[: e - s] = torch.arange(s, e)
        source.append(src)
        n_chunks += n
    return ChunkPacking(
        chunk, n_chunks, first_chunk, torch.cat(source).to(device), torch.cat(token_at).to(device)
    )


def document_groups(bounds: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive documents [lo, hi) of ``bounds`` grouped up to ``max_tokens`` tokens (a longer one alone)."""
    groups, lo = [], 0
    for i in range(1, len(bounds) - 1):
        if bounds[i + 1] - bounds[lo] > max_tokens:
            groups.append((lo, i))
            lo = i
    return groups + [(lo, len(bounds) - 1)]


def run_in_groups(fn, groups, bounds, cu_seqlens, packed: dict, state_name: str, state, **rest):
    """``fn(**packed cut to the group, state_name=its rows, **rest, cu_seqlens=the group's)`` for each group of
    documents, returning (outputs joined along time, final states row under row or None): a packed row run one
    cache-sized group at a time (a pass over a row whose tensors outgrow the caches costs more per token)."""
    # Cut by split, not slicing: the backward of a slice per group would build a full-size zero gradient each
    # (quadratic in the groups); that of split is one cat.
    tokens = [bounds[hi] - bounds[lo] for lo, hi in groups]
    pieces = {
        name: (None,) * len(groups) if x is None else x.split(tokens, dim=1) for name, x in packed.items()
    }
    states = (None,) * len(groups) if state is None else state.split([hi - lo for lo, hi in groups])
    outs, finals = [], []
    for i, (lo, hi) in enumerate(groups):
        cut = {name: parts[i] for name, parts in pieces.items()}
        # One document: the op itself, unpacked (a separate run); several: one pass over them.
        cu = None if hi - lo == 1 else cu_seqlens[lo : hi + 1] - bounds[lo]
        o, final = fn(**cut, **rest, **{state_name: states[i]}, cu_seqlens=cu)
        outs.append(o)
        finals.append(final)
    return torch.cat(outs, dim=1), (None if finals[0] is None else torch.cat(finals))
