"""Warm starts: an earlier search's best trials seed a new search whose space changed, by the
documented rule; they never use the new budget, are never its best and are never exported."""

from __future__ import annotations

from pathlib import Path

from attntune.search.study_store import load_study
from attntune.search.warm_start import fit
from attntune.spaces.space import parse_space
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job


def test_a_prior_trial_keeps_the_new_spaces_parameters_or_is_dropped_whole() -> None:
    space = parse_space({"params": {"model.n_heads": [1, 2], "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}})
    assert fit(space, {"model.n_heads": 2, "train.lr": 3e-3, "model.head_dim": 8}) == ({"model.n_heads": 2, "train.lr": 3e-3}, None)
    assert fit(space, {"model.n_heads": 4, "train.lr": 3e-3}) == (None, "model.n_heads=4 is outside the space")
    assert fit(space, {"model.n_heads": 2, "train.lr": 2e-2}) == (None, "train.lr=0.02 is outside the space")  # never clipped
    assert fit(space, {"train.lr": 3e-3}) == (None, "no model.n_heads")


def test_a_search_warm_starts_from_an_earlier_one_with_a_changed_space(tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    first = tiny_job("first", tracking=uri, baseline="none", strategy="random", budget={"n_trials": 6, "max_epochs": 1})
    r = attntune_cli("run", str(write_job(tmp_path, first, "first.yaml")), "-q", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # The new space drops n_layers and narrows n_heads to [1, 2]: trials with 4 heads are dropped.
    space = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8, 16],
                        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}  # fmt: skip
    second = tiny_job("second", tracking=uri, baseline="none", strategy="tpe", space=space,
                      budget={"n_trials": 3, "max_epochs": 1}, warm_start={"from": "first", "top": 4})  # fmt: skip
    r = attntune_cli("run", str(write_job(tmp_path, second, "second.yaml")), "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "note: warm start:" in r.stderr and "of the best 4 trials of first seed the sampler" in r.stderr

    old = {t.number: t for t in load_study(tmp_path / "attntune-runs" / "first").trials}
    study = load_study(tmp_path / "attntune-runs" / "second")
    priors = [t for t in study.trials if t.user_attrs.get("attntune_state") == "PRIOR"]
    trained = [t for t in study.trials if t not in priors]
    assert len(trained) == 3  # the priors use none of the budget
    assert priors and all(t.params["model.n_heads"] in (1, 2) and "model.n_layers" not in t.params for t in priors)
    for t in priors:
        source = old[int(t.user_attrs["warm_start_from"].split("#")[1])]
        assert t.value == source.value  # told as they were
    best = min((t for t in trained if t.state.name == "COMPLETE"), key=lambda t: t.value)
    out = attntune_cli("export", "--experiment", "second", "--tracking-uri", uri, "--output", "b.yaml", cwd=tmp_path)
    assert out.returncode == 0 and f"exported trial {best.number} " in out.stdout  # never a prior
    shown = attntune_cli("results", "second", "--state", "complete", "--csv", cwd=tmp_path)
    assert "PRIOR" not in shown.stdout


def test_a_warm_start_from_a_missing_search_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    job = write_job(tmp_path, tiny_job("w", warm_start={"from": ["nowhere"]}))
    r = attntune_cli("run", str(job), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: warm_start.from: nowhere: no earlier search there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
