"""The ``ray`` backend: trials run as Ray Tune trials, on a local Ray or a cluster (``--address``).

Why this shape: the driver stays the one writer of the Optuna study and MLflow (through the same
``Driver`` as the ``optuna`` backend), so both backends produce the same records. Ray Tune
only decides *where* a trial runs and, through its scheduler, *when it stops*:

- the search algorithm is ``StudySearcher``, a thin ``ray.tune.search.Searcher`` over the
  driver: ``suggest`` asks the study for the next feasible trial (infeasible samples are
  recorded and never reach Ray). Ray's ``OptunaSearch`` is not used: it leaves trials that
  reported NaN RUNNING in Optuna, and it would make Ray the second writer of the study;
- ``TrialEvents`` (a ``ray.tune.Callback``) turns Ray's per-result, complete and error events into
  ``on_start``/``on_report``/``on_finish`` calls, with the same retry rule as the local backend;
- the trainable (``ray_trainable.train_trial``) runs ``execute_trial`` in a reused actor
  (``reuse_actors=True``: no process start per trial).

State mapping: a trial that reported ``budget.max_epochs`` epochs is COMPLETE; one that Ray's
scheduler stopped earlier is PRUNED; one whose training failed is FAILED with the kind its last
result carried (exception, nan, oom); one whose actor died (killed, node lost) is FAILED ``killed``.
Ray's own time budget is not used: as on the ``optuna`` backend, ``budget.time_limit`` stops new
trials from starting and lets running ones finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from attntune.search.backends.base import BackendOptions, Driving, cpu_threads_per_trial, trial_spec
from attntune.search.backends.ray_session import (
    RaySession,
    prepare,
    quiet_ray_logs,
    restore_signals,
    scoped_env,
    shutdown,
)
from attntune.search.backends.ray_trainable import (
    FAILURE_KEY,
    FINAL_KEY,
    FORWARDED_ENV,
    METRICS_KEY,
    SECONDS_KEY,
    START_KEY,
    train_trial,
)
from attntune.search.job import SearchJob
from attntune.search.outcome import TrialOutcome, TrialState, failed
from attntune.search.schedulers import SCHEDULERS, warming_up

# Ray schedulers that PAUSE trials (Hyperband between rungs; the median rule to let waiting trials
# run while it lacks samples): their trials checkpoint each epoch so a resumed trial continues.
PAUSING_SCHEDULERS = frozenset({"hyperband", "median"})
# The searches running in this process, by key: Ray pickles (and copies) its searcher, scheduler
# and callbacks, so they hold only this key, never the driver itself.
_SEARCHES: dict[str, RaySearch] = {}


def run(driver: Driving, session: RaySession) -> None:
    """Drive the search to its budget as one Ray Tune run."""
    from ray import tune  # Tune's entry points import much of Ray: only when a search runs

    job = driver.job
    search = RaySearch(driver, cpu_threads_per_trial(job))
    key = uuid.uuid4().hex
    _SEARCHES[key] = search
    resources = {"cpu": float(job.resources.cpus), "gpu": float(job.resources.gpus)}
    tune_env = {
        # Ctrl-C raises KeyboardInterrupt out of fit (run_search turns it into exit 130).
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        # The study and MLflow are the records; Ray's per-trial CSV/JSON/TensorBoard files are not.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # No experiment table on the terminal: attntune prints its own progress.
        "RAY_AIR_NEW_OUTPUT": "0",
    }
    handlers = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s
    }
    try:
        tuner = tune.Tuner(
            tune.with_resources(train_trial, resources),
            tune_config=tune.TuneConfig(
                search_alg=StudySearcher(key, job.metric, job.mode),
                scheduler=ray_scheduler(key, job),
                num_samples=-1,  # the searcher says when the budget is spent
                max_concurrent_trials=job.concurrency,
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=job.name,
                storage_path=str((job.output / "ray").resolve()),
                verbose=0,
                callbacks=[TrialEvents(key)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        with scoped_env(tune_env), quiet_ray_logs():
            tuner.fit()
    except BaseException:
        # Ctrl-C, SIGTERM or an error leaves Tune without cleaning up: stop the trials' actors now
        # (a Ray attntune did not start keeps running, and so would they, until this process ends).
        search.stop_actors()
        raise
    finally:
        restore_signals(handlers)
        _SEARCHES.pop(key, None)


def ray_scheduler(key: str, job: SearchJob) -> Any:
    """Ray's own scheduler for single-metric rules; the driver's verdict (``DriverDecides``) for
    a ``driver_side`` scheduler such as ``moasha``."""
    sched = SCHEDULERS.get(job.scheduler)
    if sched.driver_side:
        return DriverDecides(key)
    inner = sched.ray_scheduler(job.budget, job.metric, job.mode)
    return WarmupGate(inner, job.budget.max_epochs) if sched.judges else inner


class WarmupGate(TrialScheduler):
    """Ray Tune's own scheduler (ASHA, Hyperband, the median rule) under attntune's warm-up rule:
    a result reported while the trial's learning rate still warms up is not shown to it, so it
    cannot stop the trial on a value that is not yet comparable. Ray's ASHA then settles the rungs
    the trial passed at the first result it sees, as Optuna's successive halving and ``moasha``
    do. A STOP on a trial's last epoch (Ray's ASHA and Hyperband stop every trial at ``max_t``)
    becomes CONTINUE: the trial ends by itself, and only so does a measured ``latency_ms``, sent
    as one more result after training, still arrive. Everything else goes to the inner scheduler
    unchanged. Module-level: Tune pickles it."""

    def __init__(self, inner: TrialScheduler, max_epochs: int):
        super().__init__()
        self.inner = inner
        self.max_epochs = max_epochs

    @property
    def metric(self) -> Any:
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.inner.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(FINAL_KEY) or (trial.config or {}).get("baseline") is not None:
            return TrialScheduler.CONTINUE  # after the last epoch, or the baseline: nothing to judge
        warmup = (((trial.config or {}).get("config") or {}).get("train") or {}).get("warmup_steps")
        if not result.get(FAILURE_KEY) and warming_up(result.get("step"), warmup):
            return TrialScheduler.CONTINUE
        action = self.inner.on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and int(result.get("epoch") or 0) >= self.max_epochs:
            return TrialScheduler.CONTINUE
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)


class DriverDecides(FIFOScheduler):
    """Runs trials first in, first out and stops one when the search driver says so
    (``Driver.verdict``, with the warm-up rule of ``schedulers.wants_decision``).
    Ray calls a scheduler before the callbacks that record the result, so the verdict takes
    this result's value explicitly. Module-level, and holding only a key: Tune pickles it."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        search = _SEARCHES.get(self.key)
        if search is None or result.get(FAILURE_KEY) or result.get(FINAL_KEY):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP if search.verdict(trial, result) else TrialScheduler.CONTINUE


