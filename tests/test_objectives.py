"""The training objectives (train/objectives.py): each loss, validation metric and summary number against
the same quantity computed another way here (full logits and log-softmax written out, accuracies counted by
hand), and the objective a config picks."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from seqzoo import CausalLM, LMConfig
from seqzoo.eval.lra.loaders import Split
from seqzoo.models.classifier import SequenceClassifier
from seqzoo.train.batches import IGNORE_INDEX, ClassificationData, LMData, TaskData
from seqzoo.train.config import load_config
from seqzoo.train.objectives import ClassifierObjective, LMObjective, TaskObjective, objective_for

NO_AUTOCAST = contextlib.nullcontext
V = 11


def lm():
    torch.manual_seed(0)
    return CausalLM(LMConfig(vocab_size=V, d_model=16, n_layers=1, mixer="short_conv"))


def summed_nll(logits, targets):
    """-sum log p(target) over positions whose target is not IGNORE_INDEX: logits [N, V], targets [N]; in
    fp64 (the objectives take fp32 logits)."""
    keep = targets != IGNORE_INDEX
    logits = logits.detach().double()
    logp = logits[keep] - logits[keep].exp().sum(-1, keepdim=True).log()
    return -logp.gather(-1, targets[keep, None]).sum()


def task_data(n_val=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (10 + n_val, 9), generator=g)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, 5:] = x[:, :4]  # scored at the last 4 positions only
    return TaskData(x[:10], y[:10], x[10:], y[10:], vocab_size=V)


# -- the objective a config picks ------------------------------------------------------------------------


def _config(**sections):
    raw = {"name": "t", "model": {"d_model": 16, "n_layers": 1, "mixer": "short_conv"}, **sections}
    return load_config(raw)


def test_objective_for_follows_the_config():
    lra = {"source": "lra", "name": "listops"}
    for config, kind in [
        (_config(), LMObjective),
        (_config(data={"source": "task", "name": "mqar"}), TaskObjective),
        (_config(model={"kind": "classifier", "d_model": 16, "mixer": "s4d"}, data=lra), ClassifierObjective),
    ]:
        objective = objective_for(config)
        assert type(objective) is kind
        assert (objective.batch_size, objective.eval_batches) == (
            config.train.batch_size,
            config.train.eval_batches,
        )


def test_check_data_names_the_argument():
    with pytest.raises(TypeError, match="data: LMObjective trains on LMData, got TaskData"):
        LMObjective(4, 1).check_data(task_data())
    TaskObjective(4, 1).check_data(task_data())  # the right container passes


# -- language model and task --------------------------------------------------------------------------


def test_lm_loss_and_count_are_the_summed_next_token_nll():
    model = lm()
    x = torch.randint(0, V, (3, 8))
    y = torch.randint(0, V, (3, 8))
    objective = LMObjective(3, 1)
    expected = summed_nll(model(x).flatten(0, 1), y.flatten())
    torch.testing.assert_close(
        objective.loss(model, (x, y), NO_AUTOCAST).double(), expected, rtol=1e-5, atol=1e-6
    )
    assert int(objective.count(y)) == 24


def test_task_loss_scores_only_the_labelled_positions():
    model = lm()
    data = task_data()
    x, y = data.train_inputs[:4], data.train_labels[:4]
    objective = TaskObjective(4, 1)
    expected = summed_nll(model(x).flatten(0, 1), y.flatten())  # full logits; ignored positions dropped
    torch.testing.assert_close(
        objective.loss(model, (x, y), NO_AUTOCAST).double(), expected, rtol=1e-5, atol=1e-6
    )
    assert int(objective.count(y)) == 16
    assert int(objective.count(torch.full_like(y, IGNORE_INDEX))) == 1  # never a division by zero


def test_task_evaluate_counts_loss_and_accuracy_by_hand():
    model = lm()
    data = task_data(n_val=6)
    metrics = TaskObjective(batch_size=4, eval_batches=2).evaluate(model, data, "cpu", NO_AUTOCAST)
    with torch.no_grad():
        logits = model(data.val_inputs).flatten(0, 1)
    y = data.val_labels.flatten()
    keep = y != IGNORE_INDEX
    loss = summed_nll(logits, y).item() / keep.sum().item()
    acc = (logits[keep].argmax(-1) == y[keep]).double().mean().item()
    assert set(metrics) == {"val_loss", "val_ppl", "val_acc"}
    assert metrics["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val_ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["val_acc"] == pytest.approx(acc, abs=1e-12)
    assert model.training  # evaluation leaves the model in training mode


def test_lm_evaluate_adds_bits_per_byte_and_summary_the_unigram_entropy():
    model = lm()
    g = torch.Generator().manual_seed(2)
    data = LMData(
        train=torch.randint(0, V, (200,), generator=g),
        val=torch.randint(0, V, (50,), generator=g),
        seq_len=8,
        bytes_per_token=1.5,
        vocab_size=V,
    )
    objective = LMObjective(batch_size=2, eval_batches=2)
    metrics = objective.evaluate(model, data, "cpu", NO_AUTOCAST)
    # The first 4 windows of 8 tokens (2 batches of 2), labels shifted by one.
    idx = torch.arange(4)[:, None] * 8 + torch.arange(9)
    windows = data.val[idx]
    with torch.no_grad():
        nll = summed_nll(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten()).item() / 32
    assert metrics["val_loss"] == pytest.approx(nll, rel=1e-5)
    assert metrics["val_bpb"] == pytest.approx(nll / math.log(2) / 1.5, rel=1e-5)
    summary = objective.summary(model, data, None, "cpu", NO_AUTOCAST)
    p = torch.bincount(data.val, minlength=V).double() / data.val.numel()
    entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
    assert summary["state_size"] == model.state_size(8)
    assert summary["unigram_entropy_bits_per_token"] == pytest.approx(entropy, rel=1e-12)
    assert summary["unigram_entropy_bpb"] == pytest.approx(entropy / 1.5, rel=1e-12)


# -- classifier ---------------------------------------------------------------------------------------------


def classifier():
    torch.manual_seed(0)
    return SequenceClassifier(
        n_classes=3, vocab_size=V, d_model=16, n_layers=1, mixer="short_conv", bidirectional=False
    )


def classification_data():
    g = torch.Generator().manual_seed(3)

    def split(n):
        lengths = torch.randint(2, 7, (n,), generator=g)
        inputs = torch.randint(1, V, (n, 6), generator=g) * (torch.arange(6) < lengths[:, None])
        return Split(inputs.to(torch.int16), lengths, torch.randint(0, 3, (n,), generator=g))

    return ClassificationData(split(12), split(7), split(9), vocab_size=V, n_classes=3)


def by_hand(model, split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split, one example at a time."""
    nll, correct = 0.0, 0
    with torch.no_grad():
        for i in range(len(split)):
            n = int(split.lengths[i])
            logits = model(split.inputs[i : i + 1, :n].long())[0]
            nll -= (logits.double() - logits.double().exp().sum().log())[split.labels[i]].item()
            correct += int(logits.argmax() == split.labels[i])
    return nll / len(split), correct / len(split)


