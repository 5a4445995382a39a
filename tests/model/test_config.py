"""Config files: the type rules a user relies on, every problem in one line, no pydantic text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attntune.model.config import ConfigError, ModelConfig, TrainConfig, load_run_config
from tests.conftest import REPO


def _line(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        load_run_config(data, "c.yaml")
    return e.value.line()


def test_numbers_as_yaml_writes_them_are_accepted() -> None:
    """PyYAML reads ``1e-3`` (no dot) as a string; ``64.0`` is a whole number; ints pass for floats."""
    run = load_run_config({"model": {"d_model": 64.0, "dropout": 0}, "train": {"lr": "1e-3", "grad_clip": 2}})
    assert run.train.lr == 0.001 and isinstance(run.train.lr, float)
    assert run.model.d_model == 64 and isinstance(run.model.d_model, int)
    assert run.model.dropout == 0.0 and run.train.grad_clip == 2.0


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("train", "lr", True, "train.lr: expected a number, got True"),
        ("train", "lr", "fast", "train.lr: expected a number, got 'fast'"),
        ("model", "d_model", "64", "model.d_model: expected an integer, got '64'"),
        ("model", "d_model", 64.5, "model.d_model: expected an integer, got 64.5"),
        ("model", "n_heads", False, "model.n_heads: expected an integer, got False"),
        ("model", "norm_first", 1, "model.norm_first: expected true or false, got 1"),
        ("task", "name", 3, "task.name: expected a string, got 3"),
        ("train", "schedule", "linear", "train.schedule: expected one of 'inverse_sqrt', 'cosine' or 'constant', got 'linear'"),
        ("train", "max_decode_len", "long", "train.max_decode_len: expected an integer, got 'long'"),
    ],
)
def test_wrong_types_are_refused_with_key_rule_and_value(section: str, key: str, value: object, needle: str) -> None:
    line = _line({section: {key: value}})
    assert line == f"c.yaml: {needle}"


def test_unknown_key_names_the_valid_keys() -> None:
    line = _line({"model": {"d_modle": 64}})
    assert line.startswith("c.yaml: model.d_modle: unknown key, did you mean 'd_model'? (valid keys: attention, bidirectional, d_ff, d_model, dropout, ")
    assert "colour: unknown key (valid keys: model, provenance, task, train)" in _line({"colour": "red"})


def test_every_problem_in_one_line_without_pydantic_text() -> None:
    line = _line(
        {
            "task": {"name": 3},
            "model": {"d_model": 130, "n_heads": 4, "colour": "red"},
            "train": {"lr": True, "schedule": "linear", "warmup_steps": -1},
            "extra": 1,
        }
    )
    assert "\n" not in line and "6 problems" in line, line
    for key in ("task.name:", "model.colour:", "model.d_model:", "train.lr:", "train.schedule:", "extra:"):
        assert key in line
    assert "pydantic" not in line and "Input should" not in line and "http" not in line


def test_cross_field_rules_hold_for_parsed_and_built_configs() -> None:
    """A config built in code (a sampled trial) is checked by the same rules as one from a file."""
    assert "model.d_model: 130 is not divisible by n_heads=4" in _line({"model": {"d_model": 130, "n_heads": 4}})
    with pytest.raises(ConfigError, match="d_model: 130 is not divisible by n_heads=4"):
        ModelConfig(d_model=130, n_heads=4)
    with pytest.raises(ConfigError, match="2 problems"):
        TrainConfig(lr=-1.0, round_tokens=10, round_steps=10)


def test_model_configs_import_and_build_without_pydantic() -> None:
    """attntune.model runs on a bare GPU box with torch alone: pydantic only parses files."""
    code = (
        "import sys; import attntune.model.config as c; c.ModelConfig(d_model=64); c.TrainConfig(); "
        "c.RunConfig(); assert 'pydantic' not in sys.modules, 'pydantic imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
