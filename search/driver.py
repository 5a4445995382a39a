"""The driver of one search: the trial loop's events, with no algorithm and no storage code in it.

A backend decides *where* trials run (local worker processes, Ray actors) and calls the driver at
each event: ``next_trial`` (a rerun first, else a feasible sample), ``launched``, ``on_start``,
``on_report`` (returns the scheduler's verdict), ``on_finish`` (a failed trial with retries left
goes back in the queue), and at the end ``finish``/``close``. The driver decides *what* runs and
keeps the records straight through its parts:

- ``study_store.StudyStore``: the Optuna study (the source of truth: every trial, its state, the
  MLflow run ids), so ``resume``, ``--join`` and ``report`` find everything from it alone;
- ``runbook.Runbook``: the MLflow parent run and one child run per trial, through one tracker;
- ``budget.SearchBudget``: trials counted and time left;
- ``feasibility.Feasibility``: a config over ``max_params``, a static constraint or the memory
  share is INFEASIBLE, never trained, and does not use up one of ``budget.n_trials``;
- ``recovery``: a dead driver's trials, and the drivers that share a study (``--join``);
- ``schedulers``: the warm-up rule and the MO-ASHA verdict; ``outcome``: what a trial ends as.

A SIGTERM or Ctrl-C that arrives while a record is being written takes effect right after it
(``recording``), so no record is ever half-written by an interruption.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from attntune.model.config import ConfigError, RunConfig, to_dict
from attntune.search.budget import ATTR_OVERRIDE, SearchBudget, trial_target
from attntune.search.faults import driver_fault
from attntune.search.feasibility import MAX_CONSECUTIVE_INFEASIBLE, Feasibility, launch_warnings
from attntune.search.job import SearchJob
from attntune.search.memory import longest_sequence, trial_memory_limit, trial_on_gpu
from attntune.search.outcome import (
    RunningTrial,
    Settled,
    TrialOutcome,
    TrialState,
    final_metrics,
    finite,
    merge_history,
    settle,
)
from attntune.search.recovery import (
    ATTR_BASELINE,
    ATTR_FAMILY_START,
    ATTR_PARENT,
    ATTR_RUN,
    ATTR_STATE,
    DriverRegistry,
    drop_pending,
    take_over,
)
from attntune.search.repeats import ATTR_DUPLICATE, COPIED, MAX_CONSECUTIVE_REPEATS, Parked, Repeats
from attntune.search.runbook import Runbook, flat_config
from attntune.search.schedulers import SCHEDULERS, decision_window, moasha_due, moasha_stops, wants_decision
from attntune.search.strategies import sampler_for
from attntune.search.study_store import StudyStore, state_of, storage_url, study_exists
from attntune.search.summary import write_summary
from attntune.search.timing import PhaseClock
from attntune.search.tracking import Tracker
from attntune.search.warm_start import priors
from attntune.search.worker import load_task_cached
from attntune.spaces.space import make_config

ATTR_RUNGS = "rungs"  # {rung epoch: the value a driver-side scheduler settled the trial with}


class Observer:
    """Who is told about trials as they go (the progress display); each event does nothing here."""

    def trial_started(self, trial: RunningTrial) -> None:
        """A backend handed ``trial`` to a worker."""

    def trial_epoch(self, trial: RunningTrial, epoch: int, metrics: dict[str, float]) -> None:
        """``trial`` reported an epoch (a round, under a token or step budget)."""

    def trial_retry(self, number: int, outcome: TrialOutcome) -> None:
        """A failed trial goes back in the queue."""

    def trial_infeasible(self, number: int, reason: str) -> None:
        """A sample was recorded INFEASIBLE and never trained."""

    def trial_repeated(self, number: int, of: int, state: TrialState) -> None:
        """A sample repeated trial ``of`` and was answered from it (``repeats``), untrained."""

    def trial_finished(self, number: int, settled: Settled, outcome: TrialOutcome) -> None:
        """A trial ended as ``settled.state``."""

    def search_ended(self) -> None:
        """No trial runs any more; the summary is being written."""


def credit(data: Any) -> str | None:
    """The data's license and attribution, carried on every run trained on it."""
    return " ".join(x for x in (data.license, data.attribution) if x) or None