def test_classifier_loss_evaluate_and_describe():
    model, data = classifier(), classification_data()
    objective = ClassifierObjective(batch_size=4, eval_batches=2)
    batch = data.train_batch(0, 0, 4)
    expected = summed_nll(model(batch[0], mask=batch[1]), batch[2])
    torch.testing.assert_close(
        objective.loss(model, batch, NO_AUTOCAST).double(), expected, rtol=1e-5, atol=1e-6
    )
    assert objective.count(batch[2]) == 4
    # Validation reads eval_batches x batch_size = 8 >= 7 examples: the whole split.
    loss, acc = by_hand(model, data.val)
    metrics = objective.evaluate(model, data, "cpu", NO_AUTOCAST)
    assert metrics["val_loss"] == pytest.approx(loss, rel=1e-5) and metrics["val_acc"] == pytest.approx(acc)
    assert objective.describe(model) == "causal classifier, "


def test_classifier_keeps_the_best_validation_accuracy():
    objective = ClassifierObjective(4, 1)
    assert objective.best_val_acc == -1.0
    news = [objective.is_new_best({"val_acc": a}) for a in (0.1, 0.1, 0.3, 0.2, 0.4)]
    assert news == [True, False, True, False, True] and objective.best_val_acc == 0.4
    assert not LMObjective(4, 1).is_new_best({"val_acc": 1.0})  # only a classifier keeps best weights


