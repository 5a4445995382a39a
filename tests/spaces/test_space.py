"""Search spaces: every sample is a valid Transformer, bad spaces are rejected up front."""

from __future__ import annotations

import pytest

from attntune.model.config import ConfigError, RunConfig
from attntune.spaces.space import (
    builtin_spaces,
    iter_samples,
    load_space,
    make_config,
    parse_param,
    parse_space,
)


@pytest.mark.parametrize("name", ["cpu-small", "gpu-base"])
def test_builtin_spaces_search_the_core_hyperparameters(name: str) -> None:
    space = load_space(name)
    names = set(space.names())
    assert "model.n_heads" in names
    assert names & {"model.head_dim", "model.d_model"}, "model dimension must be searched"
    assert names & {"model.n_layers", "model.n_encoder_layers"}, "depth must be searched"
    assert "train.lr" in names
    assert space.max_params is not None


def test_builtin_spaces_are_listed() -> None:
    assert {"cpu-small", "gpu-base"} <= set(builtin_spaces())


@pytest.mark.parametrize("name", ["cpu-small", "gpu-base"])
def test_every_sample_builds_a_valid_config(name: str) -> None:
    space = load_space(name)
    seen_heads, seen_dims = set(), set()
    for values in iter_samples(space, 2000, seed=1):
        cfg = make_config(RunConfig(), values)  # raises on any invalid model
        assert cfg.model.d_model % cfg.model.n_heads == 0
        assert cfg.model.n_encoder_layers == cfg.model.n_decoder_layers or "model.n_encoder_layers" in values
        seen_heads.add(cfg.model.n_heads)
        seen_dims.add(cfg.model.d_model)
    assert len(seen_heads) >= 3 and len(seen_dims) >= 3


def test_d_model_and_heads_that_do_not_divide_are_rejected_with_the_pair() -> None:
    with pytest.raises(ConfigError) as e:
        parse_space({"params": {"model.d_model": [64, 96], "model.n_heads": [4, 5]}})
    msg = e.value.line()
    assert "model.d_model=64" in msg and "model.n_heads=5" in msg and "head_dim" in msg


def test_d_model_and_heads_that_always_divide_are_accepted() -> None:
    space = parse_space({"params": {"model.d_model": [64, 128], "model.n_heads": [2, 4, 8]}})
    for v in iter_samples(space, 50):
        assert v["model.d_model"] % v["model.n_heads"] == 0


def test_fixed_d_model_checked_against_searched_heads() -> None:
    base = RunConfig()
    with pytest.raises(ConfigError, match="not divisible"):
        parse_space({"params": {"model.n_heads": [3, 4]}}, base)  # base d_model 128


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "low=0.01 > high=0.0001"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "log scale needs low > 0"),
        ({"model.n_heads": {"choices": []}}, "non-empty list"),
        ({"model.n_hedas": {"choices": [2, 4]}}, "model.n_hedas: unknown parameter"),
        ({"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "must be in [0, 1)"),
        ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "lgo": True}}, "lgo: unknown key"),
        ({"task.path": {"choices": ["a"]}}, "task settings cannot be searched"),
        ({"model.head_dim": [16], "model.d_model": [64]}, "cannot both be searched"),
    ],
)
def test_bad_spaces_name_the_key_and_rule(spec: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_space({"params": spec})
    assert needle in e.value.line()


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        parse_space(
            {
                "params": {
                    "train.lr": {"type": "float", "low": 1, "high": 0.1},
                    "model.bogus": [1],
                    "train.warmup_steps": {"type": "int", "low": -5, "high": 10},
                }
            }
        )
    assert len(e.value.problems) == 3


def test_conditional_parameter_exists_only_when_its_parent_has_the_value() -> None:
    space = parse_space(
        {
            "params": {
                "train.warmup_steps": {"type": "int", "low": 10, "high": 100, "when": {"train.schedule": "inverse_sqrt"}},
                "train.schedule": ["inverse_sqrt", "cosine"],
            }
        }
    )
    both = {s["train.schedule"]: ("train.warmup_steps" in s) for s in iter_samples(space, 100)}
    assert both == {"inverse_sqrt": True, "cosine": False}


def test_grid_needs_enumerable_parameters() -> None:
    space = parse_space({"params": {"model.n_heads": [2, 4], "train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}})
    with pytest.raises(ConfigError, match="continuous float range"):
        space.grid()
    stepped = parse_space({"params": {"model.n_heads": [2, 4], "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1}}})
    assert stepped.grid() == {"model.n_heads": [2, 4], "model.dropout": [0.0, 0.1, 0.2]}


def test_pseudo_parameters_expand_into_config_keys() -> None:
    space = parse_space({"params": {"model.n_heads": [4], "model.head_dim": [32], "model.d_ff_ratio": [3.0], "model.n_layers": [2]}})
    (values,) = list(iter_samples(space, 1))
    cfg = make_config(RunConfig(), values)
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.n_encoder_layers, cfg.model.n_decoder_layers) == (128, 384, 2, 2)


def test_fingerprint_changes_with_the_space() -> None:
    a = parse_space({"params": {"model.n_heads": [2, 4]}})
    b = parse_space({"params": {"model.n_heads": [2, 8]}})
    assert a.fingerprint() != b.fingerprint() and len(a.fingerprint()) == 12
    assert a.fingerprint() == parse_space({"params": {"model.n_heads": [2, 4]}}).fingerprint()


def test_one_parameter_parses_alone() -> None:
    """``parse_param``: a list is a categorical, a left-out type comes from the config field."""
    assert parse_param("model.n_heads", [2, 4]).choices == (2, 4)
    depth = parse_param("model.n_layers", {"low": 1, "high": 3.0})
    assert (depth.type, depth.low, depth.high) == ("int", 1, 3)
    lr = parse_param("train.lr", {"low": "1e-4", "high": 1e-2, "log": True})
    assert (lr.type, lr.low, lr.log) == ("float", 1e-4, True)


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ({"type": "float", "low": "x", "high": True}, ["space.train.lr.low: expected a number, got 'x'", "space.train.lr.high: expected a number, got True"]),
        ({"low": 1e-4, "high": 1e-2, "step": 0}, ["space.train.lr.step: must be > 0, got 0"]),
        ({"low": 1e-4, "high": 1e-2, "log": "yes"}, ["space.train.lr.log: expected true or false, got 'yes'"]),
        ({"low": 1e-4}, ["space.train.lr: a range needs low and high (missing: high)"]),
        ({"choices": [1e-3, 1e-3]}, ["space.train.lr.choices: duplicate values in [0.001, 0.001]"]),
        (3, ["space.train.lr: expected a mapping such as {type: float, low: 1e-4, high: 1e-2}, got 3"]),
    ],
)
def test_bad_parameter_names_the_dotted_key_value_and_rule(spec: object, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        parse_param("train.lr", spec)
    assert e.value.problems == needles
