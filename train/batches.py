"""The data a run draws batches from: packed LM streams, tokenized tasks, classification sets.

These containers hold tensors that are already tokenized; where the tensors come from (text sources and
tokenizers in :mod:`seqzoo.train.data`, synthetic tasks in :mod:`seqzoo.eval.tasks`, Long Range Arena in
:mod:`seqzoo.eval.lra`) lives elsewhere. This module imports neither, so the task generators build their
data here without importing the recipe (no import circle between ``train`` and ``eval``).

Batches are a pure function of (seed, step): resuming at step s reads exactly what an uninterrupted run
reads, and under torchrun every rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


# -- batches -------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))


def rank_slice(batch: int, rank: int, world: int) -> slice:
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


@dataclass
class LMData:
    """Packed train/validation token streams and how many bytes of text each token stands for.

    ``pack`` (``data.pack: true``): every batch also says where its documents start, so that the model runs each
    document as if alone (``cu_seqlens``), and no label predicts across a boundary. Batches are then
    ``(inputs, labels, starts)``: ``starts`` [B, T] bool is True at each row's first position and after every
    end-of-text token (``eot_id``); the label at an end-of-text position (the next document's first token) is
    IGNORE_INDEX. Without ``pack`` batches are ``(inputs, labels)`` and documents run into each other as one text.
    """

    train: torch.Tensor
    val: torch.Tensor
    seq_len: int
    bytes_per_token: float
    vocab_size: int
    pack: bool = False
    eot_id: int | None = None

    def __post_init__(self):
        if self.pack and self.eot_id is None:
            raise ValueError("LMData: pack=True needs the tokenizer's end-of-text id (eot_id)")
        for name, stream in (("train", self.train), ("validation", self.val)):
            if stream.numel() < self.seq_len + 2:
                raise ValueError(
                    f"the {name} split has {stream.numel()} tokens, fewer than data.seq_len + 2 = {self.seq_len + 2}:"
                    " lower data.seq_len or give more data"
                )

    def train_batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1):
        """This rank's share of the global batch for ``step``: (inputs, labels) [B / world, T] int64."""
        x, y = random_windows(self.train, batch_size, self.seq_len, step_generator(seed, step))
        part = rank_slice(batch_size, rank, world)
        return self._batch(x[part], y[part])

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        if not self.pack:
            return x, y
        return (x, *document_boundaries(x, y, self.eot_id))

    def val_batches(self, n_batches: int, batch_size: int):
        """Fixed, non-overlapping windows from the start of the validation stream."""
        n_windows = (self.val.numel() - 1) // self.seq_len
        total = min(n_windows, n_batches * batch_size)
        for lo in range(0, total, batch_size):
            starts = torch.arange(lo, min(lo + batch_size, total)) * self.seq_len
            idx = starts[:, None] + torch.arange(self.seq_len + 1)
            chunk = self.val[idx].long()
            yield self._batch(chunk[:, :-1], chunk[:, 1:])

    def unigram_entropy_bits(self) -> float:
        """Entropy of the validation token histogram in bits per token."""
        return unigram_entropy_bits(self.val, self.vocab_size)


@dataclass
class TaskData:
    """A task already tokenized into fixed-length examples with labels (IGNORE_INDEX where unscored)."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    val_inputs: torch.Tensor
    val_labels: torch.Tensor
    vocab_size: int
    bytes_per_token: float = math.nan

    @property
    def seq_len(self) -> int:
        return self.train_inputs.shape[1]

    def train_batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1):
        g = step_generator(seed, step)
        idx = torch.randint(0, self.train_inputs.shape[0], (batch_size,), generator=g)[
            rank_slice(batch_size, rank, world)
        ]
        return self.train_inputs[idx].long(), self.train_labels[idx].long()

    def val_batches(self, n_batches: int, batch_size: int):
        n = min(self.val_inputs.shape[0], n_batches * batch_size)
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            yield self.val_inputs[lo:hi].long(), self.val_labels[lo:hi].long()

    def unigram_entropy_bits(self) -> float:
        return math.nan


@dataclass
class ClassificationData:
    """A classification task (Long Range Arena): each example is a padded token sequence and one class.

    Batches are ``(inputs, mask, labels)``: inputs [B, T] int64 (pairs: [B, 2, T]), mask [B, T] bool (True on
    real tokens), labels [B] int64. Each batch is cut to its longest sequence: right padding past every
    example's end carries nothing, and a ListOps batch of 600-token expressions then costs 600 positions,
    not 2000. Training walks a fresh permutation of the training set every epoch, fixed by (seed, epoch), so
    a resumed run draws the same batches as an uninterrupted one.
    """

    train: Any  # seqzoo.eval.lra.loaders.Split (inputs, lengths, labels)
    val: Any
    test: Any
    vocab_size: int
    n_classes: int
    pairs: bool = False

    @property
    def seq_len(self) -> int:
        return self.train.inputs.shape[-1]

    @property
    def bytes_per_token(self) -> float:
        return math.nan

    @staticmethod
    def _batch(split, idx: torch.Tensor):
        lengths = split.lengths[idx]
        t = max(1, int(lengths.max()))
        inputs = split.inputs[idx][..., :t].long()
        mask = torch.arange(t) < lengths[..., None]
        return inputs, mask, split.labels[idx].long()

    def train_batch(self, seed: int, step: int, batch_size: int, rank: int = 0, world: int = 1):
        n = self.train.labels.shape[0]
        per_epoch = max(1, n // batch_size)
        epoch, i = divmod(step, per_epoch)
        idx = self._epoch_order(seed, epoch, n, batch_size)[i * batch_size : (i + 1) * batch_size]
        return self._batch(self.train, idx[rank_slice(batch_size, rank, world)])

    def _epoch_order(self, seed: int, epoch: int, n: int, batch_size: int) -> torch.Tensor:
        """The epoch's permutation of the training set, drawn once per epoch (not once per step)."""
        key = (seed, epoch, batch_size)
        if getattr(self, "_order_key", None) != key:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
            if n < batch_size:  # fewer examples than a batch: draw with replacement
                order = order[torch.randint(0, n, (batch_size,), generator=g)]
            self._order_key, self._order = key, order
        return self._order

    def batches(self, split, batch_size: int, limit: int | None = None):
        n = split.labels.shape[0] if limit is None else min(split.labels.shape[0], limit)
        for lo in range(0, n, batch_size):
            yield self._batch(split, torch.arange(lo, min(lo + batch_size, n)))

    def val_batches(self, n_batches: int, batch_size: int):
        return self.batches(self.val, batch_size, n_batches * batch_size)

    def unigram_entropy_bits(self) -> float:
        return math.nan


def unigram_entropy_bits(stream: torch.Tensor, vocab_size: int = 256) -> float:
    """Entropy of a token histogram, in bits per token: what a model that ignores context can reach."""
    counts = torch.bincount(stream.long().flatten(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


# -- windows ---------------------------------------------------------------------------------------------


def document_boundaries(x: torch.Tensor, y: torch.Tensor, eot_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, starts) of windows x [B, T] of documents that each end in ``eot_id``: ``starts`` True at position 0
    and after every end-of-text token; the labels at end-of-text positions (a next document's first token)
    become IGNORE_INDEX, so no prediction crosses a boundary."""
    eot = x == eot_id
    starts = torch.zeros_like(eot)
    starts[:, 0] = True
    starts[:, 1:] = eot[:, :-1]
    return y.masked_fill(eot, IGNORE_INDEX), starts


def pack_rows(x: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows x [B, T, ...] with document ``starts`` [B, T] as one packed row [1, B T, ...] and its cu_seqlens
    (int32 [N + 1]): every row's first position starts a document."""
    flat = starts.clone()
    flat[:, 0] = True
    begin = flat.reshape(-1).nonzero().reshape(-1)
    total = torch.tensor([flat.numel()], device=begin.device)
    return x.reshape(1, -1, *x.shape[2:]), torch.cat([begin, total]).to(torch.int32)


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """(inputs, labels) [B, T] int64: random windows of seq_len + 1 tokens, labels shifted by one."""
    if stream.numel() <= seq_len + 1:
        raise ValueError(f"the stream ({stream.numel()} tokens) is shorter than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = stream[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