def test_classifier_summary_reports_the_best_weights_test_accuracy(tmp_path):
    data = classification_data()
    final = classifier()
    objective = ClassifierObjective(batch_size=4, eval_batches=2)
    # No model-best/: the final weights' test accuracy is the one reported.
    summary = objective.summary(final, data, tmp_path, "cpu", NO_AUTOCAST)
    final_acc = by_hand(final, data.test)[1]
    assert summary == {
        "final_test_acc": pytest.approx(final_acc),
        "n_test": 9,
        "test_acc": summary["final_test_acc"],
    }
    # With model-best/ (other weights), test_acc and best_val_acc are the best weights' own.
    torch.manual_seed(5)
    best = SequenceClassifier(final.config)
    best.save(tmp_path / "model-best")
    summary = objective.summary(final, data, tmp_path, "cpu", NO_AUTOCAST)
    assert summary["final_test_acc"] == pytest.approx(final_acc)
    assert summary["test_acc"] == pytest.approx(by_hand(best, data.test)[1])
    assert summary["best_val_acc"] == pytest.approx(by_hand(best, data.val)[1])


def test_recompute_bn_stats_sets_the_training_batches_statistics_and_frees_evaluation_from_stale_ones():
    """train.bn_stats_batches: before evaluating, every BatchNorm's running mean and variance become the average
    of its batch statistics over the first K training batches, whatever they were; momentum and mode return."""
    from seqzoo.train.objectives import recompute_bn_stats

    data = classification_data()
    torch.manual_seed(0)
    model = SequenceClassifier(
        n_classes=3, vocab_size=V, d_model=16, n_layers=2, mixer="short_conv", bidirectional=False,
        norm="batch", block="prenorm",
    )  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms
    # What each BatchNorm sees on each of the first two training batches of 4 (hooks, training mode).
    seen = {id(m): [] for m in norms}
    hooks = [m.register_forward_hook(lambda m, i, o: seen[id(m)].append(i[0].detach())) for m in norms]
    with torch.no_grad():
        for x, mask, _ in data.batches(data.train, 4, 8):
            model(x, mask=mask)
    for h in hooks:
        h.remove()
    for m in norms:
        m.running_mean.fill_(5.0)  # stale statistics, far from the data's
        m.running_var.fill_(9.0)
    model.eval()
    objective = ClassifierObjective(batch_size=4, eval_batches=2)
    stale = objective.evaluate(model, data, "cpu", NO_AUTOCAST)
    objective.bn_stats_batches = 2
    fresh = objective.evaluate(model, data, "cpu", NO_AUTOCAST)
    assert all(m.momentum == 0.1 for m in norms)
    for m in norms:
        # [B, T, D] per batch (the packed classifier's BatchNorm reads [1, real tokens, D]): per-channel
        # statistics of each batch, averaged over the two (variance unbiased, as BatchNorm keeps it).
        per_batch = [t.flatten(0, 1).T for t in seen[id(m)]]
        mean = torch.stack([t.mean(1) for t in per_batch]).mean(0)
        var = torch.stack([t.var(1, unbiased=True) for t in per_batch]).mean(0)
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, var, rtol=1e-5, atol=1e-6)
    # The evaluation now reads those statistics: the same as a model whose running averages were good already.
    model.eval()  # evaluate leaves the model training, as the loop wants it
    loss, acc = by_hand(model, data.val)
    assert fresh["val_loss"] == pytest.approx(loss, rel=1e-5) and fresh["val_acc"] == pytest.approx(acc)
    assert stale["val_loss"] != pytest.approx(fresh["val_loss"], rel=1e-3)
    model.eval()
    assert recompute_bn_stats(model, data.batches(data.train, 4, 8), "cpu", NO_AUTOCAST) == len(norms)
    assert not model.training  # the mode it was in
    assert recompute_bn_stats(classifier(), data.batches(data.train, 4, 8), "cpu", NO_AUTOCAST) == 0  # no BN
