"""``seqzoo linearize RUN --to liger|lizard|gla``: turn a trained attention LM into an intra-layer hybrid
(or a gated linear attention model) that reuses its attention weights, fine-tune it with LoRA through the
recipe, and report how much of the original it keeps.

    seqzoo linearize runs/tiny-attention --to liger                  # -> runs/tiny-attention-liger/
    seqzoo linearize runs/tiny-attention --to lizard --steps 500 --rank 16 optim.warmup_steps=20
    seqzoo linearize runs/tiny-attention --to liger --mixer-arg window=32 --mixer-arg gla_weight=0.7

1. The run's model (``RUN/model``, or its latest checkpoint) must have only softmax attention layers
   (``attention`` or ``sliding_window``); any other layer is refused, naming it.
2. Conversion: every attention mixer is replaced, everything else (embeddings, norms, MLPs, head) is kept.
   ``liger`` and ``lizard`` are built by ``from_attention`` (the same q_proj / kv_proj / o_proj, copied;
   ``--mixer-arg`` sets their other keywords: window, gla_weight, swa_weight, n_meta, ...). ``gla`` is built
   with the attention's heads and key / value widths (expand_k = expand_v = heads x head size / d_model) and
   takes q_proj, k_proj, v_proj (the halves of kv_proj; a GQA key / value head is repeated over its group)
   and o_proj; its gate, output gate and norm are new (the layer's initialisation). The result is saved as
   ``OUT/converted/`` (a normal saved CausalLM).
3. Fine-tuning through the recipe (``train``) with the run's own config: the same data, tokenizer and seed,
   ``finetune.init_from = OUT/converted``, LoRA on q_proj / kv_proj / o_proj (gla: q_proj, k_proj, v_proj,
   o_proj), the new parameters trained in full, ``--steps`` steps (300), into ``OUT/finetuned/``
   (``model/`` there is merged: a plain model). ``key=value`` overrides apply to this run's config.
4. Report (printed and written to ``OUT/linearize.json``): validation loss of the original, of the converted
   model before fine-tuning and after, on the same validation batches (the recipe's ``evaluate``), with
   ``val_bpb`` for text runs and ``val_acc``: next-token accuracy for text, and for a run trained on a task
   (``data.source: task``, e.g. ``name: mqar``) the task's accuracy, i.e. MQAR recall for an MQAR run.
   MQAR accuracy is not computed for text LMs: a byte-level LM trained on Python sources has no MQAR
   vocabulary, so the number would say nothing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml

TARGETS = ("liger", "lizard", "gla")
# LoRA targets of the converted mixers (the attention projections as each mixer names them).
LORA_TARGETS = {
    "liger": ["q_proj", "kv_proj", "o_proj"],
    "lizard": ["q_proj", "kv_proj", "o_proj"],
    "gla": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


class LinearizeError(ValueError):
    """A run that cannot be linearized; the message says why (which layer, which argument)."""


def configure_parser(p) -> None:
    p.add_argument("run", help="a run folder written by seqzoo train (config.yaml, model/ or checkpoints/)")
    p.add_argument(
        "--to", required=True, choices=TARGETS, help="the mixer that replaces each attention layer"
    )
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning peak lr (default: the run's optim.lr)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--out", default=None, help="output folder (default: RUN-<to> beside the run)")
    p.add_argument(
        "--mixer-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword of the new mixer, value parsed as YAML (liger: window=32, gla_weight=0.7; ...)",
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides of the fine-tuning run, e.g. train.batch_size=8"
    )


# -- loading the run -----------------------------------------------------------------------------------


def load_run(run_dir: str | Path):
    """(RunConfig, CausalLM on CPU) of a run folder."""
    from .config import load_config
    from .generate import load_run_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise LinearizeError(f"{run_dir}: no config.yaml; give a run folder written by seqzoo train")
    config = load_config(run_dir / "config.yaml")
    if config.model.kind != "lm":
        raise LinearizeError(f"{run_dir}: a {config.model.kind} run; seqzoo linearize converts a CausalLM")
    return config, load_run_model(run_dir, "cpu")


def check_attention_only(model) -> None:
    """Refuse a model with a layer that is not causal softmax attention, naming the layer."""
    from seqzoo.layers.attention import Attention

    for i, ((name, _), block) in enumerate(zip(model.config.layer_specs(), model.backbone.blocks)):
        if not isinstance(block.mixer, Attention):
            raise LinearizeError(
                f"layer {i} is {name!r}, not attention: seqzoo linearize converts models whose every layer is "
                "softmax attention (attention or sliding_window)"
            )
        if block.mixer.bidirectional:
            raise LinearizeError(f"layer {i} is bidirectional attention; the converted mixers are causal")


# -- conversion ----------------------------------------------------------------------------------------


def _hybrid_entry(cls, attn, kwargs: dict) -> dict:
    """The keywords ``cls.from_attention(attn, **kwargs)`` builds the mixer with (written to config.json)."""
    entry = {
        "n_heads": attn.n_heads,
        "n_kv_heads": attn.n_kv_heads,
        "head_dim": attn.head_dim,
        "bias": attn.q_proj.bias is not None,
        "rope_base": attn.rope_base,
    }
    if attn.window is not None:
        entry["window"] = attn.window
    inherited = {"rotary": attn.rotary, "attention_backend": attn.backend}
    entry.update({k: inherited[k] for k in cls._inherited_from_attention})
    entry.update(kwargs)
    return entry


def gla_from_attention(attn, **kwargs):
    """A ``gla`` mixer with ``attn``'s heads and widths, its q/k/v/o weights copied; (mixer, entry)."""
    from seqzoo.layers.gla import GLA

    if attn.q_proj.bias is not None:
        raise LinearizeError("--to gla: the attention has biases; gla's projections have none")
    h, hk, dh, d = attn.n_heads, attn.n_kv_heads, attn.head_dim, attn.d_model
    fixed = {"n_heads": h, "expand_k": h * dh / d, "expand_v": h * dh / d}
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise LinearizeError(f"--to gla: {key}={kwargs[key]!r} differs from the attention's {value!r}")
    entry = {**fixed, **kwargs}
    mixer = GLA(d, **entry)
    if (mixer.key_dim, mixer.value_dim) != (h * dh, h * dh):
        raise LinearizeError(f"--to gla: cannot give gla key / value widths {h * dh} with d_model {d}")
    w = attn.o_proj.weight
    mixer = mixer.to(device=w.device, dtype=w.dtype)
    k, v = attn.kv_proj.weight.detach().view(2, hk, dh, d).unbind(0)
    group = h // hk  # GQA: query head j reads key / value head j // group
    with torch.no_grad():
        mixer.q_proj.weight.copy_(attn.q_proj.weight)
        mixer.k_proj.weight.copy_(k.repeat_interleave(group, 0).reshape(h * dh, d))
        mixer.v_proj.weight.copy_(v.repeat_interleave(group, 0).reshape(h * dh, d))
        mixer.o_proj.weight.copy_(attn.o_proj.weight)
    return mixer, entry


