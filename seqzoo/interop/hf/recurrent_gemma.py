"""RecurrentGemma (transformers' ``RecurrentGemmaForCausalLM``, ``model_type`` "recurrent_gemma") <-> seqzoo.

A RecurrentGemma is a seqzoo ``CausalLM`` with Griffin's blocks and the Gemma options (all off by default):

    transformers                                 seqzoo
    block_types (cycled to num_hidden_layers)    mixer pattern: "recurrent" -> rglru, "attention" -> sliding_window
    recurrent block linear_y / linear_x / out    rglru(bias=True): gate_proj / in_proj / out_proj
    conv_1d [W, 1, K] (+ bias)                   rglru conv.weight [W, K], conv.bias
    rg_lru recurrent_param, input_gate_*,        a_param, gate_x_weight / gate_x_bias,
           recurrent_gate_*                      gate_a_weight / gate_a_bias (n_heads = num_attention_heads blocks)
    attention q_proj, k_proj + v_proj, o_proj    sliding_window q_proj, kv_proj (k rows then v rows), o_proj
      (bias attention_bias; o_proj always)         (bias=attention_bias, out_bias=True)
    partial_rotary_factor (0.5), rope_theta      rotary_dim = int(head_dim * factor), rope_base
    attention_window_size, num_key_value_heads   window, n_kv_heads; head_dim = hidden_size // num_attention_heads
    mlp gate_proj / up_proj / down_proj (+ bias) mlp "geglu" w1 / w3 / w2, mlp_bias, mlp_hidden = intermediate // 2
    RMSNorm x (1 + w)                            norm "gemma" (temporal_pre_norm -> mixer_norm, channel -> mlp_norm)
    embeddings x bf16(sqrt(hidden_size))         embed_scale = that bf16 value
    logits_soft_cap                              logits_soft_cap
    tie_word_embeddings                          tie_embeddings

The first-token rule (no sqrt(1 - a^2) at position 0) is rglru's own since issue 27. Ignored, as they change no
output: the init scales (``w_init_variance_scale``, ``final_w_init_variance_scale``), the token ids (pad, bos,
eos: the embedding's ``padding_idx`` only zeroes a gradient), ``use_cache``, ``dtype``. Anything else that
seqzoo cannot represent exactly raises ``UnsupportedHFConfig`` naming the field.
"""

from __future__ import annotations

from typing import Any

import torch

from ...models.config import LMConfig
from .family import HFFamily, StateDict, UnsupportedHFConfig, register_family

MODEL_TYPE = "recurrent_gemma"
ARCHITECTURE = "RecurrentGemmaForCausalLM"
ACTIVATION = "gelu_pytorch_tanh"  # rglru's gate and the geglu MLP use gelu(approximate="tanh")

# Fields of transformers' config.json that change no output of the model (initialisation, tokens, bookkeeping).
IGNORED_FIELDS = frozenset(
    {
        "model_type",
        "architectures",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "use_cache",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "w_init_variance_scale",
        "final_w_init_variance_scale",
        "head_dim",  # transformers recomputes it as hidden_size // num_attention_heads (checked below)
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "_name_or_path",
    }
)
KNOWN_FIELDS = IGNORED_FIELDS | {
    "num_hidden_layers",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "lru_width",
    "attention_window_size",
    "conv1d_width",
    "logits_soft_cap",
    "rms_norm_eps",
    "hidden_activation",
    "rope_parameters",
    "rope_theta",  # transformers 4.x wrote these two at the top level
    "partial_rotary_factor",
    "block_types",
    "attention_dropout",
    "attention_bias",
    "tie_word_embeddings",
    "embeddings_scale_by_sqrt_dim",  # transformers 4.x; transformers always scales
    "_block_types",  # transformers 4.x's name of block_types (the published checkpoints carry it)
}

# transformers' defaults (RecurrentGemmaConfig) for fields a config.json may leave out.
DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 26,
    "vocab_size": 256000,
    "hidden_size": 2560,
    "intermediate_size": 3 * 2560,
    "num_attention_heads": 10,
    "lru_width": None,
    "attention_window_size": 2048,
    "conv1d_width": 4,
    "logits_soft_cap": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": ACTIVATION,
    "block_types": ["recurrent", "recurrent", "attention"],
    "attention_dropout": 0.0,
    "num_key_value_heads": None,
    "attention_bias": False,
    "tie_word_embeddings": True,
}


