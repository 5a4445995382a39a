"""The ``ray`` backend: trials run as Ray Tune trials, on a local Ray or a cluster (``--address``).

Why this shape: the driver stays the one writer of the Optuna study and MLflow (through the same
``SearchContext`` as the ``optuna`` backend), so both backends produce the same records. Ray Tune
only decides *where* a trial runs and, through its scheduler, *when it stops*:

- the search algorithm is ``StudySearcher``, a thin ``ray.tune.search.Searcher`` over the
  SearchContext: ``suggest`` asks the study for the next feasible trial (infeasible samples are
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
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from attntune.model.config import ConfigError
from attntune.search.backends.ray_trainable import (
    FAILURE_KEY,
    FINAL_KEY,
    FORWARDED_ENV,
    METRICS_KEY,
    SECONDS_KEY,
    START_KEY,
    train_trial,
)
from attntune.search.engine import COMPLETE, FAILED, PRUNED, SearchContext, TrialPlan, cpu_threads_per_trial
from attntune.search.worker import TrialOutcome

# Ray loggers that would print on the user's terminal about things attntune reports itself.
_QUIET_LOGGERS = {
    "ray.tune": logging.CRITICAL,
    "ray.train": logging.ERROR,
    "ray.air": logging.ERROR,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}
# Ray schedulers that PAUSE trials (Hyperband between rungs; the median rule to let waiting trials
# run while it lacks samples): their trials checkpoint each epoch so a resumed trial continues.
PAUSING_SCHEDULERS = frozenset({"hyperband", "median"})
# Drivers of the searches running in this process, by key: Ray pickles (and copies) its
# searcher and callbacks, so they hold only this key, never the SearchContext itself.
_DRIVERS: dict[str, _Driver] = {}


@dataclass
class RaySession:
    """The Ray this search uses; ``started`` when attntune called ``ray.init`` (so it shuts it down)."""

    started: bool
    address: str | None
    resources: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- Ray start / stop


@contextlib.contextmanager
def _quiet_ray_logs() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _scoped_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """A local Ray's servers (GCS, raylet, agents) bind 127.0.0.1, not the machine's address.

    Ray picks a node's address with ``ray_constants.ENABLE_RAY_CLUSTER`` (False means "loopback
    only", Ray's own default on macOS and Windows). The flag is set only while ``ray.init`` runs,
    so a later ``ray.init(address=...)`` in this process still finds its routable address.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without this switch: its default address
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def prepare(job: Any, options: dict[str, Any]) -> RaySession:
    """Connect to (or start) Ray and check the job's resources fit, before anything is written.

    Called by ``run_search`` before the study and MLflow runs are created, so an unreachable
    ``--address`` or a cluster without the GPUs the job asks for exits 2 leaving nothing behind.
    """
    import ray

    address = options.get("address") or os.environ.get("RAY_ADDRESS") or None
    gpus: list[str] | None = options.get("gpus")
    if ray.is_initialized():
        session = RaySession(started=False, address=None)
    else:
        if address and gpus:
            raise ConfigError(
                f"--gpus: only applies to a Ray that attntune starts; the cluster at {address} "
                "assigns its own GPUs (set resources.gpus in the job)"
            )
        term = signal.getsignal(signal.SIGTERM)  # ray.init installs its own SIGTERM handler
        try:
            with _quiet_ray_logs():
                if address:
                    _connect(ray, address)
                else:
                    _start_local(ray, gpus)
        finally:
            _restore_signals({signal.SIGTERM: term})
        session = RaySession(started=True, address=address)
    try:
        session.resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        _check_resources(job, session)
    except BaseException:
        shutdown(session)
        raise
    return session


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would retry for minutes).

    ``auto`` and ``local`` are Ray's own keywords and are left to it."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT (or auto)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _restore_signals(handlers: dict[Any, Any]) -> None:
    """Put back the handlers ``ray.init`` and Tune replace (only the main thread may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _connect(ray: Any, address: str) -> None:
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--address {address}: cannot connect to the Ray cluster ({first})") from None


def _start_local(ray: Any, gpus: list[str] | None) -> None:
    env = {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    kwargs: dict[str, Any] = {}
    if gpus is not None:
        # Ray hands out the devices it was started with: exactly the ones the user named.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        kwargs["num_gpus"] = len(gpus)
    with _scoped_env(env), _loopback_node():
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
            **kwargs,
        )


def _check_resources(job: Any, session: RaySession) -> None:
    """A trial that can never be placed would leave Ray Tune waiting forever: refuse it now."""
    have_cpu = session.resources.get("CPU", 0.0)
    have_gpu = session.resources.get("GPU", 0.0)
    problems = []
    if job.resources.cpus > have_cpu:
        problems.append(
            f"resources.cpus: {job.resources.cpus:g} per trial, but the Ray cluster has {have_cpu:g} CPUs"
        )
    if job.resources.gpus > have_gpu:
        problems.append(
            f"resources.gpus: {job.resources.gpus:g} per trial, but the Ray cluster has {have_gpu:g} GPUs"
        )
    if problems:
        raise ConfigError(problems, job.source_path)


def shutdown(session: RaySession | None) -> None:
    """Stop (or disconnect from) Ray only if this search started it."""
    if session is None or not session.started:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
    session.started = False


# --------------------------------------------------------------------------- the search


def run(ctx: SearchContext, options: dict[str, Any]) -> None:
    """Drive the search to its budget as one Ray Tune run."""
    from ray import tune


    job = ctx.job
    session: RaySession = options.get("prepared") or prepare(job, options)
    driver = _Driver(ctx, options.get("progress"), cpu_threads_per_trial(job))
    key = uuid.uuid4().hex
    _DRIVERS[key] = driver
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
                scheduler=_ray_scheduler(key, job),
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
        with _scoped_env(tune_env), _quiet_ray_logs():
            tuner.fit()
    except BaseException:
        # Ctrl-C, SIGTERM or an error leaves Tune without cleaning up: stop the trials' actors now
        # (a Ray attntune did not start keeps running, and so would they, until this process ends).
        driver.stop_actors()
        raise
    finally:
        _restore_signals(handlers)
        _DRIVERS.pop(key, None)
        shutdown(session)


def _ray_scheduler(key: str, job: Any) -> Any:
    """Ray's own scheduler for single-metric rules; the driver's verdict (``DriverDecides``) for
    a ``driver_side`` scheduler such as ``moasha``."""
    from attntune.search.schedulers import SCHEDULERS

    sched = SCHEDULERS.get(job.scheduler)
    if sched.driver_side:
        return DriverDecides(key)
    inner = sched.ray_scheduler(job.budget, job.metric, job.mode)
    return WarmupGate(inner, job.budget.max_epochs) if sched.judges else inner


def warming_up(config: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether a Ray result was reported during the trial's learning-rate warm-up (its ``step``
    <= the trial's ``train.warmup_steps``; the rule of ``worker.wants_decision``)."""
    step = result.get("step")
    warmup = ((config.get("config") or {}).get("train") or {}).get("warmup_steps") or 0
    return step is not None and float(step) <= float(warmup)


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
        if result.get(FINAL_KEY):
            return TrialScheduler.CONTINUE  # after the last epoch: nothing left to judge
        if not result.get(FAILURE_KEY) and warming_up(trial.config or {}, result):
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
    (``SearchContext.driver_verdict``, with the warm-up rule of ``worker.wants_decision``).
    Ray calls a scheduler before the callbacks that record the result, so the verdict takes
    this result's value explicitly. Module-level, and holding only a key: Tune pickles it."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        driver = _DRIVERS.get(self.key)
        if driver is None or result.get(FAILURE_KEY) or result.get(FINAL_KEY):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP if driver.verdict(trial, result) else TrialScheduler.CONTINUE


