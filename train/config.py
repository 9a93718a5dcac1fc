"""The run configuration: one YAML file with six sections, validated before anything runs.

    model:  the CausalLM (LMConfig fields; vocab_size defaults to the tokenizer's), or with
            ``kind: classifier`` a SequenceClassifier (Long Range Arena; classes and vocabulary from the data)
    data:   where text comes from, the tokenizer, sequence length; or a task, or an LRA task (``source: lra``)
    optim:  AdamW, the learning-rate schedule, clipping
    train:  steps, batch, precision, checkpoints, evaluation, distributed
    log:    progress bar, metrics.jsonl, TensorBoard
    eval:   lm-eval-harness tasks scored after training (``seqzoo eval``)
    finetune: start from saved weights, LoRA adapters, what trains (train/lora.py; optional)

``load_config("tiny-attention", ["optim.lr=1e-3", "model.mixer=short_conv"])`` reads a file path or a
config shipped in ``train/configs/`` by short name (``tiny-<mixer>`` is ``tiny`` with ``model.mixer=<mixer>``;
a file's ``base: NAME`` puts it over another config), applies dotted overrides (values parsed as YAML), and
validates. Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from seqzoo.models.config import LMConfig
from seqzoo.registry import check_mixer_kwargs

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and what is allowed."""


