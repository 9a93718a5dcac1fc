"""transformers' ``MambaForCausalLM`` (model_type "mamba") <-> a seqzoo CausalLM of ``mamba`` blocks.

Both compute, per layer, h = h + Mamba(RMSNorm(h)) (no MLP), then RMSNorm and the LM head; the mixer's
equations are the same (seqzoo/layers/mamba.py), so only names change:

    backbone.embeddings.weight              embedding.weight
    backbone.layers.{i}.norm.weight         backbone.blocks.{i}.mixer_norm.weight
    backbone.layers.{i}.mixer.conv1d.weight backbone.blocks.{i}.mixer.conv.weight   ([E, 1, W] <-> [E, W])
    backbone.layers.{i}.mixer.X             backbone.blocks.{i}.mixer.X   (in_proj, x_proj, dt_proj, A_log, D, out_proj)
    backbone.norm_f.weight                  backbone.final_norm.weight
    lm_head.weight                          head.weight   (absent from the file when tie_word_embeddings)

Fields that change the function and are mapped: hidden_size, num_hidden_layers, vocab_size, state_size,
conv_kernel, expand (intermediate_size = expand * hidden_size), time_step_rank ("auto": ceil(hidden_size / 16)),
use_bias, use_conv_bias, layer_norm_epsilon, tie_word_embeddings; hidden_act must be silu. The time_step_*
init fields go to the layer's dt init (they matter only to a fresh model). ``residual_in_fp32`` and
``rescale_prenorm_residual`` do not change an fp32 model's function (the first keeps transformers' residual in
fp32, which an fp32 model is anyway; the second is an init), so any value converts.
"""

from __future__ import annotations

import math

from ...models.config import LMConfig
from ._common import (
    MAMBA_EMBED,
    MAMBA_HEAD,
    Rename,
    dt_init_from_hf,
    field,
    mamba_config_to_hf,
    mamba_lm_config,
    mamba_table,
    positive_expand,
    positive_int,
    require,
    select_mamba_table,
    single_mixer,
)
from ._common import weights_from_hf as _from_hf
from ._common import weights_to_hf as _to_hf
from .family import HFFamily, StateDict, UnsupportedHFConfig, register_family

FAMILY = "mamba"
HEAD, EMBED = MAMBA_HEAD, MAMBA_EMBED

TABLE = mamba_table(
    (
        "in_proj.weight",
        "x_proj.weight",
        "dt_proj.weight",
        "dt_proj.bias",
        "A_log",
        "D",
        "out_proj.weight",
    )
)


def _table(use_bias: bool, use_conv_bias: bool) -> list[Rename]:
    return select_mamba_table(TABLE, use_bias, use_conv_bias)


def _tied(hf: dict) -> bool:
    return bool(field(FAMILY, hf, "tie_word_embeddings", True))  # MambaConfig's default


def config_from_hf(hf: dict) -> LMConfig:
    d = positive_int(FAMILY, hf, "hidden_size")
    expand = positive_expand(FAMILY, hf)
    inner = field(FAMILY, hf, "intermediate_size", expand * d)
    if inner != expand * d:
        raise UnsupportedHFConfig(
            FAMILY, "intermediate_size", inner, f"must be expand * hidden_size = {expand * d}"
        )
    rank = field(FAMILY, hf, "time_step_rank", "auto")
    if rank == "auto":
        rank = math.ceil(d / 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UnsupportedHFConfig(FAMILY, "time_step_rank", rank, "must be 'auto' or a positive integer")
    require(FAMILY, hf, "hidden_act", ("silu", "swish"), "silu", "seqzoo's mamba gates with SiLU")
    kwargs = {
        "d_state": positive_int(FAMILY, hf, "state_size", 16),
        "d_conv": positive_int(FAMILY, hf, "conv_kernel", 4),
        "expand": expand,
        "dt_rank": rank,
        "conv_bias": bool(field(FAMILY, hf, "use_conv_bias", True)),
        "bias": bool(field(FAMILY, hf, "use_bias", False)),
        **dt_init_from_hf(FAMILY, hf),
        "dt_scale": float(field(FAMILY, hf, "time_step_scale", 1.0)),
    }
    return mamba_lm_config(
        FAMILY, hf, "mamba", kwargs, float(field(FAMILY, hf, "layer_norm_epsilon", 1e-5)), _tied(hf)
    )


def weights_from_hf(sd: StateDict, hf: dict) -> StateDict:
    table = _table(bool(hf.get("use_bias", False)), bool(hf.get("use_conv_bias", True)))
    return _from_hf(FAMILY, sd, table, hf["num_hidden_layers"], _tied(hf), EMBED, HEAD)


def _kwargs(cfg: LMConfig) -> dict:
    kw = single_mixer(FAMILY, cfg, "mamba")
    return {
        "d_state": kw.get("d_state", 16),
        "d_conv": kw.get("d_conv", 4),
        "expand": kw.get("expand", 2),
        "dt_rank": kw.get("dt_rank") or math.ceil(cfg.d_model / 16),
        "conv_bias": kw.get("conv_bias", True),
        "bias": kw.get("bias", False),
        "dt_min": kw.get("dt_min", 1e-3),
        "dt_max": kw.get("dt_max", 1e-1),
        "dt_init_floor": kw.get("dt_init_floor", 1e-4),
        "dt_scale": kw.get("dt_scale", 1.0),
        "backend": kw.get("backend", "auto"),
    }


def config_to_hf(cfg: LMConfig) -> dict:
    kw = _kwargs(cfg)
    return mamba_config_to_hf(
        cfg,
        kw,
        "MambaForCausalLM",
        "mamba",
        intermediate_size=kw["expand"] * cfg.d_model,
        time_step_rank=kw["dt_rank"],
        time_step_scale=kw["dt_scale"],
    )


def weights_to_hf(sd: StateDict, cfg: LMConfig) -> StateDict:
    kw = _kwargs(cfg)
    return _to_hf(FAMILY, sd, _table(kw["bias"], kw["conv_bias"]), cfg.n_layers, cfg.tie_embeddings, HEAD)


MAMBA = register_family(
    HFFamily(
        model_type="mamba",
        architecture="MambaForCausalLM",
        config_from_hf=config_from_hf,
        weights_from_hf=weights_from_hf,
        config_to_hf=config_to_hf,
        weights_to_hf=weights_to_hf,
        mixers=("mamba",),
        note="exact in fp32 (the same equations); transformers' MambaRMSNorm computes in fp32 and its "
        "residual_in_fp32 keeps the residual in fp32, so an fp64 transformers model is fp32 there, where "
        "seqzoo's fp64 model stays fp64",
    )
)
