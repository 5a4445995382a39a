"""After a driver died: its trials rerun, its half-written records completed, and the registry of
the drivers that share a study (``--join``).

A driver may die between any two writes of one record. ``take_over`` (``attntune resume``) finds
what it left RUNNING in Optuna and:

- a child run it created but never recorded is found in MLflow (by its trial-number tag) and
  adopted, never duplicated;
- a trial sampled but never given a run gets one now (its missing parameters sampled, and never
  trained if infeasible); an infeasible trial half-recorded is recorded, not trained;
- every other trial is rerun on its existing child run, as a new attempt;
- finished trials whose MLflow run is still RUNNING (writes lost with the driver) are ended as
  Optuna says.

Several drivers may share one study (``--join``): each has an id, recorded on its trials and in
the study's user attrs (``driver.<id>``), so the last one to finish ends the parent run and a
resume takes over only from drivers that are gone.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Protocol

from attntune.model.config import ConfigError, RunConfig
from attntune.search.job import SearchJob
from attntune.search.outcome import RunningTrial, TrialState
from attntune.search.repeats import ATTR_DUPLICATE
from attntune.search.runbook import Runbook
from attntune.search.study_store import StudyStore, state_of
from attntune.spaces.space import make_config

ATTR_PARENT = "mlflow_parent_run_id"
ATTR_RUN = "mlflow_run_id"
ATTR_STATE = "attntune_state"
ATTR_BASELINE = "baseline"
ATTR_FAMILY_START = "family_start"  # another family's start, trained once after the baseline
# Attributes a driver killed while recording a trial's end may have left: the rerun decides them.
END_ATTRS = (ATTR_STATE, "failure", "failure_kind", "stopped_epoch")


class Restarting(Protocol):
    """What a take-over needs of the driver (``search.driver.Driver``)."""

    job: SearchJob
    store: StudyStore
    book: Runbook
    registry: DriverRegistry
    running: dict[int, RunningTrial]
    pending: list[RunningTrial]

    def check(self, values: dict[str, Any], seed_offset: int = 0) -> tuple[Any, Any, str | None]: ...
    def place(self, trial: Any, trial_id: int, values: dict[str, Any], run_id: str | None = None
              ) -> tuple[RunningTrial | None, str | None]: ...  # fmt: skip
    def start(self, trial: Any, trial_id: int, values: dict[str, Any], cfg: RunConfig, count: int,
              run_id: str | None = None, baseline: int | None = None, family_start: str | None = None
              ) -> RunningTrial: ...  # fmt: skip
    def infeasible(self, trial: Any, values: dict[str, Any], cfg: RunConfig | None, reason: str, count: int | None,
                   run_id: str | None = None) -> None: ...  # fmt: skip


def take_over(driver: Restarting) -> None:
    """Queue (``driver.pending``) every trial a dead driver left RUNNING, completing the records
    it left half-written; see the module doc."""
    for t in driver.store.trials(running_only=True):
        attrs = t.user_attrs
        run_id = attrs.get(ATTR_RUN) or driver.book.orphan_child(t.number)
        if attrs.get(ATTR_STATE) == TrialState.INFEASIBLE:
            trial, _ = driver.store.handle(t)
            try:
                cfg = make_config(driver.job.base, dict(t.params))
            except ConfigError:
                cfg = None
            driver.infeasible(trial, dict(t.params), cfg, str(attrs.get("failure", "infeasible")), attrs.get("n_params"), run_id)
        elif attrs.get(ATTR_RUN) is None:  # never started (or a parked repeat): sample, check, place it
            trial, trial_id = driver.store.handle(t)
            if attrs.get(ATTR_DUPLICATE) is not None:
                trial.set_user_attr(ATTR_DUPLICATE, None)  # placed again below, as a new sample
            values = driver.job.space.sample(trial)  # parameters already drawn come back as they were
            rt, _ = driver.place(trial, trial_id, values, run_id)
            if rt is not None:
                driver.pending.append(driver.running.pop(rt.number))
        else:
            driver.pending.append(_rerun(driver, t, run_id))
    for other in driver.registry.others_running():  # a resume takes over from dead drivers
        driver.registry.set_state("lost", other)
    end_finished_runs(driver.store, driver.book)


def _rerun(driver: Restarting, t: Any, run_id: str) -> RunningTrial:
    """A trial killed in flight, as a new attempt on its own child run."""
    trial, trial_id = driver.store.handle(t)
    attrs = t.user_attrs
    if attrs.get(ATTR_STATE) is not None:  # killed while recording its end: the rerun decides
        driver.store.set_trial_attrs(trial, {k: None for k in END_ATTRS if k in attrs})
    baseline = attrs.get(ATTR_BASELINE)
    cfg, _, _ = driver.check(dict(t.params), baseline or 0)
    return RunningTrial(
        t.number, trial, trial_id, dict(t.params), cfg, int(attrs.get("n_params", 0)), run_id,
        attempt=int(attrs.get("attempts", 1)) + 1, baseline=baseline,
    )  # fmt: skip


def end_finished_runs(store: StudyStore, book: Runbook) -> None:
    """Child runs still RUNNING in MLflow whose trials Optuna has finished: end them as Optuna says."""
    runs = book.running_children()
    if not runs:
        return
    trials = {t.number: t for t in store.trials()}
    for run_id, number in runs:
        t = trials.get(number)
        if t is None or not t.state.is_finished():
            continue
        a = t.user_attrs
        book.trial_ended_as(run_id, state_of(t), int(a.get("epochs_run", 0)), a.get("failure"), a.get("failure_kind"))


def drop_pending(driver: Restarting) -> None:
    """The search ended (time limit) before a dead driver's trials were rerun: they are FAILED
    (``failure_kind=killed``), their runs KILLED; nothing stays RUNNING."""
    why = "the driver was killed during this trial and the search ended before it could be rerun"
    for rt in driver.pending:
        attrs = {ATTR_STATE: TrialState.FAILED.value, "failure": why, "failure_kind": "killed", "end_time": time.time()}
        driver.store.set_trial_attrs(rt.trial, attrs)
        driver.book.dropped(rt.run_id, why)
        driver.store.tell(rt.number, TrialState.FAILED)
    driver.pending.clear()


# --------------------------------------------------------------------------- drivers of one study


def pid_alive(pid: int) -> bool:
    """A live, non-zombie process on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def all_finished(attrs: dict[str, Any]) -> bool:
    """Whether every driver of the study (its ``driver.<id>`` attrs) finished its search."""
    drivers = [v for k, v in attrs.items() if k.startswith("driver.") and isinstance(v, dict)]
    return bool(drivers) and all(d.get("state") == "finished" for d in drivers)