def trial_name(trial: Any) -> str:
    """``t007a1_<ray id>``: the trial number first, so Ray's folders sort like the study."""
    cfg = trial.config or {}
    return f"t{int(cfg.get('number', 0)):03d}a{int(cfg.get('attempt', 1))}_{trial.trial_id}"


class StudySearcher(Searcher):
    """Ray Tune's search algorithm: the next trial comes from the driver (the study)."""

    def __init__(self, key: str, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.key = key

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        search = _SEARCHES.get(self.key)
        return search.suggest(trial_id) if search is not None else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Outcomes are recorded by ``TrialEvents``, which sees the Trial (and its error)."""

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the Optuna study is the search's state (``attntune resume``)."""

    def restore(self, checkpoint_path: str) -> None:
        """See ``save``."""


class TrialEvents(Callback):
    """Ray Tune's trial events, forwarded to the driver of this search."""

    def __init__(self, key: str):
        self.key = key

    def _driver(self) -> RaySearch | None:
        return _SEARCHES.get(self.key)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (d := self._driver()) is not None:
            d.live[trial.trial_id] = trial

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if (d := self._driver()) is not None:
            d.on_result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (d := self._driver()) is not None:
            d.on_complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (d := self._driver()) is not None:
            d.on_error(trial)


@dataclass
class _Attempt:
    """One Ray trial: one attempt of one study trial."""

    number: int
    epochs: int = 0
    seconds: float = 0.0
    # A paused trial is resumed by running the trainable again, whose clock restarts: the seconds
    # of earlier runs are kept in segment_base.
    segment_base: float = 0.0
    last_seconds: float = 0.0
    reported: bool = False
    started: float = field(default_factory=time.time)
    failure: dict[str, Any] | None = None  # what a failed trial sent in its last result
    final: dict[str, Any] = field(default_factory=dict)  # measured after training (latency_ms)


class RaySearch:
    """Everything Ray's searcher, scheduler and callbacks do, against the driver, in its process."""

    def __init__(self, driver: Driving, threads: int):
        self.driver = driver
        self.threads = threads
        self.attempts: dict[str, _Attempt] = {}
        self.live: dict[str, Any] = {}  # Ray trials started and not yet ended, by Ray trial id
        self.exhausted = False  # cached "cannot launch": rechecked after each finished trial
        self.env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}

    # ---------------------------------------------------------------- trials out
    def suggest(self, ray_trial_id: str) -> dict[str, Any] | str | None:
        driver = self.driver
        if not self.exhausted and driver.can_launch():
            rt = driver.next_trial()
            if rt is not None:
                self.attempts[ray_trial_id] = _Attempt(rt.number)
                driver.launched(rt)
                return self.trial_config(rt)
        self.exhausted = True
        # Running trials may still fail and be retried: finish only when none is left.
        return Searcher.FINISHED if not driver.running else None

    def trial_config(self, rt: Any) -> dict[str, Any]:
        """The trial spec, plus what a Ray actor needs. Under a scheduler that pauses trials every
        trial checkpoints: Ray resumes a paused function trainable by starting it again, and
        ``train(..., resume=True)`` then continues after the last finished epoch. Ray's scheduler
        decides, so the worker never waits for a verdict (no ``decide``)."""
        spec = trial_spec(
            self.driver, rt, self.threads, checkpoints=self.driver.job.scheduler in PAUSING_SCHEDULERS, decide=False
        )
        task = spec["config"].get("task") or {}
        if task.get("path") and Path(task["path"]).exists():  # actors run in their own folders
            task["path"] = str(Path(task["path"]).resolve())
        spec["metric"] = self.driver.job.metric
        spec["env"] = dict(self.env)
        return spec

    # ---------------------------------------------------------------- events in
    def on_result(self, trial: Any, result: dict[str, Any]) -> None:
        att = self.attempts.get(trial.trial_id)
        if att is None or att.number not in self.driver.running:
            return
        if isinstance(result.get(FAILURE_KEY), dict):
            att.failure = result[FAILURE_KEY]
            return
        if isinstance(result.get(FINAL_KEY), dict):
            att.final = dict(result[FINAL_KEY])
            return
        if METRICS_KEY not in result:
            return
        start = result.get(START_KEY)
        if isinstance(start, dict) and not att.reported:  # each attempt's first report
            # start_time = when training began (driver clock), not when Ray was asked for the
            # trial: actor start-up and waiting for resources are not the trial's time.
            self.driver.on_start(att.number, start, began=time.time() - float(result.get(SECONDS_KEY) or 0.0))
        seconds = float(result.get(SECONDS_KEY) or 0.0)
        if START_KEY in result and att.reported:  # first report of a resumed run
            att.segment_base += att.last_seconds
        att.reported = True
        att.last_seconds = seconds
        att.seconds = att.segment_base + seconds
        epoch = int(result["epoch"])
        # A paused trial that could not find its checkpoint (another node) trains its epochs
        # again: recorded again, as for a retry, and the last report of an epoch wins.
        att.epochs = max(att.epochs, epoch)
        metrics = {k: float(v) for k, v in result[METRICS_KEY].items()}
        self.driver.on_report(att.number, epoch, metrics, decide=False)

    def verdict(self, trial: Any, flat: dict[str, Any]) -> bool:
        """The driver's scheduler on a (flattened) Ray result: True = stop the trial."""
        att = self.attempts.get(trial.trial_id)
        if att is None or att.number not in self.driver.running:
            return False
        prefix = f"{METRICS_KEY}/"
        metrics = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        # The driver's rule also rules out the last epoch (nothing left to stop) and warm-up.
        return self.driver.verdict(att.number, int(flat.get("epoch") or 0), metrics)

    def stop_actors(self) -> None:
        """Kill the actors of trials still running (best effort: Ray may be going down too)."""
        import ray

        for trial in list(self.live.values()):
            actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.live.clear()

    def on_complete(self, trial: Any) -> None:
        self.live.pop(trial.trial_id, None)
        att = self.attempts.pop(trial.trial_id, None)
        if att is None or att.number not in self.driver.running:
            return
        rt = self.driver.running[att.number]
        epochs = max([att.epochs, *(int(h["epoch"]) for h in rt.history)])
        if att.failure is not None:
            f = att.failure
            info = dict(f.get("info") or {})
            if not att.reported and "host" in info:  # it failed before its first report
                self.driver.on_start(att.number, info)
            # Earlier runs of a paused-and-resumed trial, plus the run that failed.
            seconds = att.segment_base + (0.0 if f.get("reported") else att.last_seconds) + float(f.get("seconds") or 0.0)
            outcome = failed(
                rt.history, seconds, str(f.get("failure_kind") or "exception"), str(f.get("failure") or "trial failed"),
                {**rt.info, **info}, epochs_run=int(f.get("epochs_run") or 0),
            )  # fmt: skip
        else:
            state = TrialState.COMPLETE if epochs >= self.driver.job.budget.max_epochs else TrialState.PRUNED
            outcome = TrialOutcome(state, list(rt.history), epochs, att.seconds, info={**rt.info, **att.final})
        self._finish(att.number, outcome)

    def on_error(self, trial: Any) -> None:
        """A Ray-level failure: the actor died (killed, out of host memory, node lost) or the
        trainable itself broke. Trial code's own failures arrive as results (``on_complete``)."""
        self.live.pop(trial.trial_id, None)
        att = self.attempts.pop(trial.trial_id, None)
        if att is None or att.number not in self.driver.running:
            return
        rt = self.driver.running[att.number]
        kind, reason = _classify_ray_error(_error_text(trial))
        self._finish(att.number, failed(rt.history, time.time() - att.started, kind, reason, rt.info, epochs_run=att.epochs))

    def _finish(self, number: int, outcome: TrialOutcome) -> None:
        self.driver.on_finish(number, outcome)
        self.exhausted = False


