"""Search job validation: every problem at once, the key named, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from attntune.model.config import ConfigError
from attntune.search.job import load_job, parse_job
from tests.conftest import attntune_cli, tiny_job, write_job


def _problems(job: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_job(job, source="job.yaml")
    return e.value.line()


def test_valid_job_has_defaults_from_conventions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = load_job(write_job(tmp_path, tiny_job("t1")))
    assert job.backend == "optuna"
    assert job.metric == "val_loss" and job.mode == "min"
    assert job.output == Path("attntune-runs") / "t1"
    assert job.tracking.resolved_uri() == "sqlite:///mlflow.db"  # MLflow's own default, in the current folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert job.tracking.resolved_uri() == "http://127.0.0.1:5000"
    assert job.base.train.epochs == job.budget.max_epochs


def test_bohb_preset_is_tpe_plus_hyperband() -> None:
    job = parse_job(tiny_job(strategy="bohb", scheduler=None, budget={"n_trials": 4, "max_epochs": 3, "min_epochs": 1}))
    assert (job.strategy, job.scheduler) == ("tpe", "hyperband")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"strategy": "bayes"}, "strategy: 'bayes' is not a known strategy (valid: random, grid, tpe, gp, cmaes"),
        ({"scheduler": "pbt"}, "scheduler: 'pbt' is not a known scheduler (valid: none, asha, hyperband, moasha, median)"),
        ({"backend": "slurm"}, "backend: 'slurm' is not a known backend"),
        ({"budget": {"n_trials": 0}}, "budget.n_trials: must be > 0"),
        ({"budget": {"n_trails": 3}}, "budget.n_trails: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"model": {"d_model": 100, "n_heads": 3}}, "model.d_model: 100 is not divisible by n_heads=3"),
        ({"concurrency": "two"}, "concurrency: expected an integer"),
        ({"metric": "val_perplexity"}, "mode: metric 'val_perplexity' has no default direction"),
        ({"train": {"epochs": 3}}, "train.epochs: set budget.max_epochs instead"),
        (
            {"strategy": "grid"},
            "strategy grid cannot enumerate space.train.lr: a continuous float range",
        ),
        (
            {"strategy": "cmaes", "space": {"params": {"model.n_heads": [1, 2]}}},
            "strategy cmaes needs at least one int or float parameter",
        ),
        (
            {"scheduler": "asha", "budget": {"n_trials": 4, "max_epochs": 2, "min_epochs": 1}},
            "scheduler 'asha' with strategy 'random': budget.max_epochs (2) must be >= 3 x budget.min_epochs (1)",
        ),
        ({"strategy": "bohb", "scheduler": "asha"}, "preset 'bohb' is tpe + hyperband"),
    ],
)
def test_bad_jobs_name_the_key_and_the_rule(change: dict, needle: str) -> None:
    assert needle in _problems(tiny_job(**change))


def test_every_problem_is_reported_at_once() -> None:
    line = _problems(tiny_job(strategy="bayes", budget={"n_trials": -1}, colour=1))
    assert "3 problems" in line


def test_cli_bad_job_exits_2_with_one_line_and_writes_nothing(workdir: Path) -> None:
    path = write_job(workdir, tiny_job("bad", strategy="bayes"))
    before = sorted(p.name for p in workdir.iterdir())
    proc = attntune_cli("run", str(path), cwd=workdir)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "strategy: 'bayes'" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == before  # no mlflow.db, no attntune-runs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nbudget: [1, 2\n", "malformed YAML"),
        ("!!python/object/apply:os.system ['touch pwned']\n", "unsafe or unknown YAML tag"),
    ],
)
def test_cli_malformed_or_unsafe_yaml(workdir: Path, text: str, needle: str) -> None:
    path = workdir / "job.yaml"
    path.write_text(text)
    proc = attntune_cli("run", str(path), cwd=workdir)
    assert proc.returncode == 2 and needle in proc.stderr
    assert not (workdir / "pwned").exists()
    assert sorted(p.name for p in workdir.iterdir()) == ["job.yaml"]


# --------------------------------------------------------------------------- budgets in tokens / steps


def _budget_job(budget: dict, **overrides) -> dict:
    """tiny_job with exactly this budget section (tiny_job merges budgets, keeping its epochs)."""
    job = tiny_job(**overrides)
    job["budget"] = budget
    return job


def test_token_budget_parses_into_rounds() -> None:
    job = parse_job(_budget_job({"n_trials": 4, "max_tokens": 90_000, "min_tokens": 10_000}, scheduler="asha"))
    b = job.budget
    assert (b.unit, b.round_size, b.max_epochs, b.min_epochs) == ("tokens", 10_000, 9, 1)
    assert job.base.train.round_tokens == 10_000 and job.base.train.round_steps is None
    assert job.base.train.epochs == 9
    settings = job.settings()
    assert settings["budget_unit"] == "tokens" and settings["round_size"] == 10_000 and settings["max_epochs"] == 9
    # Default round: a ninth of the budget (rounded up, so 9 rounds cover it).
    job = parse_job(_budget_job({"n_trials": 4, "max_tokens": 1_000_000}))
    assert (job.budget.round_size, job.budget.min_tokens, job.budget.max_epochs) == (111_112, 111_112, 9)
    assert job.base.train.round_tokens == 111_112
    # Not a multiple of the round: one more round, so the budget is never cut short.
    job = parse_job(_budget_job({"n_trials": 4, "max_tokens": 25_000, "min_tokens": 10_000}))
    assert job.budget.max_epochs == 3


def test_step_budget_parses_into_rounds() -> None:
    job = parse_job(_budget_job({"n_trials": 4, "max_steps": 300, "min_steps": 100}))
    assert (job.budget.unit, job.budget.round_size, job.budget.max_epochs) == ("steps", 100, 3)
    assert job.base.train.round_steps == 100 and job.base.train.round_tokens is None
    plain = parse_job(tiny_job())
    assert (plain.budget.unit, plain.budget.round_size, plain.base.train.round_tokens) == ("epochs", None, None)
    assert plain.settings()["budget_unit"] == "epochs"


@pytest.mark.parametrize(
    ("budget", "needles"),
    [
        (
            {"max_tokens": 9000, "max_steps": 90},
            ["budget.max_tokens/max_steps: a budget is in tokens or in steps, not both (got max_tokens=9000, max_steps=90)"],
        ),
        ({"min_tokens": 1000}, ["budget.min_tokens: 1000 needs max_tokens"]),
        ({"min_steps": 10}, ["budget.min_steps: 10 needs max_steps"]),
        ({"max_tokens": 1000, "min_tokens": 2000}, ["budget.min_tokens: 2000 is above max_tokens=1000"]),
        ({"max_steps": 10, "min_steps": 20}, ["budget.min_steps: 20 is above max_steps=10"]),
        ({"max_tokens": 0}, ["budget.max_tokens: must be > 0, got 0"]),
        ({"max_steps": 100, "min_steps": -1}, ["budget.min_steps: must be > 0, got -1"]),
        (
            {"max_tokens": 9000, "max_epochs": 9},
            ["budget.max_epochs: cannot be combined with budget.max_tokens (a budget in tokens replaces epochs"],
        ),
        (
            {"max_steps": 900, "max_epochs": 9, "min_epochs": 1},
            [
                "budget.max_epochs: cannot be combined with budget.max_steps",
                "budget.min_epochs: cannot be combined with budget.max_steps",
            ],
        ),
        ({"max_tokens": "lots"}, ["budget.max_tokens: expected an integer"]),
    ],
)
def test_bad_token_and_step_budgets(budget: dict, needles: list[str]) -> None:
    line = _problems(_budget_job({"n_trials": 4, **budget}))
    for needle in needles:
        assert needle in line, line
    if len(needles) > 1:
        assert f"{len(needles)} problems" in line


def test_round_size_is_the_searchs_to_set() -> None:
    line = _problems(_budget_job({"n_trials": 4, "max_tokens": 9000}, train={"round_tokens": 500}))
    assert "train.round_tokens: set budget.max_tokens/min_tokens or budget.max_steps/min_steps instead" in line


def test_bandit_rule_counts_rounds() -> None:
    """max 2 rounds cannot feed a rung at factor 3; the message says what the rounds are."""
    line = _problems(_budget_job({"n_trials": 4, "max_tokens": 2000, "min_tokens": 1000}, scheduler="asha"))
    assert "budget.max_epochs (2) must be >= 3 x budget.min_epochs (1)" in line
    assert "(a budget in tokens counts rounds of budget.min_tokens=1000: max_tokens=2000 is 2 rounds)" in line
    parse_job(_budget_job({"n_trials": 4, "max_tokens": 3000, "min_tokens": 1000}, scheduler="asha"))


# --------------------------------------------------------------------------- the config type rules, in a job


def test_problems_in_three_sections_are_all_reported_with_their_keys() -> None:
    """One bad section does not hide the others: each problem names its dotted key and the value."""
    line = _problems(
        tiny_job(
            budget={"n_trials": True},
            model={"d_model": "big"},
            space={"params": {"train.lr": {"type": "float", "low": "x", "high": 1e-2}}},
        )
    )
    assert line == (
        "job.yaml: 3 problems: budget.n_trials: expected an integer, got True; "
        "model.d_model: expected an integer, got 'big'; space.train.lr.low: expected a number, got 'x'"
    )


def test_yaml_exponent_strings_are_numbers_and_bools_are_not() -> None:
    """PyYAML reads ``1e-3`` as a string: it is still a learning rate; ``true`` never is one."""
    job = parse_job(tiny_job(train={"lr": "1e-3"}, resources={"cpus": 2, "gpus": "5e-1"}))
    assert job.base.train.lr == 0.001 and job.resources.cpus == 2.0 and job.resources.gpus == 0.5
    assert _problems(tiny_job(train={"lr": True})) == "job.yaml: train.lr: expected a number, got True"


def test_unknown_job_key_names_the_valid_keys() -> None:
    line = _problems(tiny_job(resources={"gpu": 1}))
    assert line == "job.yaml: resources.gpu: unknown key, did you mean 'gpus'? (valid keys: cpus, gpus, memory_gb)"


def test_a_misspelt_key_or_parameter_is_answered_with_the_name_meant() -> None:
    raw = tiny_job("typo", model={"d_mdoel": 64}, space={"params": {"model.n_head": [1, 2]}})
    with pytest.raises(ConfigError) as e:
        parse_job(raw)
    line = e.value.line()
    assert "model.d_mdoel: unknown key, did you mean 'd_model'?" in line
    assert "space.model.n_head: unknown parameter, did you mean 'model.n_heads'?" in line
