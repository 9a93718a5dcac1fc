"""The one training recipe, readable top to bottom (in the spirit of nanoGPT's train.py).

    config -> data + tokenizer -> CausalLM (or SequenceClassifier) -> AdamW(param groups) -> warmup + schedule
    for step: micro-batches (grad accumulation) -> autocast forward -> backward -> clip -> step
              every log.every: metrics.jsonl / TensorBoard;  every eval_every: validation
              every ckpt_every: atomic checkpoint;  at the end: model, loss curve, summary
What depends on the kind of data (the loss, the validation metrics, the best-validation weights a classifier
keeps in ``model-best/``, the summary's scores) is the run's objective (``train/objectives.py``), chosen once
from the config.

Under ``torchrun --nproc_per_node N`` the same code runs DDP, or FSDP2 with train.distributed=fsdp
(``train/distributed.py``): every rank takes its own slice of the same global batch, so N processes compute
what one process would.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .build import build_model, predates_mixer_settings
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from .config import RunConfig, dump_config
from .cpu_memory import retain_freed_memory
from .data import build_data
from .distributed import (
    check_strategy,
    grad_sync,
    init_distributed,
    is_sharded,
    optimizer_groups,
    unsharded_copy,
    wrap_model,
)
from .lora import merge_lora, plain_model, prepare_finetune
from .metrics import MetricsLogger, plot_loss_curve
from .objectives import Objective, objective_for
from .tokenizers import build_tokenizer, load_run_tokenizer

# -- devices ---------------------------------------------------------------------------------------


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


# -- evaluation ------------------------------------------------------------------------------------


def evaluate(model, data, config: RunConfig, device, autocast) -> dict:
    """The validation metrics of ``model`` on ``data`` as a run of ``config`` logs them (its objective's)."""
    objective = objective_for(config)
    objective.check_data(data)
    return objective.evaluate(model, data, device, autocast)


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


# -- the run ---------------------------------------------------------------------------------------


def tokenizer_factory(config: RunConfig, out_dir: Path, resume: bool, world: int, main_rank: bool):
    """The ``make_tokenizer(train_texts)`` that ``build_data`` calls: the run's saved tokenizer on a resume;
    otherwise a new one, where a BPE is trained once (rank 0), saved, and read back by the other ranks."""

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

    return make_tokenizer


class LossWindow:
    """The training losses of the steps since the last log line. A step adds its loss as a tensor (no device
    sync); ``flush`` averages the pending ones over ranks and reads them in one sync, raising on the first
    that is not finite. ``mean`` is the mean over the window of the per-step global-batch losses, summed in
    order in double precision as Python floats (what the loop has always logged)."""

    def __init__(self, world: int):
        self.world = world
        self.pending: list[torch.Tensor] = []
        self.first_pending = 0  # the step number of pending[0]
        self.values: list[float] = []
        self.start = time.perf_counter()

    def add(self, step: int, loss: torch.Tensor) -> None:
        if not self.pending:
            self.first_pending = step
        self.pending.append(loss)

    def flush(self) -> None:
        if not self.pending:
            return
        losses = torch.stack(self.pending)
        if self.world > 1:  # the loss reported is the global batch's
            dist.all_reduce(losses)
            losses /= self.world
        values = losses.tolist()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"step {self.first_pending + i}: the loss is {v}; lower optim.lr or check the data"
                )
        self.values += values
        self.pending = []

    def close(self) -> tuple[float, int, float]:
        """(mean loss, steps, seconds) of the window; starts the next one."""
        self.flush()
        total = 0.0
        for v in self.values:  # in order, as Python floats (sum() of floats compensates from Python 3.12)
            total += v
        out = (total / len(self.values), len(self.values), time.perf_counter() - self.start)
        self.values, self.start = [], time.perf_counter()
        return out