def _scalar_kinds(annotation) -> set[type] | None:
    """{int}, {int, NoneType}, {bool, Literal}... for a field annotated with scalars; None for anything else."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = set()
        for arg in typing.get_args(annotation):
            sub = _scalar_kinds(arg)
            if sub is None:
                return None
            kinds |= sub
        return kinds
    if origin is Literal:
        return {Literal}
    if annotation in (int, float, bool, str, type(None)):
        return {annotation}
    return None


def _check_scalar_type(cls, value, info: ValidationInfo):
    """Before pydantic's lax coercion: a bool is not a number (``steps: true`` is not 1), an int field takes no
    string or float ("3", 2.5), and a bool field takes only true/false (not 1 or "yes"). Numbers written as
    strings stay allowed for float fields (YAML 1.1 reads ``3e-3`` as a string)."""
    field = cls.model_fields.get(info.field_name)
    kinds = _scalar_kinds(field.annotation) if field is not None else None
    if kinds is None or value is None:
        return value
    if bool in kinds:
        if not isinstance(value, bool) and not (
            isinstance(value, str) and (str in kinds or Literal in kinds)
        ):
            raise ValueError(f"must be true or false, got {value!r}")
    elif isinstance(value, bool) and (int in kinds or float in kinds):
        raise ValueError(f"must be a number, not a boolean, got {value!r}")
    elif int in kinds and float not in kinds and str not in kinds and not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


class Section(BaseModel):
    # allow_inf_nan=False: an infinite learning rate or eps is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _scalar_types = field_validator("*", mode="before")(_check_scalar_type)


class ModelSection(LMConfig):
    """The LMConfig fields (the vocabulary may be left to the tokenizer), and where mixer kwargs come from;
    ``kind: classifier`` builds a SequenceClassifier from the same backbone fields instead."""

    model_config = ConfigDict(allow_inf_nan=False)
    _scalar_types = field_validator("*", mode="before")(_check_scalar_type)

    kind: Literal["lm", "classifier", "sashimi"] = Field(
        "lm",
        description="lm: CausalLM; classifier: SequenceClassifier (data.source lra); sashimi: the multi-scale "
        "audio model (seqzoo.models.Sashimi: d_model, n_layers per level, pool, expand, ff, one mixer entry)",
    )
    pool: list[int] = Field(default_factory=lambda: [4, 4], description="sashimi: pooling factor per level")
    expand: int = Field(2, ge=1, description="sashimi: width multiplier per pooling")
    ff: int = Field(2, ge=0, description="sashimi: FF hidden size = ff * width (0: no FF blocks)")
    pooling: Literal["mean", "last", "cls"] = Field(
        "mean", description="classifier: how positions are pooled"
    )
    bidirectional: bool | Literal["auto"] = Field(
        "auto",
        description="classifier: build the mixers with bidirectional=True; auto: when every mixer of the "
        "model supports it (attention, s4, s4d, flow, the GLA family), else causal",
    )
    vocab_size: int | None = Field(None, ge=2, description="default: the tokenizer's vocabulary size")
    mixer_settings: Literal["paper", "none"] = Field(
        "paper",
        description="paper: fill each mixer's kwargs from seqzoo.models.mixer_settings (its paper's settings) "
        "before the entry's own; none: the layers' own defaults",
    )

    @field_validator("pool")
    @classmethod
    def _pool(cls, value):
        if not value or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in value):
            raise ValueError(f"a non-empty list of pooling factors (ints >= 1), got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _mlp_auto(cls, data):
        """``mlp: auto``: the MLP the mixers' records ask for in an LM block (none for mamba, gelu for s4,
        ...; swiglu where a record names none), written into the config so the saved model says which."""
        if isinstance(data, dict) and data.get("mlp") == "auto":
            from seqzoo.models.mixer_settings import DEFAULT_MLP, lm_mlp_for
            from seqzoo.registry import list_mixers

            mixer = data.get("mixer", LMConfig.model_fields["mixer"].default)
            entries = mixer if isinstance(mixer, list) else [mixer]
            names = [e.get("name") if isinstance(e, dict) else e for e in entries]
            if not entries or not all(isinstance(n, str) and n in list_mixers() for n in names):
                # A wrong mixer value: its own check (below) rejects the config, naming model.mixer.
                return {**data, "mlp": DEFAULT_MLP}
            try:
                mlp = lm_mlp_for(mixer)
            except ValueError as e:  # the mixers ask for different MLPs
                raise ValueError(f"mlp auto: {e}") from None
            data = {**data, "mlp": mlp}
        return data

    @model_validator(mode="after")
    def _mixer_kwargs(self):
        """Each layer's keywords: known to its mixer and of the right type (the values' ranges are checked when
        the model is built)."""
        for name, kwargs in self.layer_specs():
            try:
                check_mixer_kwargs(name, kwargs)
            except (TypeError, ValueError) as e:
                raise ValueError(f"model.mixer_kwargs / model.mixer: {e}") from None
        return self


class TokenizerSection(Section):
    kind: Literal["bytes", "bpe", "path"] = "bytes"
    vocab_size: int = Field(4096, ge=260, description="BPE vocabulary size (kind=bpe)")
    path: str | None = Field(None, description="a tokenizer.json file or a folder holding one (kind=path)")

    @model_validator(mode="after")
    def _path_given(self):
        if self.kind == "path" and not self.path:
            raise ValueError("tokenizer.path is required when tokenizer.kind is 'path'")
        return self


class AudioSection(Section):
    """8-bit audio (``data.source: audio_synthetic`` or ``audio_wav``; train/audio.py)."""

    sample_rate: int = Field(8000, ge=1, description="Hz; wav files at another rate are refused or resampled")
    quantization: Literal["mu_law", "linear"] = "mu_law"
    resample: bool = Field(False, description="audio_wav: resample files at another rate instead of refusing")
    n_train: int = Field(2048, ge=1, description="audio_synthetic: training clips")
    n_val: int = Field(64, ge=1, description="audio_synthetic: validation clips")
    n_test: int = Field(64, ge=1, description="audio_synthetic: test clips")
    f_min: float = Field(100.0, gt=0, description="audio_synthetic: lowest tone (Hz)")
    f_max: float = Field(1000.0, gt=0, description="audio_synthetic: highest tone (Hz)")
    max_tones: int = Field(3, ge=1, description="audio_synthetic: 1..max_tones sinusoids per clip")
    noise: float = Field(0.01, ge=0, description="audio_synthetic: Gaussian noise sigma")

    @model_validator(mode="after")
    def _band(self):
        if not self.f_min <= self.f_max < self.sample_rate / 2:
            raise ValueError(
                f"data.audio: need f_min <= f_max < sample_rate / 2, got f_min {self.f_min}, f_max {self.f_max}, "
                f"sample_rate {self.sample_rate}"
            )
        return self


AUDIO_SOURCES = ("audio_synthetic", "audio_wav")


class DataSection(Section):
    source: Literal["builtin", "files", "hub", "task", "lra", "audio_synthetic", "audio_wav"] = "builtin"
    paths: list[str] = Field(
        default_factory=list,
        description="files or globs (source=files); wav files, folders or globs (audio_wav)",
    )
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    text_field: str = "text"
    name: str | None = Field(
        None, description="hub dataset name or local dataset folder (hub); task name (task, lra)"
    )
    data_dir: str | None = Field(
        None,
        description="lra: the task's data folder (the LRA release layout; default data/lra/<name>); text: an "
        "IMDB dataset folder or files (default: the hub's imdb)",
    )
    generate: dict[str, Any] | None = Field(
        None,
        description="lra listops/pathfinder/pathx: when data_dir holds no data, generate it there first with "
        "these generator arguments (seqzoo lra generate)",
    )
    subset: str | None = Field(None, description="hub dataset configuration")
    split: str = "train"
    max_documents: int | None = Field(None, ge=1)
    max_bytes: int = Field(4_000_000, ge=1000, description="text read from the source, at most")
    task_args: dict[str, Any] = Field(default_factory=dict, description="arguments of the task generator")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    seq_len: int = Field(256, ge=2)
    pack: bool = Field(
        False,
        description="text sources: run each document of a window alone (cu_seqlens through every mixer) and "
        "never predict across a document boundary; false: the windows run as one text",
    )
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    audio: AudioSection = Field(default_factory=AudioSection)

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source in ("files", "audio_wav") and not self.paths:
            raise ValueError(f"data.paths is required when data.source is '{self.source}'")
        if self.source in ("hub", "task", "lra") and not self.name:
            raise ValueError(f"data.name is required when data.source is '{self.source}'")
        if self.generate is not None and self.source != "lra":
            raise ValueError("data.generate is for data.source lra")
        if self.pack and self.source in ("task", "lra", *AUDIO_SOURCES):
            raise ValueError(
                f"data.pack is for text sources (builtin, files, hub), not '{self.source}': a task's examples "
                "are one sequence each, and an LRA batch already runs only its real tokens"
            )
        return self


class OptimSection(Section):
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr for cosine and linear")
    grad_clip: float | None = Field(1.0, gt=0)
    weight_decay_on: Literal["matrices", "all"] = Field(
        "matrices",
        description="matrices: no decay on vectors (norms, biases); all: every parameter (Zoology)",
    )

    @model_validator(mode="after")
    def _betas(self):
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        return self


class TrainSection(Section):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, over all ranks")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU"
    )
    compile: bool = False
    eval_every: int = Field(200, ge=1)
    eval_batches: int = Field(8, ge=1)
    ckpt_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    out_dir: str = Field("runs/{name}", description="'{name}' becomes the config's name")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="strategy under torchrun")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's)")
    retain_cpu_memory: bool = Field(
        True,
        description="on a CPU, keep freed memory in the process instead of returning it to the system "
        "(train/cpu_memory.py: fewer page faults, 10-25% faster steps for some mixers; same results)",
    )
    bn_stats_batches: int = Field(
        0,
        ge=0,
        description="classifiers with BatchNorm: before every evaluation, recompute its statistics over this many "
        "training batches (the first, in file order) with the current weights (precise BN); 0: the running "
        "averages of training",
    )
    early_stop_acc: float | None = Field(
        None, gt=0, le=1, description="stop once validation accuracy reaches it"
    )

    @model_validator(mode="after")
    def _batch_splits(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.grad_accum ({self.grad_accum})"
            )
        return self


class LogSection(Section):
    every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True


class EvalSection(Section):
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval-harness tasks scored after training, as `seqzoo eval` does (needs seqzoo[eval])",
    )
    num_fewshot: int | None = Field(None, ge=0, description="default: each task's own")
    limit: float | None = Field(None, gt=0, description="documents per task (a fraction if < 1)")
    batch_size: int = Field(8, ge=1)


class LoRASection(Section):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, description="the update is (alpha / rank) B A")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "kv_proj", "o_proj"],
        description="names (or last name parts) of the nn.Linear layers given adapters",
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class FinetuneSection(Section):
    """Start from saved weights, optionally with LoRA (train/lora.py; ``seqzoo linearize`` writes one)."""

    init_from: str | None = Field(
        None, description="a saved model folder (config.json + model.safetensors) or a run folder (strict)"
    )
    new_params: list[str] = Field(
        default_factory=list, description="name substrings of tensors init_from may lack (kept as built)"
    )
    lora: LoRASection | None = Field(None, description="adapters on lora.targets; the rest frozen")
    train_only: list[str] | None = Field(
        None,
        description="name substrings of parameters trained in full besides the adapters; default: with lora, "
        "those init_from did not provide; without lora, every parameter",
    )


class RunConfig(Section):
    name: str = "run"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    log: LogSection = Field(default_factory=LogSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)

    @model_validator(mode="after")
    def _eval_needs_text(self):
        if self.eval.tasks and self.data.source in ("task", "lra"):
            raise ValueError("eval.tasks: lm-eval scores language models on text; this run trains on a task")
        return self

    @model_validator(mode="after")
    def _classifier_needs_lra(self):
        if (self.model.kind == "classifier") != (self.data.source == "lra"):
            raise ValueError(
                "model.kind: a classifier trains on a classification task (data.source lra) and an LRA task "
                f"trains a classifier; got model.kind {self.model.kind!r} with data.source {self.data.source!r}"
            )
        return self

    @model_validator(mode="after")
    def _sashimi_pools(self):
        if self.model.kind != "sashimi":
            return self
        if self.data.source in ("task", "lra"):
            raise ValueError(
                f"model.kind sashimi is a next-sample model; data.source {self.data.source!r} is not"
            )
        total = math.prod(self.model.pool)
        if self.data.seq_len % total:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) must be a multiple of prod(model.pool) = {total} "
                f"(model.pool {self.model.pool}): every SaShiMi level pools whole groups"
            )
        mixer = self.model.mixer
        if isinstance(mixer, list) and len(mixer) != 1:
            raise ValueError(
                "model.mixer: sashimi takes one mixer entry (every block of every level uses it)"
            )
        return self

    def out_path(self) -> Path:
        return Path(self.train.out_dir.format(name=self.name))


# ``tiny-<mixer>``: the shipped ``tiny`` config with ``model.mixer=<mixer>`` (no file per mixer).
TINY = "tiny"


def available_configs() -> list[str]:
    """The shipped configs by short name: the files, and ``tiny-<mixer>`` for every registered mixer."""
    from seqzoo.registry import list_mixers

    files = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    # An encoder-only mixer (vig: bidirectional whatever its arguments) has no causal language model.
    causal = [name for name, record in list_mixers().items() if not record.encoder_only]
    return sorted(files | {f"{TINY}-{name}" for name in causal})


def resolve_config_path(name_or_path: str | Path) -> Path:
    path = _config_file(name_or_path)
    if path is None:
        raise ConfigError(f"no config file {str(name_or_path)!r}; shipped configs: {available_configs()}")
    return path


def _config_file(name_or_path: str | Path) -> Path | None:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else name_or_path}.yaml"
    return shipped if shipped.is_file() else None


def _tiny_mixer(name: str | Path) -> str | None:
    """The mixer of a ``tiny-<mixer>`` short name with no file of its own (None for any other name); a removed
    mixer's name raises a ConfigError saying what replaced it."""
    from seqzoo.registry import REMOVED_MIXERS, list_mixers

    if not isinstance(name, str) or not name.startswith(f"{TINY}-"):
        return None
    mixer = name.removeprefix(f"{TINY}-")
    if mixer in REMOVED_MIXERS:
        raise ConfigError(f"no config {name!r}: {REMOVED_MIXERS[mixer]}; its tiny config is {TINY}-rglru")
    records = list_mixers()
    if mixer in records and records[mixer].encoder_only:
        raise ConfigError(
            f"no config {name!r}: {mixer} is encoder-only (bidirectional, it sees the future), so it has no "
            f"causal language model; train it as a classifier, e.g. seqzoo lra pathfinder --cpu --mixer {mixer}"
        )
    return mixer if mixer in records else None


