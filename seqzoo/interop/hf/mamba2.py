"""transformers' ``Mamba2ForCausalLM`` (model_type "mamba2") <-> a seqzoo CausalLM of ``mamba2`` blocks.

Per layer h = h + Mamba2(RMSNorm(h)) (no MLP), then RMSNorm and the LM head, as seqzoo's prenorm block with
mlp none. The mixer's equations are the same (seqzoo/layers/mamba2.py: in_proj -> z, xBC, dt; SiLU(conv);
the SSD with dt = softplus(dt + dt_bias), A = -exp(A_log); y + D x; the gated RMSNorm over n_groups groups,
norm after the gate; out_proj), so only names change:

    backbone.embeddings.weight              embedding.weight
    backbone.layers.{i}.norm.weight         backbone.blocks.{i}.mixer_norm.weight
    backbone.layers.{i}.mixer.conv1d.weight backbone.blocks.{i}.mixer.conv.weight   ([C, 1, W] <-> [C, W])
    backbone.layers.{i}.mixer.X             backbone.blocks.{i}.mixer.X   (in_proj, dt_bias, A_log, D, norm, out_proj)
    backbone.norm_f.weight                  backbone.final_norm.weight
    lm_head.weight                          head.weight   (absent from the file when tie_word_embeddings)

Mapped: hidden_size, num_hidden_layers, vocab_size, state_size, head_dim, num_heads (num_heads * head_dim
must be expand * hidden_size), n_groups, conv_kernel, expand, use_bias, use_conv_bias, layer_norm_epsilon (the
block norms and the gated norm alike), tie_word_embeddings. Refused: hidden_act other than silu,
time_step_limit other than (0, inf) (seqzoo does not clamp dt), a gated norm switched off (``rms_norm``
false, an option of older transformers). ``chunk_size`` only orders the sums; ``time_step_rank`` is unused by
Mamba-2; ``residual_in_fp32`` and ``rescale_prenorm_residual`` leave an fp32 model's function as it is.
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

FAMILY = "mamba2"
HEAD, EMBED = MAMBA_HEAD, MAMBA_EMBED

TABLE = mamba_table(("in_proj.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"))


def _table(use_bias: bool, use_conv_bias: bool) -> list[Rename]:
    return select_mamba_table(TABLE, use_bias, use_conv_bias)


def _tied(hf: dict) -> bool:
    return bool(field(FAMILY, hf, "tie_word_embeddings", False))  # Mamba2Config's default


def config_from_hf(hf: dict) -> LMConfig:
    d = positive_int(FAMILY, hf, "hidden_size")
    expand = positive_expand(FAMILY, hf)
    inner = expand * d
    head_dim = positive_int(FAMILY, hf, "head_dim", 64)
    heads = positive_int(FAMILY, hf, "num_heads", 128)
    if heads * head_dim != inner:
        raise UnsupportedHFConfig(
            FAMILY, "num_heads", heads, f"num_heads * head_dim must be expand * hidden_size = {inner}"
        )
    groups = positive_int(FAMILY, hf, "n_groups", 8)
    if heads % groups:
        raise UnsupportedHFConfig(FAMILY, "n_groups", groups, f"must divide num_heads ({heads})")
    require(FAMILY, hf, "hidden_act", ("silu", "swish"), "silu", "seqzoo's mamba2 uses SiLU after the conv")
    require(FAMILY, hf, "rms_norm", (True,), True, "seqzoo's mamba2 always has the gated RMSNorm")
    limit = field(FAMILY, hf, "time_step_limit", (0.0, math.inf))
    if list(limit) != [0.0, math.inf]:
        raise UnsupportedHFConfig(
            FAMILY, "time_step_limit", limit, "seqzoo's mamba2 does not clamp dt (only (0.0, inf) converts)"
        )
    kwargs = {
        "d_state": positive_int(FAMILY, hf, "state_size", 128),
        "d_conv": positive_int(FAMILY, hf, "conv_kernel", 4),
        "expand": expand,
        "headdim": head_dim,
        "n_groups": groups,
        "norm_eps": float(field(FAMILY, hf, "layer_norm_epsilon", 1e-5)),
        "conv_bias": bool(field(FAMILY, hf, "use_conv_bias", True)),
        "bias": bool(field(FAMILY, hf, "use_bias", False)),
        **dt_init_from_hf(FAMILY, hf),
    }
    return mamba_lm_config(FAMILY, hf, "mamba2", kwargs, kwargs["norm_eps"], _tied(hf))


def weights_from_hf(sd: StateDict, hf: dict) -> StateDict:
    table = _table(bool(hf.get("use_bias", False)), bool(hf.get("use_conv_bias", True)))
    return _from_hf(FAMILY, sd, table, hf["num_hidden_layers"], _tied(hf), EMBED, HEAD)


def _kwargs(cfg: LMConfig) -> dict:
    kw = single_mixer(FAMILY, cfg, "mamba2")
    out = {
        "d_state": kw.get("d_state", 128),
        "d_conv": kw.get("d_conv", 4),
        "expand": kw.get("expand", 2),
        "headdim": kw.get("headdim", 64),
        "n_groups": kw.get("n_groups", 1),
        "norm_eps": kw.get("norm_eps", 1e-5),
        "conv_bias": kw.get("conv_bias", True),
        "bias": kw.get("bias", False),
        "dt_min": kw.get("dt_min", 1e-3),
        "dt_max": kw.get("dt_max", 1e-1),
        "dt_init_floor": kw.get("dt_init_floor", 1e-4),
    }
    if out["norm_eps"] != cfg.norm_eps:  # transformers has one epsilon for both norms
        raise UnsupportedHFConfig(
            FAMILY,
            "norm_eps",
            out["norm_eps"],
            f"the mixer's must equal the blocks' norm_eps ({cfg.norm_eps})",
        )
    return out


def config_to_hf(cfg: LMConfig) -> dict:
    kw = _kwargs(cfg)
    return mamba_config_to_hf(
        cfg,
        kw,
        "Mamba2ForCausalLM",
        "mamba2",
        head_dim=kw["headdim"],
        num_heads=kw["expand"] * cfg.d_model // kw["headdim"],
        n_groups=kw["n_groups"],
        time_step_limit=[0.0, math.inf],
    )


def weights_to_hf(sd: StateDict, cfg: LMConfig) -> StateDict:
    kw = _kwargs(cfg)
    return _to_hf(FAMILY, sd, _table(kw["bias"], kw["conv_bias"]), cfg.n_layers, cfg.tie_embeddings, HEAD)


MAMBA2 = register_family(
    HFFamily(
        model_type="mamba2",
        architecture="Mamba2ForCausalLM",
        config_from_hf=config_from_hf,
        weights_from_hf=weights_from_hf,
        config_to_hf=config_to_hf,
        weights_to_hf=weights_to_hf,
        mixers=("mamba2",),
        note="exact in fp32 (the same equations); transformers computes its RMSNorms, the gated norm and the "
        "scan's inputs (x, B, C, A) in fp32 and keeps the residual in fp32 (residual_in_fp32), so an fp64 "
        "transformers model is fp32 there, where seqzoo's fp64 model stays fp64",
    )
)
