"""Tokenizers behind one small interface: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``eos_id`` (the document separator used when packing), ``save(dir)``.

- ``bytes``: UTF-8 bytes, vocabulary 256, byte 0 separates documents (it never occurs in text; NUL
  characters are dropped from the input). One token is one byte, so bits per token = bits per byte.
- ``bpe``: a byte-level BPE from the ``tokenizers`` package, trained on the run's corpus and saved with
  the run as ``tokenizer.json``.
- ``path``: a ``tokenizer.json`` loaded from a local file or folder; a ``tokenizer_config.json`` beside it
  (a transformers checkpoint's, ``seqzoo convert`` copies it) names the end-of-text token when it is not
  ``<|endoftext|>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"


class ByteTokenizer:
    kind = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.replace("\x00", "").encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "tokenizer.txt").write_text("bytes\n")


class HFTokenizer:
    """A ``tokenizers`` tokenizer (byte-level BPE) with an end-of-text token."""

    kind = "bpe"

    def __init__(self, tok, eos_token: str = EOS_TOKEN):
        self.tok = tok
        eos = tok.token_to_id(eos_token)
        if eos is None:
            raise ValueError(f"the tokenizer has no {eos_token!r} token to separate documents")
        self.eos_id = eos
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> HFTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(Tokenizer.from_file(str(path)), _eos_token(path.parent))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        self.tok.save(str(Path(directory) / TOKENIZER_FILE))


def _eos_token(directory: Path) -> str:
    """The eos token a transformers ``tokenizer_config.json`` beside the tokenizer names, else ``EOS_TOKEN``."""
    import json

    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return EOS_TOKEN
    eos = json.loads(config.read_text()).get("eos_token")
    if isinstance(eos, dict):  # {"content": "</s>", ...} in older files
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else EOS_TOKEN


def build_tokenizer(section, texts: Iterable[str] | None = None):
    """The tokenizer a config's ``data.tokenizer`` asks for; ``texts`` trains a BPE."""
    if section.kind == "bytes":
        return ByteTokenizer()
    if section.kind == "path":
        return HFTokenizer.load(section.path)
    if texts is None:
        raise ValueError("training a BPE tokenizer needs the corpus texts")
    return HFTokenizer.train(texts, section.vocab_size)


def load_run_tokenizer(run_dir: str | Path):
    """The tokenizer saved with a run."""
    run_dir = Path(run_dir)
    if (run_dir / TOKENIZER_FILE).is_file():
        return HFTokenizer.load(run_dir / TOKENIZER_FILE)
    if (run_dir / "tokenizer.txt").is_file():
        return ByteTokenizer()
    raise FileNotFoundError(f"no tokenizer saved in {run_dir}")
