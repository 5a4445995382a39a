"""The MLflow read model (``attntune.search.records``) on a real SQLite store: every child run is
read past MLflow's 1,000-run page, and the best trial follows ``outcome.best_of``'s rules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from attntune.search.records import (
    PAGE_SIZE,
    RecordsError,
    best_trial,
    find_search_run,
    load_search,
    open_store,
    search_all,
)

N_TRIALS = PAGE_SIZE + 50
BEST = PAGE_SIZE + 20  # on the second page: a read that stops at one page misses it


def _search_with_many_trials(uri: str) -> tuple[str, str]:
    """One parent run and N_TRIALS child runs, as the driver tags them; returns (experiment id, parent id)."""
    client = MlflowClient(uri)
    exp = client.create_experiment("many")
    parent = client.create_run(exp, run_name="search many", tags={"attntune.kind": "search"}).info.run_id
    client.log_batch(parent, params=[Param("metric", "val_loss"), Param("mode", "min")])
    special = {
        BEST: ("COMPLETE", {"best_val_loss": 1.5}, {}),
        BEST + 1: ("COMPLETE", {"best_val_loss": 1.5}, {}),  # a tie: the lower number wins
        BEST + 2: ("COMPLETE", {"best_val_loss": 0.5}, {"feasible": "false"}),  # missed a constraint
        BEST + 3: ("COMPLETE", {"best_val_loss": math.nan}, {}),  # NaN never wins
        BEST + 4: ("PRUNED", {"best_val_loss": 0.1}, {}),  # only COMPLETE trials can be the best
        5: ("COMPLETE", {"best_val_loss": 2.0}, {}),
    }
    for n in range(N_TRIALS):
        state, metrics, extra = special.get(n, ("FAILED", {}, {}))
        tags = {
            "mlflow.parentRunId": parent,
            "attntune.kind": "trial",
            "attntune.trial_number": str(n),
            "attntune.state": state,
            **extra,
        }
        run_id = client.create_run(exp, run_name=f"t{n:03d}", tags=tags).info.run_id
        if metrics:
            client.log_batch(run_id, metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()])
    # A trial run without best_val_loss: its score is the best epoch of its history.
    run_id = client.create_run(exp, run_name="late", tags={**tags, "attntune.trial_number": str(N_TRIALS),
                                                            "attntune.state": "COMPLETE"}).info.run_id
    client.log_batch(run_id, metrics=[Metric("val_loss", v, 0, e) for e, v in ((1, 3.0), (2, 2.5), (3, 2.75))])
    return exp, parent


def test_every_child_run_is_read_and_the_best_follows_the_rules(store: str) -> None:
    exp, parent = _search_with_many_trials(store)
    client = open_store(store)
    assert len(search_all(client, [exp], "tags.`attntune.kind` = 'trial'")) == N_TRIALS + 1
    assert find_search_run(client, "many").info.run_id == parent  # by experiment name, the latest search

    data = load_search(store, parent, curves=False, space=False)
    assert [t.number for t in data.trials] == list(range(N_TRIALS + 1))
    assert data.best() is not None and data.best().number == BEST
    assert best_trial(data.trials, data.mode).number == BEST
    assert [t.number for t in data.ranked()] == [BEST, BEST + 1, 5]
    assert data.counts() == {"COMPLETE": 6, "PRUNED": 1, "FAILED": N_TRIALS - 6, "INFEASIBLE": 0}
    late = data.trials[-1]
    assert late.value("val_loss") is None and late.score == 2.5  # history read for it alone
    assert late.curve == [(1, 3.0), (2, 2.5), (3, 2.75)]
    assert all(t.curve == [] for t in data.trials[:-1])  # no history read unless asked


def test_a_missing_store_or_experiment_is_a_clear_error(tmp_path: Path, store: str) -> None:
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(RecordsError, match="no MLflow store there"):
        open_store(f"sqlite:///{missing}")
    assert not missing.exists()
    with pytest.raises(RecordsError, match=r"--experiment nope: no such MLflow experiment \(the store has no experiments\)"):
        find_search_run(open_store(store), "nope")
