"""The mixer records (``register_mixer`` beside each layer) are the one place a per-mixer value is stated: no
record repeats its constructor's default, and no table that remains (the shipped configs, the MQAR sweeps,
the LRA settings) repeats a record or a default. A user's own mixer registers with a name, a description and
a paper, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import seqzoo
from seqzoo.models.mixer_settings import DEFAULT_MLP, lm_mlp_for, markdown_table, with_paper_settings
from seqzoo.registry import _MIXERS, LRASettings, MixerRecord, constructor_defaults, register_mixer
from seqzoo.train.config import CONFIG_DIR, available_configs, load_config, read_raw_config

ROOT = Path(__file__).parents[1]
RECORDS = seqzoo.list_mixers()


def same(a, b) -> bool:
    """Equal and of the same type (True is not 1, 4 is not 4.0: a record's 2.0 against a default 2 is a change)."""
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_record_states_only_what_differs_from_the_constructor(name):
    record, defaults = RECORDS[name], constructor_defaults(name)
    for what, kwargs in (("paper_settings", record.paper_settings), ("test_kwargs", record.test_kwargs)):
        repeats = {k: v for k, v in kwargs.items() if k in defaults and same(defaults[k], v)}
        assert not repeats, f"{name}: {what} repeat the constructor's defaults {repeats}"
    assert record.description and record.paper and record.family and record.settings_source
    if record.lra is not None:
        paper = with_paper_settings(name)
        repeats = {k: v for k, v in record.lra.kwargs.items() if same({**defaults, **paper}.get(k), v)}
        assert not repeats, f"{name}: lra.kwargs repeat its paper settings or defaults {repeats}"


def _mixer_entries(mixer) -> list[dict]:
    entries = mixer if isinstance(mixer, list) else [mixer]
    return [{"name": e} if isinstance(e, str) else dict(e) for e in entries]


def _repeats(name: str, kwargs: dict) -> dict:
    """The keywords of ``kwargs`` that mixer ``name``'s record or constructor already give it."""
    given = {**constructor_defaults(name), **RECORDS[name].paper_settings}
    return {k: v for k, v in kwargs.items() if k != "name" and k in given and same(given[k], v)}


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_repeat_no_record(config):
    """A config names what differs: no mixer keyword its record or constructor gives, no MLP the record's
    ``mlp: auto`` gives, and no ``tiny-<mixer>`` file that is only ``tiny`` with ``model.mixer``."""
    raw = read_raw_config(config)
    model = raw.get("model", {})
    entries = _mixer_entries(model.get("mixer", "attention"))
    for entry in entries:
        assert not _repeats(entry["name"], entry), (config, entry["name"], _repeats(entry["name"], entry))
        shared = {k: v for k, v in model.get("mixer_kwargs", {}).items() if k not in entry}
        assert not _repeats(entry["name"], shared), (config, "mixer_kwargs", _repeats(entry["name"], shared))
    names = {e["name"] for e in entries}
    if model.get("mlp") not in (None, "auto") and all(RECORDS[n].lm_mlp for n in names):
        try:
            auto = lm_mlp_for(sorted(names))
        except ValueError:  # the mixers disagree: the config must name one
            auto = None
        assert model["mlp"] != auto, (
            f"{config}: model.mlp {model['mlp']} is what mlp: auto gives (the records')"
        )
    if config.removeprefix("tiny-") in RECORDS:
        tiny = read_raw_config("tiny")
        only_mixer = {**tiny, "name": config, "model": {**tiny["model"], "mixer": model.get("mixer")}}
        assert raw != only_mixer, f"{config}.yaml is tiny + model.mixer: the short name needs no file"


@pytest.mark.parametrize("sweep", sorted(p.name for p in (ROOT / "eval" / "configs").glob("mqar*.yaml")))
def test_mqar_sweeps_repeat_no_record(sweep):
    raw = yaml.safe_load((ROOT / "eval" / "configs" / sweep).read_text())
    for name, kwargs in raw.get("mixer_kwargs", {}).items():
        assert not _repeats(name, kwargs), (sweep, name, _repeats(name, kwargs))
    lrs = raw.get("mixer_lrs", {})
    if isinstance(lrs, dict):
        assert not {n for n, v in lrs.items() if RECORDS[n].mqar_lr is not None and v == [RECORDS[n].mqar_lr]}
    else:
        assert lrs == "record"


def test_the_cpu_sweep_runs_each_mixer_at_its_records_lr():
    from seqzoo.eval.mqar import load_sweep

    sweep = load_sweep("mqar-cpu")
    for name in sweep.mixer_entries():
        assert sweep.mixer_lrs.get(name, sweep.lrs) == [RECORDS[name].mqar_lr], name
    assert {n for n, r in RECORDS.items() if r.mqar_lr == 3e-3} == {
        "attention", "sliding_window", "liger", "lizard", "hyena", "combiner",
    }  # fmt: skip


# An encoder-only mixer (vig) has no tiny LM config (test_vig checks the refusal).
CAUSAL = sorted(n for n, r in RECORDS.items() if not r.encoder_only)


@pytest.mark.parametrize("name", CAUSAL)
def test_tiny_mixer_is_tiny_with_the_mixer_and_its_mlp(name):
    config = load_config(f"tiny-{name}")
    tiny = load_config("tiny", [f"model.mixer={name}"])
    assert config.name == f"tiny-{name}" and config.model.mixer == name
    assert config.model.mlp == (RECORDS[name].lm_mlp or DEFAULT_MLP)
    if name != "sliding_window":  # tiny-sliding_window.yaml sets its window (a quarter of the sequence)
        assert config.model_dump(exclude={"name"}) == tiny.model_dump(exclude={"name"})
    assert f"tiny-{name}" in available_configs()


def test_mlp_auto_needs_the_mixers_to_agree():
    from seqzoo.train.config import ConfigError

    assert load_config("tiny", ["model.mixer=[mamba, mamba2]"]).model.mlp == "none"
    with pytest.raises(ConfigError, match="mlp auto.*different MLPs"):
        load_config("tiny", ["model.mixer=[mamba, s4]"])


def test_settings_table_lists_every_record():
    table = markdown_table()
    for name, record in RECORDS.items():
        assert f"| `{name}` | {record.family} |" in table


class _ToyMixer(seqzoo.layers.Mixer):
    def __init__(self, d_model: int, width: int = 3):
        super().__init__()


def test_a_users_mixer_needs_only_name_description_and_paper():
    try:
        register_mixer("toy_record_test", description="a toy", paper="none")(_ToyMixer)
        record = seqzoo.list_mixers()["toy_record_test"]
        assert isinstance(record, MixerRecord) and record.cls is _ToyMixer
        assert (record.family, record.lm_mlp, record.mqar_lr, record.lra) == ("", None, None, None)
        assert dict(record.paper_settings) == {} and with_paper_settings("toy_record_test") == {
            "name": "toy_record_test"
        }
    finally:
        _MIXERS.pop("toy_record_test", None)


@pytest.mark.parametrize(
    "fields, error, word",
    [
        ({"colour": "red"}, TypeError, "colour"),
        ({"paper_settings": {"depth": 2}}, TypeError, "depth"),
        ({"paper_settings": {"width": "3"}}, ValueError, "width"),
        ({"lm_mlp": "relu"}, ValueError, "lm_mlp"),
        ({"mqar_lr": -1.0}, ValueError, "mqar_lr"),
        ({"lra": {"kwargs": {}}}, TypeError, "lra"),
        ({"test_kwargs": [("width", 2)]}, TypeError, "test_kwargs"),
    ],
)
def test_a_bad_record_is_refused_naming_the_field(fields, error, word):
    try:
        with pytest.raises(error, match=word):
            register_mixer("toy_record_test", description="a toy", paper="none", **fields)(_ToyMixer)
    finally:
        _MIXERS.pop("toy_record_test", None)


def test_records_are_frozen():
    record = RECORDS["gla"]
    with pytest.raises(AttributeError):
        record.family = "other"
    with pytest.raises(TypeError):
        record.paper_settings["use_short_conv"] = False
    assert isinstance(LRASettings().overrides, type(record.paper_settings))
