"""The driver's parts on their own, in milliseconds: no processes, no Ray, no MLflow.

In the style of Optuna's sampler tests: each rule the driver applies is a function (or a small
object over an in-memory Optuna study) checked on hand-made trials, so a change of rule shows up
here long before an end-to-end search would notice it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from attntune.search.backends.base import checkpoint_dir
from attntune.search.budget import SearchBudget
from attntune.search.feasibility import costly_sampler
from attntune.search.job import parse_job
from attntune.search.objectives import Constraint, Objective
from attntune.search.outcome import TrialOutcome, TrialState, best_of, merge_history, pareto_front, settle
from attntune.search.schedulers import SCHEDULERS, decision_window, moasha_due, moasha_stops, wants_decision
from attntune.search.study_store import StudyStore, state_of
from tests.conftest import tiny_job

VAL = [Objective("val_loss", "min")]


def _settle(outcome: TrialOutcome, objectives=VAL, constraints=(), statics=None):
    history = merge_history(outcome.history)
    return settle(outcome, history, metric="val_loss", mode="min", objectives=objectives,
                  constraints=constraints, statics=statics or {"n_params": 1000.0}, end_time=1.0)  # fmt: skip


# --------------------------------------------------------------------------- settling a trial


def test_a_complete_trial_scores_its_best_epoch() -> None:
    s = _settle(TrialOutcome("COMPLETE", [{"epoch": 1, "val_loss": 2.0}, {"epoch": 2, "val_loss": 1.5}, {"epoch": 3, "val_loss": 1.7}], 3, 4.2))
    assert s.state == TrialState.COMPLETE and s.values == [1.5] and s.best == 1.5
    assert s.attrs["best_value"] == 1.5 and s.attrs["last_value"] == 1.7 and s.attrs["epochs_run"] == 3
    assert s.final_metrics == {"best_val_loss": 1.5} and s.missed is None


def test_a_complete_trial_without_a_finite_metric_is_failed_no_metric() -> None:
    s = _settle(TrialOutcome("COMPLETE", [{"epoch": 1, "val_loss": math.nan}, {"epoch": 2, "train_loss": 1.0}], 2, 1.0))
    assert s.state == TrialState.FAILED and s.values == []
    assert s.attrs["failure_kind"] == "no_metric" and s.tags["failure_reason"].startswith("the trial reported no finite")


def test_a_pruned_trial_records_the_epoch_it_stopped_at() -> None:
    # The driver saw epochs 1-2 (across a retry, the later report of an epoch wins).
    history = [{"epoch": 1, "val_loss": 3.0}, {"epoch": 2, "val_loss": 2.9}, {"epoch": 2, "val_loss": 2.8}]
    s = _settle(TrialOutcome("PRUNED", history, 7, 1.0))
    assert s.state == TrialState.PRUNED and s.epochs_run == 2
    assert s.attrs["stopped_epoch"] == s.tags["stopped_epoch"] == 2 and s.best == 2.8


def test_a_missed_measured_constraint_keeps_the_trial_complete_but_infeasible() -> None:
    slow = Constraint("latency_ms", "<=", 5.0)
    out = TrialOutcome("COMPLETE", [{"epoch": 1, "val_loss": 1.0}], 1, 1.0, info={"latency_ms": 7.5})
    s = _settle(out, objectives=[*VAL, Objective("n_params", "min")], constraints=[slow])
    assert s.state == TrialState.COMPLETE and s.values == [1.0, 1000.0]
    assert s.attrs["feasible"] is False and s.attrs["constraint_violations"] == [2.5]
    assert s.tags["feasible"] == "false" and s.missed == "latency_ms <= 5"
    assert s.final_metrics == {"best_val_loss": 1.0, "latency_ms": 7.5, "n_params": 1000.0}


# --------------------------------------------------------------------------- the best trial


@dataclass
class Row:
    number: int
    state: str
    value: float | None
    feasible: bool = True


def test_the_best_trial_is_complete_finite_feasible_and_ties_go_to_the_lower_number() -> None:
    rows = [Row(0, "PRUNED", 0.1), Row(1, "COMPLETE", math.nan), Row(2, "COMPLETE", 0.5, feasible=False),
            Row(3, "COMPLETE", 0.9), Row(4, "COMPLETE", 0.7), Row(5, "COMPLETE", 0.7), Row(6, "FAILED", None)]  # fmt: skip
    assert best_of(rows, "min").number == 4
    assert best_of(rows, "max").number == 3
    assert best_of([Row(0, "COMPLETE", math.inf), Row(1, "PRUNED", 1.0)], "min") is None


def test_the_front_keeps_only_complete_feasible_undominated_trials() -> None:
    pts = {0: (1.0, 5.0), 1: (2.0, 2.0), 2: (3.0, 3.0), 3: (0.5, 9.0), 4: (0.1, 0.1)}
    rows = [Row(n, "COMPLETE", None) for n in range(4)] + [Row(4, "COMPLETE", None, feasible=False)]
    front = pareto_front(rows, ["min", "min"], lambda r: pts[r.number])
    assert [r.number for r in front] == [3, 0, 1]  # best first along the first objective


# --------------------------------------------------------------------------- schedulers


def test_no_scheduler_judges_a_report_during_warm_up_or_outside_its_window() -> None:
    window = decision_window(SCHEDULERS.get("asha"), parse_job(tiny_job(budget={"max_epochs": 9, "min_epochs": 1})).budget, 40)
    assert window == (1, 9, 40)
    assert not wants_decision(window, 1, {"step": 40})  # still warming up
    assert wants_decision(window, 1, {"step": 41})
    assert wants_decision(window, 3, {})  # a report without a step is judged
    assert not wants_decision(window, 9, {"step": 500})  # the last epoch: nothing left to stop
    assert decision_window(SCHEDULERS.get("none"), parse_job(tiny_job()).budget, 0) is None
    assert not wants_decision(None, 2, {"step": 100})  # scheduler none: never judged


def test_moasha_settles_every_rung_passed_during_warm_up_at_the_first_judged_report() -> None:
    assert moasha_due([1, 3, 9], judged_through=0, epoch=4) == [1, 3]
    assert moasha_due([1, 3, 9], judged_through=4, epoch=5) == []
    # Three trials settled at rung 1; a newcomer dominated by all of them stops, one on the front goes on.
    settled = [(0, (1.0, 1.0)), (1, (0.9, 2.0)), (2, (1.2, 0.5))]
    assert moasha_stops([1], 3, (2.0, 3.0), lambda rung: settled)
    assert not moasha_stops([1], 3, (0.5, 0.4), lambda rung: settled)
    assert not moasha_stops([1], 3, (math.nan, 0.4), lambda rung: settled)  # never on a value not yet comparable


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_keeps_its_contract(name: str) -> None:
    """One contract over every scheduler: its Optuna pruner exists, its rungs lie inside the
    trial's budget, and one that never judges has no window (workers never wait for it)."""
    sched = SCHEDULERS.get(name)
    budget = parse_job(tiny_job(budget={"max_epochs": 9, "min_epochs": 1})).budget
    assert isinstance(sched.optuna_pruner(budget), optuna.pruners.BasePruner)
    assert all(budget.min_epochs <= r < budget.max_epochs for r in sched.rungs(budget))
    assert (decision_window(sched, budget, 0) is None) == (not sched.judges)


