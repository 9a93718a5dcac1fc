"""What a run minimises and how it is scored: the part of the recipe that depends on the kind of data.

The loop (``train/loop.py``) picks one objective from the config and then reads straight through:

    objective = objective_for(config)                   # LMObjective, TaskObjective or ClassifierObjective
    n = objective.count(labels)                         # the labels of a whole batch: the loss's denominator
    loss = objective.loss(model, micro_batch, autocast) / n     # summed cross-entropy of a micro-batch
    metrics = objective.evaluate(model, data, device, autocast)  # {"val_loss": ..., "val_acc": ..., ...}
    objective.is_new_best(metrics)                      # keep these weights as model-best/ (classifiers)
    objective.summary(model, data, out_dir, device, autocast)   # what summary.json adds at the end

- :class:`LMObjective` (``LMData``): next-token cross-entropy at every position of (inputs, labels) [B, T];
  validation loss, perplexity, accuracy and bits per byte (loss / ln 2 / bytes per token); the summary adds
  the state size and the unigram entropy of the validation text.
- :class:`TaskObjective` (``TaskData``, a synthetic task such as MQAR): the same cross-entropy at the scored
  positions only (labels != IGNORE_INDEX), where the model computes logits (``logits_at``): the same loss,
  and the LM head and softmax cost a fraction.
- :class:`ClassifierObjective` (``ClassificationData``, Long Range Arena): cross-entropy of one class per
  sequence from (inputs, mask, labels); validation loss and accuracy; it keeps the weights of the best
  validation accuracy, and the summary reports their test accuracy, as LRA results are reported. With
  ``train.bn_stats_batches`` a BatchNorm model's statistics are recomputed before each evaluation
  (:func:`recompute_bn_stats`).

Every loss is a sum over the micro-batch; the loop divides by ``count`` of the whole batch, so that the
micro-batches' losses add up to the mean over the batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from seqzoo.models.classifier import SequenceClassifier

from .batches import IGNORE_INDEX, ClassificationData, LMData, TaskData, pack_rows
from .config import RunConfig


class Objective:
    """The pieces every objective has. ``batch_size`` and ``eval_batches`` are the run's (``train.*``):
    validation reads ``eval_batches`` batches of ``batch_size``."""

    data_type: type = object  # the batch container the objective trains on

    def __init__(self, batch_size: int, eval_batches: int):
        self.batch_size, self.eval_batches = batch_size, eval_batches
        # Kept in the trainer state of every run (-1: no validation yet); only a classifier raises it.
        self.best_val_acc = -1.0

    def check_data(self, data) -> None:
        if not isinstance(data, self.data_type):
            raise TypeError(
                f"data: {type(self).__name__} trains on {self.data_type.__name__}, got {type(data).__name__}"
            )

    def describe(self, model) -> str:
        """What the run's first line says about the model beyond its size (empty for a language model)."""
        return ""

    def count(self, labels: torch.Tensor):
        """The number of labels the loss of a whole batch averages over."""
        raise NotImplementedError

    def loss(self, model, batch: tuple, autocast) -> torch.Tensor:
        """The summed cross-entropy of ``batch`` (a tensor with its graph), forward under ``autocast()``."""
        raise NotImplementedError

    def evaluate(self, model, data, device, autocast) -> dict:
        """The validation metrics of ``model`` on ``data`` (eval mode inside, train mode after)."""
        raise NotImplementedError

    def is_new_best(self, metrics: dict) -> bool:
        """Whether the weights just evaluated are the best so far, to be kept as ``model-best/``."""
        return False

    def summary(self, model, data, out_dir: Path, device, autocast) -> dict:
        """What the objective adds to ``summary.json`` at the end of the run (``model`` is the final one)."""
        raise NotImplementedError


class TaskObjective(Objective):
    """Cross-entropy at the scored positions of (inputs, labels) [B, T] (labels IGNORE_INDEX elsewhere)."""

    data_type = TaskData

    def count(self, labels):
        return (labels != IGNORE_INDEX).sum().clamp_min(1)

    def _logits(self, model, inputs, labels, autocast, starts=None):
        """(logits [N, V], targets [N]) of the scored positions: the model computes logits only there. With
        document ``starts`` [B, T] the rows run packed, each document alone (``cu_seqlens``)."""
        at = labels != IGNORE_INDEX
        with autocast():
            if starts is None:
                logits = model(inputs, logits_at=at)
            else:
                ids, cu_seqlens = pack_rows(inputs, starts)
                logits = model(ids, logits_at=at.reshape(1, -1), cu_seqlens=cu_seqlens)
        return logits, labels[at]

    def loss(self, model, batch, autocast):
        inputs, labels, *starts = batch
        logits, targets = self._logits(model, inputs, labels, autocast, *starts)
        return F.cross_entropy(
            logits.float().flatten(0, -2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )

    @torch.no_grad()
    def evaluate(self, model, data, device, autocast) -> dict:
        model.eval()
        total_loss, total_tokens, correct = 0.0, 0, 0
        for batch in data.val_batches(self.eval_batches, self.batch_size):
            x, y, *starts = (t.to(device) for t in batch)
            logits, targets = TaskObjective._logits(self, model, x, y, autocast, *starts)  # only the scored
            total_loss += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            total_tokens += targets.numel()
        model.train()
        loss = total_loss / max(1, total_tokens)
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50)),
            "val_acc": correct / max(1, total_tokens),
        }

    def summary(self, model, data, out_dir, device, autocast) -> dict:
        return {"state_size": model.state_size(data.seq_len)}


