"""Search job validation: every problem at once, the key named, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attntune.model.config import ConfigError
from attntune.search.job import load_job, parse_job
from tests.conftest import attntune_cli, tiny_job, write_job


def _problems(job: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_job(job, source="job.yaml")
    return e.value.line()


def test_valid_job_has_defaults_from_conventions(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, tiny_job("t1")))
    assert job.backend == "optuna"
    assert job.metric == "val_loss" and job.mode == "min"
    assert job.output == Path("attntune-runs") / "t1"
    assert job.tracking.resolved_uri().startswith(("sqlite:///", "http", "postgresql"))
    assert job.base.train.epochs == job.budget.max_epochs


def test_bohb_preset_is_tpe_plus_hyperband() -> None:
    job = parse_job(tiny_job(strategy="bohb", scheduler=None, budget={"n_trials": 4, "max_epochs": 3, "min_epochs": 1}))
    assert (job.strategy, job.scheduler) == ("tpe", "hyperband")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"strategy": "bayes"}, "strategy: 'bayes' is not a known strategy (valid: random, grid, tpe, gp, cmaes"),
        ({"scheduler": "pbt"}, "scheduler: 'pbt' is not a known scheduler (valid: none, asha, hyperband, median)"),
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


def test_job_file_round_trips_through_yaml(tmp_path: Path) -> None:
    data = tiny_job("rt")
    path = write_job(tmp_path, data)
    assert yaml.safe_load(path.read_text()) == data