def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` as one record: a SIGTERM or Ctrl-C arriving meanwhile takes effect after it."""

    @functools.wraps(method)
    def wrapper(self: Driver, *args: Any, **kwargs: Any) -> Any:
        with self.recording():
            return method(self, *args, **kwargs)

    return wrapper


class Driver:
    """The one writer of a search's study and MLflow runs."""

    def __init__(self, job: SearchJob, *, resume: bool = False, join: bool = False, storage: str | None = None,
                 extension: dict[str, Any] | None = None):  # fmt: skip
        self.job = job
        self.extension = extension  # a resumed search's new budget (budget.extend)
        self.resume, self.join = resume, join
        self.storage = storage or storage_url(job.output)
        self.shared = storage is not None or join  # other drivers may write the study
        self.driver_id = uuid.uuid4().hex[:10]
        self.started = time.time()
        self.observer = Observer()
        self.scheduler = SCHEDULERS.get(job.scheduler)
        self.running: dict[int, RunningTrial] = {}
        self.pending: list[RunningTrial] = []  # reruns waiting for a worker: retries, a dead driver's trials
        self.missed_constraints: dict[int, str] = {}  # COMPLETE trials that missed a measured constraint
        self.interrupted: str | None = None
        self.exhausted: str | None = None  # why the search stopped sampling before its budget (repeats.py)
        self.warnings: list[str] = []  # for the user, before the first trial (feasibility.launch_warnings)
        self.notes: list[str] = []  # what the user should know, before the first trial (a warm start)
        self.clock = PhaseClock()  # where the driver's own time goes (timing.py)
        self.repeats = Repeats()  # trials a sample may repeat (repeats.py)
        self._recording = 0
        self._deferred_signal: int | None = None

    # ------------------------------------------------------------------ opening and closing
    def open(self) -> None:
        """Create (or reattach to) the study and parent run. Nothing is written before the data
        loaded and the study's existence matched the request, so bad input exits 2 cleanly."""
        job = self.job
        data = load_task_cached(to_dict(job.base.task))  # vocab sizes make n_params exact
        self.feasibility = Feasibility(
            job, (data.src_vocab_size, data.tgt_vocab_size), longest_sequence(data), trial_memory_limit(job), trial_on_gpu(job)
        )
        self.warnings = launch_warnings(job, data)
        exists = study_exists(self.storage, job.name)
        if (self.resume or self.join) and not exists:
            raise ConfigError(f"{job.name}: no search to resume in {job.output} (run it first)")
        if exists and not (self.resume or self.join):
            raise ConfigError(
                f"{job.output}: a search named {job.name!r} already exists there; "
                f"continue it with `attntune resume {job.output}` or choose another --output"
            )
        # MLflow's start-up (schema migrations on a new store) overlaps the study's.
        self.tracker = Tracker(job.tracking.resolved_uri(), check=False)
        experiment = self.tracker.ensure_experiment(job.tracking.experiment or job.name, wait=False)
        job.output.mkdir(parents=True, exist_ok=True)
        # A joined driver samples with its own seed: the first driver's would train the same configs.
        seed = job.seed if not self.join else job.seed + 1 + int(self.driver_id, 16) % 1_000_003
        target = trial_target(job)
        self.store = StudyStore.open(
            job.name, self.storage, sampler=sampler_for(job, seed, target),
            pruner=self.scheduler.optuna_pruner(job.budget), directions=job.directions,
        )  # fmt: skip
        experiment.result()
        self.registry = DriverRegistry(self.store, self.driver_id)
        if self.resume:  # a resumed sampler with the same seed would replay the first session's draws
            resumes = int(self.store.attrs.get("resumes", 0)) + 1
            self.store.set_attr("resumes", resumes)
            self.store.study.sampler = sampler_for(job, seed + 100_003 * resumes, target)
        if self.join:
            self.registry.check_joinable(job)
        if self.extension:
            self.store.record_extension(ATTR_OVERRIDE, self.extension)
        self.book = Runbook(job, self.tracker, driver_id=self.driver_id, storage=self.storage, data_license=credit(data))
        self.budget = SearchBudget(job, self.store, shared=self.shared, joined=self.join, started=self.started)
        self.repeats.learn(self.store.trials())
        if ATTR_PARENT in self.store.attrs:
            self.book.reopen_parent(self.store.attrs[ATTR_PARENT])
            if self.extension:
                self.book.extended(self.extension)
            if self.resume:  # only a resume reruns RUNNING trials: with --join they may be a live driver's
                take_over(self)
        else:
            self._start_search(data.fingerprint)
        self.registry.set_state("running")

    def _start_search(self, fingerprint: str | None) -> None:
        """The study's attributes first (a driver killed before the parent run is recorded leaves a
        study `attntune resume FOLDER` can open), then the parent run, then its id in the study."""
        self.store.record_job(self.job, started_at=self.started, experiment_id=self.tracker.experiment_id)
        if self.job.warm_start is not None:  # what earlier searches learnt, before any trial
            trials, notes = priors(self.job)
            self.store.add_trials(trials)
            self.notes.extend(notes)
        if self.job.baseline is not None:  # then the reference every trial is compared with
            for k in range(self.job.baseline.repeats):
                self.store.enqueue(self.job.baseline.values, {ATTR_BASELINE: k})
            for family, values in self.job.baseline.family_starts:  # every family measured once
                self.store.enqueue(values, {ATTR_FAMILY_START: family})
            self.notes.extend(self.job.baseline.family_notes)
        started_at = float(self.store.attrs.get("started_at", self.started))
        parent = self.book.start_parent(fingerprint, adopt=self.resume, started_at=started_at)
        self.store.set_attr(ATTR_PARENT, parent)

    @property
    def parent_run_id(self) -> str | None:
        return self.book.parent_run_id

    def close(self) -> list[str]:
        """Flush MLflow (returns its write warnings) and release the study's storage."""
        warnings = self.tracker.close() if hasattr(self, "tracker") else []
        if hasattr(self, "store"):
            self.store.release()
        return warnings

    # ------------------------------------------------------------------ trials out
    @recorded
    def can_launch(self) -> bool:
        if self.interrupted or self.exhausted:
            return False
        with self.clock("budget"):
            return not self.budget.out_of_time() and (bool(self.pending) or self.budget.trials_left())

    @recorded
    def done(self) -> bool:
        return not self.running and not self.can_launch()

    @recorded
    def next_trial(self) -> RunningTrial | None:
        """The next trial to run: a rerun first, else a new feasible sample (or None)."""
        if self.pending:
            rt = self.pending.pop(0)
            self.book.attempt(rt.run_id, rt.attempt, reopen=True)
            rt.trial.set_user_attr("attempts", rt.attempt)
            self.running[rt.number] = rt
            return rt
        infeasible = 0
        while self.can_launch():
            with self.clock("sample"):
                trial, trial_id = self.store.ask()
                self.budget.added(1)
                driver_fault("asked", trial.number)
                values = self.job.space.sample(trial)  # a baseline's enqueued values come back as they were
            rt, reason = self.place(trial, trial_id, values)
            if rt is not None:
                return rt
            infeasible = infeasible + 1 if reason else 0
            if infeasible >= MAX_CONSECUTIVE_INFEASIBLE:
                raise ConfigError(
                    f"space: {infeasible} samples in a row are infeasible (the last: {reason}); lower the model or "
                    "batch sizes, or relax max_params, constraints or the memory limit"
                )
        return None

    def place(self, trial: Any, trial_id: int, values: dict[str, Any], run_id: str | None = None
              ) -> tuple[RunningTrial | None, str | None]:  # fmt: skip
        """A sampled trial, trained (returned RUNNING), answered from the trial it repeats
        (``repeats``), parked until that one ends, or recorded INFEASIBLE (with the reason)."""
        baseline = trial.user_attrs.get(ATTR_BASELINE)
        with self.clock("sample"):
            cfg, count, reason = self.check(values, baseline or 0)
        if reason is not None:
            self.infeasible(trial, values, cfg, reason, count, run_id)
            return None, reason
        twin = self.repeats.original(cfg)
        if twin is None:
            self.repeats.streak = 0
            start = trial.user_attrs.get(ATTR_FAMILY_START)
            rt = self.start(trial, trial_id, values, cfg, count, run_id, baseline=baseline, family_start=start)
            self.repeats.started(rt.number, cfg)
            return rt, None
        self.repeats.streak += 1
        if self.repeats.streak >= MAX_CONSECUTIVE_REPEATS:
            self.exhausted = (
                f"the sampler proposed {self.repeats.streak} configs in a row that were already trained: "
                "the space looks exhausted, so the search ends early (widen the space for more)"
            )
        self.budget.added(-1)  # a repeat trains nothing: it uses no budget
        trial.set_user_attr(ATTR_DUPLICATE, twin[0])
        if twin[1]:
            self.answer(trial, trial_id, values, cfg, count, twin[0], run_id)
        else:
            self.repeats.park(twin[0], Parked(trial, trial_id, values, cfg, count))
        return None, None

    def answer(self, trial: Any, trial_id: int, values: dict[str, Any], cfg: RunConfig, count: int, of: int,
               run_id: str | None = None) -> None:  # fmt: skip
        """Record a repeat of finished trial ``of`` with its result: the same intermediate values
        and state for Optuna, the same tags and final metrics for MLflow; nothing is trained."""
        job, o = self.job, self.store.trial(of)
        state = state_of(o)
        attrs = {k: o.user_attrs[k] for k in COPIED if k in o.user_attrs}
        now = time.time()
        attrs.update({ATTR_DUPLICATE: of, "n_params": count, "head_dim": cfg.model.head_dim, "config": flat_config(cfg),
                      "seconds": 0.0, "attempts": 0, "start_time": now, "end_time": now})  # fmt: skip
        with self.clock("optuna"):
            for epoch, value in sorted(o.intermediate_values.items()):
                self.store.report(trial, trial_id, epoch, value, rerun=False)
            self.store.set_trial_attrs(trial, attrs)
        values_told = list(o.values or []) if state == TrialState.COMPLETE else []
        final = final_metrics(job.metric, job.objectives, attrs.get("best_value"), values_told,
                              attrs.get("latency_ms"), attrs.get("best_val_bleu"))  # fmt: skip
        with self.clock("mlflow"):
            run_id = self.book.trial_repeated(trial.number, values, cfg, count, of, state, attrs, final, run_id)
        trial.set_user_attr(ATTR_RUN, run_id)
        with self.clock("optuna"):
            self.store.tell(trial.number, state, values_told)
        self.observer.trial_repeated(trial.number, of, state)

    def check(self, values: dict[str, Any], seed_offset: int = 0) -> tuple[Any, Any, str | None]:
        """(config, n_params, why it must not be trained or None) of a sample; a baseline's
        repeats train with the seed ``seed_offset`` after the job's."""
        try:
            cfg = make_config(self.job.base, values)
            if seed_offset:
                cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + seed_offset))
        except ConfigError as e:  # the space checks make this unreachable; never train it
            return None, None, f"invalid config: {e.line()}"
        count = self.feasibility.n_params(cfg)
        return cfg, count, self.feasibility.problem(cfg, count)

    def start(self, trial: Any, trial_id: int, values: dict[str, Any], cfg: RunConfig, count: int,
              run_id: str | None = None, baseline: int | None = None, family_start: str | None = None
              ) -> RunningTrial:  # fmt: skip
        """Give a feasible sample its child run and attributes; it is then RUNNING."""
        with self.clock("mlflow"):
            run_id = self.book.trial_started(trial.number, values, cfg, count, run_id, baseline=baseline,
                                             family_start=family_start)  # fmt: skip
        driver_fault("run", trial.number)
        attrs: dict[str, Any] = {ATTR_RUN: run_id, "n_params": count, "head_dim": cfg.model.head_dim}
        if self.job.uses("flops"):
            attrs["flops"] = self.feasibility.statics(cfg, count)["flops"]
        attrs.update(config=flat_config(cfg), start_time=time.time())  # attempts: 1 unless recorded
        with self.clock("optuna"):
            self.store.set_trial_attrs(trial, attrs)
        rt = RunningTrial(trial.number, trial, trial_id, values, cfg, count, run_id, baseline=baseline)
        self.running[rt.number] = rt
        return rt

    def infeasible(self, trial: Any, values: dict[str, Any], cfg: RunConfig | None, reason: str, count: int | None,
                   run_id: str | None = None) -> None:  # fmt: skip
        """Record a config that is never trained: FAIL in Optuna, INFEASIBLE everywhere else."""
        attrs: dict[str, Any] = {ATTR_STATE: TrialState.INFEASIBLE.value, "failure": reason}
        if count is not None:
            attrs["n_params"] = count
        self.budget.added(-1)  # an INFEASIBLE trial never uses budget
        self.store.set_trial_attrs(trial, attrs)
        with self.clock("mlflow"):
            run_id = self.book.trial_infeasible(trial.number, values, cfg, reason, count, run_id)
        trial.set_user_attr(ATTR_RUN, run_id)
        self.store.tell(trial.number, TrialState.INFEASIBLE)
        self.observer.trial_infeasible(trial.number, reason)

    def launched(self, rt: RunningTrial) -> None:
        """The backend handed ``rt`` to a worker."""
        rt.started = time.time()
        self.observer.trial_started(rt)

    def decision_window(self, rt: RunningTrial) -> tuple[int, int, int] | None:
        """Epochs the scheduler may judge ``rt`` at (``schedulers.wants_decision``); never for
        the baseline, the reference every trial is compared with."""
        if rt.baseline is not None:
            return None
        return decision_window(self.scheduler, self.job.budget, rt.config.train.warmup_steps)

    # ------------------------------------------------------------------ events from trials
    @recorded
    def on_start(self, number: int, info: dict[str, Any], began: float | None = None) -> None:
        """A trial began training; ``began`` (driver clock) replaces the planned start time."""
        rt = self.running[number]
        rt.info = dict(info)
        tags = {k: info.get(k, "") for k in ("host", "device", "cuda_visible_devices")}
        tags.update({k: info[k] for k in ("node_id", "worker", "gpu_ids") if k in info})
        self.book.worker_info(rt.run_id, tags)
        # What the worker built, so anyone can check the sample reached the trainer.
        built = {k: info[k] for k in ("n_heads", "head_dim", "n_encoder_layers", "n_decoder_layers", "n_params") if k in info}
        # One attribute for where it ran: each Optuna attribute is one storage write (the driver's
        # largest cost per trial at 1,000 trials, docs/BENCHMARKS.md "scale").
        attrs: dict[str, Any] = {"placement": tags, "built": built}
        if began is not None and rt.attempt == 1:
            attrs["start_time"] = began
        self.store.set_trial_attrs(rt.trial, attrs)

    @recorded
    def on_report(self, number: int, epoch: int, metrics: dict[str, float], decide: bool = True) -> bool:
        """Log an epoch; with ``decide`` ask the scheduler whether to stop the trial (True)."""
        rt = self.running[number]
        rt.history.append({"epoch": epoch, **metrics})
        with self.clock("mlflow"):
            self.book.epoch(rt.run_id, epoch, metrics)
        self.observer.trial_epoch(rt, epoch, metrics)
        value = finite(metrics.get(self.job.metric))
        with self.clock("optuna"):
            if value is None or not self.store.report(rt.trial, rt.trial_id, epoch, value, rerun=rt.attempt > 1):
                return False
            if not decide or epoch >= self.job.budget.max_epochs:
                return False
            if self.scheduler.driver_side:
                return self._moasha(rt, epoch, value)
            return bool(rt.trial.should_prune())

    def verdict(self, number: int, epoch: int, metrics: dict[str, float]) -> bool:
        """A driver-side scheduler's verdict on a report not yet recorded (Ray asks its
        scheduler before its callbacks record the result). True = stop."""
        rt = self.running.get(number)
        value = finite(metrics.get(self.job.metric))
        if rt is None or value is None or not wants_decision(self.decision_window(rt), epoch, metrics):
            return False
        return self._moasha(rt, epoch, value)

    def _moasha(self, rt: RunningTrial, epoch: int, value: float) -> bool:
        """``moasha`` on (metric, static cost objectives): settle the due rungs on the trial
        (user attr ``rungs``), then rank it among the trials settled there."""
        due = moasha_due(self.scheduler.rungs(self.job.budget), rt.judged_through, epoch)
        rt.judged_through = max(rt.judged_through, epoch)
        if not due:
            return False
        costs = [o for o in self.job.objectives if o.kind == "static"]
        sign = [1.0 if m == "min" else -1.0 for m in [self.job.mode, *(o.mode for o in costs)]]
        trials = {t.number: t for t in self.store.trials()}
        mine = trials[rt.number].user_attrs
        rt.trial.set_user_attr(ATTR_RUNGS, {**(mine.get(ATTR_RUNGS) or {}), **{str(r): value for r in due}})

        def point(v: Any, attrs: dict[str, Any]) -> list[float] | None:
            vals = [v, *(attrs.get(o.name) for o in costs)]
            return None if any(x is None for x in vals) else [s * float(x) for s, x in zip(sign, vals, strict=True)]

        def settled_at(rung: int) -> list[tuple[int, list[float]]]:
            out = []
            for n, t in trials.items():
                p = point((t.user_attrs.get(ATTR_RUNGS) or {}).get(str(rung)), t.user_attrs)
                if p is not None:
                    out.append((n, p))
            return out

        me = point(value, mine)
        return me is not None and moasha_stops(due, rt.number, me, settled_at)

    @recorded
    def on_finish(self, number: int, outcome: TrialOutcome) -> TrialState | None:
        """Record a finished trial everywhere and return its state; a FAILED trial with retries
        left goes back in the queue on the same child run instead (returns None)."""
        rt = self.running.pop(number, None)
        if rt is None:
            return None
        if outcome.state == TrialState.FAILED and rt.attempt <= self.job.retries:
            rt.attempt += 1
            self.book.attempt(rt.run_id, rt.attempt, failure=outcome.failure or "")
            rt.trial.set_user_attr("attempts", rt.attempt)
            self.pending.insert(0, rt)
            self.observer.trial_retry(number, outcome)
            return None
        job = self.job
        settled = settle(
            outcome, merge_history(rt.history or outcome.history), metric=job.metric, mode=job.mode,
            objectives=job.objectives, constraints=job.constraints,
            statics=self.feasibility.statics(rt.config, rt.n_params), end_time=time.time(),
        )  # fmt: skip
        with self.clock("optuna"):
            self.store.set_trial_attrs(rt.trial, settled.attrs)
        driver_fault("finishing", number)
        if settled.missed is not None:
            self.missed_constraints[number] = settled.missed
        with self.clock("mlflow"):
            self.book.trial_finished(rt.run_id, settled)
        driver_fault("ended", number)
        with self.clock("optuna"):
            self.store.tell(number, settled.state, settled.values)
        driver_fault("told", number)
        self.clock.lap()
        self.observer.trial_finished(number, settled, outcome)
        self._release_repeats(rt, settled.state)
        return settled.state

    def _release_repeats(self, rt: RunningTrial, state: TrialState) -> None:
        """The repeats parked on ``rt``: answered from it, or trained after all if it failed."""
        for p in self.repeats.ended(rt.number, rt.config, state):
            if state in (TrialState.COMPLETE, TrialState.PRUNED):
                self.answer(p.trial, p.trial_id, p.values, p.config, p.n_params, rt.number)
                continue
            p.trial.set_user_attr(ATTR_DUPLICATE, None)
            self.budget.added(1)
            again = self.start(p.trial, p.trial_id, p.values, p.config, p.n_params)
            self.repeats.started(again.number, p.config)
            self.pending.append(self.running.pop(again.number))

    # ------------------------------------------------------------------ interruption and end
    def abandon_running(self, status: str = "KILLED") -> None:
        """The driver is going down: running trials' runs end KILLED; Optuna keeps them RUNNING
        so ``resume`` reruns them on the same child runs (reruns not started yet too)."""
        for rt in [*self.running.values(), *self.pending]:
            self.book.killed(rt.run_id, status)
        self.running.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Writing one record: ``run_search``'s signal handlers ask ``defer_signal`` first."""
        self._recording += 1
        try:
            yield
        finally:
            self._recording -= 1
            if self._recording == 0 and self._deferred_signal is not None:
                signum, self._deferred_signal = self._deferred_signal, None
                signal.raise_signal(signum)  # the handler runs again, now between records

    def defer_signal(self, signum: int) -> bool:
        """True (and the signal remembered) while a record is being written."""
        if self._recording:
            self._deferred_signal = signum
            return True
        return False

    def finish(self, status: str = "FINISHED") -> Any:
        """Write results.csv and, as the last driver of the study, the parent's summary; returns
        the results table."""
        self.observer.search_ended()
        if status == "FINISHED" and self.pending:
            drop_pending(self)
        self.registry.set_state("finished" if status == "FINISHED" else status.lower())
        # A shared study (--join): the last driver to finish writes the summary and ends the parent
        # run; each marks itself finished before looking, so one always does.
        last = not self.registry.others_running()
        return write_summary(self.store, self.book, self.job, self.budget, status, last=last, extra=self.clock.metrics())
