"""Driver crashes and resume: `attntune run` killed at any moment, then resumed, is one search.

The driver is the real CLI in a subprocess. The moment to kill it is picked by polling the Optuna
storage (``study.db``) from here, or, for the windows too short to hit by polling (between two
writes of one record), by the test-only hook ``ATTNTUNE_DRIVER_FAULT`` (docs/RELIABILITY.md), which
makes the driver SIGKILL itself at a named point. After every kill and resume:

- every trial that had finished is still there with the same state, value and end time (not rerun);
- the search keeps its one parent MLflow run;

and at the end the budget is reached, each trial number has exactly one child run (the one the
study names), nothing is RUNNING in MLflow or Optuna, and MLflow agrees with Optuna on every state.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from attntune.search.study_store import load_study, state_of
from tests.conftest import fresh_store, tiny_job, write_job

NAME = "crash"
MAX_EPOCHS = 2
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "INFEASIBLE": "FINISHED", "FAILED": "FAILED"}


# --------------------------------------------------------------------------- the driver process


class Driver:
    """``attntune ARGS`` in a subprocess; stderr goes to a file (never a full pipe)."""

    count = 0

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None):
        Driver.count += 1
        self.err = folder / f"driver-{Driver.count}.err"
        cmd = [sys.executable, "-c", "from attntune.search.cli import main; main()", *args]
        full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        full_env.update(env or {})
        with open(self.err, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=folder, env=full_env, stdout=subprocess.DEVNULL, stderr=f)

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the driver did not end within {timeout} s: {self.stderr}") from None

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def signal_when(self, moment: Callable[[], bool], sig: int = signal.SIGKILL, timeout: float = 240) -> int:
        """Send ``sig`` as soon as ``moment()`` holds; returns the exit code."""
        deadline = time.monotonic() + timeout
        while not moment():
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"the driver ended (exit {code}) before the moment came: {self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("the moment never came")
            time.sleep(0.02)
        self.proc.send_signal(sig)
        return self.wait()


# --------------------------------------------------------------------------- reading the study while it runs


def _rows(db: Path, sql: str) -> list[tuple]:
    """Rows from the live study (read-only); none while it does not exist yet or is busy."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def has_parent(db: Path) -> bool:
    return bool(_rows(db, "SELECT 1 FROM study_user_attributes WHERE key = 'mlflow_parent_run_id'"))


