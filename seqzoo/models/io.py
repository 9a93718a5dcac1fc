"""Saving and loading models: ``config.json`` (readable) and ``model.safetensors`` (no pickle).

Both files are written to a temporary name in the target folder and renamed into place, so an
interrupted save never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_path(directory: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return tmp


def save_model_dir(model: nn.Module, config: dict, directory: str | os.PathLike, kind: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights = _atomic_path(directory, WEIGHTS_NAME)
    tmp_config = _atomic_path(directory, CONFIG_NAME)
    try:
        # save_model drops the duplicate of tied tensors (embedding = head) and load_model restores it.
        save_model(model, tmp_weights, metadata={"format": "pt", "seqzoo_model": kind})
        with open(tmp_config, "w") as f:
            json.dump({"model_type": kind, **config}, f, indent=2, sort_keys=True)
        os.replace(tmp_weights, directory / WEIGHTS_NAME)
        os.replace(tmp_config, directory / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights, tmp_config):
            if os.path.exists(tmp):
                os.remove(tmp)
    return directory


def read_config(directory: str | os.PathLike, kind: str) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a saved seqzoo model folder")
    config = json.loads(path.read_text())
    found = config.pop("model_type", None)
    if found != kind:
        raise ValueError(f"{directory} holds a {found!r} model, not a {kind!r}")
    return config


def load_weights(model: nn.Module, directory: str | os.PathLike, device=None) -> nn.Module:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    missing, unexpected = load_model(model, str(path), strict=True, device=str(device or "cpu"))
    return model