def _error_text(trial: Any) -> str:
    """Ray's record of a trial's error (written by the driver before the error callback)."""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    try:
        err = trial.get_error()
        return str(err) if err is not None else ""
    except Exception:  # noqa: BLE001 - a missing record still makes a FAILED trial
        return ""


def _classify_ray_error(text: str) -> tuple[str, str]:
    """(failure_kind, one-line reason) for an error that did not come from the trial itself."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    low = text.lower()
    if "actordiederror" in low or "rayactorerror" in low or "actor died" in low or "actor is dead" in low:
        reason = next(
            (ln for ln in lines if "died" in ln.lower() or "dead" in ln.lower()), "the Ray actor died"
        )
        return "killed", f"Ray actor died: {reason}"[:500]
    if "outofmemoryerror" in low or "out of memory" in low:
        return "oom", (lines[-1] if lines else "out of memory")[:500]
    return "exception", (lines[-1] if lines else "the Ray trial failed")[:500]


class RayBackend:
    """The ``ray`` backend (``backends.base.Backend``)."""

    @staticmethod
    def prepare(job: SearchJob, options: BackendOptions) -> RaySession:
        return prepare(job, options)

    run = staticmethod(run)

    @staticmethod
    def shutdown(session: RaySession) -> None:
        shutdown(session)