def _merged(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section (a dict value merges, any other value replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def read_raw_config(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict:
    """A config file (or shipped short name) as a dict, before overrides and validation. ``base: NAME`` in a
    file puts the file over the named config; ``tiny-<mixer>`` is ``tiny`` with ``model.mixer=<mixer>``."""
    path = _config_file(name_or_path)
    if path is None:
        mixer = _tiny_mixer(name_or_path)
        if mixer is None:
            resolve_config_path(name_or_path)  # raises, naming the shipped configs
        raw = read_raw_config(TINY)
        raw["model"] = {**raw.get("model", {}), "mixer": mixer}
        raw["name"] = str(name_or_path)
        return raw
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a config name or path, got {base!r}")
        if str(path.resolve()) in _seen:
            raise ConfigError(f"{path}: base configs form a cycle ({' -> '.join(_seen)})")
        parent = read_raw_config(base, (*_seen, str(path.resolve())))
        parent.pop("name", None)
        raw = _merged(parent, raw)
    return raw


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r} has an empty key")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:  # an optional section left empty (a saved config's `lora: null`)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {override!r}: the value of {key.strip()} is not valid YAML ({e})"
        ) from None


def _explain(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def validate_config(raw: dict) -> RunConfig:
    try:
        return RunConfig(**raw)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    except ValueError as e:  # e.g. an unknown mixer name raised while validating
        raise ConfigError(f"invalid config: {e}") from None


def load_config(name_or_path: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if isinstance(name_or_path, dict):
        raw = dict(name_or_path)
    else:
        raw = read_raw_config(name_or_path)
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
