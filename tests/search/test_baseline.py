"""The baseline trial: the config every trial is compared with is trained first, never stopped
early, and every command says how much the search gained over it, against its noise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from attntune.model.config import ConfigError, RunConfig
from attntune.search.job import parse_job
from attntune.search.outcome import baseline_gain
from attntune.search.study_store import load_study
from attntune.spaces.space import load_space, make_config, project
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job

# tiny_job's space holds this config: d_model 32 = 2 heads x 16, one layer, lr 2e-3 (the default).
INSIDE = {"d_model": 32, "n_heads": 2, "d_ff": 64, "dropout": 0.0}


def test_a_config_projects_onto_the_space_and_back() -> None:
    cfg = RunConfig()
    space = load_space("cpu-small", cfg)
    values, outside = project(space, cfg)
    assert outside == [] and values["model.head_dim"] == 32 and values["model.d_ff_ratio"] == 4
    assert make_config(cfg, values) == cfg
    deep = make_config(cfg, {"model.head_dim": 16, "model.n_heads": 2, "model.n_layers": 5, "model.d_ff_ratio": 2})
    _, outside = project(space, deep)
    assert outside == ["model.n_layers=5 is outside the space (1..3)"]


def test_the_default_baseline_is_left_out_when_the_space_cannot_hold_it_and_an_explicit_one_is_refused() -> None:
    job = parse_job(tiny_job("b"))  # the default d_model 128 = 4 heads x 32: head_dim 32 is not a choice
    assert job.baseline is None and "model.head_dim=32 is outside the space (choices [8, 16])" in job.baseline_note
    with pytest.raises(ConfigError, match=r"baseline: model.head_dim=64 is outside the space"):
        parse_job(tiny_job("b", baseline={"model.d_model": 128, "model.n_heads": 2}))
    inside = parse_job(tiny_job("b", model=INSIDE, budget={"n_trials": 8}))
    assert inside.baseline is not None and inside.baseline.repeats == 2
    assert parse_job(tiny_job("b", model=INSIDE, baseline="none")).baseline is None


@dataclass
class T:
    number: int
    state: str
    value: float | None
    baseline: int | None = None
    feasible: bool = True


def test_the_gain_is_measured_against_the_baselines_spread() -> None:
    trials = [T(0, "COMPLETE", 2.00, 0), T(1, "COMPLETE", 2.04, 1), T(2, "COMPLETE", 1.90), T(3, "PRUNED", 1.0)]
    g = baseline_gain(trials, "min", baseline=lambda t: t.baseline)
    assert (g.baseline, g.best_number, g.repeats) == (pytest.approx(2.02), 2, 2)
    assert g.gain == pytest.approx(0.12) and g.noise == pytest.approx(0.04) and g.beats
    close = baseline_gain([*trials[:2], T(2, "COMPLETE", 2.0)], "min", baseline=lambda t: t.baseline)
    assert close.beats is False and "within its noise" in close.line("val_loss")
    assert baseline_gain(trials[2:], "min", baseline=lambda t: t.baseline) is None  # no baseline ran


def test_a_search_trains_its_baseline_first_never_prunes_it_and_reports_the_gain(
    tmp_path: Path, mlflow_template: Path
) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job(
        "base", tracking=uri, model=INSIDE, scheduler="asha", strategy="tpe",
        budget={"n_trials": 8, "max_epochs": 3, "min_epochs": 1}, train={"warmup_steps": 0},
    )  # fmt: skip
    r = attntune_cli("run", str(write_job(tmp_path, raw)), "-q", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "gain over the baseline" in r.stdout or "no gain over the baseline" in r.stdout

    study = load_study(tmp_path / "attntune-runs" / "base")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == [0, 1, None]
    assert trials[0].params == trials[1].params  # the same config ...
    assert [t.user_attrs["config"]["train.seed"] for t in trials[:2]] == [0, 1]  # ... two training seeds
    assert all(t.state.name == "COMPLETE" and t.user_attrs["epochs_run"] == 3 for t in trials[:2])  # never pruned

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("base")
    runs = client.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.data.tags.get("attntune.kind") == "search")
    base_runs = [x for x in runs if x.data.tags.get("attntune.baseline") is not None]
    assert sorted(x.data.tags["attntune.trial_number"] for x in base_runs) == ["0", "1"]
    assert all(x.info.run_name.endswith(" baseline") for x in base_runs)
    assert "gain_over_baseline" in parent.data.metrics and "baseline_noise" in parent.data.metrics

    shown = attntune_cli("results", "base", cwd=tmp_path)
    assert shown.returncode == 0 and "over the baseline" in shown.stdout
    out = attntune_cli("export", "--experiment", "base", "--tracking-uri", uri, "--output", "best.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "baseline" in Path(tmp_path / "best.yaml").read_text()  # provenance: the baseline's value and noise


def test_a_search_with_a_baseline_trains_exactly_n_trials(tmp_path: Path, mlflow_template: Path) -> None:
    """The enqueued baseline is counted once, when it is asked, not also while it waits."""
    uri = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job("count", tracking=uri, model=INSIDE, budget={"n_trials": 3, "max_epochs": 1})
    r = attntune_cli("run", str(write_job(tmp_path, raw)), "-q", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    study = load_study(tmp_path / "attntune-runs" / "count")
    assert study.trials[0].user_attrs.get("baseline") == 0
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3
