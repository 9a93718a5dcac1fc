"""Hugging Face transformers checkpoints <-> seqzoo models (Mamba, Mamba-2, RecurrentGemma).

Each family is one module here holding an ``HFFamily`` (``family.py``); importing this package imports every
module of it, so a new family needs no import line (as ``seqzoo/layers`` does for mixers).
"""

from __future__ import annotations

import importlib
import pkgutil

from .family import FAMILIES, HFFamily, UnsupportedHFConfig, family_for, register_family

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

from .io import load_hf, read_hf_config, save_hf  # noqa: E402  (after the families registered)

__all__ = [
    "FAMILIES",
    "HFFamily",
    "UnsupportedHFConfig",
    "family_for",
    "load_hf",
    "read_hf_config",
    "register_family",
    "save_hf",
]
