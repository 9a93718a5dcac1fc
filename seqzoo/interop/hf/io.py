"""Reading and writing transformers checkpoint folders without transformers (only json and safetensors).

    model = load_hf("mamba-130m")            # config.json + model.safetensors (or a sharded index) -> CausalLM
    save_hf(model, "out")                    # -> config.json + model.safetensors in transformers' names

A folder holding only ``pytorch_model.bin`` (a pickle) is refused: seqzoo loads safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...models.config import LMConfig
from ...models.lm import CausalLM
from .family import FAMILIES, HFFamily, UnsupportedHFConfig, family_for

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# config.json fields that describe the file, not the model: never compared, never carried from a base config.
FILE_FIELDS = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path")

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _decode_floats(value):
    """transformers 5 writes a non-finite float as {"__float__": "Infinity"} (JSON has none): back to floats."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


def _encode_floats(value):
    """The inverse of ``_decode_floats``, so that the written config.json is strict JSON as transformers' is."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {k: _encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_floats(v) for v in value]
    return value


def read_hf_config(folder: str | os.PathLike) -> dict:
    """A checkpoint's config.json (``folder`` may also name the json file itself) as a dict, non-finite floats
    decoded."""
    path = Path(folder) if Path(folder).is_file() else Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {folder}: not a transformers checkpoint folder")
    return _decode_floats(json.loads(path.read_text()))


def read_hf_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``, or of the shards a ``model.safetensors.index.json`` lists."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{folder / INDEX}: no weight_map")
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{folder / INDEX} lists {shard}, which is not in {folder}")
            sd.update(load_file(str(folder / shard)))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise ValueError(f"{folder / INDEX}: tensors listed but in no shard: {missing[:5]}")
        return sd
    if any(folder.glob("pytorch_model*.bin")):
        raise FileNotFoundError(
            f"{folder} holds pytorch_model.bin (a pickle) but no {WEIGHTS}: seqzoo loads safetensors only. "
            "Convert it where transformers is installed: AutoModelForCausalLM.from_pretrained(FOLDER)"
            ".save_pretrained(FOLDER, safe_serialization=True)"
        )
    raise FileNotFoundError(f"no {WEIGHTS} (nor {INDEX}) in {folder}")


def load_hf(folder: str | os.PathLike, dtype: torch.dtype | str | None = None) -> CausalLM:
    """The seqzoo CausalLM of a transformers checkpoint folder (Mamba, Mamba-2, RecurrentGemma, ...).

    ``dtype``: the model's dtype (torch.float64, "bfloat16", ...); None: float32 whatever the file holds
    (seqzoo trains in fp32 with autocast; a bf16 checkpoint converts exactly into fp32). A config field the
    family cannot represent raises ``UnsupportedHFConfig`` naming it."""
    hf = read_hf_config(folder)
    family = family_for(hf)
    cfg = family.config_from_hf(hf)
    sd = family.weights_from_hf(read_hf_weights(folder), hf)
    model = CausalLM(cfg)
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{family.model_type}: tensor shapes differ from the config's (file vs model): {wrong[:5]}"
        )
    model.load_state_dict(sd, strict=True)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    return model.to(dtype or torch.float32)


def family_of(cfg: LMConfig) -> HFFamily:
    """The transformers family that can hold a seqzoo model of this config (by its mixers)."""
    names = {name for name, _ in cfg.layer_specs()}
    for family in FAMILIES.values():
        if family.mixers and names <= set(family.mixers):
            return family
    for family in FAMILIES.values():
        if family.mixers:
            continue
        try:
            family.config_to_hf(cfg)
        except UnsupportedHFConfig as e:
            if e.field == "mixer":
                continue
            raise
        return family
    raise UnsupportedHFConfig(
        "seqzoo.interop.hf",
        "mixer",
        cfg.mixer,
        f"no transformers family holds it (families: {', '.join(FAMILIES)})",
    )


def _dtype_name(model: torch.nn.Module) -> str:
    dtype = next(model.parameters()).dtype
    return str(dtype).replace("torch.", "")


def save_hf(model: CausalLM, folder: str | os.PathLike, base_config: dict | None = None) -> Path:
    """Write ``model`` as a transformers checkpoint: config.json (with ``architectures``, ``model_type``,
    ``torch_dtype`` and ``dtype``) and model.safetensors in transformers' names, each written under a temporary name and
    renamed into place. ``base_config`` (the config.json a converted model came from) supplies the fields
    that do not change the function (token ids, init ranges, ...); the model's own fields override it."""
    family = family_of(model.config)
    hf = family.config_to_hf(model.config)
    base = {k: v for k, v in (base_config or {}).items() if k not in FILE_FIELDS}
    config = {**base, **hf, "architectures": [family.architecture], "model_type": family.model_type}
    # transformers 5 reads "dtype", 4.x "torch_dtype": both, so that either loads the weights in their dtype.
    config["dtype"] = config["torch_dtype"] = _dtype_name(model)
    sd = family.weights_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for name in (WEIGHTS, CONFIG):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            tmps.append(tmp)
        save_file(sd, tmps[0], metadata={"format": "pt"})
        with open(tmps[1], "w") as f:
            json.dump(_encode_floats(config), f, indent=2, sort_keys=True, allow_nan=False)
        os.replace(tmps[0], folder / WEIGHTS)
        os.replace(tmps[1], folder / CONFIG)
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
    return folder