def _copied_names(to: str) -> tuple[str, ...]:
    return ("q_proj.", "k_proj.", "v_proj.", "o_proj.") if to == "gla" else ("q_proj.", "kv_proj.", "o_proj.")


def convert(model, to: str, mixer_kwargs: dict | None = None):
    """The converted CausalLM (a new model; ``model`` is unchanged) and the name patterns of its new
    parameters (``mixer.phi_q``, ``mixer.gk_proj.0``, ...: what the fine-tuning trains in full)."""
    from seqzoo import CausalLM, LMConfig
    from seqzoo.registry import mixer_class

    if to not in TARGETS:
        raise LinearizeError(f"--to must be one of {TARGETS}, got {to!r}")
    check_attention_only(model)
    mixer_kwargs = dict(mixer_kwargs or {})
    converted = copy.deepcopy(model)
    entries = []
    for block in converted.backbone.blocks:
        attn = block.mixer
        if to == "gla":
            block.mixer, entry = gla_from_attention(attn, **mixer_kwargs)
        else:
            cls = mixer_class(to)
            try:
                block.mixer = cls.from_attention(attn, **mixer_kwargs)
            except TypeError as e:
                raise LinearizeError(f"--mixer-arg: {e}") from None
            entry = _hybrid_entry(cls, attn, mixer_kwargs)
        entries.append({"name": to, **entry})
    fields = model.config.model_dump()
    fields.update(mixer=entries, mixer_kwargs={})
    converted.config = LMConfig(**fields)
    # The entries must rebuild exactly this model: same tensors, same shapes (else config.json would lie).
    fresh = CausalLM(converted.config).state_dict()
    ours = converted.state_dict()
    if {k: tuple(v.shape) for k, v in fresh.items()} != {k: tuple(v.shape) for k, v in ours.items()}:
        raise RuntimeError("linearize: the converted config does not rebuild the converted model's tensors")
    copied = _copied_names(to)
    new = []
    for name, _ in converted.named_parameters():
        if ".mixer." not in name:
            continue
        local = name.split(".mixer.", 1)[1]
        if not local.startswith(copied):
            pattern = (
                "mixer." + local.rsplit(".", 1)[0]
                if local.endswith((".weight", ".bias"))
                else "mixer." + local
            )
            if pattern not in new:
                new.append(pattern)
    return converted, new