class LMObjective(TaskObjective):
    """Next-token cross-entropy at every position; validation adds bits per byte, the summary the unigram
    entropy of the validation text (what a model that ignores context reaches)."""

    data_type = LMData

    def _logits(self, model, inputs, labels, autocast, starts=None):
        if starts is not None:  # data.pack: each document alone, the labels across boundaries ignored
            ids, cu_seqlens = pack_rows(inputs, starts)
            with autocast():
                logits = model(ids, cu_seqlens=cu_seqlens)  # [1, B T, V]
            return logits[0], labels.flatten()
        with autocast():
            logits = model(inputs, logits_at=None)  # [B, T, V]
        return logits, labels.flatten()

    def evaluate(self, model, data, device, autocast) -> dict:
        out = super().evaluate(model, data, device, autocast)
        out["val_bpb"] = out["val_loss"] / math.log(2) / data.bytes_per_token
        return out

    def summary(self, model, data, out_dir, device, autocast) -> dict:
        entropy = data.unigram_entropy_bits()
        return {
            **super().summary(model, data, out_dir, device, autocast),
            "unigram_entropy_bits_per_token": entropy,
            "unigram_entropy_bpb": entropy / data.bytes_per_token,
        }


class ClassifierObjective(Objective):
    """One class per sequence: batches (inputs, mask, labels), logits [B, n_classes]."""

    data_type = ClassificationData

    def describe(self, model) -> str:
        return "bidirectional classifier, " if model.config.bidirectional else "causal classifier, "

    def count(self, labels):
        return labels.numel()

    def loss(self, model, batch, autocast):
        inputs, mask, labels = batch
        with autocast():
            logits = model(inputs, mask=mask)
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    bn_stats_batches = 0  # train.bn_stats_batches (objective_for sets it)

    def _bn_stats(self, model, data, device, autocast) -> None:
        if self.bn_stats_batches:
            batches = data.batches(data.train, self.batch_size, self.bn_stats_batches * self.batch_size)
            recompute_bn_stats(model, batches, device, autocast)

    def evaluate(self, model, data, device, autocast) -> dict:
        self._bn_stats(model, data, device, autocast)
        r = classifier_accuracy(model, data.val_batches(self.eval_batches, self.batch_size), device, autocast)
        return {"val_loss": r["loss"], "val_acc": r["acc"]}

    def is_new_best(self, metrics: dict) -> bool:
        if metrics["val_acc"] > self.best_val_acc:
            self.best_val_acc = metrics["val_acc"]
            return True
        return False

    def summary(self, model, data, out_dir, device, autocast) -> dict:
        """Accuracy on the whole test split of the final weights and of the best-validation ones (``test_acc``,
        what LRA reports; the final weights' where no ``model-best/`` was kept), and the best weights' on the
        whole validation split."""
        bs = self.batch_size
        self._bn_stats(model, data, device, autocast)  # model-best/ was saved with its own
        final = classifier_accuracy(model, data.batches(data.test, bs), device, autocast)
        out = {"final_test_acc": final["acc"], "n_test": final["n"]}
        best_dir = Path(out_dir) / "model-best"
        if (best_dir / "model.safetensors").is_file():
            best = SequenceClassifier.load(best_dir, device=device)
            out["best_val_acc"] = classifier_accuracy(best, data.batches(data.val, bs), device, autocast)[
                "acc"
            ]
            out["test_acc"] = classifier_accuracy(best, data.batches(data.test, bs), device, autocast)["acc"]
        else:
            out["test_acc"] = final["acc"]
        return out


@torch.no_grad()
def recompute_bn_stats(model, batches, device, autocast) -> int:
    """Precise BatchNorm statistics (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): every BatchNorm's
    running mean and variance replaced by their average over ``batches`` of (inputs, mask, labels), computed
    with the current weights in training mode; momentum restored after. Returns how many BatchNorms it set
    (0: the model has none, and nothing ran).

    Why: evaluation normalises with running averages taken while the weights moved. Where the class signal is
    a small deviation from the batch mean (mean-pooled Pathfinder features), their lag shifts every logit
    alike: a GLA model at step 500 of the Pathfinder CPU config scored 50.2% on 512 validation images with
    them, 57.4% with each batch's own statistics and 55.3% with statistics recomputed over 16 batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta, was_training = [m.momentum for m in norms], model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    for x, mask, _ in batches:
        with autocast():
            model(x.to(device), mask=mask.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


@torch.no_grad()
def classifier_accuracy(model, batches, device, autocast) -> dict:
    """{"loss", "acc", "n"}: mean cross-entropy and accuracy of a classifier over ``batches`` of
    (inputs, mask, labels), and how many examples they hold."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, mask, y in batches:
        x, mask, y = x.to(device), mask.to(device), y.to(device)
        with autocast():
            logits = model(x, mask=mask)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train()
    loss = total_loss / max(1, count)
    return {"loss": loss, "acc": correct / max(1, count), "n": count}


def objective_for(config: RunConfig) -> Objective:
    """The objective of ``config``: a classifier's for ``model.kind: classifier`` (whose data is an LRA task),
    a task's for ``data.source: task``, else a language model's."""
    if config.model.kind == "classifier":
        kind = ClassifierObjective
    elif config.data.source == "task":
        kind = TaskObjective
    else:
        kind = LMObjective
    objective = kind(config.train.batch_size, config.train.eval_batches)
    objective.bn_stats_batches = config.train.bn_stats_batches
    return objective
