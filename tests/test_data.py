"""The built-in corpus: present on every machine, deterministic, split without overlap."""

import torch

from seqzoo.train.data import builtin_documents, pack, random_windows, split_documents, unigram_entropy_bits
from seqzoo.train.tokenizers import ByteTokenizer


def test_builtin_corpus_is_deterministic_and_split():
    train, val = split_documents(builtin_documents(200_000), 0.05)
    train2, val2 = split_documents(builtin_documents(200_000), 0.05)
    assert train == train2 and val == val2
    assert sum(map(len, train)) > 50_000 and val
    stream = pack(train, ByteTokenizer())
    assert (stream == 0).sum() == len(train)
    assert 3.0 < unigram_entropy_bits(stream) < 6.0


def test_random_windows_shift_labels():
    stream = torch.arange(100, dtype=torch.uint8)
    x, y = random_windows(stream, 3, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 10)
    assert torch.equal(x[:, 1:], y[:, :-1])
