"""Training data behind one interface.

Sources of documents (``data.source``):
- ``builtin``: the Python standard library's own source files, found through sysconfig: every machine has
  them and nothing is downloaded (the default, so the demo runs anywhere);
- ``files``: local text / jsonl / parquet files or globs, read through ``datasets``;
- ``hub``: a Hugging Face hub dataset by name, streamed through ``datasets`` (a local dataset folder takes the
  same code path, which is how it is tested on a machine without the hub);
- ``task``: a synthetic or LRA task from ``seqzoo.eval.tasks`` (already tokenized, with labels).

Text is split into train and validation per document by a hash of its key (deterministic on every machine),
tokenized, and packed into one stream per split with the tokenizer's end-of-text id between documents.
Batches are a pure function of (seed, step): resuming at step s reads exactly what an uninterrupted run
reads, and under torchrun every rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import glob
import hashlib
import math
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE_INDEX = -100
DOC_SEPARATOR = 0  # byte 0 never occurs in source text (the byte tokenizer's end-of-text)


# -- document sources --------------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    files = [p for p in files if p.is_file()]
    if not files:
        raise FileNotFoundError(
            f"no Python sources under {root}: the builtin corpus needs the standard library"
        )
    return files


def builtin_documents(max_bytes: int) -> Iterator[tuple[str, str]]:
    """(key, text) for standard-library source files, sorted by path, up to ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        yield str(path.relative_to(root)), text
        total += len(text)
        if total >= max_bytes:
            return


def _limited(texts: Iterator[str], max_documents: int | None, max_bytes: int) -> Iterator[tuple[str, str]]:
    total = 0
    for i, text in enumerate(texts):
        if max_documents is not None and i >= max_documents:
            return
        yield f"doc-{i}", text
        total += len(text)
        if total >= max_bytes:
            return


def file_documents(section) -> Iterator[tuple[str, str]]:
    """Local files or globs through ``datasets`` (text, json/jsonl or parquet)."""
    from datasets import load_dataset

    files = sorted(
        {f for pattern in section.paths for f in (glob.glob(pattern, recursive=True) or [pattern])}
    )
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"data.paths: no such file(s): {missing}")
    fmt = section.format
    if fmt == "auto":
        suffixes = {Path(f).suffix.lower() for f in files}
        kinds = {".txt": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
        found = {kinds.get(s, "text") for s in suffixes}
        if len(found) > 1:
            raise ValueError(f"data.paths mixes formats {sorted(found)}: set data.format")
        fmt = found.pop()
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    ds = load_dataset(fmt, data_files=files, split="train", streaming=True, **kwargs)
    field = "text" if fmt == "text" else section.text_field
    yield from _limited((row[field] for row in ds), section.max_documents, section.max_bytes)


def hub_documents(section) -> Iterator[tuple[str, str]]:
    """A hub dataset (or a local dataset folder), streamed: nothing is downloaded beyond what is read."""
    from datasets import load_dataset

    ds = load_dataset(section.name, section.subset, split=section.split, streaming=True)
    field = section.text_field

    def texts():
        for row in ds:
            if field not in row:
                raise KeyError(f"data.text_field: the dataset has no field {field!r} (fields: {sorted(row)})")
            yield row[field]

    yield from _limited(texts(), section.max_documents, section.max_bytes)


def documents(section) -> Iterator[tuple[str, str]]:
    if section.source == "builtin":
        return builtin_documents(section.max_bytes)
    if section.source == "files":
        return file_documents(section)
    if section.source == "hub":
        return hub_documents(section)
    raise ValueError(f"data.source {section.source!r} has no documents")


def is_validation(key: str, fraction: float) -> bool:
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def split_documents(docs, fraction: float) -> tuple[list[str], list[str]]:
    train, val = [], []
    for key, text in docs:
        (val if is_validation(key, fraction) else train).append(text)
    if not train or not val:
        # A tiny corpus can hash every document to one side: fall back to the last document for validation.
        everything = train + val
        if len(everything) < 2:
            raise ValueError(
                "the data source gave fewer than 2 documents: nothing to split into train/validation"
            )
        train, val = everything[:-1], everything[-1:]
    return train, val


def pack(texts: list[str], tokenizer) -> torch.Tensor:
    """Tokens of every document, each followed by the end-of-text id, as one int32 stream."""
    if hasattr(tokenizer, "encode_batch"):
        encoded = tokenizer.encode_batch(texts)
    else:
        encoded = [tokenizer.encode(t) for t in texts]
    ids = []
    for doc in encoded:
        ids.extend(doc)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.int32)


# -- batches -------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63))


def rank_slice(batch: int, rank: int, world: int) -> slice:
    per = batch // world
    return slice(rank * per, (rank + 1) * per)


@dataclass
class LMData:
    """Packed train/validation token streams and how many bytes of text each token stands for."""

    train: torch.Tensor
    val: torch.Tensor
    seq_len: int
    bytes_per_token: float
    vocab_size: int
    task = False

    def __post_init__(self):
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
        return x[part], y[part]

    def val_batches(self, n_batches: int, batch_size: int):
        """Fixed, non-overlapping windows from the start of the validation stream."""
        n_windows = (self.val.numel() - 1) // self.seq_len
        total = min(n_windows, n_batches * batch_size)
        for lo in range(0, total, batch_size):
            starts = torch.arange(lo, min(lo + batch_size, total)) * self.seq_len
            idx = starts[:, None] + torch.arange(self.seq_len + 1)
            chunk = self.val[idx].long()
            yield chunk[:, :-1], chunk[:, 1:]

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
    task = True

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
    task = True
    classify = True

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


def build_data(section, tokenizer_factory, seed: int = 0):
    """The data a config's ``data`` section describes, and its tokenizer.

    ``tokenizer_factory(train_texts)`` returns the tokenizer (a BPE trains on the train texts only).
    """
    if section.source == "task":
        from seqzoo.eval.tasks import get_task

        return get_task(section.name)(**section.task_args, seed=seed), None
    if section.source == "lra":
        from seqzoo.eval.lra import load_task

        d = load_task(section.name, section.data_dir, section.generate, **section.task_args)
        return ClassificationData(d.train, d.val, d.test, d.vocab_size, d.n_classes, d.pairs), None
    train_texts, val_texts = split_documents(documents(section), section.val_fraction)
    tokenizer = tokenizer_factory(train_texts)
    train, val = pack(train_texts, tokenizer), pack(val_texts, tokenizer)
    val_bytes = sum(len(t.encode("utf-8")) + 1 for t in val_texts)  # + 1: the separator
    return LMData(
        train, val, section.seq_len, val_bytes / max(1, val.numel()), tokenizer.vocab_size
    ), tokenizer


# -- windows ---------------------------------------------------------------------------------------------


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """(inputs, labels) [B, T] int64: random windows of seq_len + 1 tokens, labels shifted by one."""
    if stream.numel() <= seq_len + 1:
        raise ValueError(f"the stream ({stream.numel()} tokens) is shorter than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = stream[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
