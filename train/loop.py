"""The one training recipe, readable top to bottom (in the spirit of nanoGPT's train.py).

    config -> data + tokenizer -> CausalLM (or SequenceClassifier) -> AdamW(param groups) -> warmup + schedule
    for step: micro-batches (grad accumulation) -> autocast forward -> backward -> clip -> step
              every log.every: metrics.jsonl / TensorBoard;  every eval_every: validation
              every ckpt_every: atomic checkpoint;  at the end: model, loss curve, summary
A classifier (Long Range Arena) also keeps the weights of its best validation accuracy (``model-best/``) and
reports the test accuracy of those weights, as LRA results are reported.

Under ``torchrun --nproc_per_node N`` the same code runs DDP (or FSDP with train.distributed=fsdp): every
rank takes its own slice of the same global batch, so N processes compute what one process would.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqzoo import CausalLM, LMConfig
from seqzoo.models.classifier import SequenceClassifier
from seqzoo.models.config import BackboneConfig, ClassifierConfig
from seqzoo.models.mixer_settings import resolve_mixers

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, dump_config
from .cpu_memory import retain_freed_memory
from .data import IGNORE_INDEX, build_data
from .lora import merge_lora, plain_model, prepare_finetune
from .metrics import MetricsLogger, plot_loss_curve
from .tokenizers import build_tokenizer, load_run_tokenizer

# -- distributed -------------------------------------------------------------------------------------


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts a process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(config: RunConfig, local_rank: int) -> torch.device:
    want = config.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA GPU is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(config: RunConfig, device: torch.device) -> torch.dtype:
    p = config.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    if p != "fp32" and device.type != "cuda":
        raise ValueError(f"train.precision={p} needs a GPU; use fp32 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


# -- optimisation ----------------------------------------------------------------------------------


def param_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, decay_on: str = "matrices"
) -> list[dict]:
    """AdamW groups. No weight decay on vectors (norm scales, biases) nor on parameters a layer marks;
    a parameter may carry its own settings in ``param._optim`` (S4's SSM parameters: lr 1e-3, no decay).
    ``decay_on="all"`` decays every parameter alike (Zoology's optimiser)."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if decay_on == "all":
            settings = {"lr": lr, "weight_decay": weight_decay}
        else:
            settings = {"lr": lr, "weight_decay": weight_decay if p.dim() >= 2 else 0.0}
            if getattr(p, "_no_weight_decay", False):
                settings["weight_decay"] = 0.0
            settings.update(getattr(p, "_optim", {}))
        key = tuple(sorted(settings.items()))
        groups.setdefault(key, {"params": [], "names": [], **settings})
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def lr_factor(step: int, config: RunConfig) -> float:
    """Multiplier of every group's peak lr at ``step``: linear warmup, then cosine / linear / constant."""
    o, total = config.optim, config.train.steps
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def predates_mixer_settings(saved_config) -> bool:
    """True for a run folder's config.yaml written before ``model.mixer_settings`` existed: its models were
    built from the layers' bare defaults, and must be rebuilt that way to load its checkpoints."""
    import yaml

    if not saved_config.is_file():
        return False
    raw = yaml.safe_load(saved_config.read_text()) or {}
    return "mixer_settings" not in (raw.get("model") or {})


def model_config(config: RunConfig, seq_len: int) -> dict:
    """The LMConfig fields of ``config.model``. With ``mixer_settings: paper`` (the default) every mixer
    entry is written out with its paper's settings (``seqzoo.models.mixer_settings``), so the saved model's
    config.json names every keyword and loads the same model whatever the table says later."""
    model_cfg = config.model.model_dump()
    for key in ("kind", "pooling", "bidirectional"):  # the recipe's, not LMConfig's (build_model reads them)
        model_cfg.pop(key)
    if model_cfg.pop("mixer_settings") == "paper":
        model_cfg["mixer"] = resolve_mixers(model_cfg["mixer"], seq_len, model_cfg["mixer_kwargs"])
        model_cfg["mixer_kwargs"] = {}
    return model_cfg


# -- evaluation ------------------------------------------------------------------------------------


def supports_bidirectional(mixer) -> bool:
    """Whether every mixer entry has a bidirectional mode as configured (an encoder can then see both
    directions): the layer accepts ``bidirectional`` and the entry has no causal short convolution."""
    import inspect

    from seqzoo.registry import mixer_class

    entries = [
        e if isinstance(e, dict) else {"name": e} for e in (mixer if isinstance(mixer, list) else [mixer])
    ]
    return all(
        "bidirectional" in inspect.signature(mixer_class(e["name"]).__init__).parameters
        and not e.get("use_short_conv")
        for e in entries
    )


def build_model(config: RunConfig, data) -> torch.nn.Module:
    """The CausalLM, or for ``model.kind: classifier`` the SequenceClassifier, that ``config`` describes."""
    model_cfg = model_config(config, data.seq_len)
    if config.model.kind == "classifier":
        bidirectional = config.model.bidirectional
        if bidirectional == "auto":
            bidirectional = supports_bidirectional(model_cfg["mixer"])
        elif bidirectional and not supports_bidirectional(model_cfg["mixer"]):
            raise ValueError(
                f"model.bidirectional: not every mixer of {config.model.mixer!r} has a bidirectional mode as "
                "configured (a short convolution is causal: use_short_conv=false); set model.bidirectional to "
                "false or auto"
            )
        fields = {k: v for k, v in model_cfg.items() if k in BackboneConfig.model_fields}
        return SequenceClassifier(
            ClassifierConfig(
                **fields,
                n_classes=data.n_classes,
                vocab_size=data.vocab_size,
                pooling=config.model.pooling,
                bidirectional=bidirectional,
                pairs=data.pairs,
            )
        )
    model_cfg["vocab_size"] = model_cfg["vocab_size"] or data.vocab_size
    if model_cfg["vocab_size"] < data.vocab_size:
        raise ValueError(
            f"model.vocab_size ({model_cfg['vocab_size']}) is smaller than the data's ({data.vocab_size})"
        )
    return CausalLM(LMConfig(**model_cfg))


@torch.no_grad()
def evaluate_classifier(model, batches, device, autocast) -> dict:
    """Loss and accuracy of a classifier over ``batches`` of (inputs, mask, labels)."""
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


@torch.no_grad()
def evaluate(model, data, config: RunConfig, device, autocast) -> dict:
    if getattr(data, "classify", False):
        r = evaluate_classifier(
            model, data.val_batches(config.train.eval_batches, config.train.batch_size), device, autocast
        )
        return {"val_loss": r["loss"], "val_acc": r["acc"]}
    model.eval()
    total_loss, total_tokens, correct = 0.0, 0, 0
    for x, y in data.val_batches(config.train.eval_batches, config.train.batch_size):
        x, y = x.to(device), y.to(device)
        mask = y != IGNORE_INDEX
        with autocast():
            logits = model(x, logits_at=mask)  # [N, V]: only the scored positions
        total_loss += F.cross_entropy(logits.float(), y[mask], reduction="sum").item()
        correct += (logits.argmax(-1) == y[mask]).sum().item()
        total_tokens += mask.sum().item()
    model.train()
    loss = total_loss / max(1, total_tokens)
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_acc": correct / max(1, total_tokens)}
    if not data.task:
        out["val_bpb"] = loss / math.log(2) / data.bytes_per_token
    return out


def score_with_harness(config: RunConfig, out_dir: Path, device) -> dict:
    """``eval.tasks``: the harness on the model just saved, as ``seqzoo eval`` runs it; {task: metrics}."""
    from seqzoo.eval.harness.command import format_table, run_eval

    results = run_eval(
        out_dir,
        config.eval.tasks,
        num_fewshot=config.eval.num_fewshot,
        limit=config.eval.limit,
        batch_size=config.eval.batch_size,
        device=str(device),
    )
    print(format_table(results))
    print(f"lm-eval results: {results['seqzoo']['results_file']}")
    return {
        task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}
        for task, metrics in results["results"].items()
    }


def test_classifier(model, data, out_dir: Path, config: RunConfig, device, autocast) -> dict:
    """Accuracy on the whole test split of the final weights and of the best-validation ones (``test_acc``,
    what LRA reports), and on the whole validation split."""
    bs = config.train.batch_size
    final = evaluate_classifier(model, data.batches(data.test, bs), device, autocast)
    out = {"final_test_acc": final["acc"], "n_test": final["n"]}
    best_dir = out_dir / "model-best"
    if (best_dir / "model.safetensors").is_file():
        best = SequenceClassifier.load(best_dir, device=device)
        out["best_val_acc"] = evaluate_classifier(best, data.batches(data.val, bs), device, autocast)["acc"]
        out["test_acc"] = evaluate_classifier(best, data.batches(data.test, bs), device, autocast)["acc"]
    else:
        out["test_acc"] = final["acc"]
    return out


# -- the run ---------------------------------------------------------------------------------------


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train as ``config`` says; returns the summary. ``stop_after`` ends early at that step (tests)."""
    t_start = time.perf_counter()
    if config.eval.tasks:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:  # say so now, not after hours of training
            raise ImportError("eval.tasks needs lm-eval: pip install 'seqzoo[eval]' (or drop eval.tasks)")
    device_type = (
        "cuda"
        if config.train.device == "cuda" or (config.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    rank, world, local_rank = init_distributed(device_type)
    device = resolve_device(config, local_rank)
    dtype = resolve_precision(config, device)
    main_rank = rank == 0
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if device.type == "cpu" and config.train.retain_cpu_memory:
        retain_freed_memory()
    if config.train.batch_size % (world * config.train.grad_accum):
        raise ValueError(
            f"train.batch_size ({config.train.batch_size}) must be a multiple of world size x train.grad_accum "
            f"({world} x {config.train.grad_accum})"
        )
    seed_everything(config.train.seed)

    out_dir = config.out_path()
    ckpt_dir = out_dir / "checkpoints"
    if resume and predates_mixer_settings(out_dir / "config.yaml"):
        # The run began before the per-mixer settings table: its checkpoints hold the bare layers.
        config.model.mixer_settings = "none"
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(config))

    # Data and tokenizer. A BPE is trained once (rank 0) and read back by the other ranks.
    def make_tokenizer(train_texts):
        if resume and any(out_dir.glob("tokenizer.*")):
            return load_run_tokenizer(out_dir)
        if world > 1 and config.data.tokenizer.kind == "bpe":
            if main_rank:
                tok = build_tokenizer(config.data.tokenizer, train_texts)
                tok.save(out_dir)
            dist.barrier()
            return load_run_tokenizer(out_dir)
        return build_tokenizer(config.data.tokenizer, train_texts)

    data, tokenizer = build_data(config.data, make_tokenizer, seed=config.train.seed)
    if main_rank and tokenizer is not None:
        tokenizer.save(out_dir)

    classify = getattr(data, "classify", False)
    model = build_model(config, data).to(device)
    prepare_finetune(model, config.finetune, load=not resume)  # init_from, LoRA, what trains
    raw_model = model

    groups = param_groups(model, config.optim.lr, config.optim.weight_decay, config.optim.weight_decay_on)
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "names"} for g in groups],
        betas=config.optim.betas,
        eps=config.optim.eps,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_step = 0
    best_val_acc = -1.0  # a classifier keeps the weights of its best validation accuracy (model-best/)
    if resume:
        ckpt = latest_checkpoint(ckpt_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_checkpoint(ckpt, raw_model, optimizer, scheduler, scaler)
        start_step = state["step"]
        best_val_acc = state.get("best_val_acc", best_val_acc)
        if main_rank:
            print(f"resumed from {ckpt} at step {start_step}")

    if world > 1:
        if config.train.distributed == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            model = FSDP(model, device_id=device if device.type == "cuda" else None, use_orig_params=True)
        else:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if device.type == "cuda" else None
            )
    if config.train.compile:
        model = torch.compile(model)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    logger = MetricsLogger(
        out_dir, enabled=main_rank, tensorboard=config.log.tensorboard, resume_from=start_step
    )
    n_params = sum(p.numel() for p in raw_model.parameters())
    if main_rank:
        kind = ""
        if classify:
            kind = "bidirectional classifier, " if raw_model.config.bidirectional else "causal classifier, "
        print(
            f"{config.name}: {kind}{n_params:,} parameters, mixer {config.model.mixer}, {world} process(es) on "
            f"{device.type}, {str(dtype).replace('torch.', '')}; {config.train.steps} steps x "
            f"{config.train.batch_size} x {data.seq_len} tokens"
        )

    micro = config.train.batch_size // world // config.train.grad_accum
    tokens_per_step = config.train.batch_size * data.seq_len
    bar = tqdm(
        total=config.train.steps,
        initial=start_step,
        disable=not (main_rank and config.log.progress),
        desc=config.name,
        dynamic_ncols=True,
    )
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    last_eval: dict = {}
    stop_early = False
    step = start_step
    for step in range(start_step, config.train.steps):
        batch = data.train_batch(config.train.seed, step, config.train.batch_size, rank, world)
        batch = tuple(t.to(device) for t in batch)
        y = batch[-1]
        n_labels = y.numel() if classify else (y != IGNORE_INDEX).sum().clamp_min(1)
        step_loss = torch.zeros((), device=device)
        for i in range(config.train.grad_accum):
            part = tuple(t[i * micro : (i + 1) * micro] for t in batch)
            xs, ys = part[0], part[-1]
            last = i == config.train.grad_accum - 1
            sync = (
                contextlib.nullcontext()
                if (last or world == 1 or not hasattr(model, "no_sync"))
                else model.no_sync()
            )
            with sync:
                if classify:  # (inputs, mask, labels): one class per sequence
                    with autocast():
                        logits = model(xs, mask=part[1])
                    loss = F.cross_entropy(logits.float(), ys, reduction="sum") / n_labels
                    (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += loss.detach()
                    continue
                # A task scored at a few positions (MQAR) takes logits only there: the same loss, and the
                # LM head and softmax over the vocabulary cost a fraction.
                at = (ys != IGNORE_INDEX) if data.task else None
                with autocast():
                    logits = model(xs, logits_at=at)
                # Sum over this micro-batch / labels in the whole batch: the mean over the batch.
                targets = ys[at] if data.task else ys.flatten()
                loss = (
                    F.cross_entropy(
                        logits.float().flatten(0, -2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
                    )
                    / n_labels
                )
                (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        if world > 1:  # the loss reported is the global batch's
            dist.all_reduce(step_loss)
            step_loss /= world
        loss_value = step_loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"step {step + 1}: the loss is {loss_value}; lower optim.lr or check the data"
            )
        window_loss += loss_value
        window_steps += 1
        done = step + 1
        bar.update(1)
        if done % config.log.every == 0 or done == config.train.steps:
            elapsed = time.perf_counter() - window_start
            record = {
                "step": done,
                "loss": window_loss / window_steps,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": window_steps * tokens_per_step / max(elapsed, 1e-9),
                "tokens": done * tokens_per_step,
            }
            logger.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if done % config.train.eval_every == 0 or done == config.train.steps:
            last_eval = evaluate(model, data, config, device, autocast)
            logger.log({"step": done, **last_eval})
            if main_rank:
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            stop_early = (
                config.train.early_stop_acc is not None
                and last_eval["val_acc"] >= config.train.early_stop_acc
            )
            if classify and last_eval["val_acc"] > best_val_acc:
                best_val_acc = last_eval["val_acc"]
                if main_rank:
                    plain_model(raw_model).save(out_dir / "model-best")  # LoRA merged, in a copy
        if done % config.train.ckpt_every == 0 or done == config.train.steps or stop_early:
            if main_rank:
                save_checkpoint(
                    ckpt_dir,
                    done,
                    raw_model,
                    optimizer,
                    scheduler,
                    scaler,
                    {
                        "data_position": {"seed": config.train.seed, "next_step": done},
                        "best_val_acc": best_val_acc,
                    },
                    config.train.keep_last,
                )
            if world > 1:
                dist.barrier()
        if stop_early or (stop_after is not None and done >= stop_after):
            break
    bar.close()

    summary = {}
    if main_rank:
        merge_lora(raw_model).save(out_dir / "model")  # LoRA folded in: a plain model
        summary = {
            "name": config.name,
            "parameters": n_params,
            "steps": step + 1,
            "tokens": (step + 1) * tokens_per_step,
            "wall_time_s": round(time.perf_counter() - t_start, 2),
            "world_size": world,
            "device": device.type,
            "seq_len": data.seq_len,
            "stopped_early": stop_early,
            **last_eval,
        }
        if classify:
            summary.update(test_classifier(raw_model, data, out_dir, config, device, autocast))
        else:
            summary["state_size"] = raw_model.state_size(data.seq_len)
        if not data.task:
            entropy = data.unigram_entropy_bits()
            summary["unigram_entropy_bits_per_token"] = entropy
            summary["unigram_entropy_bpb"] = entropy / data.bytes_per_token
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if config.log.plot:
            plot_loss_curve(out_dir)
        if config.eval.tasks:
            summary["lm_eval"] = score_with_harness(config, out_dir, device)
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            "summary: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        )
    logger.close()
    if world > 1:
        dist.barrier()
    return summary