def run_summary(
    config: RunConfig,
    objective: Objective,
    model,
    data,
    out_dir: Path,
    device,
    autocast,
    *,
    steps,
    n_params,
    world,
    t_start,
    stop_early,
    last_eval,
    tokens_per_step,
) -> dict:
    """Rank 0's end of a run: save the final ``model/`` (LoRA merged in, a plain model), score it (the
    objective's summary: a classifier's test accuracy, or the state size; the harness tasks of
    ``eval.tasks``), write ``summary.json`` and the loss curve, print the summary; returns it. ``model`` is
    unsharded."""
    merge_lora(model).save(out_dir / "model")  # LoRA folded in: a plain model
    summary = {
        "name": config.name,
        "parameters": n_params,
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "wall_time_s": round(time.perf_counter() - t_start, 2),
        "world_size": world,
        "device": device.type,
        "seq_len": data.seq_len,
        "stopped_early": stop_early,
        **last_eval,
    }
    summary.update(objective.summary(model, data, out_dir, device, autocast))
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
    return summary


def forward_backward(
    model, batch, objective: Objective, config: RunConfig, world: int, autocast, scaler
) -> torch.Tensor:
    """Forward and backward of one optimizer step's share of the global ``batch`` on this rank, in
    ``train.grad_accum`` micro-batches (gradients reduced across ranks on the last one); returns this rank's
    loss of the step, a tensor (no device sync): each micro-batch's summed loss over the labels of the whole
    batch, so that the sum is the mean over the batch."""
    micro = config.train.batch_size // world // config.train.grad_accum
    n_labels = objective.count(batch[-1])
    step_loss = torch.zeros((), device=batch[-1].device)
    for i in range(config.train.grad_accum):
        part = tuple(t[i * micro : (i + 1) * micro] for t in batch)
        with grad_sync(model, enabled=i == config.train.grad_accum - 1 or world == 1):
            loss = objective.loss(model, part, autocast) / n_labels
            (scaler.scale(loss) if scaler else loss).backward()
        step_loss += loss.detach()
    return step_loss


def save_run_checkpoint(
    ckpt_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    scaler,
    trainer_state: dict,
    config: RunConfig,
    rebuild,
    rank: int,
    world: int,
) -> None:
    """The checkpoint of ``step`` on every rank's call: sharded (``checkpoint.save_sharded_checkpoint``, every
    rank writing) for an FSDP ``model``, else the plain one written by rank 0 while the others wait."""
    if is_sharded(model):
        save_sharded_checkpoint(
            ckpt_dir,
            step,
            model,
            optimizer,
            scheduler,
            scaler,
            trainer_state,
            config.train.keep_last,
            export=lambda: unsharded_copy(model, rebuild),
        )
        return
    if rank == 0:
        save_checkpoint(
            ckpt_dir, step, model, optimizer, scheduler, scaler, trainer_state, config.train.keep_last
        )
    if world > 1:
        dist.barrier()