# -- the fine-tuning run -------------------------------------------------------------------------------


def finetune_config(
    run_config,
    run_dir: Path,
    converted,
    converted_dir: Path,
    out_dir: Path,
    to: str,
    new_params: list[str],
    steps: int = 300,
    lr: float | None = None,
    rank: int = 8,
    alpha: float | None = None,
    overrides=(),
):
    """The RunConfig of the fine-tuning: the run's own, with the converted model, ``finetune:`` set, and
    ``steps`` steps into ``out_dir``; ``overrides`` (dotted keys) apply last."""
    from .config import apply_override, validate_config

    raw = run_config.model_dump(mode="json")
    raw["name"] = f"{run_config.name}-{to}"
    raw["model"] = {**converted.config.model_dump(mode="json"), "mixer_settings": "none"}
    tok = raw["data"]["tokenizer"]
    if run_config.data.source not in ("task", "lra") and tok["kind"] != "bytes":
        # The run's own tokenizer, not a BPE retrained: the token ids must mean what they meant.
        tok.update(kind="path", path=str((run_dir / "tokenizer.json").resolve()))
    train = raw["train"]
    train.update(steps=steps, out_dir=str(out_dir), eval_every=min(train["eval_every"], steps))
    train["ckpt_every"] = min(train["ckpt_every"], steps)
    raw["optim"]["warmup_steps"] = min(raw["optim"]["warmup_steps"], max(1, steps // 10))
    if lr is not None:
        raw["optim"]["lr"] = lr
    raw["eval"]["tasks"] = []  # lm-eval after a linearization: seqzoo eval OUT/finetuned
    raw["finetune"] = {
        "init_from": str(converted_dir),
        "new_params": [],
        "lora": {"rank": rank, "alpha": 2.0 * rank if alpha is None else alpha, "targets": LORA_TARGETS[to]},
        "train_only": list(new_params),
    }
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw)


# -- evaluation ----------------------------------------------------------------------------------------


def evaluate_models(models: dict, config, run_dir: Path) -> dict:
    """{label: the recipe's validation metrics} for every model, on the same validation batches."""
    from .data import build_data
    from .loop import evaluate, resolve_device, resolve_precision
    from .tokenizers import load_run_tokenizer

    device = resolve_device(config, 0)
    dtype = resolve_precision(config, device)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    data, _ = build_data(config.data, lambda texts: load_run_tokenizer(run_dir), seed=config.train.seed)
    out = {}
    for label, model in models.items():
        model = model.to(device)
        out[label] = evaluate(model, data, config, device, autocast)
        model.to("cpu")
    return out


# -- the whole thing -----------------------------------------------------------------------------------


def _parse_mixer_args(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise LinearizeError(f"--mixer-arg {item!r} must look like key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(text)
    return out


def linearize(
    run_dir,
    to: str,
    steps: int = 300,
    lr: float | None = None,
    rank: int = 8,
    alpha: float | None = None,
    out_dir=None,
    mixer_kwargs: dict | None = None,
    overrides=(),
    finetune: bool = True,
) -> dict:
    """Convert, save, fine-tune and evaluate as the command does; returns the report (also written to
    ``OUT/linearize.json``). ``finetune=False`` stops after the converted model's evaluation."""
    from seqzoo import CausalLM

    from .loop import train

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir.parent / f"{run_dir.name}-{to}"
    run_config, original = load_run(run_dir)
    converted, new_params = convert(original, to, mixer_kwargs)
    converted_dir = out_dir / "converted"
    converted.save(converted_dir)
    converted = CausalLM.load(converted_dir)  # what is evaluated and fine-tuned is what is on disk
    config = finetune_config(
        run_config, run_dir, converted, converted_dir, out_dir / "finetuned", to, new_params,
        steps, lr, rank, alpha, overrides,
    )  # fmt: skip
    t_convert = time.perf_counter() - t0
    metrics = evaluate_models({"original": original, "converted": converted}, config, run_dir)
    report = {
        "run": str(run_dir),
        "to": to,
        "mixer": converted.config.mixer[0],
        "converted_dir": str(converted_dir),
        "parameters": {"original": original.num_parameters(), "converted": converted.num_parameters()},
        "new_params": new_params,
        **metrics,
    }
    t_ft = 0.0
    if finetune:
        t1 = time.perf_counter()
        summary = train(config)
        t_ft = time.perf_counter() - t1
        finetuned = CausalLM.load(config.out_path() / "model")
        report["finetuned"] = evaluate_models({"finetuned": finetuned}, config, run_dir)["finetuned"]
        report["finetuned_dir"] = str(config.out_path())
        report["finetune"] = {
            "steps": summary.get("steps", config.train.steps),
            "lr": config.optim.lr,
            "lora": config.finetune.lora.model_dump(),
            "train_only": config.finetune.train_only,
            "tokens": summary.get("tokens"),
        }
    report["time_s"] = {
        "convert": round(t_convert, 2),
        "finetune": round(t_ft, 2),
        "total": round(time.perf_counter() - t0, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "linearize.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"report: {out_dir / 'linearize.json'}")
    return report


def format_report(report: dict) -> str:
    labels = [k for k in ("original", "converted", "finetuned") if k in report]
    keys = [k for k in ("val_loss", "val_bpb", "val_acc") if k in report[labels[0]]]
    lines = [
        f"linearize {report['run']} --to {report['to']}",
        f"  {'':<11}" + "".join(f"{k:>10}" for k in keys),
    ]
    for label in labels:
        m = report[label]
        row = "".join(
            f"{m[k]:>10.4f}" if isinstance(m[k], float) and math.isfinite(m[k]) else f"{'-':>10}"
            for k in keys
        )
        lines.append(f"  {label:<11}" + row)
    return "\n".join(lines)


def main(args) -> int:
    from .config import ConfigError

    try:
        linearize(
            args.run,
            args.to,
            steps=args.steps,
            lr=args.lr,
            rank=args.rank,
            alpha=args.alpha,
            out_dir=args.out,
            mixer_kwargs=_parse_mixer_args(args.mixer_arg),
            overrides=args.overrides,
        )
    except (ConfigError, ValueError, FileNotFoundError) as e:  # LinearizeError, a mixer's bad keyword
        print(f"seqzoo linearize: {e}", file=sys.stderr)
        return 2
    return 0
