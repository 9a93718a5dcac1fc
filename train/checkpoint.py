"""Checkpoints that survive being killed at any moment and resume exactly.

A checkpoint is a folder ``<run>/checkpoints/step_000120/`` holding
- ``model.safetensors``: the weights (safetensors: no pickle);
- ``trainer.pt``: optimizer, scheduler and grad-scaler states, every RNG state and the data position,
  plain tensors and numbers only, read back with ``torch.load(weights_only=True)``.
It is written under a temporary name and renamed into place (a rename is atomic), then the ``latest``
file is replaced atomically; a crash leaves either the old checkpoint or the new one, never half of one.
Only the last ``keep_last`` are kept.
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


def save_checkpoint(
    ckpt_dir: Path, step: int, model, optimizer, scheduler, scaler, extra: dict, keep_last: int
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            **extra,
        },
        tmp / "trainer.pt",
    )
    if final.exists():  # a re-run of the same step (after a resume): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _atomic_write_text(ckpt_dir / LATEST, name)
    for old in sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "trainer.pt").is_file() else None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything saved at ``path``; returns the trainer state (step, data position, ...)."""
    load_model(model, str(path / "model.safetensors"), strict=True)
    state = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    return state