def embed_scale(hidden_size: int) -> float:
    """sqrt(hidden_size) rounded to bf16, as transformers' ``RecurrentGemmaModel.normalizer`` holds it."""
    return float(torch.tensor(hidden_size**0.5, dtype=torch.bfloat16))


def _unsupported(field: str, value: Any, why: str) -> UnsupportedHFConfig:
    return UnsupportedHFConfig(MODEL_TYPE, field, value, why)


def _int(hf: dict, field: str, low: int = 1) -> int:
    value = hf[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _unsupported(field, value, f"must be an int >= {low}")
    return value


def _rope(hf: dict) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from transformers 5's rope_parameters or 4.x's top-level fields."""
    rope = hf.get("rope_parameters")
    if rope is None:
        rope = {
            "rope_type": "default",
            **{k: hf[k] for k in ("rope_theta", "partial_rotary_factor") if k in hf},
        }
    if not isinstance(rope, dict):
        raise _unsupported("rope_parameters", rope, "must be a dict")
    extra = set(rope) - {"rope_type", "rope_theta", "partial_rotary_factor"}
    if extra:
        key = sorted(extra)[0]
        raise _unsupported(
            f"rope_parameters.{key}", rope[key], "only default RoPE (rope_theta, partial_rotary_factor)"
        )
    if rope.get("rope_type", "default") != "default":
        raise _unsupported("rope_parameters.rope_type", rope["rope_type"], "only 'default' RoPE")
    theta = rope.get("rope_theta", 10000.0)
    factor = rope.get("partial_rotary_factor", 0.5)
    for key, value in (("rope_theta", theta), ("partial_rotary_factor", factor)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise _unsupported(f"rope_parameters.{key}", value, "must be a positive number")
    return float(theta), float(factor)


def config_from_hf(hf_config: dict) -> LMConfig:
    """transformers' config.json dict -> the LMConfig of the same model (see the module's table)."""
    if hf_config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise _unsupported("model_type", hf_config.get("model_type"), f"this family reads {MODEL_TYPE!r}")
    for field in sorted(hf_config):
        if field not in KNOWN_FIELDS:
            raise _unsupported(field, hf_config[field], "unknown to seqzoo's RecurrentGemma conversion")
    hf = {**DEFAULTS, **hf_config}
    d, n_layers, vocab = _int(hf, "hidden_size"), _int(hf, "num_hidden_layers"), _int(hf, "vocab_size", 2)
    heads = _int(hf, "num_attention_heads")
    kv_heads = heads if hf["num_key_value_heads"] is None else _int(hf, "num_key_value_heads")
    width = d if hf["lru_width"] is None else _int(hf, "lru_width")
    if d % heads:
        raise _unsupported("num_attention_heads", heads, f"must divide hidden_size={d}")
    if heads % kv_heads:
        raise _unsupported("num_key_value_heads", kv_heads, f"must divide num_attention_heads={heads}")
    if width % heads:
        raise _unsupported("lru_width", width, f"must split into num_attention_heads={heads} gate blocks")
    head_dim = d // heads
    if "head_dim" in hf_config and hf_config["head_dim"] != head_dim:
        raise _unsupported(
            "head_dim", hf_config["head_dim"], f"transformers uses hidden_size // heads = {head_dim}"
        )
    intermediate = _int(hf, "intermediate_size", 2)
    if intermediate % 2:
        raise _unsupported(
            "intermediate_size", intermediate, "must be even (two branches of intermediate_size / 2)"
        )
    conv_width = _int(hf, "conv1d_width")
    if not 2 <= conv_width <= 8:
        raise _unsupported("conv1d_width", conv_width, "rglru's convolution takes widths 2..8")
    window = _int(hf, "attention_window_size")
    if hf["hidden_activation"] != ACTIVATION:
        raise _unsupported("hidden_activation", hf["hidden_activation"], f"only {ACTIVATION!r}")
    if hf["attention_dropout"] not in (0, 0.0):
        raise _unsupported("attention_dropout", hf["attention_dropout"], "seqzoo's attention has no dropout")
    if hf.get("embeddings_scale_by_sqrt_dim", True) is not True:
        raise _unsupported(
            "embeddings_scale_by_sqrt_dim", hf["embeddings_scale_by_sqrt_dim"], "transformers always scales"
        )
    cap = hf["logits_soft_cap"]
    if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not cap > 0:
        raise _unsupported("logits_soft_cap", cap, "must be a positive number")
    eps = hf["rms_norm_eps"]
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise _unsupported("rms_norm_eps", eps, "must be a positive number")
    for field in ("attention_bias", "tie_word_embeddings"):
        if not isinstance(hf[field], bool):
            raise _unsupported(field, hf[field], "must be a bool")
    theta, factor = _rope(hf)
    rotary_dim = int(head_dim * factor)
    if rotary_dim < 2 or rotary_dim % 2 or rotary_dim > head_dim:
        raise _unsupported(
            "rope_parameters.partial_rotary_factor",
            factor,
            f"int(head_dim={head_dim} * factor) = {rotary_dim} must be even, >= 2 and <= head_dim",
        )
    block_types = hf["block_types"]
    if "_block_types" in hf_config and "block_types" not in hf_config:
        # transformers 5 ignores 4.x's "_block_types" and builds its default pattern: only that one is exact.
        if list(hf_config["_block_types"]) != DEFAULTS["block_types"]:
            raise _unsupported(
                "_block_types",
                hf_config["_block_types"],
                f"transformers 5 ignores it and builds {DEFAULTS['block_types']}; rename it block_types "
                "to convert that pattern",
            )
    if not isinstance(block_types, (list, tuple)) or not block_types:
        raise _unsupported("block_types", block_types, "must be a non-empty list")
    mixers = []
    for kind in block_types:
        if kind == "recurrent":
            mixers.append(
                {
                    "name": "rglru",
                    "lru_width": width,
                    "n_heads": heads,
                    "conv_width": conv_width,
                    "bias": True,
                }
            )
        elif kind == "attention":
            mixers.append(
                {
                    "name": "sliding_window",
                    "window": window,
                    "n_heads": heads,
                    "n_kv_heads": kv_heads,
                    "head_dim": head_dim,
                    "rope_base": theta,
                    "rotary_dim": rotary_dim,
                    "bias": hf["attention_bias"],
                    "out_bias": True,
                }
            )
        else:
            raise _unsupported("block_types", block_types, f"unknown block {kind!r} (recurrent, attention)")
    return LMConfig(
        d_model=d,
        n_layers=n_layers,
        vocab_size=vocab,
        mixer=mixers,
        mlp="geglu",
        mlp_hidden=intermediate // 2,
        mlp_bias=True,
        norm="gemma",
        norm_eps=float(eps),
        block="prenorm",
        tie_embeddings=hf["tie_word_embeddings"],
        embed_scale=embed_scale(d),
        logits_soft_cap=float(cap),
    )


def _check(condition: bool, field: str, value: Any, why: str) -> None:
    if not condition:
        raise _unsupported(field, value, why)


def config_to_hf(config: LMConfig) -> dict:
    """LMConfig -> transformers' config.json dict; a config transformers' RecurrentGemma cannot express raises
    ``UnsupportedHFConfig`` naming the seqzoo field."""
    c = config
    _check(c.block == "prenorm", "block", c.block, "RecurrentGemma blocks are prenorm")
    _check(c.norm == "gemma", "norm", c.norm, "RecurrentGemma normalises with (1 + w) RMSNorms: norm='gemma'")
    _check(c.mlp == "geglu", "mlp", c.mlp, "RecurrentGemma's MLP is gated GeLU: mlp='geglu'")
    _check(c.mlp_bias, "mlp_bias", c.mlp_bias, "RecurrentGemma's MLP projections have biases")
    _check(
        c.mlp_hidden is not None, "mlp_hidden", c.mlp_hidden, "give the MLP width exactly (intermediate / 2)"
    )
    _check(
        c.position_embeddings == 0, "position_embeddings", c.position_embeddings, "RecurrentGemma has none"
    )
    _check(c.dropout == 0 and c.embed_dropout == 0, "dropout", (c.dropout, c.embed_dropout), "no dropout")
    _check(c.mixer_kwargs == {}, "mixer_kwargs", c.mixer_kwargs, "give each mixer entry its own kwargs")
    _check(
        c.embed_scale == embed_scale(c.d_model),
        "embed_scale",
        c.embed_scale,
        f"transformers scales by bf16(sqrt(d_model)) = {embed_scale(c.d_model)}",
    )
    _check(c.logits_soft_cap is not None, "logits_soft_cap", None, "transformers always soft-caps")
    entries = c.mixer if isinstance(c.mixer, list) else [c.mixer]
    _check(all(isinstance(e, dict) for e in entries), "mixer", c.mixer, "give each entry's kwargs (a dict)")
    # One value per config.json field, which every block of the pattern must agree on.
    values: dict[str, Any] = {}

    def agree(field: str, key: str, value: Any) -> None:
        _check(
            values.setdefault(key, value) == value, field, value, f"another block has {key}={values[key]!r}"
        )

    recurrent_keys = {"lru_width", "n_heads", "conv_width", "bias"}
    attention_keys = {
        "window",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "rope_base",
        "rotary_dim",
        "bias",
        "out_bias",
    }
    block_types = []
    for i, (name, kw) in enumerate(c.layer_specs()[: len(entries)]):
        field = f"mixer[{i}]"
        if name == "rglru":
            _check(set(kw) <= recurrent_keys, field, kw, f"rglru takes only {sorted(recurrent_keys)} here")
            _check(
                kw.get("bias") is True, f"{field}.bias", kw.get("bias"), "recurrentgemma's blocks have biases"
            )
            _check(kw.get("n_heads") is not None, f"{field}.n_heads", None, "give the gate blocks (= heads)")
            block_types.append("recurrent")
            agree(f"{field}.n_heads", "num_attention_heads", kw["n_heads"])
            agree(f"{field}.lru_width", "lru_width", kw.get("lru_width", c.d_model))
            agree(f"{field}.conv_width", "conv1d_width", kw.get("conv_width", DEFAULTS["conv1d_width"]))
        elif name == "sliding_window":
            _check(
                set(kw) <= attention_keys, field, kw, f"sliding_window takes only {sorted(attention_keys)}"
            )
            _check(kw.get("out_bias") is True, f"{field}.out_bias", kw.get("out_bias"), "o_proj has a bias")
            for key in ("n_heads", "window", "rotary_dim"):
                _check(kw.get(key) is not None, f"{field}.{key}", None, "give it explicitly")
            block_types.append("attention")
            heads = kw["n_heads"]
            head_dim = kw.get("head_dim", c.d_model // heads)
            _check(
                head_dim * heads == c.d_model,
                f"{field}.head_dim",
                head_dim,
                "transformers: d_model // n_heads",
            )
            agree(f"{field}.n_heads", "num_attention_heads", heads)
            agree(f"{field}.n_kv_heads", "num_key_value_heads", kw.get("n_kv_heads") or heads)
            agree(f"{field}.window", "attention_window_size", kw["window"])
            agree(f"{field}.rope_base", "rope_theta", float(kw.get("rope_base", 10000.0)))
            agree(f"{field}.rotary_dim", "rotary_dim", kw["rotary_dim"])
            agree(f"{field}.bias", "attention_bias", kw.get("bias", False))
        else:
            raise _unsupported(field, name, "RecurrentGemma has only rglru and sliding_window blocks")
    # transformers still needs the other kind's fields when the pattern holds one kind: its defaults.
    heads = values.get("num_attention_heads", 1)
    _check(c.d_model % heads == 0, "n_heads", heads, f"must divide d_model={c.d_model}")
    head_dim = c.d_model // heads
    rotary_dim = values.get("rotary_dim", head_dim // 2)
    factor = rotary_dim / head_dim
    _check(int(head_dim * factor) == rotary_dim, "rotary_dim", rotary_dim, "int(head_dim * factor) differs")
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "num_hidden_layers": c.n_layers,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": 2 * c.mlp_hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": values.get("num_key_value_heads", heads),
        "head_dim": head_dim,
        "lru_width": values.get("lru_width", c.d_model),
        "attention_window_size": values.get("attention_window_size", DEFAULTS["attention_window_size"]),
        "conv1d_width": values.get("conv1d_width", DEFAULTS["conv1d_width"]),
        "logits_soft_cap": c.logits_soft_cap,
        "rms_norm_eps": c.norm_eps,
        "hidden_activation": ACTIVATION,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": values.get("rope_theta", 10000.0),
            "partial_rotary_factor": factor,
        },
        "block_types": block_types,
        "attention_dropout": 0.0,
        "attention_bias": values.get("attention_bias", False),
        "tie_word_embeddings": c.tie_embeddings,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }


# transformers' names -> seqzoo's, per block (relative to model.layers.{i}. and backbone.blocks.{i}.).
_COMMON = {
    "temporal_pre_norm.weight": "mixer_norm.weight",
    "channel_pre_norm.weight": "mlp_norm.weight",
    "mlp_block.gate_proj.weight": "mlp.w1.weight",
    "mlp_block.gate_proj.bias": "mlp.w1.bias",
    "mlp_block.up_proj.weight": "mlp.w3.weight",
    "mlp_block.up_proj.bias": "mlp.w3.bias",
    "mlp_block.down_proj.weight": "mlp.w2.weight",
    "mlp_block.down_proj.bias": "mlp.w2.bias",
}
_RECURRENT = {
    "temporal_block.linear_y.weight": "mixer.gate_proj.weight",
    "temporal_block.linear_y.bias": "mixer.gate_proj.bias",
    "temporal_block.linear_x.weight": "mixer.in_proj.weight",
    "temporal_block.linear_x.bias": "mixer.in_proj.bias",
    "temporal_block.linear_out.weight": "mixer.out_proj.weight",
    "temporal_block.linear_out.bias": "mixer.out_proj.bias",
    "temporal_block.conv_1d.weight": "mixer.conv.weight",  # [W, 1, K] <-> [W, K]
    "temporal_block.conv_1d.bias": "mixer.conv.bias",
    "temporal_block.rg_lru.recurrent_param": "mixer.a_param",
    "temporal_block.rg_lru.input_gate_weight": "mixer.gate_x_weight",
    "temporal_block.rg_lru.input_gate_bias": "mixer.gate_x_bias",
    "temporal_block.rg_lru.recurrent_gate_weight": "mixer.gate_a_weight",
    "temporal_block.rg_lru.recurrent_gate_bias": "mixer.gate_a_bias",
}
_ATTENTION = {
    "temporal_block.q_proj.weight": "mixer.q_proj.weight",
    "temporal_block.q_proj.bias": "mixer.q_proj.bias",
    "temporal_block.o_proj.weight": "mixer.o_proj.weight",
    "temporal_block.o_proj.bias": "mixer.o_proj.bias",
}


def _block_names(kind: str, attention_bias: bool) -> dict[str, str]:
    """transformers' parameter names -> seqzoo's inside block i (k_proj and v_proj apart: see _kv_parts)."""
    if kind == "recurrent":
        return {**_COMMON, **_RECURRENT}
    names = {**_COMMON, **_ATTENTION}
    if not attention_bias:
        del names["temporal_block.q_proj.bias"]
    return names


def _kv_parts(attention_bias: bool) -> tuple[str, ...]:
    """k_proj and v_proj are stacked into kv_proj (k rows first, as seqzoo's attention splits it)."""
    return ("weight", "bias") if attention_bias else ("weight",)


def weights_from_hf(hf_weights: StateDict, hf_config: dict) -> StateDict:
    """transformers' state dict -> the state dict of ``CausalLM(config_from_hf(hf_config))``; the tensors are
    the same values in the same dtype (conv filters reshaped, k and v stacked). Missing or unexpected keys raise
    a KeyError naming them."""
    cfg = config_from_hf(hf_config)
    kinds = ["recurrent" if name == "rglru" else "attention" for name, _ in cfg.layer_specs()]
    todo = dict(hf_weights)
    out: StateDict = {}

    def take(key: str) -> torch.Tensor:
        if key not in todo:
            raise KeyError(f"{MODEL_TYPE}: the checkpoint has no {key!r}")
        return todo.pop(key)

    out["embedding.weight"] = take("model.embed_tokens.weight")
    out["backbone.final_norm.weight"] = take("model.final_norm.weight")
    if cfg.tie_embeddings:
        out["head.weight"] = out["embedding.weight"]
        todo.pop("lm_head.weight", None)  # a tied checkpoint may carry the shared tensor twice
    else:
        out["head.weight"] = take("lm_head.weight")
    for i, kind in enumerate(kinds):
        src, dst = f"model.layers.{i}.", f"backbone.blocks.{i}."
        for hf_name, name in _block_names(kind, cfg.layer_specs()[i][1].get("bias", False)).items():
            tensor = take(src + hf_name)
            out[dst + name] = tensor[:, 0] if hf_name == "temporal_block.conv_1d.weight" else tensor
        if kind == "attention":
            for part in _kv_parts(cfg.layer_specs()[i][1]["bias"]):
                k_key, v_key = f"{src}temporal_block.k_proj.{part}", f"{src}temporal_block.v_proj.{part}"
                out[f"{dst}mixer.kv_proj.{part}"] = torch.cat([take(k_key), take(v_key)])
    if todo:
        raise KeyError(f"{MODEL_TYPE}: unexpected checkpoint keys {sorted(todo)[:8]}")
    return out


def weights_to_hf(weights: StateDict, config: LMConfig) -> StateDict:
    """A CausalLM state dict -> transformers' state dict (the inverse of weights_from_hf: the same tensors'
    values; a tied model writes no ``lm_head.weight``, as transformers' save_pretrained does)."""
    hf_config = config_to_hf(config)
    kinds = ["recurrent" if name == "rglru" else "attention" for name, _ in config.layer_specs()]
    todo = dict(weights)
    out: StateDict = {}

    def take(key: str) -> torch.Tensor:
        if key not in todo:
            raise KeyError(f"{MODEL_TYPE}: the seqzoo state dict has no {key!r}")
        return todo.pop(key)

    out["model.embed_tokens.weight"] = take("embedding.weight")
    out["model.final_norm.weight"] = take("backbone.final_norm.weight")
    head = take("head.weight")
    if not config.tie_embeddings:
        out["lm_head.weight"] = head
    for i, kind in enumerate(kinds):
        src, dst = f"backbone.blocks.{i}.", f"model.layers.{i}."
        for hf_name, name in _block_names(kind, hf_config["attention_bias"]).items():
            tensor = take(src + name)
            out[dst + hf_name] = tensor[:, None] if name == "mixer.conv.weight" else tensor
        if kind == "attention":
            for part in _kv_parts(hf_config["attention_bias"]):
                k, v = take(f"{src}mixer.kv_proj.{part}").chunk(2)
                out[f"{dst}temporal_block.k_proj.{part}"] = k
                out[f"{dst}temporal_block.v_proj.{part}"] = v
    if todo:
        raise KeyError(f"{MODEL_TYPE}: seqzoo keys with no transformers name {sorted(todo)[:8]}")
    return out


# google/recurrentgemma-2b's config.json (as published: transformers 4.40's field names).
RECURRENTGEMMA_2B = {
    "_block_types": ["recurrent", "recurrent", "attention"],
    "architectures": [ARCHITECTURE],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attention_window_size": 2048,
    "conv1d_width": 4,
    "embeddings_scale_by_sqrt_dim": True,
    "head_dim": 256,
    "hidden_activation": ACTIVATION,
    "hidden_size": 2560,
    "intermediate_size": 15360,
    "logits_soft_cap": 30.0,
    "lru_width": 2560,
    "model_type": MODEL_TYPE,
    "num_attention_heads": 10,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "vocab_size": 256000,
}


register_family(
    HFFamily(
        model_type=MODEL_TYPE,
        architecture=ARCHITECTURE,
        config_from_hf=config_from_hf,
        weights_from_hf=weights_from_hf,
        config_to_hf=config_to_hf,
        weights_to_hf=weights_to_hf,
        note="transformers computes RMSNorm, RoPE angles, the RG-LRU scan (and eager attention's softmax) in "
        "fp32 even for an fp64 model; seqzoo computes an fp64 model in fp64, so fp64 logits agree to ~4e-7 "
        "unless those casts are lifted (then 1e-15 on the tiny test model).",
    )
)

__all__ = ["config_from_hf", "config_to_hf", "embed_scale", "weights_from_hf", "weights_to_hf"]
