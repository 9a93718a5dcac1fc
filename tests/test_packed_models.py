"""Packed documents in the models and the recipe (issue 27): a CausalLM on a packed row equals the LM on each
document alone (outputs, prefill-then-step, learned positions restarting per document, a user's mixer without
cu_seqlens); ``data.pack: true`` batches give exactly the per-document losses of the documents run alone and
never predict across a boundary; a classifier's logits do not change when padding is added (bidirectional
mixers, batch norm in training mode)."""

from __future__ import annotations

import pytest
import torch
from test_train import tiny_config

import seqzoo
from seqzoo.models import CausalLM, SequenceClassifier
from seqzoo.models.config import LMConfig
from seqzoo.ops._varlen import cu_seqlens_from_lengths
from seqzoo.train.batches import IGNORE_INDEX, LMData, document_boundaries, pack_rows
from seqzoo.train.config import ConfigError, load_config
from seqzoo.train.loop import train
from seqzoo.train.objectives import LMObjective

LENGTHS = [5, 1, 12]
EOT = 0


class NoPackingMixer(seqzoo.layers.base.Mixer):
    """A user's mixer that knows nothing of cu_seqlens: a causal running mean (the backbone runs it per document)."""

    mixer_name = "running_mean"

    def __init__(self, d_model):
        super().__init__(d_model)
        self.proj = torch.nn.Linear(d_model, d_model)

    def forward(self, x):
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return self.proj(x.cumsum(1) / counts)

    def prefill(self, x, state=None):
        y = self.forward(x)
        return y, {"sum": x.sum(1), "n": torch.full((x.shape[0],), float(x.shape[1]), dtype=x.dtype)}


def _lm(mixers, **kw):
    torch.manual_seed(0)
    return CausalLM(LMConfig(vocab_size=40, d_model=32, n_layers=len(mixers), mixer=mixers, **kw)).double()


@pytest.mark.parametrize("position_embeddings", [0, 32])
def test_packed_lm_equals_documents_alone(position_embeddings):
    mixers = ["short_conv", {"name": "attention", "n_heads": 2}, "gla", "rglru"]
    m = _lm(mixers, position_embeddings=position_embeddings)
    cu = cu_seqlens_from_lengths(LENGTHS)
    ids = torch.randint(1, 40, (1, sum(LENGTHS)))
    alone = torch.cat([m(part) for part in ids.split(LENGTHS, 1)], 1)
    torch.testing.assert_close(m(ids, cu_seqlens=cu), alone, rtol=0, atol=1e-10)
    # Prefill the packed prompts, then decode the three as a batch.
    logits, states = m.prefill(ids, cu_seqlens=cu)
    torch.testing.assert_close(logits, alone, rtol=0, atol=1e-10)
    own = [m.prefill(part)[1] for part in ids.split(LENGTHS, 1)]
    for _ in range(3):
        tok = torch.randint(1, 40, (len(LENGTHS),))
        out, states = m.step(tok, states)
        for n in range(len(LENGTHS)):
            want, own[n] = m.step(tok[n : n + 1], own[n])
            torch.testing.assert_close(out[n : n + 1], want, rtol=0, atol=1e-10)


def test_a_mixer_without_cu_seqlens_runs_per_document():
    m = _lm(["short_conv"])
    m.backbone.blocks[0].mixer = NoPackingMixer(32).double()
    cu = cu_seqlens_from_lengths(LENGTHS)
    ids = torch.randint(1, 40, (1, sum(LENGTHS)))
    alone = torch.cat([m(part) for part in ids.split(LENGTHS, 1)], 1)
    torch.testing.assert_close(m(ids, cu_seqlens=cu), alone, rtol=0, atol=1e-12)
    # Running it across the boundaries would differ: the check above can fail.
    assert (m(ids) - alone).abs().max() > 1e-3


def test_packed_lm_bad_cu_seqlens_names_it():
    m = _lm(["short_conv"])
    ids = torch.randint(1, 40, (1, 18))
    with pytest.raises(ValueError, match="cu_seqlens must end at T"):
        m(ids, cu_seqlens=cu_seqlens_from_lengths([5, 5]))
    with pytest.raises(ValueError, match="batch 1"):
        m(ids.expand(2, -1), cu_seqlens=cu_seqlens_from_lengths([18]))
    with pytest.raises(TypeError, match="cu_seqlens must be int32"):
        m.prefill(ids, cu_seqlens=cu_seqlens_from_lengths([18]).long())


# -- data.pack: the LM batch --------------------------------------------------------------------------------------


def _stream(lengths, generator):
    """Documents of the given lengths (ids 1..39) each followed by EOT."""
    parts = []
    for n in lengths:
        parts += [torch.randint(1, 40, (n,), generator=generator), torch.tensor([EOT])]
    return torch.cat(parts).to(torch.int32)


def test_pack_marks_documents_and_ignores_labels_across_them():
    x = torch.tensor([[5, 6, EOT, 7, EOT, 8]])
    y = torch.tensor([[6, EOT, 7, EOT, 8, 9]])
    labels, starts = document_boundaries(x, y, EOT)
    assert starts.tolist() == [[True, False, False, True, False, True]]
    assert labels.tolist() == [[6, EOT, IGNORE_INDEX, EOT, IGNORE_INDEX, 9]]
    ids, cu = pack_rows(torch.cat([x, x]), torch.cat([starts, starts]))
    assert ids.shape == (1, 12) and cu.tolist() == [0, 3, 5, 6, 9, 11, 12]


