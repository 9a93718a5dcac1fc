"""Bad input at every public entry point raises an error a user can act on (docs/design.md, "Style to follow"):
a ValueError/TypeError whose message names the argument (or, at the command line, a usage error naming the
option, exit status 2 and no traceback) - never an IndexError, a RuntimeError from inside torch or an
AttributeError from deep in a layer.

Property-based (hypothesis) over

- ``seqzoo.build_mixer`` for every registered mixer: wrong types for every keyword (a bool where an int goes,
  strings, floats that are not finite), sizes <= 0 and values out of range, unknown keywords and names;
- (every ``seqzoo.ops`` op: in test_bad_input_ops.py, from each op's spec);
- the run config (``seqzoo.train.config``): every section's keys with values of the wrong type or range,
  mixer keywords, malformed YAML;
- the ``seqzoo`` command: unknown commands, configs and runs, numeric options out of range.

Small and derandomized (the examples are the same on every run), tiny tensors: the file runs in a few seconds.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqzoo
from seqzoo.registry import list_mixers
from seqzoo.train.config import ConfigError, load_config

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def names(arg: str) -> str:
    """A regex matching ``arg`` as a whole word (``k`` must not match inside ``kernel``)."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


# ------------------------------------------------------------------------------------------------------------
# build_mixer
# ------------------------------------------------------------------------------------------------------------

D_MODEL = 16
# Each mixer's small test settings, from its record (register_mixer(..., test_kwargs=...)): mamba2's defaults do
# not fit d_model=16; the others' keep the builds fast.
BASE_KWARGS = {name: dict(record.test_kwargs) for name, record in list_mixers().items()}

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
JUNK_TEXT = st.text(alphabet="xyzq!", min_size=1, max_size=4)  # never a valid option name
NEGATIVE_INT = st.integers(max_value=-1)
NON_POSITIVE_INT = st.integers(max_value=0)
NON_POSITIVE_FLOAT = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False)
NEGATIVE_FLOAT = st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False)

# Values out of range for keywords whose range is the same in every mixer that has them (the type-level bad
# values come from the annotations, below).
RANGES = {
    "n_heads": NON_POSITIVE_INT,
    "n_kv_heads": NON_POSITIVE_INT,
    "head_dim": NON_POSITIVE_INT,
    "lru_width": NON_POSITIVE_INT,
    "d_state": NON_POSITIVE_INT,
    "d_conv": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "conv_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "short_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "cond_width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "width": st.one_of(st.integers(max_value=1), st.integers(min_value=9)),
    "expand": st.one_of(NON_POSITIVE_INT, st.integers(min_value=17)),
    "expand_k": NON_POSITIVE_FLOAT,
    "expand_v": NON_POSITIVE_FLOAT,
    "expand_ratio": NON_POSITIVE_INT,
    "window": NON_POSITIVE_INT,
    "l_max": st.integers(max_value=1),
    "filter_order": NON_POSITIVE_INT,
    "feature_dim": NON_POSITIVE_INT,
    "gate_low_rank": NON_POSITIVE_INT,
    "headdim": NON_POSITIVE_INT,
    "n_groups": NON_POSITIVE_INT,
    "n_kernels": NON_POSITIVE_INT,
    "n_inner_mlps": NEGATIVE_INT,
    "n_meta": NEGATIVE_INT,
    "order": st.integers(max_value=1),
    "norm_eps": NON_POSITIVE_FLOAT,
    "eps": NEGATIVE_FLOAT,
    "rope_base": NON_POSITIVE_FLOAT,
    "gate_normalizer": NON_POSITIVE_FLOAT,
    "dt_min": NON_POSITIVE_FLOAT,
    "dt_max": NON_POSITIVE_FLOAT,
    "dt_init_floor": NEGATIVE_FLOAT,
    "dt_scale": NON_POSITIVE_FLOAT,
    "dropout": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "lower_bound": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "sin_freq": NON_POSITIVE_FLOAT,
    "a_init_range": st.one_of(
        st.tuples(NON_POSITIVE_FLOAT, st.floats(1.0, 16.0)),  # a_min <= 0
        st.tuples(st.floats(2.0, 16.0), st.floats(0.1, 1.9)),  # a_min > a_max
        st.lists(st.floats(1.0, 16.0), min_size=0, max_size=1).map(tuple),  # not a pair
        st.lists(st.floats(1.0, 16.0), min_size=3, max_size=4).map(tuple),
    ),
}