def trial_name(trial: Any) -> str:
    """``t007a1_<ray id>``: the trial number first, so Ray's folders sort like the study."""
    cfg = trial.config or {}
    return f"t{int(cfg.get('number', 0)):03d}a{int(cfg.get('attempt', 1))}_{trial.trial_id}"


class StudySearcher(Searcher):
    """Ray Tune's search algorithm: the next trial comes from the SearchContext (the study)."""

    def __init__(self, key: str, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.key = key

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        driver = _DRIVERS.get(self.key)
        return driver.suggest(trial_id) if driver is not None else Searcher.FINISHED

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

    def _driver(self) -> _Driver | None:
        return _DRIVERS.get(self.key)

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

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if (d := self._driver()) is not None and d.progress is not None:
            d.progress.tick()


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


class _Driver:
    """Everything the Ray callbacks do, against the SearchContext, in the driver process."""

    def __init__(self, ctx: SearchContext, progress: Any, threads: int):
        self.ctx = ctx
        self.progress = progress
        self.threads = threads
        self.attempts: dict[str, _Attempt] = {}
        self.live: dict[str, Any] = {}  # Ray trials started and not yet ended, by Ray trial id
        self.exhausted = False  # cached "cannot launch": rechecked after each finished trial
        self.env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}

    # ---------------------------------------------------------------- trials out
    def suggest(self, ray_trial_id: str) -> dict[str, Any] | str | None:
        ctx = self.ctx
        if not self.exhausted and ctx.can_launch():
            plan = ctx.next_trial()
            if plan is not None:
                self.attempts[ray_trial_id] = _Attempt(plan.number)
                if self.progress:
                    self.progress.trial_started(plan)
                return self.trial_config(plan)
        self.exhausted = True
        # Running trials may still fail and be retried: finish only when none is left.
        return Searcher.FINISHED if not ctx.running else None

    def checkpoint_dir(self, plan: TrialPlan) -> Path | None:
        """Absolute (Ray actors run in their own folders). Also set for every trial under a
        scheduler that pauses trials: Ray resumes a paused function trainable by starting it
        again, and ``train(..., resume=True)`` then continues after the last finished epoch."""
        path = self.ctx.checkpoint_dir(plan)
        if path is None and self.ctx.job.scheduler in PAUSING_SCHEDULERS:
            path = self.ctx.job.output / "checkpoints" / f"t{plan.number:03d}"
        return path.resolve() if path is not None else None

    def trial_config(self, plan: TrialPlan) -> dict[str, Any]:
        spec = plan.spec(self.threads, self.checkpoint_dir(plan))
        task = spec["config"].get("task") or {}
        if task.get("path") and Path(task["path"]).exists():
            task["path"] = str(Path(task["path"]).resolve())
        spec["metric"] = self.ctx.job.metric
        spec["env"] = dict(self.env)
        return spec

    # ---------------------------------------------------------------- events in
    def on_result(self, trial: Any, result: dict[str, Any]) -> None:
        att = self.attempts.get(trial.trial_id)
        if att is None or att.number not in self.ctx.running:
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
            self.ctx.on_start(att.number, start, began=time.time() - float(result.get(SECONDS_KEY) or 0.0))
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
        self.ctx.on_report(att.number, epoch, metrics, decide=False)
        if self.progress:
            self.progress.trial_epoch(att.number, epoch, metrics)

    def verdict(self, trial: Any, flat: dict[str, Any]) -> bool:
        """The driver's scheduler on a (flattened) Ray result: True = stop the trial."""
        att = self.attempts.get(trial.trial_id)
        if att is None or att.number not in self.ctx.running:
            return False
        prefix = f"{METRICS_KEY}/"
        metrics = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        epoch = int(flat.get("epoch") or 0)
        value = metrics.get(self.ctx.job.metric)
        plan = self.ctx.running[att.number]
        from attntune.search.worker import wants_decision

        # wants_decision also rules out the last epoch (nothing left to stop) and warm-up.
        if value is None or not math.isfinite(float(value)) or not wants_decision(self.ctx.decision_epochs(plan), epoch, metrics):
            return False
        return self.ctx.driver_verdict(att.number, epoch, float(value))

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
        if att is None or att.number not in self.ctx.running:
            return
        plan = self.ctx.running[att.number]
        epochs = max([att.epochs, *(int(h["epoch"]) for h in plan.history)])
        if att.failure is not None:
            f = att.failure
            info = dict(f.get("info") or {})
            if not att.reported and "host" in info:  # it failed before its first report
                self.ctx.on_start(att.number, info)
            outcome = TrialOutcome(
                FAILED,
                list(plan.history),
                int(f.get("epochs_run") or 0),
                # Earlier runs of a paused-and-resumed trial, plus the run that failed.
                att.segment_base
                + (0.0 if f.get("reported") else att.last_seconds)
                + float(f.get("seconds") or 0.0),
                failure_kind=str(f.get("failure_kind") or "exception"),
                failure=str(f.get("failure") or "trial failed"),
                info={**plan.info, **info},
            )
        else:
            state = COMPLETE if epochs >= self.ctx.job.budget.max_epochs else PRUNED
            outcome = TrialOutcome(state, list(plan.history), epochs, att.seconds, info={**plan.info, **att.final})
        self._finish(att.number, outcome)

    def on_error(self, trial: Any) -> None:
        """A Ray-level failure: the actor died (killed, out of host memory, node lost) or the
        trainable itself broke. Trial code's own failures arrive as results (``on_complete``)."""
        self.live.pop(trial.trial_id, None)
        att = self.attempts.pop(trial.trial_id, None)
        if att is None or att.number not in self.ctx.running:
            return
        plan = self.ctx.running[att.number]
        kind, reason = _classify_ray_error(_error_text(trial))
        outcome = TrialOutcome(
            FAILED,
            list(plan.history),
            att.epochs,
            time.time() - att.started,
            failure_kind=kind,
            failure=reason,
            info=dict(plan.info),
        )
        self._finish(att.number, outcome)

    def _finish(self, number: int, outcome: TrialOutcome) -> None:
        from attntune.search.backends.local import _finish

        _finish(self.ctx, number, outcome, self.progress)
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