def test_packed_lm_batch_gives_each_documents_own_losses():
    g = torch.Generator().manual_seed(0)
    stream = _stream([int(n) for n in torch.randint(1, 30, (40,), generator=g)], g)
    data = LMData(stream, stream, seq_len=48, bytes_per_token=1.0, vocab_size=40, pack=True, eot_id=EOT)
    x, labels, starts = data.train_batch(seed=0, step=0, batch_size=4)
    assert bool(starts[:, 1:].any())  # the windows hold several documents
    m = _lm(["short_conv", {"name": "attention", "n_heads": 2}, "gla"])
    objective = LMObjective(batch_size=4, eval_batches=1)
    logits, targets = objective._logits(m, x, labels, _no_autocast, starts)
    packed = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    packed = packed.view(x.shape)
    for row in range(x.shape[0]):
        begins = starts[row].nonzero().reshape(-1).tolist() + [x.shape[1]]
        for s, e in zip(begins[:-1], begins[1:]):
            alone = m(x[row : row + 1, s:e])[0]
            want = torch.nn.functional.cross_entropy(
                alone, labels[row, s:e], ignore_index=IGNORE_INDEX, reduction="none"
            )
            torch.testing.assert_close(packed[row, s:e], want, rtol=0, atol=1e-10)
    # No label predicts a token of another document: every label at an end-of-text position is ignored.
    assert (labels[x == EOT] == IGNORE_INDEX).all()
    # The summed loss the loop trains on is the sum of the documents' own.
    total = objective.loss(m, (x, labels, starts), _no_autocast)
    torch.testing.assert_close(total, packed.sum().float(), rtol=1e-6, atol=0)  # the loop sums in fp32


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_recipe_trains_packed(tmp_path):
    cfg = tiny_config(
        tmp_path / "run", data={"pack": True}, train={"steps": 4, "eval_every": 2, "ckpt_every": 2}
    )
    summary = train(load_config(cfg))
    assert summary["val_loss"] == summary["val_loss"]  # finite, not NaN
    with pytest.raises(ConfigError, match="data.pack"):
        load_config(tiny_config(tmp_path / "t", data={"source": "task", "name": "mqar", "pack": True}))


# -- the classifier: padding never enters the backbone ------------------------------------------------------------


@pytest.mark.parametrize(
    "mixer,norm,block,pooling",
    [
        ("short_conv", "batch", "postnorm", "mean"),
        ("s4d", "batch", "postnorm", "mean"),
        ("gla", "layer", "prenorm", "last"),
        ("attention", "rms", "prenorm", "cls"),
    ],
)
def test_classifier_logits_do_not_depend_on_padding(mixer, norm, block, pooling):
    bidirectional = mixer != "short_conv"
    torch.manual_seed(0)
    m = SequenceClassifier(
        vocab_size=20,
        d_model=16,
        n_layers=2,
        mixer=mixer,
        n_classes=3,
        norm=norm,
        block=block,
        pooling=pooling,
        bidirectional=bidirectional,
    ).double()
    lengths = torch.tensor([5, 1, 9])
    x = torch.randint(1, 20, (3, 9))
    mask = torch.arange(9) < lengths[:, None]
    pad = torch.zeros(3, 7, dtype=x.dtype)
    x2, mask2 = torch.cat([x, pad], 1), torch.cat([mask, pad.bool()], 1)
    for mode in ("train", "eval"):  # batch norm's statistics too: over real tokens only
        getattr(m, mode)()
        torch.testing.assert_close(m(x, mask), m(x2, mask2), rtol=0, atol=1e-10)
    # In eval mode each row's logits are its own, run alone.
    alone = torch.cat([m(x[i : i + 1, : int(n)]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(m(x2, mask2), alone, rtol=0, atol=1e-10)


def test_classifier_mask_errors():
    m = SequenceClassifier(vocab_size=20, d_model=16, n_layers=1, mixer="short_conv", n_classes=2)
    x = torch.randint(1, 20, (2, 4))
    with pytest.raises(ValueError, match="row 1 has no real position"):
        m(x, torch.tensor([[True, True, False, False], [False] * 4]))
    with pytest.raises(ValueError, match="prefix"):
        m(x, torch.tensor([[True, False, True, False], [True] * 4]))


def test_packing_bench_writes_its_table(tmp_path, monkeypatch):
    """``seqzoo bench --packing`` runs every mode and records how the ops ran (what it measures is not asserted)."""
    from seqzoo.eval import bench

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the suite's threads alone
    out = tmp_path / "packing.json"
    args = bench.configure_parser(__import__("argparse").ArgumentParser()).parse_args(
        ["--packing", "short_conv", "--tokens", "96", "--repeats", "1", "--out", str(out)]
    )
    assert bench.main(args) == 0
    import json

    results = json.loads(out.read_text())
    assert {r["mode"] for r in results["rows"]} == {"padded", "bucketed", "packed", "row"}
    assert all(r["status"] == "ok" for r in results["rows"])
    packed = next(r for r in results["rows"] if r["mode"] == "packed")
    assert packed["ops"] == {"causal_conv1d": packed["ops"]["causal_conv1d"]} and packed["real_tokens"] == 96
    assert "| short_conv |" in out.with_suffix(".md").read_text()
