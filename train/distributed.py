"""Running the recipe on several processes (``torchrun --nproc_per_node N -m seqzoo train ...``).

``train.distributed`` picks how the model is spread over the N processes:

- ``ddp`` (the default): every rank holds the whole model and optimizer; gradients are all-reduced
  (``DistributedDataParallel``). Checkpoints are the single-process format, written by rank 0.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``), applied to every block of the backbone and then to
  the root module, as torchtitan does: each rank holds 1/N of every parameter, gradient and optimizer state
  (DTensors), and a block's parameters are all-gathered just for its forward and backward. It runs on GPUs
  (NCCL) and on CPUs (gloo). Checkpoints are sharded (``torch.distributed.checkpoint``; see
  ``checkpoint.save_sharded_checkpoint``) and the exported weights are gathered into full tensors.

Both compute what one process computes on the global batch: every rank takes its own slice of it and the
gradients are averaged over ranks.
"""

from __future__ import annotations

import contextlib
import io
import os

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts a process group when launched by torchrun (``WORLD_SIZE`` > 1):
    NCCL for ``device_type="cuda"``, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def check_strategy(strategy: str, world: int, precision: torch.dtype) -> None:
    """Refuse what a strategy cannot do, naming the setting: ``train.distributed`` must be one of
    ``STRATEGIES``; ``fsdp`` needs more than one process (one process has nothing to shard, and a silent
    switch to unsharded training would also switch the checkpoint format) and no fp16 (its grad scaler would
    have to agree on overflow across shards: use bf16)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.distributed must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "fsdp":
        return
    if world < 2:
        raise ValueError(
            "train.distributed=fsdp shards the model over processes, but this run has one process "
            "(WORLD_SIZE is unset or 1): launch it with torchrun --nproc_per_node N (N >= 2), or use "
            "train.distributed=ddp (the default; on one process it trains the whole model in that process)"
        )
    if precision == torch.float16:
        raise ValueError("train.distributed=fsdp does not support train.precision=fp16: use bf16 (or fp32)")


def wrap_model(model: torch.nn.Module, strategy: str, device: torch.device, world: int) -> torch.nn.Module:
    """``model`` ready for ``world`` processes: unchanged for one process, DDP-wrapped for ``ddp``, sharded
    in place by FSDP2 for ``fsdp`` (the returned module is ``model`` itself, its parameters now DTensors).
    Build the optimizer from the returned module's parameters *after* this call."""
    if world == 1:
        return model
    if strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if strategy != "fsdp":
        raise ValueError(f"train.distributed must be one of {STRATEGIES}, got {strategy!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    # One FSDP unit per block: only one block's full parameters exist at a time (the all-gather of the next
    # block overlaps this one's compute). The root unit holds the rest (embeddings, final norm, head; a tied
    # head shares the embedding's parameter, so both stay in one unit). Parameters stay fp32 and autocast
    # casts for compute, exactly as in a DDP run (no MixedPrecisionPolicy), so the two strategies agree.
    blocks = list(model.backbone.blocks)
    for i, block in enumerate(blocks):
        # The last block's backward comes right after its forward: keep its gathered parameters instead of
        # gathering them again (torchtitan's choice).
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the module ``torch.compile`` wraps) was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def grad_sync(model: torch.nn.Module, enabled: bool):
    """Context for one micro-batch's backward: with ``enabled=False`` a DDP model skips its all-reduce (the
    gradients accumulate locally until the last micro-batch). An FSDP model reduce-scatters every micro-batch:
    skipping would keep every block's full unsharded gradient alive between micro-batches, which is the
    memory FSDP exists to save."""
    if enabled or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def optimizer_groups(groups: list[dict], model: torch.nn.Module) -> list[dict]:
    """``groups`` (``loop.param_groups`` of the model before wrapping: params and their names) pointing at the
    wrapped model's parameters by name. ``fully_shard`` replaces every parameter by a new DTensor parameter
    (losing attributes such as ``_optim``), so the groups are decided before sharding and re-pointed here."""
    params = dict(model.named_parameters())
    return [
        {
            **{k: v for k, v in g.items() if k not in ("names", "params")},
            "params": [params[n] for n in g["names"]],
        }
        for g in groups
    ]


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as full CPU tensors on rank 0 (an empty dict on the other ranks).
    Collective for a sharded model: every rank must call it. A plain model gives its own state dict."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        getattr(model, "_orig_mod", model), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def unsharded_copy(model: torch.nn.Module, build) -> torch.nn.Module | None:
    """On rank 0, a plain (unsharded, CPU) model built by ``build()`` holding ``model``'s weights; None on the
    other ranks. ``model`` itself when it is not sharded. Collective when it is: every rank must call it.

    Building draws random initial weights, which would move rank 0's RNG away from the other ranks' (and from
    a resumed run's): it runs under ``fork_rng``, and the build's messages are dropped."""
    if not is_sharded(model):
        return model
    state = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), contextlib.redirect_stdout(io.StringIO()):
        copy = build()
    copy.load_state_dict(state, strict=True)
    return copy
