"""Training data behind one interface.

Sources of documents (``data.source``):
- ``builtin``: the Python standard library's own source files, found through sysconfig: every machine has
  them and nothing is downloaded (the default, so the demo runs anywhere);
- ``files``: local text / jsonl / parquet files or globs, read through ``datasets``;
- ``hub``: a Hugging Face hub dataset by name, streamed through ``datasets`` (a local dataset folder takes the
  same code path, which is how it is tested on a machine without the hub);
- ``task``: a synthetic or LRA task from ``seqzoo.eval.tasks`` (already tokenized, with labels);
- ``audio_synthetic`` / ``audio_wav``: 8-bit audio windows (tones, or a folder of .wav files; train/audio.py).

Text is split into train and validation per document by a hash of its key (deterministic on every machine),
tokenized, and packed into one stream per split with the tokenizer's end-of-text id between documents.
With ``data.pack: true`` a batch also marks where each document starts, the model runs every document alone
(``cu_seqlens``) and no label predicts across a boundary (``LMData``).
Batches are a pure function of (seed, step): resuming at step s reads exactly what an uninterrupted run
reads, and under torchrun every rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import glob
import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch

from .batches import (  # noqa: F401  (re-exported: the containers' old home)
    IGNORE_INDEX,
    ClassificationData,
    LMData,
    TaskData,
    random_windows,
    rank_slice,
    step_generator,
    unigram_entropy_bits,
)

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
    if section.source == "audio_synthetic":  # 8-bit samples are the tokens: no tokenizer
        from .audio import synthetic_audio_data

        return synthetic_audio_data(section, seed), None
    if section.source == "audio_wav":
        from .audio import wav_audio_data

        return wav_audio_data(section), None
    train_texts, val_texts = split_documents(documents(section), section.val_fraction)
    tokenizer = tokenizer_factory(train_texts)
    train, val = pack(train_texts, tokenizer), pack(val_texts, tokenizer)
    val_bytes = sum(len(t.encode("utf-8")) + 1 for t in val_texts)  # + 1: the separator
    return LMData(
        train,
        val,
        section.seq_len,
        val_bytes / max(1, val.numel()),
        tokenizer.vocab_size,
        pack=section.pack,
        eot_id=tokenizer.eos_id,
    ), tokenizer