def train(config: RunConfig, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train as ``config`` says; returns the summary (rank 0; {} on the other ranks). ``stop_after`` ends
    early at that step (tests)."""
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
    check_strategy(config.train.distributed, world, dtype)
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
    objective = objective_for(config)  # the loss, validation, best weights and summary of this kind of data

    out_dir = config.out_path()
    ckpt_dir = out_dir / "checkpoints"
    if resume and predates_mixer_settings(out_dir / "config.yaml"):
        # The run began before the per-mixer settings table: its checkpoints hold the bare layers.
        config.model.mixer_settings = "none"
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(config))

    make_tokenizer = tokenizer_factory(config, out_dir, resume, world, main_rank)
    data, tokenizer = build_data(config.data, make_tokenizer, seed=config.train.seed)
    if main_rank and tokenizer is not None:
        tokenizer.save(out_dir)
    objective.check_data(data)

    raw_model = build_model(config, data).to(device)
    prepare_finetune(raw_model, config.finetune, load=not resume)  # init_from, LoRA, what trains
    n_params = sum(p.numel() for p in raw_model.parameters())

    def rebuild():  # an empty copy of raw_model's modules (LoRA included), to gather sharded weights into
        model = build_model(config, data)
        prepare_finetune(model, config.finetune, load=False)
        return model

    # Param groups are decided on the plain model: FSDP replaces the parameters (and their attributes).
    groups = param_groups(raw_model, config.optim.lr, config.optim.weight_decay, config.optim.weight_decay_on)
    model = wrap_model(raw_model, config.train.distributed, device, world)  # DDP wraps; FSDP shards in place
    sharded = is_sharded(raw_model)
    optimizer = torch.optim.AdamW(
        optimizer_groups(groups, raw_model),
        betas=config.optim.betas,
        eps=config.optim.eps,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start_step = 0
    if resume:
        ckpt = latest_checkpoint(ckpt_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_checkpoint(ckpt, raw_model, optimizer, scheduler, scaler, sharded=sharded)
        start_step = state["step"]
        objective.best_val_acc = state.get("best_val_acc", objective.best_val_acc)
        if main_rank:
            print(f"resumed from {ckpt} at step {start_step}")
    if config.train.compile:
        model = torch.compile(model)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    logger = MetricsLogger(
        out_dir, enabled=main_rank, tensorboard=config.log.tensorboard, resume_from=start_step
    )
    if main_rank:
        kind = objective.describe(raw_model)
        strategy = f" ({config.train.distributed})" if world > 1 else ""
        print(
            f"{config.name}: {kind}{n_params:,} parameters, mixer {config.model.mixer}, {world} process(es)"
            f"{strategy} on {device.type}, {str(dtype).replace('torch.', '')}; {config.train.steps} steps x "
            f"{config.train.batch_size} x {data.seq_len} tokens"
        )

    tokens_per_step = config.train.batch_size * data.seq_len
    bar = tqdm(
        total=config.train.steps,
        initial=start_step,
        disable=not (main_rank and config.log.progress),
        desc=config.name,
        dynamic_ncols=True,
    )
    window = LossWindow(world)
    last_eval: dict = {}
    stop_early = False
    step = start_step
    for step in range(start_step, config.train.steps):
        batch = data.train_batch(config.train.seed, step, config.train.batch_size, rank, world)
        batch = tuple(t.to(device) for t in batch)
        step_loss = forward_backward(model, batch, objective, config, world, autocast, scaler)
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

        done = step + 1
        window.add(done, step_loss)  # read (one sync) only on the steps below that log, evaluate or save
        bar.update(1)
        log_now = done % config.log.every == 0 or done == config.train.steps
        eval_now = done % config.train.eval_every == 0 or done == config.train.steps
        if log_now or eval_now or done % config.train.ckpt_every == 0:
            window.flush()  # a loss that is not finite stops the run here, before it is evaluated or saved
        if log_now:
            mean_loss, steps_in_window, elapsed = window.close()
            record = {
                "step": done,
                "loss": mean_loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": steps_in_window * tokens_per_step / max(elapsed, 1e-9),
                "tokens": done * tokens_per_step,
            }
            logger.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
        if eval_now:
            last_eval = objective.evaluate(model, data, device, autocast)
            logger.log({"step": done, **last_eval})
            if main_rank:
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
            stop_early = (
                config.train.early_stop_acc is not None
                and last_eval["val_acc"] >= config.train.early_stop_acc
            )
            if objective.is_new_best(last_eval):  # a classifier's best validation accuracy so far
                best = unsharded_copy(raw_model, rebuild)  # collective when sharded; None off rank 0
                if main_rank:
                    plain_model(best).save(out_dir / "model-best")  # LoRA merged, in a copy
        if done % config.train.ckpt_every == 0 or done == config.train.steps or stop_early:
            window.flush()
            trainer_state = {
                "data_position": {"seed": config.train.seed, "next_step": done},
                "best_val_acc": objective.best_val_acc,
            }
            save_run_checkpoint(
                ckpt_dir,
                done,
                raw_model,
                optimizer,
                scheduler,
                scaler,
                trainer_state,
                config,
                rebuild,
                rank,
                world,
            )
        if stop_early or (stop_after is not None and done >= stop_after):
            break
    bar.close()

    final = unsharded_copy(raw_model, rebuild)  # the whole model on rank 0 (collective when sharded)
    summary = {}
    if main_rank:
        summary = run_summary(
            config,
            objective,
            final.to(device),
            data,
            out_dir,
            device,
            autocast,
            steps=step + 1,
            n_params=n_params,
            world=world,
            t_start=t_start,
            stop_early=stop_early,
            last_eval=last_eval,
            tokens_per_step=tokens_per_step,
        )
    logger.close()
    if world > 1:
        dist.barrier()
    return summary