# --------------------------------------------------------------------------- budget and study


def _store() -> StudyStore:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return StudyStore(optuna.create_study(), storage=None)


def test_the_budget_counts_trained_trials_not_infeasible_ones() -> None:
    """The driver keeps the count as it adds trials (no re-read of the study per trial); a second
    budget over the same study (a fresh read) agrees with it."""
    store = _store()
    job = parse_job(tiny_job(budget={"n_trials": 2}))
    budget = SearchBudget(job, store, shared=False, joined=False, started=time.time())
    assert budget.counted() == 0
    t, _ = store.ask()
    budget.added(1)
    store.set_trial_attrs(t, {"attntune_state": "INFEASIBLE"})
    store.tell(t.number, TrialState.INFEASIBLE)
    budget.added(-1)
    assert budget.counted() == 0 and budget.trials_left()
    for _ in range(2):
        store.ask()  # RUNNING trials count: they are using budget
        budget.added(1)
    assert budget.counted() == 2 and not budget.trials_left()
    fresh = SearchBudget(job, store, shared=False, joined=False, started=time.time())
    assert fresh.counted() == 2
    assert [state_of(x) for x in store.trials()] == [TrialState.INFEASIBLE, TrialState.RUNNING, TrialState.RUNNING]


def test_a_resumed_search_counts_the_time_its_earlier_sessions_used() -> None:
    store = _store()
    job = parse_job(tiny_job(budget={"time_limit": 100}))
    store.set_attr("started_at", time.time() - 1000)  # the first session began long ago ...
    store.set_attr("time_used_s", 60.0)  # ... and used 60 s
    left = SearchBudget(job, store, shared=False, joined=False, started=time.time()).time_left()
    assert left is not None and 39 < left <= 40
    joined = SearchBudget(job, store, shared=True, joined=True, started=time.time()).time_left()
    assert joined is not None and joined < 0  # a joined driver shares the first driver's clock


def test_optuna_is_told_what_the_driver_settled() -> None:
    store = _store()
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.INFEASIBLE):
        t, _ = store.ask()
        store.tell(t.number, state, [0.5] if state == TrialState.COMPLETE else [])
    got = [(x.state.name, x.value) for x in store.trials()]
    assert got == [("COMPLETE", 0.5), ("PRUNED", None), ("FAIL", None), ("FAIL", None)]


# --------------------------------------------------------------------------- backends


def test_checkpoints_exist_only_where_a_trial_may_resume_from_them(tmp_path: Path) -> None:
    job = parse_job(tiny_job(output=str(tmp_path / "out")))
    assert checkpoint_dir(job, 3) is None
    assert checkpoint_dir(job, 3, always=True) == (tmp_path / "out" / "checkpoints" / "t003").resolve()
    assert checkpoint_dir(parse_job(tiny_job(output=str(tmp_path / "out"), retries=1)), 3) is not None


def test_gp_for_a_thousand_trials_is_warned_about_before_launch() -> None:
    assert "strategy gp refits a Gaussian process" in costly_sampler(parse_job(tiny_job(strategy="gp", budget={"n_trials": 1000})))
    assert costly_sampler(parse_job(tiny_job(strategy="gp", budget={"n_trials": 50}))) is None
    assert costly_sampler(parse_job(tiny_job(strategy="tpe", budget={"n_trials": 1000}))) is None
