"""Training data. ``builtin_corpus``: a corpus every machine already has and that needs no download: the
Python standard library's own source files, found through sysconfig.

Documents (files) are sorted by path and split deterministically into train and validation by a hash
of the path, so every machine with the same Python gets the same split.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

DOC_SEPARATOR = 0  # byte 0 never occurs in source text


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no Python sources under {root}: the builtin corpus needs the standard library")
    return [p for p in files if p.is_file()]


def _is_validation(path: str, every: int) -> bool:
    return int(hashlib.sha1(path.encode()).hexdigest(), 16) % every == 0


def builtin_corpus(max_bytes: int = 4_000_000, val_every: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) byte streams as uint8 tensors, documents separated by byte 0.

    About one file in ``val_every`` goes to validation; each split stops at its share of ``max_bytes``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    budgets = {"train": max_bytes * (val_every - 1) // val_every, "val": max_bytes // val_every}
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    for path in stdlib_files():
        split = "val" if _is_validation(str(path.relative_to(root)), val_every) else "train"
        if sizes[split] >= budgets[split]:
            if all(sizes[s] >= budgets[s] for s in sizes):
                break
            continue
        data = path.read_bytes().replace(b"\x00", b"") + bytes([DOC_SEPARATOR])
        parts[split].append(data)
        sizes[split] += len(data)
    return tuple(torch.frombuffer(bytearray(b"".join(parts[s])), dtype=torch.uint8) for s in ("train", "val"))


def unigram_entropy_bits(stream: torch.Tensor, vocab_size: int = 256) -> float:
    """Entropy of the byte histogram, bits per byte: what a model that ignores context can reach."""
    counts = torch.bincount(stream.long(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """(inputs, labels) [B, T] int64: random windows of seq_len + 1 bytes, labels shifted by one."""
    if stream.numel() <= seq_len + 1:
        raise ValueError(f"the stream ({stream.numel()} tokens) is shorter than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = stream[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