def _init_params(cls) -> dict[str, inspect.Parameter]:
    """The keywords a mixer takes (a ``**kwargs`` constructor: those of the class it passes them to)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass in (torch.nn.Module, object):
            continue
        for key, p in inspect.signature(init).parameters.items():
            if key not in ("self", "d_model") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out[key] = p
    own = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in own.values()):
        out = {k: v for k, v in out.items() if k in own}
    return out


def _type_bad(annotation: str) -> st.SearchStrategy | None:
    """Values of the wrong type for a keyword annotated ``annotation`` (a string: the layers use
    ``from __future__ import annotations``)."""
    kinds = {a.strip().split("[")[0] for a in str(annotation).split("|")}
    optional = "None" in kinds
    none = st.nothing() if optional else st.none()
    if "bool" in kinds:
        return st.one_of(st.integers(), JUNK_TEXT, none)
    if "int" in kinds and "float" not in kinds:
        return st.one_of(st.booleans(), st.floats(), JUNK_TEXT, st.just("4"), none)
    if "float" in kinds:
        return st.one_of(st.booleans(), NOT_FINITE, JUNK_TEXT, st.just("1.0"), none)
    if "str" in kinds:
        return st.one_of(st.integers(), st.booleans(), JUNK_TEXT, none)
    if "tuple" in kinds:
        return st.one_of(st.integers(), JUNK_TEXT, st.booleans(), none)
    return None


def _bad_kwargs(name: str) -> st.SearchStrategy:
    """(keyword, bad value) pairs for mixer ``name``."""
    options = []
    for key, p in _init_params(list_mixers()[name].cls).items():
        strategies = [s for s in (_type_bad(p.annotation), RANGES.get(key)) if s is not None]
        if strategies:
            options.append(st.tuples(st.just(key), st.one_of(*strategies)))
    return st.one_of(*options)


MIXERS = sorted(list_mixers())


@pytest.mark.parametrize("name", MIXERS)
@FAST
@given(data=st.data())
def test_build_mixer_bad_keyword_values_name_the_keyword(name, data):
    key, value = data.draw(_bad_kwargs(name), label="keyword, value")
    kwargs = {**BASE_KWARGS.get(name, {}), key: value}
    with pytest.raises((ValueError, TypeError), match=names(key)):
        seqzoo.build_mixer(name, D_MODEL, **kwargs)


def test_build_mixer_defaults_build():
    """The base the bad values are put into is valid: each error above comes from the one bad keyword."""
    for name in MIXERS:
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", MIXERS)
@FAST
@given(key=st.from_regex(r"\A[a-z][a-z_]{0,10}\Z"))
def test_build_mixer_unknown_keyword_named(name, key):
    if key in _init_params(list_mixers()[name].cls):
        return
    with pytest.raises(TypeError, match=names(key)):
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}), **{key: 1})


@FAST
@given(
    name=st.sampled_from(MIXERS),
    d_model=st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(), JUNK_TEXT, st.none()),
)
def test_build_mixer_bad_d_model(name, d_model):
    with pytest.raises((ValueError, TypeError), match="d_model"):
        seqzoo.build_mixer(name, d_model)


@FAST
@given(name=st.text(max_size=12))
def test_build_mixer_unknown_name(name):
    if name in list_mixers():
        return
    with pytest.raises(ValueError, match="unknown mixer"):
        seqzoo.build_mixer(name, D_MODEL)


@FAST
@given(name=st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.just("attention"), max_size=2)))
def test_build_mixer_name_not_a_string(name):
    with pytest.raises(TypeError, match="mixer name"):
        seqzoo.build_mixer(name, D_MODEL)


@FAST
@given(name=st.sampled_from(MIXERS), backend=JUNK_TEXT)
def test_build_mixer_unknown_backend_at_construction(name, backend):
    """An unknown backend is caught when the mixer is built, not at its first forward."""
    with pytest.raises(ValueError, match=names("backend")):
        seqzoo.build_mixer(name, D_MODEL, **BASE_KWARGS.get(name, {}), backend=backend)


# ------------------------------------------------------------------------------------------------------------
# the run config
# ------------------------------------------------------------------------------------------------------------

BASE_CONFIG = "tiny-attention"

# key -> bad values (YAML-parsed values, as a config file or an override gives them).
NOT_BOOL = st.one_of(st.integers(), st.sampled_from(["yes", "no", "on"]), st.floats(allow_nan=False))
CONFIG_CASES = {
    "model.d_model": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("64"), st.floats(0.5, 64.5)),
    "model.n_layers": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("2")),
    "model.mlp_ratio": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans(), JUNK_TEXT),
    "model.norm_eps": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans()),
    "model.dropout": st.one_of(NEGATIVE_FLOAT, st.floats(min_value=1.0, allow_nan=False), st.booleans()),
    "model.tie_embeddings": NOT_BOOL,
    "model.vocab_size": st.one_of(st.integers(max_value=1), st.booleans(), JUNK_TEXT),
    "model.block": JUNK_TEXT,
    "model.norm": JUNK_TEXT,
    "model.kind": JUNK_TEXT,
    "model.mixer_settings": JUNK_TEXT,
    "data.seq_len": st.one_of(st.integers(max_value=1), st.booleans(), st.just("128")),
    "data.source": JUNK_TEXT,
    "data.val_fraction": st.one_of(NON_POSITIVE_FLOAT, st.floats(0.5, 10.0), NOT_FINITE, st.booleans()),
    "data.max_bytes": st.one_of(st.integers(max_value=999), st.booleans()),
    "optim.lr": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans(), JUNK_TEXT),
    "optim.weight_decay": st.one_of(NEGATIVE_FLOAT, NOT_FINITE, st.booleans()),
    "optim.eps": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE),
    "optim.betas": st.one_of(
        st.tuples(st.floats(1.0, 5.0), st.floats(0.0, 0.99)).map(list),
        st.tuples(st.floats(0.0, 0.99), NEGATIVE_FLOAT).map(list),
        st.lists(st.floats(0.0, 0.99), max_size=1),
        JUNK_TEXT,
    ),
    "optim.schedule": JUNK_TEXT,
    "optim.warmup_steps": st.one_of(NEGATIVE_INT, st.booleans(), st.floats(0.5, 10.5)),
    "optim.min_lr_ratio": st.one_of(NEGATIVE_FLOAT, st.floats(1.01, 10.0), NOT_FINITE),
    "optim.grad_clip": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE, st.booleans()),
    "train.steps": st.one_of(NON_POSITIVE_INT, st.booleans(), st.floats(0.5, 10.5), st.just("100")),
    "train.batch_size": st.one_of(NON_POSITIVE_INT, st.booleans(), st.just("8")),
    "train.grad_accum": st.one_of(NON_POSITIVE_INT, st.booleans(), st.sampled_from([3, 5, 6, 7])),  # 16 % g
    "train.device": JUNK_TEXT,
    "train.precision": JUNK_TEXT,
    "train.compile": NOT_BOOL,
    "train.eval_every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.ckpt_every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.keep_last": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "train.threads": st.one_of(NON_POSITIVE_INT, st.booleans(), JUNK_TEXT),
    "train.early_stop_acc": st.one_of(NON_POSITIVE_FLOAT, st.floats(1.01, 5.0), NOT_FINITE),
    "train.bn_stats_batches": st.one_of(NEGATIVE_INT, st.booleans(), st.floats(0.5, 10.5)),
    "log.every": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "log.progress": NOT_BOOL,
    "log.tensorboard": NOT_BOOL,
    "eval.batch_size": st.one_of(NON_POSITIVE_INT, st.booleans()),
    "eval.num_fewshot": st.one_of(NEGATIVE_INT, st.booleans()),
    "eval.limit": st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE),
}


def _base_raw() -> dict:
    return load_config(BASE_CONFIG).model_dump(mode="json")


def _set(raw: dict, key: str, value) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def test_config_base_is_valid():
    load_config(_base_raw())


@settings(FAST, max_examples=60)
@given(case=st.sampled_from(sorted(CONFIG_CASES)).flatmap(lambda k: st.tuples(st.just(k), CONFIG_CASES[k])))
def test_config_bad_value_names_the_key(case):
    key, value = case
    raw = _base_raw()
    _set(raw, key, value)
    with pytest.raises(ConfigError, match=names(key.split(".")[-1])):
        load_config(raw)


@FAST
@given(
    case=st.sampled_from(
        [
            ("n_heads", st.one_of(st.booleans(), JUNK_TEXT, st.floats(0.5, 3.5))),
            ("window", st.one_of(st.booleans(), JUNK_TEXT)),
            ("rope_base", st.one_of(NOT_FINITE, JUNK_TEXT, st.booleans())),
            ("backend", st.one_of(JUNK_TEXT, st.integers())),
            ("bidirectional", NOT_BOOL),
        ]
    ).flatmap(lambda c: st.tuples(st.just(c[0]), c[1])),
    where=st.sampled_from(["mixer_kwargs", "entry"]),
)
def test_config_bad_mixer_keyword_names_it(case, where):
    """Mixer keywords are checked with the config (types and names; ranges when the model is built)."""
    key, value = case
    raw = _base_raw()
    if where == "mixer_kwargs":
        raw["model"]["mixer_kwargs"] = {key: value}
    else:
        raw["model"]["mixer"] = [{"name": "attention", key: value}]
    with pytest.raises(ConfigError, match=names(key)):
        load_config(raw)


@FAST
@given(
    key=st.from_regex(r"\A[a-z][a-z_]{0,10}\Z"), section=st.sampled_from(["", "model.", "optim.", "train."])
)
def test_config_unknown_key_named(key, section):
    raw = _base_raw()
    parent = raw[section[:-1]] if section else raw
    if key in parent:
        return
    _set(raw, section + key, 1)
    with pytest.raises(ConfigError, match=names(key)):
        load_config(raw)


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim: {lr: [1\n", None),  # not YAML
        ("- 1\n- 2\n", None),  # not a mapping
        ("optim:\n  lr: .nan\n", "lr"),
        ("optim:\n  lr: .inf\n", "lr"),
        ("train:\n  steps: yes\n", "steps"),  # YAML 1.1's yes is a bool, not a count
        ("model:\n  mixer: not_a_mixer\n", "not_a_mixer"),
        ("model:\n  mixer_kwargs: {n_heads: two}\n", "n_heads"),
    ],
)
def test_config_file_bad_yaml(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=names(key) if key else None):
        load_config(path)


@FAST
@given(value=st.sampled_from(["[1", "{a: ", "abc", ".nan", "true", "-1"]))
def test_config_override_bad_value(value):
    with pytest.raises(ConfigError, match="lr"):
        load_config(BASE_CONFIG, [f"optim.lr={value}"])


# ------------------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------------------


def _run_cli(argv, capsys) -> tuple[int, str]:
    from seqzoo.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


CLI_NUMERIC = [
    ("demo", "--steps", st.one_of(NON_POSITIVE_INT)),
    ("demo", "--batch-size", NON_POSITIVE_INT),
    ("demo", "--seq-len", NON_POSITIVE_INT),
    ("demo", "--d-model", NON_POSITIVE_INT),
    ("demo", "--n-layers", NON_POSITIVE_INT),
    ("demo", "--lr", st.one_of(NON_POSITIVE_FLOAT, NOT_FINITE)),
    ("generate /nonexistent-run", "--temperature", st.one_of(NEGATIVE_FLOAT, NOT_FINITE)),
    ("generate /nonexistent-run", "--top-p", st.one_of(NON_POSITIVE_FLOAT, st.floats(1.01, 10.0))),
    ("generate /nonexistent-run", "--top-k", NON_POSITIVE_INT),
    ("generate /nonexistent-run", "--max-new-tokens", NON_POSITIVE_INT),
    ("generate /nonexistent-run", "--num-samples", NON_POSITIVE_INT),
    ("bench attention", "--repeats", NON_POSITIVE_INT),
    ("bench attention", "--warmup", NEGATIVE_INT),
    ("linearize /nonexistent-run --to gla", "--steps", NON_POSITIVE_INT),
    ("linearize /nonexistent-run --to gla", "--rank", NON_POSITIVE_INT),
]


@FAST
@given(
    case=st.sampled_from(CLI_NUMERIC).flatmap(lambda c: st.tuples(st.just(c[0]), st.just(c[1]), c[2])),
    junk=st.booleans(),
)
def test_cli_numeric_option_out_of_range(capsys, case, junk):
    """A usage error naming the option, before the command runs (exit status 2, no traceback)."""
    command, option, value = case
    text = "abc" if junk else repr(value) if isinstance(value, float) else str(value)
    code, err = _run_cli([*command.split(), f"{option}={text}"], capsys)
    assert code == 2
    assert re.search(names(option), err), err


@FAST
@given(name=st.from_regex(r"\A[a-z][a-z_-]{0,12}\Z"))
def test_cli_unknown_config_or_command(capsys, name):
    from seqzoo.train.config import available_configs

    if name in available_configs():
        return
    code, err = _run_cli(["train", name, "--print-config"], capsys)
    assert code == 2 and name in err
    code, err = _run_cli([f"zz{name}"], capsys)
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["train", BASE_CONFIG, "optim.lr=abc", "--print-config"], "lr"),
        (["train", BASE_CONFIG, "optim.lr=[1", "--print-config"], "lr"),
        (["train", BASE_CONFIG, "train.steps=true", "--print-config"], "steps"),
        (["train", BASE_CONFIG, "model.mixer_kwargs={n_heads: abc}", "--print-config"], "n_heads"),
        (["train", BASE_CONFIG, "model.mixer=not_a_mixer", "--print-config"], "not_a_mixer"),
        (["train", BASE_CONFIG, "no_equals_sign", "--print-config"], "no_equals_sign"),
        (["list", "--device", "not_a_device"], "--device"),
        (["bench", "not_an_op"], "not_an_op"),
        (["mqar", "not_a_sweep"], "not_a_sweep"),
        (["lra", "not_a_task"], "not_a_task"),
        (["generate", "/nonexistent-run"], "/nonexistent-run"),
        (["linearize", "/nonexistent-run"], "--to"),
    ],
)
def test_cli_bad_arguments_exit_cleanly(capsys, argv, expect):
    code, err = _run_cli(argv, capsys)
    assert code == 2, err
    assert expect in err