class DriverRegistry:
    """The drivers of one study, in its user attrs: ``driver.<id>`` = host, pid, state, time."""

    def __init__(self, store: StudyStore, driver_id: str):
        self.store = store
        self.driver_id = driver_id

    def set_state(self, state: str, driver_id: str | None = None) -> None:
        key = f"driver.{driver_id or self.driver_id}"
        if driver_id is None:
            entry = {"host": socket.gethostname(), "pid": os.getpid(), "state": state, "time": time.time()}
        else:
            entry = {**self.store.attrs[key], "state": state}
        self.store.set_attr(key, entry)

    def others_running(self) -> list[str]:
        """Ids of other drivers of this study still running (this host's are checked by pid)."""
        host = socket.gethostname()
        out = []
        for key, v in self.store.attrs.items():
            if not key.startswith("driver.") or key == f"driver.{self.driver_id}" or not isinstance(v, dict):
                continue
            if v.get("state") != "running":
                continue
            if v.get("host") == host and not pid_alive(int(v.get("pid", 0))):
                continue
            out.append(key[len("driver.") :])
        return out

    def check_joinable(self, job: SearchJob) -> None:
        """A joined driver must log to the parent run's server and search the same space."""
        attrs = self.store.attrs
        ours = job.tracking.resolved_uri()
        theirs = attrs.get("tracking_uri")
        if theirs and theirs.rstrip("/") != ours.rstrip("/"):
            raise ConfigError(
                f"--join: the study {job.name!r} logs to {theirs}, this driver to {ours}; use --tracking-uri {theirs}"
            )
        for key, mine in (("metric", job.metric), ("space_fingerprint", job.space.fingerprint())):
            if attrs.get(key) not in (None, mine):
                raise ConfigError(f"--join: the shared study has {key} {attrs[key]!r}, this job {mine!r}")
