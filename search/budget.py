"""What a search may still spend: trials counted against ``budget.n_trials`` and time left.

Counting reads the study (a query and a deserialisation of every trial), so it is cached: in a
search's own SQLite study the count is read again only after this driver adds a trial; a shared
study (``--storage``/``--join``), where other drivers add trials, is read every time.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.job import SearchJob
from attntune.search.outcome import TrialState
from attntune.search.repeats import ATTR_DUPLICATE
from attntune.search.study_store import StudyStore

ATTR_STATE = "attntune_state"


def trial_target(job: SearchJob) -> int:
    """Trials to train: ``n_trials``, or the grid's size when that is smaller."""
    if job.strategy == "grid":
        return min(job.budget.n_trials, job.space.grid_size())
    return job.budget.n_trials


class SearchBudget:
    """Trials and time, for one driver of a study."""

    def __init__(self, job: SearchJob, store: StudyStore, *, shared: bool, joined: bool, started: float):
        self.job = job
        self.store = store
        self.shared = shared  # other drivers may add trials (--storage/--join): never cache the count
        self.joined = joined  # a joined driver shares the first driver's clock
        self.started = started
        self._counted: int | None = None
        self._clock: tuple[float, float] | None = None

    def target(self) -> int:
        return trial_target(self.job)

    def added(self, n: int) -> None:
        """This driver added ``n`` counted trials to the study (-1: one turned out INFEASIBLE);
        the count follows without reading the study again (a shared study is always read)."""
        if self._counted is not None:
            self._counted += n

    def counted(self) -> int:
        """Trials that used budget: every trial in the study but the INFEASIBLE ones, repeats and
        a warm start's priors, finished or RUNNING (this driver's and, in a shared study, the other
        drivers'). A rerun waiting to start is RUNNING in the study, so it is counted once; an
        enqueued trial (the baseline) is WAITING until asked, and counted then."""
        if self._counted is not None and not self.shared:
            return self._counted
        n = sum(
            1
            for t in self.store.trials()
            if t.state.name != "WAITING"  # an enqueued trial (the baseline) counts once it is asked
            and t.user_attrs.get(ATTR_STATE) not in (TrialState.INFEASIBLE, TrialState.PRIOR)
            and t.user_attrs.get(ATTR_DUPLICATE) is None
        )
        self._counted = n
        return n

    def time_left(self) -> float | None:
        """Seconds left under ``budget.time_limit`` (None without one). A resumed search counts
        from this session's start plus what earlier sessions used."""
        limit = self.job.budget.time_limit_s
        if limit is None:
            return None
        if self._clock is None:  # fixed for the session: the study's start and earlier sessions' time
            attrs = self.store.attrs
            self._clock = (float(attrs.get("started_at", self.started)), float(attrs.get("time_used_s", 0.0)))
        start, earlier = self._clock
        if self.joined:
            return limit - (time.time() - start)
        return limit - (time.time() - max(start, self.started) + earlier)

    def out_of_time(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def trials_left(self) -> bool:
        return self.counted() < self.target()

    def time_used(self) -> float:
        """The search's wall time so far, across sessions (a joined driver: since the first began)."""
        attrs = self.store.attrs
        if self.joined:
            return time.time() - float(attrs.get("started_at", self.started))
        return float(attrs.get("time_used_s", 0.0)) + (time.time() - self.started)


# --------------------------------------------------------------------------- extending a search

ATTR_OVERRIDE = "budget_override"  # {n_trials, time_limit}: the budget an extension set


def with_override(job: SearchJob, attrs: dict[str, Any]) -> SearchJob:
    """The job with the budget an earlier ``resume --more-trials/--time-limit`` set (the study's
    job file keeps the original), so an interrupted extension resumes with its own budget."""
    override = attrs.get(ATTR_OVERRIDE) or {}
    if not override:
        return job
    return replace(job, budget=replace(job.budget, **override))


def extend(job: SearchJob, counted: int, used_s: float, more_trials: int | None, more_time: float | None) -> dict[str, Any]:
    """The budget override that gives a search ``more_trials`` trials beyond the ``counted`` ones
    and/or ``more_time`` seconds beyond the ``used_s`` it used. A search that spent its trials
    needs more trials (time alone would start nothing): that is a ConfigError saying so."""
    override: dict[str, Any] = {}
    if more_trials is not None:
        if more_trials <= 0:
            raise ConfigError(f"--more-trials: must be > 0, got {more_trials}")
        override["n_trials"] = counted + more_trials
    elif counted >= trial_target(job):
        raise ConfigError(
            f"{job.name}: the search spent its {trial_target(job)} trials; add trials with --more-trials N "
            "(and --time-limit to cap the time they may take)"
        )
    if more_time is not None:
        if more_time <= 0:
            raise ConfigError(f"--time-limit: must be > 0, got {more_time:g} s")
        override["time_limit"] = round(used_s + more_time, 3)
    return override