def finished(db: Path) -> dict[int, tuple]:
    """Finished trials: number -> (state, value, end time)."""
    rows = _rows(
        db,
        "SELECT t.number, t.state, v.value, t.datetime_complete FROM trials t "
        "LEFT JOIN trial_values v ON v.trial_id = t.trial_id WHERE t.state IN ('COMPLETE', 'PRUNED', 'FAIL')",
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def running_with_an_epoch(db: Path) -> bool:
    return bool(
        _rows(
            db,
            "SELECT 1 FROM trials t JOIN trial_intermediate_values i ON i.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING'",
        )
    )


def assert_kept(before: dict[int, tuple], db: Path) -> None:
    """Trials finished before a crash are unchanged after the resume: kept, never rerun."""
    after = finished(db)
    for number, record in before.items():
        assert after.get(number) == record, f"trial {number} changed: {record} -> {after.get(number)}"


# --------------------------------------------------------------------------- the end state


def _runs(store: str) -> tuple[list[Any], list[Any]]:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("attntune.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    assert len(parents) + len(children) == len(runs), "a run that is neither the search nor a trial"
    return parents, children


def assert_one_consistent_search(output: Path, store: str, n_trials: int, parent_id: str) -> Any:
    """Budget reached, one parent, one child per trial, nothing RUNNING, MLflow == Optuna."""
    study = load_study(output)
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    assert set(states) <= set(FINISHED), states
    trained = [t for t in trials if t.user_attrs.get("attntune_state") != "INFEASIBLE"]
    assert len(trained) == n_trials, [(t.number, state_of(t)) for t in trials]
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    client = MlflowClient(store)
    parents, children = _runs(store)
    assert [p.info.run_id for p in parents] == [parent_id], "the search has more than one parent run"
    assert parents[0].info.status == "FINISHED"
    per_number = collections.Counter(r.data.tags["attntune.trial_number"] for r in children)
    assert all(c == 1 for c in per_number.values()), per_number
    assert set(per_number) == {str(t.number) for t in trials}
    by_number = {int(r.data.tags["attntune.trial_number"]): r for r in children}
    for t in trials:
        run = by_number[t.number]
        state = state_of(t)
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["attntune.state"] == state, (t.number, state, run.data.tags)
        assert run.info.status == MLFLOW_STATUS[state], (t.number, state, run.info.status)
        if state == "INFEASIBLE":
            assert not run.data.metrics, "an infeasible trial was trained"
        if state == "COMPLETE":
            steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_loss")}
            assert steps == set(range(1, MAX_EPOCHS + 1)), (t.number, steps)
            assert run.data.metrics["best_val_loss"] == pytest.approx(t.value)
    table = (output / "results.csv").read_text().strip().splitlines()
    assert len(table) == len(trials) + 1
    return study


def _job(workdir: Path, store: str, backend: str, n_trials: int, **overrides: Any) -> Path:
    overrides.setdefault("concurrency", 2)
    budget = {"n_trials": n_trials, "max_epochs": MAX_EPOCHS, "min_epochs": 1, **overrides.pop("budget", {})}
    job = tiny_job(
        NAME,
        backend=backend,
        tracking=store,
        budget=budget,
        train={"max_steps_per_epoch": 4, "bleu_samples": 0},
        **overrides,
    )
    return write_job(workdir, job)


def _parent(db: Path) -> str:
    import json

    rows = _rows(db, "SELECT value_json FROM study_user_attributes WHERE key = 'mlflow_parent_run_id'")
    assert rows, "no parent run recorded in the study"
    return json.loads(rows[0][0])


# --------------------------------------------------------------------------- the tests


def completed_more_than(db: Path, n: int) -> Callable[[], bool]:
    return lambda: sum(1 for state, _, _ in finished(db).values() if state == "COMPLETE") > n


# One search, killed with SIGKILL at each of these moments in turn and resumed after each. A
# ``hook`` point is where the driver kills itself (ATTNTUNE_DRIVER_FAULT): a moment between two
# writes of one record, too short to hit from outside; a ``poll`` moment is picked from here.
KILLS = [
    ("hook", "parent", "the parent run exists in MLflow, the study does not name it yet"),
    ("hook", "infeasible", "an infeasible trial's run exists, the study does not name it yet"),
    ("hook", "asked", "a trial is created in Optuna, nothing sampled, no MLflow run yet"),
    ("poll", "mid-trial", "a trial has reported an epoch and is training the next"),
    ("hook", "run", "a trial's child run exists in MLflow, the study does not name it yet"),
    ("hook", "ended", "a trial's run is ended in MLflow (its outcome in the study's attributes), Optuna not told"),
    ("poll", "trial-ended", "a trial has just been told COMPLETE (its records being written)"),
]


def test_sigkill_at_any_moment_then_resume(workdir: Path, mlflow_template: Path) -> None:
    """Killed right after the parent run exists, inside each recording window, mid-trial and
    right after a trial ends: every resume continues the same search, the last one reaches the
    budget and the records converge."""
    store = fresh_store(mlflow_template, workdir / "store")
    n_trials = 5
    # Two thirds of the samples are over max_params: INFEASIBLE, never trained, not counted.
    _job(workdir, store, "optuna", n_trials, max_params=10000, concurrency=1)
    out = workdir / "attntune-runs" / NAME
    db = out / "study.db"
    kept: dict[int, tuple] = {}
    orphan = parent = None
    for i, (how, point, why) in enumerate(KILLS):
        args = ["run", "job.yaml", "--no-report", "-q"] + (["--resume"] if i else [])
        if how == "hook":
            d = Driver(workdir, *args, env={"ATTNTUNE_DRIVER_FAULT": point})
            code = d.wait()
        else:
            n_complete = sum(1 for state, _, _ in kept.values() if state == "COMPLETE")
            moment = (lambda: running_with_an_epoch(db)) if point == "mid-trial" else completed_more_than(db, n_complete)
            d = Driver(workdir, *args)
            code = d.signal_when(moment)
        assert code == -signal.SIGKILL, f"{point}: the driver was not killed there ({why}): {d.stderr}"
        assert_kept(kept, db)
        kept = finished(db)
        if point == "parent":
            assert not has_parent(db)
            parents, _ = _runs(store)
            assert [p.info.status for p in parents] == ["RUNNING"]  # nobody ended it; resume adopts it
            orphan = parents[0].info.run_id
        else:
            parent = parent or _parent(db)
            assert parent == orphan
        if point == "mid-trial":
            _, children = _runs(store)
            assert any(r.info.status == "RUNNING" for r in children)  # left as they were: resume's job
    d = Driver(workdir, "resume", str(out), "-q")
    assert d.wait() == 0, d.stderr
    assert_kept(kept, db)
    study = assert_one_consistent_search(out, store, n_trials, parent)
    assert any(t.user_attrs.get("attntune_state") == "INFEASIBLE" for t in study.trials)
    # A resumed sampler does not replay the first session's draws.
    lrs = [t.params["train.lr"] for t in study.trials if "train.lr" in t.params]
    assert len(set(lrs)) == len(lrs), lrs


def _assert_interrupted(d: Driver, code: int, name: str, out: Path, store: str) -> None:
    """Exit code, the resume line, trials' runs ended KILLED but RUNNING in Optuna (for resume)."""
    assert d.wait() == code, d.stderr
    said = re.search(rf"interrupted \({name}\): .* continue with `attntune resume (\S+)`", d.stderr)
    assert said and Path(said.group(1)).resolve() == out.resolve(), d.stderr
    study = load_study(out)
    left = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert left, "no trial was running: the signal came too late to test anything"
    parents, children = _runs(store)
    assert [p.info.status for p in parents] == ["KILLED"]
    by_id = {r.info.run_id: r for r in children}
    for t in left:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "KILLED" and run.data.tags["attntune.state"] == "KILLED"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_sigterm_and_ctrl_c_exit_143_and_130_then_a_resume_out_of_time(workdir: Path, mlflow_template: Path) -> None:
    """SIGTERM and Ctrl-C: exit 143/130, the resume line, running trials' runs KILLED and their
    Optuna trials RUNNING. A resume whose time limit is already spent reruns nothing, so those
    trials end FAILED (failure_kind killed) in Optuna and KILLED in MLflow: nothing stays RUNNING.
    (Resuming to the budget after SIGTERM: test_ray_backend_killed_then_terminated_then_resumed.)"""
    store = fresh_store(mlflow_template, workdir / "store")
    n_trials = 5
    _job(workdir, store, "optuna", n_trials)
    out = workdir / "attntune-runs" / NAME
    db = out / "study.db"

    d = Driver(workdir, "run", "job.yaml", "--no-report", "-q")
    d.signal_when(lambda: running_with_an_epoch(db), signal.SIGTERM)
    _assert_interrupted(d, 143, "SIGTERM", out, store)
    parent = _parent(db)

    kept = finished(db)
    d = Driver(workdir, "resume", str(out), "-q")
    d.signal_when(completed_more_than(db, len(kept)), signal.SIGINT)
    _assert_interrupted(d, 130, "SIGINT", out, store)
    assert_kept(kept, db)

    kept = finished(db)
    left = {n for (n,) in _rows(db, "SELECT number FROM trials WHERE state = 'RUNNING'")}
    _job(workdir, store, "optuna", n_trials, budget={"time_limit": 0.001})
    d = Driver(workdir, "run", "job.yaml", "--resume", "--no-report", "-q")
    assert d.wait() == 0, d.stderr
    assert_kept(kept, db)
    study = load_study(out)
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    parents, children = _runs(store)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [r for r in children if r.info.status == "RUNNING"]
    by_number = {int(r.data.tags["attntune.trial_number"]): r for r in children}
    assert len(children) == len(study.trials)
    for t in study.trials:
        if t.number in left:
            assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["failure_kind"] == "killed"
            run = by_number[t.number]
            assert run.info.status == "KILLED" and run.data.tags["failure_kind"] == "killed"


def test_ray_backend_killed_then_terminated_then_resumed(workdir: Path, mlflow_template: Path) -> None:
    """The same guarantees with trials on Ray: SIGKILL mid-trial, resume, SIGTERM mid-trial
    (exit 143, Ray's trials' runs KILLED), resume to the budget."""
    store = fresh_store(mlflow_template, workdir / "store")
    n_trials = 5
    _job(workdir, store, "ray", n_trials)
    out = workdir / "attntune-runs" / NAME
    db = out / "study.db"

    d = Driver(workdir, "run", "job.yaml", "--no-report", "-q")
    assert d.signal_when(lambda: running_with_an_epoch(db)) == -signal.SIGKILL
    parent = _parent(db)
    kept = finished(db)

    d = Driver(workdir, "resume", str(out), "-q")
    d.signal_when(completed_more_than(db, len(kept)), signal.SIGTERM)
    _assert_interrupted(d, 143, "SIGTERM", out, store)
    assert_kept(kept, db)

    kept = finished(db)
    d = Driver(workdir, "run", "job.yaml", "--resume", "--no-report", "-q")
    assert d.wait() == 0, d.stderr
    assert_kept(kept, db)
    assert_one_consistent_search(out, store, n_trials, parent)
