"""Never train the same config twice: repeats are answered from the trial they repeat, under
concurrency (parked until it ends) and after a resume; they use no training budget."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from attntune.search.job import parse_job
from attntune.search.run import run_search
from attntune.search.study_store import load_study
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job

# Two configs only: a sampler soon proposes nothing new.
TWO = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8], "train.lr": [3e-3]}}


def _trained(study) -> list:
    return [t for t in study.trials if t.user_attrs.get("duplicate_of") is None]


def test_a_repeated_config_is_answered_from_its_trial_not_trained(tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    job = parse_job(tiny_job("rep", tracking=uri, space=TWO, strategy="random", baseline="none",
                             budget={"n_trials": 3, "max_epochs": 1}, output=str(tmp_path / "out")))  # fmt: skip
    result = run_search(job, quiet=True, report=False)
    study = load_study(tmp_path / "out")
    trained = _trained(study)
    assert len(trained) == 2  # only two configs exist: the third trial of the budget is never trained
    assert len({tuple(sorted(t.params.items())) for t in trained}) == 2  # two distinct configs
    repeats = [t for t in study.trials if t.user_attrs.get("duplicate_of") is not None]
    assert len(repeats) >= 30 - 1  # until the sampler is taken to have exhausted the space
    by_number = {t.number: t for t in study.trials}
    for r in repeats:
        o = by_number[r.user_attrs["duplicate_of"]]
        assert r.params == o.params and r.state == o.state and r.values == o.values
        assert r.user_attrs["seconds"] == 0.0 and r.intermediate_values == o.intermediate_values
    client = MlflowClient(uri)
    runs = client.search_runs([result.experiment_id], "tags.`duplicate_of` != ''")
    assert sorted(int(x.data.tags["attntune.trial_number"]) for x in runs) == sorted(r.number for r in repeats)
    assert all(not client.get_metric_history(x.info.run_id, "val_loss") for x in runs)  # nothing trained
    assert all("best_val_loss" in x.data.metrics for x in runs)  # the original's result


def test_repeats_of_a_running_trial_wait_for_it_and_a_resume_knows_the_finished_ones(tmp_path: Path, mlflow_template: Path) -> None:
    """One config only, two workers: while trial 0 trains, every new sample repeats it and is
    parked; the sampler is soon taken to have exhausted the space; the parked repeats are
    answered when trial 0 ends. A resume with more trials trains nothing new either."""
    uri = fresh_store(mlflow_template, tmp_path)
    one = {"params": {"model.n_heads": [2], "model.head_dim": [8], "train.lr": [3e-3]}}
    raw = tiny_job("park", tracking=uri, space=one, baseline="none", concurrency=2, budget={"n_trials": 3, "max_epochs": 2})
    r = attntune_cli("run", str(write_job(tmp_path, raw)), "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "space looks exhausted" in r.stderr and "repeats t000" in r.stderr
    out = tmp_path / "attntune-runs" / "park"
    study = load_study(out)
    assert len(_trained(study)) == 1 and study.trials[0].state.name == "COMPLETE"
    assert all(t.state.name == "COMPLETE" and t.value == study.trials[0].value for t in study.trials)
    n = len(study.trials)
    more = attntune_cli("resume", str(out), "--more-trials", "1", "-q", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    again = load_study(out)
    assert len(_trained(again)) == 1 and len(again.trials) > n  # asked again, answered from trial 0
