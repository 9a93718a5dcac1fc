"""Fine-tuning from saved weights, with low-rank adapters (LoRA, Hu et al. 2021): the ``finetune:`` section.

    finetune:
      init_from: runs/lin/converted        # a saved model folder (config.json + model.safetensors) or a run
      lora: {rank: 8, alpha: 16, targets: [q_proj, kv_proj, o_proj], dropout: 0.0}
      train_only: [mixer.g_proj]           # trained in full besides the adapters

A targeted ``nn.Linear`` becomes a :class:`LoRALinear`: its weight W is frozen and the layer computes

    y = W x + b + (alpha / r) B A dropout(x)          # A [r, in] kaiming-uniform, B [out, r] zeros

so at the start the model is exactly the loaded one. :func:`merge_lora` folds (alpha / r) B A into W and puts
the plain ``nn.Linear`` back: the recipe saves ``model/`` merged, a normal model that loads with no LoRA code.
Checkpoints hold the wrapped model's state (base weights and adapters): a resumed run wraps the model the
same way (:func:`prepare_finetune` runs before the checkpoint is read) and loads it as it was.

Our own LoRA (a few lines, no ``peft``): the recipe's models are plain modules, and merging must give back
exactly the module the model had.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """``base`` (an ``nn.Linear``, frozen) plus a trainable low-rank update ``(alpha / rank) B A``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lora rank must be a positive int, got {rank!r}")
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) draw A
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        for p in base.parameters():
            p.requires_grad_(False)

    # Code that reads a projection's weight (its dtype, device, shape) sees the base layer's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A in fp32 (fp64 for fp64 layers)."""
        dt = torch.promote_types(self.lora_B.dtype, torch.float32)
        return self.scaling * (self.lora_B.detach().to(dt) @ self.lora_A.detach().to(dt))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (in place), trainable again."""
        w = self.base.weight
        w.copy_((w.to(torch.promote_types(w.dtype, torch.float32)) + self.delta_weight()).to(w.dtype))
        for p in self.base.parameters():
            p.requires_grad_(True)
        return self.base


def _matches(name: str, targets) -> bool:
    last = name.rsplit(".", 1)[-1]
    return any(last == t or name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: nn.Module, targets, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0
) -> list[str]:
    """Wrap every ``nn.Linear`` whose name (or its last part) is one of ``targets`` in a :class:`LoRALinear`;
    returns the wrapped modules' names. Every other parameter is left as it is (see :func:`prepare_finetune`
    for what trains). A target that matches no linear layer is an error naming the ones there are."""
    targets = list(targets)
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and _matches(name, targets)
    ]
    unused = [t for t in targets if not any(_matches(n, [t]) for n in found)]
    if not found or unused:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"finetune.lora.targets: {unused or targets} match no nn.Linear of the model; its linear layers "
            f"are named {linear}"
        )
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return found


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back, in place: the model's
    state dict then has the names and shapes of the model without LoRA. Returns ``model``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, m.merged())
    return model


def plain_model(model: nn.Module) -> nn.Module:
    """``model`` itself, or a merged copy when it holds adapters (to save a loadable model mid-training)."""
    return merge_lora(copy.deepcopy(model)) if has_lora(model) else model


# -- loading the starting weights ----------------------------------------------------------------------


def weights_file(init_from: str | os.PathLike) -> Path:
    """``model.safetensors`` of a saved model folder, or of a run folder's final model (``RUN/model``)."""
    path = Path(init_from)
    for candidate in (path, path / "model.safetensors", path / "model" / "model.safetensors"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"finetune.init_from: {str(init_from)!r} is neither a saved model folder (config.json + "
        "model.safetensors) nor a run folder with a final model (RUN/model/)"
    )


def _listed(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_init_weights(model: nn.Module, init_from, new=()) -> list[str]:
    """Load ``init_from`` into ``model`` strictly: every tensor of the model must come from the file except
    those whose name contains one of ``new`` (they keep their initialisation), and the file may hold nothing
    the model lacks. Returns the names not loaded. Errors name the missing, unexpected and mis-shaped keys."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = weights_file(init_from)
    own = model.state_dict()
    with safe_open(str(path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    wrong = [
        f"{k} {shapes[k]} vs {tuple(own[k].shape)}"
        for k in shapes
        if k in own and shapes[k] != tuple(own[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"finetune.init_from {path}: shapes differ from the model's (file vs model): {_listed(wrong)}"
        )
    device = next(iter(own.values())).device if own else "cpu"
    missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    missing = sorted(missing)
    not_new = [k for k in missing if not any(s in k for s in new)]
    if not_new or unexpected:
        parts = []
        if not_new:
            parts.append(
                f"missing from the file: {_listed(not_new)} (list new parameters in finetune.new_params)"
            )
        if unexpected:
            parts.append(f"in the file but not in the model: {_listed(unexpected)}")
        raise ValueError(f"finetune.init_from {path} does not fit the model: " + "; ".join(parts))
    return missing


def prepare_finetune(model: nn.Module, section, load: bool = True) -> dict:
    """What ``finetune:`` asks of a freshly built model, in place, before the optimizer is made:

    1. load ``init_from`` (strict, but for ``new_params``); ``load=False`` skips it (a resume, whose
       checkpoint holds every weight);
    2. wrap the ``lora.targets`` in adapters;
    3. set what trains: with LoRA, the adapters and the ``train_only`` parameters (default: those the file
       did not provide), the rest frozen; without LoRA, everything, or only ``train_only`` when it is given.

    Returns {"new": names not loaded, "lora": wrapped modules, "trainable": n, "total": n}; a section with
    nothing set leaves the model alone."""
    info = {"new": [], "lora": [], "trainable": None, "total": None}
    if section is None or (section.init_from is None and section.lora is None and section.train_only is None):
        return info
    if section.init_from is not None and load:
        info["new"] = load_init_weights(model, section.init_from, section.new_params)
    elif section.init_from is not None:  # a resume: the new tensors are the ones new_params name
        info["new"] = [k for k in model.state_dict() if any(s in k for s in section.new_params)]
    train_only = section.train_only
    if train_only is None:
        train_only = info["new"] if section.lora is not None else None
    if section.lora is not None:
        lora = section.lora
        info["lora"] = apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout)
    if section.lora is not None or train_only is not None:
        for name, p in model.named_parameters():
            p.requires_grad_(
                ("lora_A" in name or "lora_B" in name) or any(s in name for s in train_only or ())
            )
    if section.train_only:
        names = [n for n, _ in model.named_parameters()]
        unused = [s for s in section.train_only if not any(s in n for n in names)]
        if unused:
            raise ValueError(f"finetune.train_only: {unused} match no parameter of the model")
    info["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["total"] = sum(p.numel() for p in model.parameters())
    if not info["trainable"]:
        raise ValueError("finetune: no parameter would train; give finetune.lora or finetune.train_only")
    if os.environ.get("RANK", "0") == "0":
        what = f"init from {section.init_from}" if section.init_from else "fine-tuning"
        print(
            f"{what}: {len(info['new'])} new tensor(s), LoRA on {len(info['lora'])} layer(s); "
            f"{info['trainable']:,} of {info['total']:,} parameters train"
        )
    return info
