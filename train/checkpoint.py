"""Checkpoints that survive being killed at any moment and resume exactly.

A checkpoint is a folder ``<run>/checkpoints/step_000120/`` holding
- ``model.safetensors``: the weights (safetensors: no pickle);
- ``trainer.pt``: optimizer, scheduler and grad-scaler states, every RNG state and the data position,
  plain tensors and numbers only, read back with ``torch.load(weights_only=True)``.
It is written under a temporary name and renamed into place (a rename is atomic), then the ``latest``
file is replaced atomically; a crash leaves either the old checkpoint or the new one, never half of one.
Only the last ``keep_last`` are kept.

A run sharded with FSDP (``train.distributed=fsdp``) writes the sharded format instead, the same folder with
- ``dcp/``: model and optimizer states, each rank writing its own shards (``torch.distributed.checkpoint``,
  the state dicts of ``torch.distributed.checkpoint.state_dict.get_state_dict``);
- ``rng_rank{r}.pt``: every rank's RNG states;
- ``trainer.pt``: scheduler and scaler states, the data position, ``sharded: world size``;
- ``model.safetensors``: the whole model gathered into full tensors, as in the plain format, so that
  ``seqzoo generate`` and the evaluations read either format alike.
Every rank writes into the temporary folder; after a barrier rank 0 renames it into place. Such a
checkpoint resumes only a sharded run over the same number of processes (the RNG states are per rank).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

LATEST = "latest"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fresh_tmp(ckpt_dir: Path, name: str) -> Path:
    tmp = ckpt_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
    tmp.mkdir(parents=True)
    return tmp


def _publish(ckpt_dir: Path, tmp: Path, name: str, keep_last: int) -> Path:
    """Rename the finished ``tmp`` into place, point ``latest`` at it, drop all but the last ``keep_last``."""
    final = ckpt_dir / name
    if final.exists():  # a re-run of the same step (after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _atomic_write_text(ckpt_dir / LATEST, name)
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _trainer_state(step: int, scheduler, scaler, extra: dict) -> dict:
    return {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        **extra,
    }


def save_checkpoint(
    ckpt_dir: Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep_last: int
) -> Path:
    """Write the plain (one-process or DDP) checkpoint of ``step``; called by rank 0 alone."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = _fresh_tmp(ckpt_dir, name)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(
        {
            **_trainer_state(step, scheduler, scaler, extra),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
        },
        tmp / "trainer.pt",
    )
    return _publish(ckpt_dir, tmp, name, keep_last)


def save_sharded_checkpoint(
    ckpt_dir: Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep_last: int, export
) -> Path | None:
    """Write the sharded checkpoint of ``step`` of an FSDP ``model``: a collective, every rank calls it.
    ``export()`` (also collective) returns the unsharded model on rank 0 (None elsewhere), whose weights
    become ``model.safetensors``. Returns the checkpoint's path on rank 0, None on the other ranks."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world = dist.get_rank(), dist.get_world_size()
    name = f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-{name}"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _fresh_tmp(ckpt_dir, name)
    dist.barrier()  # nobody writes into the folder before rank 0 has emptied it
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "dcp")
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    plain = export()
    if rank == 0:
        save_model(plain, str(tmp / "model.safetensors"))
        torch.save({**_trainer_state(step, scheduler, scaler, extra), "sharded": world}, tmp / "trainer.pt")
    dist.barrier()  # every rank's files are in tmp: now the rename makes the checkpoint whole at once
    final = _publish(ckpt_dir, tmp, name, keep_last) if rank == 0 else None
    dist.barrier()  # a checkpoint is in place on every rank's return
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint folder ``latest`` names (either format), or None when there is none."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "trainer.pt").is_file() else None


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / "dcp").is_dir()


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, sharded: bool = False) -> dict:
    """Restore everything saved at ``path``; returns the trainer state (step, data position, ...).
    ``sharded``: ``model`` is sharded by FSDP (a collective then: every rank calls it); the checkpoint must
    be of the same kind, which is checked with the setting to change named."""
    if is_sharded_checkpoint(path) != sharded:
        found = "a sharded (train.distributed=fsdp)" if not sharded else "a plain (one process or ddp)"
        raise ValueError(
            f"{path} is {found} checkpoint, but this run is "
            + ("sharded (train.distributed=fsdp)" if sharded else "not sharded")
            + ": resume it with the train.distributed and number of processes it was written with"
        )
    state = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    if sharded:
        _load_sharded(path, state, model, optimizer)
    else:
        load_model(model, str(path / "model.safetensors"), strict=True)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if not sharded:
        _set_rng_state(state["rng"])
    return state


def _load_sharded(path: Path, state: dict, model, optimizer) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, world = dist.get_rank(), dist.get_world_size()
    if state["sharded"] != world:
        raise ValueError(
            f"{path} was written by {state['sharded']} processes and holds one RNG state per process; "
            f"resume it with torchrun --nproc_per_node {state['sharded']} (this run has {world})"
        )
    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes and shards to read into
    target = {"model": model_state, "optimizer": optim_state}
    dcp.load(target, checkpoint_id=path / "dcp")
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    _set_rng_state(torch.load(path / f"rng_rank{rank}.pt", weights_only=True, map_location="cpu"))
