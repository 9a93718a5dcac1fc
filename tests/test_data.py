"""The built-in corpus: present on every machine, deterministic, split without overlap."""

import torch

from seqzoo.train.data import DOC_SEPARATOR, builtin_corpus, random_windows, unigram_entropy_bits


def test_builtin_corpus_is_deterministic_and_split():
    train, val = builtin_corpus(max_bytes=200_000)
    train2, val2 = builtin_corpus(max_bytes=200_000)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert train.numel() > 100_000 and val.numel() > 1000
    assert (train == DOC_SEPARATOR).sum() > 1
    assert 3.0 < unigram_entropy_bits(train) < 6.0


def test_random_windows_shift_labels():
    stream = torch.arange(100, dtype=torch.uint8)
    x, y = random_windows(stream, 3, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 10)
    assert torch.equal(x[:, 1:], y[:, :-1])
