"""What every backend shares: the study (source of truth), sampling, feasibility, MLflow records.

A backend decides *where* trials run (local worker processes, Ray actors); this module decides
*what* runs and keeps the records straight:

- the Optuna study (RDB storage under the output folder) holds every trial, its state and the
  MLflow parent run id (study user attribute ``mlflow_parent_run_id``), so ``resume``, ``join`` and
  ``report`` find everything from the study alone;
- a sampled config over ``max_params`` is never trained: it is told to Optuna as FAIL with the
  attribute ``attntune_state=INFEASIBLE`` and gets a child run tagged INFEASIBLE; it does not use up
  one of ``budget.n_trials`` (which counts trained trials);
- every child run is created, updated and ended by the driver through the one ``Tracker``.

State mapping (docs/mlflow.md): COMPLETE -> Optuna COMPLETE, MLflow FINISHED; PRUNED -> PRUNED,
FINISHED; FAILED -> FAIL, FAILED; INFEASIBLE -> FAIL + attntune_state, FINISHED; a trial that was
running when the driver died -> RUNNING in Optuna (rerun on resume), KILLED in MLflow until rerun.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError, RunConfig, to_dict
from attntune.search.job import SearchJob
from attntune.search.objectives import violations
from attntune.search.tracking import (
    TAG_JOB,
    TAG_KIND,
    TAG_LICENSE,
    TAG_SEARCH,
    TAG_STATE,
    TAG_TRIAL,
    Tracker,
)
from attntune.spaces.space import make_config

COMPLETE, PRUNED, FAILED, INFEASIBLE = "COMPLETE", "PRUNED", "FAILED", "INFEASIBLE"
MAX_CONSECUTIVE_INFEASIBLE = 200
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_RUN = "mlflow_run_id"
ATTR_STATE = "attntune_state"
ATTR_RUNGS = "rungs"  # {rung epoch: the value a driver-side scheduler settled the trial with}
DRIVER_FAULT_ENV = "ATTNTUNE_DRIVER_FAULT"


def driver_fault(point: str, number: int | None = None) -> None:
    """Test-only hook (docs/RELIABILITY.md): ``ATTNTUNE_DRIVER_FAULT=POINT[@TRIAL]`` SIGKILLs the
    driver at a named point between two writes of one record, a window too short to hit from
    outside. Points: parent, infeasible, asked, run, finishing, ended, told."""
    spec = os.environ.get(DRIVER_FAULT_ENV)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or (number is not None and int(at) == number)):
        os.kill(os.getpid(), signal.SIGKILL)


def _recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` as one record: a SIGTERM or Ctrl-C arriving meanwhile takes effect after it."""

    @functools.wraps(method)
    def wrapper(self: SearchContext, *args: Any, **kwargs: Any) -> Any:
        with self.recording():
            return method(self, *args, **kwargs)

    return wrapper


def run_name(number: int, cfg: RunConfig) -> str:
    """``t007 d256 h8 L3 lr3e-4``: scannable in the MLflow runs table."""
    m = cfg.model
    depth = f"L{m.n_encoder_layers}" if m.n_encoder_layers == m.n_decoder_layers else f"L{m.n_encoder_layers}/{m.n_decoder_layers}"
    mant, exp = f"{cfg.train.lr:.0e}".split("e")
    return f"t{number:03d} d{m.d_model} h{m.n_heads} {depth} lr{mant}e{int(exp)}"


def storage_url(job: SearchJob) -> str:
    return f"sqlite:///{(job.output / 'study.db').resolve().as_posix()}"


def open_storage(url: str) -> Any:
    """The study's Optuna storage. A local SQLite file runs in WAL mode with ``synchronous=NORMAL``:
    every trial costs the driver ~15 small commits, and this makes each ~4x cheaper (5.2 -> 1.2 ms
    measured here) while a killed driver still loses nothing it committed (only a power cut can
    drop the last commits). Other URLs (PostgreSQL for ``--join``) are used as given."""
    import optuna

    if not url.startswith("sqlite:///"):
        return url
    import sqlite3

    path = url[len("sqlite:///"):]
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
        con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
    from sqlalchemy import event

    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", _pragmas)
    storage.engine.dispose()  # connections opened while creating the schema go; new ones get the pragma
    return storage


def release_storage(storage: Any) -> None:
    """Fold a local SQLite study's write-ahead log into ``study.db`` and close its connections.

    In WAL mode most of a search lives in ``study.db-wal`` until a checkpoint, and SQLite only
    checkpoints when the last connection closes, which a CLI ending with ``os._exit`` never does:
    without this, a ``study.db`` copied alone would miss most of the search."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    engine = getattr(backend, "engine", None)
    if engine is None or not str(engine.url).startswith("sqlite"):
        return
    with contextlib.suppress(Exception):  # best effort: a busy database is checkpointed next time
        with engine.connect() as con:
            con.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def trial_value(history: list[dict[str, float]], metric: str, mode: str) -> tuple[float | None, float | None]:
    """(best, last) of ``metric`` over a trial's epochs; NaN/inf never count as best."""
    vals = [h[metric] for h in history if metric in h]
    if not vals:
        return None, None
    finite = [v for v in vals if math.isfinite(v)]
    best = (min(finite) if mode == "min" else max(finite)) if finite else None
    return best, vals[-1]


@dataclass
class TrialPlan:
    """One trial on its way to (or in) a worker."""

    number: int
    trial_id: int
    values: dict[str, Any]
    config: RunConfig
    n_params: int
    run_id: str
    attempt: int = 1
    started: float = field(default_factory=time.time)
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    judged_through: int = 0  # the last epoch the driver's own scheduler judged (driver_verdict)
    measure_latency: bool = False  # latency_ms is an objective or constraint: the worker times decoding

    def spec(
        self, threads: int | None, checkpoint_dir: Path | None, decide: tuple[int, int, int] | None = None
    ) -> dict[str, Any]:
        return {
            "number": self.number,
            "decide": list(decide) if decide else None,  # epochs the scheduler judges (worker.wants_decision)
            "config": to_dict(self.config),
            "attempt": self.attempt,
            "threads": threads,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            # Epochs the driver already holds: a retry resumed from a later checkpoint reports the
            # ones in between (checkpointed, but their report was lost with the failed attempt).
            "seen_epoch": max((int(h["epoch"]) for h in self.history), default=0),
            "measure_latency": self.measure_latency,
        }


class SearchContext:
    """The study, the tracker and the bookkeeping one search shares across backends."""

    def __init__(self, job: SearchJob, *, resume: bool = False, join: bool = False, storage: str | None = None):
        self.job = job
        self.resume = resume
        self.join = join
        self.storage = storage or storage_url(job)
        self.tracker: Tracker | None = None
        self.study: Any = None
        self.parent_run_id: str | None = None
        self.vocab: tuple[int, int] = (0, 0)
        self.data_license: str | None = None
        self.data_fingerprint: str | None = None
        self.started = time.time()
        self.running: dict[int, TrialPlan] = {}
        # Completed trials that missed a measured constraint: number -> the constraints missed.
        self.missed_constraints: dict[int, str] = {}
        self.pending_reruns: list[TrialPlan] = []
        self.n_launched = 0
        # Budget bookkeeping read from the study once, not on every event (each read is a query
        # and a deserialisation of every trial): in the search's own SQLite study the count is
        # re-read only after this driver adds a trial; a shared study (``--storage``/``--join``),
        # where other drivers add trials, is always read.
        self._private_study = storage is None and not join
        self._counted: int | None = None
        self._clock: tuple[float, float] | None = None
        self.interrupted: str | None = None
        self._recording = 0
        self._deferred_signal: int | None = None
        # Several drivers may share one study (``--join``): each has an id, recorded on its trials
        # and in the study's user attrs (``driver.<id>``) so the last one to finish ends the parent.
        self.driver_id = uuid.uuid4().hex[:10]
        self.max_tokens = 1
        self.memory_limit: tuple[int, str] | None = None
        self.memory_on_gpu = False

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Create (or reattach to) the study and parent run. Call only after the job validated."""
        import optuna

        from attntune.search.schedulers import SCHEDULERS
        from attntune.search.strategies import STRATEGIES

        # Data first: the vocab sizes make n_params exact; bad data exits 2 before anything is written.
        from attntune.search.worker import load_task_cached

        data = load_task_cached(to_dict(self.job.base.task))
        self.vocab = (data.src_vocab_size, data.tgt_vocab_size)
        self.data_license = " ".join(x for x in (data.license, data.attribution) if x) or None
        self.data_fingerprint = data.fingerprint
        from attntune.search.memory import longest_sequence, trial_memory_limit, trial_on_gpu

        self.max_tokens = longest_sequence(data)
        self.memory_limit = trial_memory_limit(self.job)
        self.memory_on_gpu = trial_on_gpu(self.job)
        exists = self._study_exists()
        if (self.resume or self.join) and not exists:
            raise ConfigError(f"{self.job.name}: no search to resume in {self.job.output} (run it first)")
        if exists and not (self.resume or self.join):
            raise ConfigError(
                f"{self.job.output}: a search named {self.job.name!r} already exists there; "
                f"continue it with `attntune resume {self.job.output}` or choose another --output"
            )
        # Nothing is written before this line. MLflow's start-up (schema migrations on a new
        # SQLite store) runs on the tracker's thread, overlapping the study's.
        self.tracker = Tracker(self.job.tracking.resolved_uri(), check=False)
        experiment = self.tracker.ensure_experiment(self.job.tracking.experiment or self.job.name, wait=False)
        self.job.output.mkdir(parents=True, exist_ok=True)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        strategy = STRATEGIES.get(self.job.strategy)
        n_trials = self.n_trials_target()
        # A joined driver samples with its own seed: the same seed would replay the first
        # driver's samples (random and TPE start-up trials) and train the same configs twice.
        seed = self.job.seed if not self.join else self.job.seed + 1 + int(self.driver_id, 16) % 1_000_003
        sampler = strategy.make_sampler(self._sampler_context(seed, n_trials))
        self.scheduler = SCHEDULERS.get(self.job.scheduler)
        pruner = self.scheduler.optuna_pruner(self.job.budget)
        self.study = optuna.create_study(
            study_name=self.job.name,
            storage=open_storage(self.storage),
            sampler=sampler,
            pruner=pruner,
            directions=self.job.directions,
            load_if_exists=True,
        )
        experiment.result()
        if self.resume:
            # A resumed sampler with the job's seed would replay the first session's draws
            # (random and TPE start-up trials) and train the same configs again.
            resumes = int(self.study.user_attrs.get("resumes", 0)) + 1
            self.study.set_user_attr("resumes", resumes)
            self.study.sampler = strategy.make_sampler(self._sampler_context(seed + 100_003 * resumes, n_trials))
        attrs = self.study.user_attrs
        if self.join:
            self._check_joinable(attrs)
        if ATTR_PARENT in attrs:
            self.parent_run_id = attrs[ATTR_PARENT]
            self.tracker.reopen_run(self.parent_run_id)
            # Only a resume reruns RUNNING trials: in a shared study they may be another live
            # driver's (``--join``), which must never be trained twice.
            if self.resume:
                self._collect_reruns()
                for other in self.other_drivers_running():  # a resume takes over from dead drivers
                    self.study.set_user_attr(f"driver.{other}", {**attrs[f"driver.{other}"], "state": "lost"})
        else:
            self._start_parent()
        self._set_driver_state("running")
        self._counted = self._clock = None

    def _sampler_context(self, seed: int, n_trials: int) -> Any:
        from attntune.search.strategies import SamplerContext

        measured = self.job.end_constraints
        return SamplerContext(
            self.job.space,
            seed,
            n_trials,
            self.job.concurrency,
            n_objectives=len(self.job.directions),
            constraints_func=_ConstraintViolations(len(measured)) if measured else None,
        )

    def _check_joinable(self, attrs: dict[str, Any]) -> None:
        """A joined driver must log to the parent run's server and search the same space."""
        ours = self.job.tracking.resolved_uri()
        theirs = attrs.get("tracking_uri")
        if theirs and theirs.rstrip("/") != ours.rstrip("/"):
            raise ConfigError(
                f"--join: the study {self.job.name!r} logs to {theirs}, this driver to {ours}; "
                f"use --tracking-uri {theirs}"
            )
        for key, mine in (("metric", self.job.metric), ("space_fingerprint", self.job.space.fingerprint())):
            if attrs.get(key) not in (None, mine):
                raise ConfigError(f"--join: the shared study has {key} {attrs[key]!r}, this job {mine!r}")

    def _set_driver_state(self, state: str) -> None:
        self.study.set_user_attr(
            f"driver.{self.driver_id}",
            {"host": socket.gethostname(), "pid": os.getpid(), "state": state, "time": time.time()},
        )

    def other_drivers_running(self) -> list[str]:
        """Ids of other drivers of this study still running (this host's are checked by pid)."""
        host = socket.gethostname()
        out = []
        for key, v in self.study.user_attrs.items():
            if not key.startswith("driver.") or key == f"driver.{self.driver_id}" or not isinstance(v, dict):
                continue
            if v.get("state") != "running":
                continue
            if v.get("host") == host and not _pid_alive(int(v.get("pid", 0))):
                continue
            out.append(key[len("driver."):])
        return out

    def _study_exists(self) -> bool:
        import optuna

        if self.storage.startswith("sqlite:///") and not Path(self.storage[len("sqlite:///"):]).exists():
            return False
        try:
            names = optuna.get_all_study_names(self.storage)
        except Exception:  # noqa: BLE001 - an empty/new storage has no tables yet
            return False
        return self.job.name in names

    def _start_parent(self) -> None:
        assert self.tracker is not None
        job = self.job
        tags = {
            TAG_KIND: "search",
            TAG_JOB: job.name,
            "attntune.output": str(job.output),
            "attntune.storage": _hide_password(self.storage),
            "attntune.host": socket.gethostname(),
            "data.fingerprint": self.data_fingerprint or "",
            "mlflow.note.content": (
                f"attntune search `{job.name}`: {job.strategy} + {job.scheduler} on {job.backend}, "
                f"{job.budget.n_trials} trials, metric {job.metric} ({job.mode})."
            ),
        }
        if self.data_license:
            tags[TAG_LICENSE] = self.data_license
        # The study's attributes first: a driver killed before the parent run is recorded leaves
        # a study that `attntune resume FOLDER` can still open (it needs job_yaml).
        self.study.set_user_attr("job_name", job.name)
        self.study.set_user_attr("job_yaml", job.source_text)
        self.study.set_user_attr("metric", job.metric)
        self.study.set_user_attr("space_fingerprint", job.space.fingerprint())
        self.study.set_user_attr("mode", job.mode)
        self.study.set_user_attr("objectives", [[o.name, o.mode] for o in job.objectives])
        self.study.set_user_attr("constraints", [str(c) for c in job.constraints])
        self.study.set_user_attr("strategy", job.strategy)
        self.study.set_user_attr("scheduler", job.scheduler)
        self.study.set_user_attr("backend", job.backend)
        self.study.set_user_attr("tracking_uri", self.job.tracking.resolved_uri())
        self.study.set_user_attr("experiment_id", self.tracker.experiment_id)
        if "started_at" not in self.study.user_attrs:
            self.study.set_user_attr("started_at", self.started)
        params = {k: v for k, v in job.settings().items() if v is not None}
        orphan = self._orphan_parent() if self.resume else None
        if orphan is not None:  # created by a driver killed before it could record it: adopt it
            self.parent_run_id = orphan
            self.tracker.set_tags(orphan, tags)
            self.tracker.log_params(orphan, params)
        else:
            self.parent_run_id = self.tracker.create_run(f"search {job.name}", tags=tags, params=params)
        driver_fault("parent")
        self.tracker.log_text(self.parent_run_id, job.source_text or "", "job.yaml")
        import yaml

        self.tracker.log_text(self.parent_run_id, yaml.safe_dump(job.space.to_dict(), sort_keys=False), "space.yaml")
        self.study.set_user_attr(ATTR_PARENT, self.parent_run_id)

    def _find_runs(self, filter_string: str) -> list[Any]:
        assert self.tracker is not None
        exp = self.tracker.experiment_id
        return self.tracker.call(lambda c: c.search_runs([exp], filter_string, max_results=1000))

    def _orphan_parent(self) -> str | None:
        """The parent run of this study's search that a killed driver created but never recorded."""
        storage = _hide_password(self.storage)
        if "'" in storage:
            return None
        since_ms = float(self.study.user_attrs.get("started_at", 0.0)) * 1000 - 5000
        runs = self._find_runs(f"tags.`{TAG_KIND}` = 'search' and tags.`attntune.storage` = '{storage}'")
        runs = [r for r in runs if r.info.status == "RUNNING" and r.info.start_time >= since_ms]
        return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def _orphan_child(self, number: int) -> str | None:
        """Trial ``number``'s child run, created by a killed driver that never recorded it."""
        runs = self._find_runs(
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.`{TAG_TRIAL}` = '{number}'"
        )
        return min(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def _collect_reruns(self) -> None:
        """Trials a dead driver left RUNNING in Optuna are rerun on their existing child runs.

        The driver may have died between any two writes: a child run it created but never
        recorded is found in MLflow (tagged with the trial number) and adopted; a trial sampled
        but never given a run gets one now (its missing parameters sampled, and never trained if
        infeasible); an infeasible trial half-recorded is recorded, not trained. Finished trials
        whose MLflow run is still RUNNING (writes lost with the driver) are ended as Optuna says.
        """
        import optuna

        from attntune.model.cost import n_params

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            attrs = t.user_attrs
            run_id = attrs.get(ATTR_RUN) or self._orphan_child(t.number)
            if attrs.get(ATTR_STATE) == INFEASIBLE or attrs.get(ATTR_RUN) is None:
                trial = optuna.trial.Trial(self.study, t._trial_id)
            if attrs.get(ATTR_STATE) == INFEASIBLE:
                values = dict(t.params)
                try:
                    cfg: RunConfig | None = make_config(self.job.base, values)
                except ConfigError:
                    cfg = None
                reason = str(attrs.get("failure", "infeasible"))
                self._record_infeasible(trial, values, cfg, reason, attrs.get("n_params"), run_id=run_id)
                continue
            if attrs.get(ATTR_RUN) is None:  # never started: complete the sample, check it, start it
                values = self.job.space.sample(trial)  # parameters already drawn come back as they were
                try:
                    cfg = make_config(self.job.base, values)
                except ConfigError as e:
                    self._record_infeasible(trial, values, None, f"invalid config: {e.line()}", run_id=run_id)
                    continue
                count = n_params(cfg.model, *self.vocab)
                reason = self._infeasible_reason(cfg, count)
                if reason is not None:
                    self._record_infeasible(trial, values, cfg, reason, count, run_id=run_id)
                    continue
                plan = self._start_trial(trial, values, cfg, count, run_id=run_id)
                self.running.pop(plan.number)
                self.n_launched -= 1
                self.pending_reruns.append(plan)
                continue
            cfg = make_config(self.job.base, t.params)
            attempt = int(attrs.get("attempts", 1)) + 1
            plan = TrialPlan(t.number, t._trial_id, dict(t.params), cfg, int(attrs.get("n_params", 0)), run_id, attempt,
                             measure_latency=self.job.uses("latency_ms"))  # fmt: skip
            if attrs.get(ATTR_STATE) is not None:  # killed while recording its end: the rerun decides
                for k in (ATTR_STATE, "failure", "failure_kind", "stopped_epoch"):
                    if k in attrs:
                        self.study._storage.set_trial_user_attr(t._trial_id, k, None)
            self.pending_reruns.append(plan)
        self._end_finished_runs()

    def static_values(self, cfg: RunConfig, count: int) -> dict[str, float]:
        """What is known of a config before it is built: n_params, forward FLOPs per token."""
        from attntune.search.objectives import static_values

        return static_values(cfg.model, count, self.vocab, self.max_tokens)

    def _infeasible_reason(self, cfg: RunConfig, count: int) -> str | None:
        """Why a config must not be trained, or None: over ``max_params``, a static constraint
        (``n_params``, ``flops``) missed, or a memory estimate over the trial's share."""
        if self.job.max_params is not None and count > self.job.max_params:
            return f"n_params={count} exceeds max_params={int(self.job.max_params)}"
        if self.job.launch_constraints:
            values = self.static_values(cfg, count)
            for c in self.job.launch_constraints:
                if c.violation(values[c.name]) > 0:
                    return f"{c.name}={values[c.name]:.4g} violates the constraint {c}"
        from attntune.search.memory import memory_problem

        return memory_problem(cfg, self.vocab, self.max_tokens, self.memory_limit, cuda=self.memory_on_gpu)

    def _end_finished_runs(self) -> None:
        """Child runs still RUNNING in MLflow whose trials Optuna has finished: end them as Optuna says."""
        from attntune.search.results import state_of

        assert self.tracker is not None
        runs = self._find_runs(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and attributes.status = 'RUNNING'")
        if not runs:
            return
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for r in runs:
            t = trials.get(int(r.data.tags.get(TAG_TRIAL, -1)))
            if t is None or not t.state.is_finished():
                continue
            state = state_of(t)
            tags: dict[str, Any] = {TAG_STATE: state, "epochs_run": t.user_attrs.get("epochs_run", 0)}
            if t.user_attrs.get("failure"):
                tags["failure_reason"] = t.user_attrs["failure"]
                tags["failure_kind"] = t.user_attrs.get("failure_kind") or ""
            self.tracker.set_tags(r.info.run_id, tags)
            self.tracker.end_run(r.info.run_id, "FAILED" if state == FAILED else "FINISHED")

    # ------------------------------------------------------------------ budget
    def n_trials_target(self) -> int:
        n = self.job.budget.n_trials
        if self.job.strategy == "grid":
            n = min(n, self.job.space.grid_size())
        return n

    def n_counted(self) -> int:
        """Trials that used budget: finished (not infeasible) plus every RUNNING trial in the
        study, this driver's and, in a shared study (``--join``), the other drivers'. A rerun
        waiting in ``pending_reruns`` is RUNNING in the study, so it is counted once."""
        if self._counted is not None and self._private_study:
            return self._counted
        done = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get(ATTR_STATE) == INFEASIBLE:
                continue
            done += 1
        self._counted = done
        return done

    def time_left(self) -> float | None:
        limit = self.job.budget.time_limit_s
        if limit is None:
            return None
        if self._clock is None:  # fixed for the session: the study's start and earlier sessions' time
            attrs = self.study.user_attrs if self.study else {}
            self._clock = (float(attrs.get("started_at", self.started)), float(attrs.get("time_used_s", 0.0)))
        start, earlier = self._clock
        if self.join:  # a joined driver shares the first driver's clock
            return limit - (time.time() - start)
        # Resumed searches count from this session's start plus what earlier sessions used.
        return limit - (time.time() - max(start, self.started) + earlier)

    @_recorded
    def can_launch(self) -> bool:
        if self.interrupted:
            return False
        tl = self.time_left()
        if tl is not None and tl <= 0:
            return False
        return self.pending_reruns != [] or self.n_counted() < self.n_trials_target()

    @_recorded
    def done(self) -> bool:
        return not self.running and not self.can_launch()

    # ------------------------------------------------------------------ planning trials
    @_recorded
    def next_trial(self) -> TrialPlan | None:
        """The next trial to run: a rerun first, else a new feasible sample (or None)."""

        from attntune.model.cost import n_params

        if self.pending_reruns:
            plan = self.pending_reruns.pop(0)
            assert self.tracker is not None
            self.tracker.reopen_run(plan.run_id)
            self.tracker.set_tags(plan.run_id, {"attempts": plan.attempt, TAG_STATE: "RUNNING"})
            self.study._storage.set_trial_user_attr(plan.trial_id, "attempts", plan.attempt)
            self.running[plan.number] = plan
            self.n_launched += 1
            return plan
        if not self.can_launch():
            return None
        infeasible_streak = 0
        while True:
            trial = self.study.ask()
            self._counted = None  # a new trial: count again
            driver_fault("asked", trial.number)
            values = self.job.space.sample(trial)
            try:
                cfg = make_config(self.job.base, values)
            except ConfigError as e:  # the space checks make this unreachable; never train it
                self._record_infeasible(trial, values, None, f"invalid config: {e.line()}")
                continue
            count = n_params(cfg.model, *self.vocab)
            reason = self._infeasible_reason(cfg, count)
            if reason is not None:
                self._record_infeasible(trial, values, cfg, reason, count)
                infeasible_streak += 1
                if infeasible_streak >= MAX_CONSECUTIVE_INFEASIBLE:
                    raise ConfigError(
                        f"space: {infeasible_streak} samples in a row are infeasible (the last: {reason}); "
                        "lower the model or batch sizes, or relax max_params, constraints or the memory limit"
                    )
                continue
            plan = self._start_trial(trial, values, cfg, count)
            return plan

    def _child_params(self, values: dict[str, Any], cfg: RunConfig, count: int) -> dict[str, Any]:
        params: dict[str, Any] = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
        params.update({f"train.{k}": v for k, v in to_dict(cfg.train).items() if v is not None})
        params.update(values)  # pseudo-parameters (head_dim, d_ff_ratio, n_layers) as sampled
        params["n_params"] = count
        params["head_dim"] = cfg.model.head_dim
        return params

    def _base_tags(self, number: int, state: str) -> dict[str, Any]:
        tags = {
            TAG_KIND: "trial",
            TAG_TRIAL: number,
            TAG_STATE: state,
            TAG_SEARCH: self.parent_run_id,
            TAG_JOB: self.job.name,
            "attntune.backend": self.job.backend,
            "attntune.driver": self.driver_id,
        }
        if self.data_license:
            tags[TAG_LICENSE] = self.data_license
        return tags

    def _start_trial(
        self, trial: Any, values: dict[str, Any], cfg: RunConfig, count: int, run_id: str | None = None
    ) -> TrialPlan:
        assert self.tracker is not None
        tags = {**self._base_tags(trial.number, "RUNNING"), "attempts": 1}
        params = self._child_params(values, cfg, count)
        if run_id is not None:  # created by a driver killed before it recorded it (resume)
            self.tracker.reopen_run(run_id)
            self.tracker.set_tags(run_id, tags)
            self.tracker.log_params(run_id, params)
        else:
            run_id = self.tracker.create_run(
                run_name(trial.number, cfg), parent_run_id=self.parent_run_id, tags=tags, params=params
            )
        driver_fault("run", trial.number)
        trial.set_user_attr(ATTR_RUN, run_id)
        trial.set_user_attr("n_params", count)
        if self.job.uses("flops"):
            trial.set_user_attr("flops", self.static_values(cfg, count)["flops"])
        trial.set_user_attr("head_dim", cfg.model.head_dim)
        trial.set_user_attr("config", {k: v for k, v in _flat_config(cfg).items()})
        trial.set_user_attr("attempts", 1)
        trial.set_user_attr("start_time", time.time())
        plan = TrialPlan(trial.number, trial._trial_id, values, cfg, count, run_id, measure_latency=self.job.uses("latency_ms"))
        self.running[plan.number] = plan
        self.n_launched += 1
        return plan

    def _record_infeasible(
        self,
        trial: Any,
        values: dict[str, Any],
        cfg: RunConfig | None,
        reason: str,
        count: int | None = None,
        run_id: str | None = None,
    ) -> None:
        import optuna

        assert self.tracker is not None
        trial.set_user_attr(ATTR_STATE, INFEASIBLE)
        trial.set_user_attr("failure", reason)
        if count is not None:
            trial.set_user_attr("n_params", count)
        name = run_name(trial.number, cfg) if cfg else f"t{trial.number:03d} invalid"
        params = self._child_params(values, cfg, count or 0) if cfg else dict(values)
        tags = {**self._base_tags(trial.number, INFEASIBLE), "failure_reason": reason, "failure_kind": "infeasible"}
        if run_id is not None:  # created by a driver killed before it recorded it (resume)
            self.tracker.set_tags(run_id, tags)
            self.tracker.log_params(run_id, params)
        else:
            run_id = self.tracker.create_run(name, parent_run_id=self.parent_run_id, tags=tags, params=params)
        driver_fault("infeasible", trial.number)
        trial.set_user_attr(ATTR_RUN, run_id)
        self.tracker.end_run(run_id, "FINISHED")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    # ------------------------------------------------------------------ events from trials
    def trial_handle(self, plan: TrialPlan) -> Any:
        import optuna

        return optuna.trial.Trial(self.study, plan.trial_id)

    @_recorded
    def on_start(self, number: int, info: dict[str, Any], began: float | None = None) -> None:
        """A trial began training; ``began`` (driver clock) replaces the planned start time."""
        plan = self.running[number]
        if began is not None and plan.attempt == 1:
            self.study._storage.set_trial_user_attr(plan.trial_id, "start_time", began)
        plan.info = dict(info)
        tags = {
            "host": info.get("host", ""),
            "device": info.get("device", ""),
            "cuda_visible_devices": info.get("cuda_visible_devices", ""),
        }
        for k in ("node_id", "worker", "gpu_ids"):
            if k in info:
                tags[k] = info[k]
        assert self.tracker is not None
        self.tracker.set_tags(plan.run_id, tags)
        for k, v in tags.items():
            self.study._storage.set_trial_user_attr(plan.trial_id, k, v)
        # What the worker actually built, so anyone can check the sample reached the trainer.
        built = {k: info[k] for k in ("n_heads", "head_dim", "n_encoder_layers", "n_decoder_layers", "n_params") if k in info}
        self.study._storage.set_trial_user_attr(plan.trial_id, "built", built)

    def decision_epochs(self, plan: TrialPlan) -> tuple[int, int, int] | None:
        """(first, end, warmup_steps): the scheduler may stop ``plan`` after epochs first <= e <
        end once its warmup has ended (worker.wants_decision); None if it never stops trials."""
        if not self.scheduler.judges:
            return None
        return (self.job.budget.min_epochs, self.job.budget.max_epochs, int(plan.config.train.warmup_steps))

    @_recorded
    def on_report(self, number: int, epoch: int, metrics: dict[str, float], decide: bool = True) -> bool:
        """Log an epoch; with ``decide`` ask the scheduler whether to stop the trial (an Optuna
        pruner, or the driver's own rule for a ``driver_side`` scheduler such as ``moasha``)."""
        plan = self.running[number]
        plan.history.append({"epoch": epoch, **metrics})
        assert self.tracker is not None
        self.tracker.log_metrics(plan.run_id, metrics, step=epoch)
        value = metrics.get(self.job.metric)
        if value is None or not math.isfinite(value):
            return False
        storage = self.study._storage
        try:
            if self.job.multi_objective or (
                plan.attempt > 1 and epoch in storage.get_trial(plan.trial_id).intermediate_values
            ):
                # Optuna's Trial.report refuses multi-objective studies, and ignores a rerun's
                # epoch that the killed attempt reported: write the storage directly.
                storage.set_trial_intermediate_value(plan.trial_id, epoch, float(value))
            else:
                self.trial_handle(plan).report(float(value), epoch)
        except (NotImplementedError, ValueError, RuntimeError):
            return False
        if not decide or epoch >= self.job.budget.max_epochs:
            return False
        if self.scheduler.driver_side:
            return self.driver_verdict(number, epoch, float(value))
        return bool(self.trial_handle(plan).should_prune())

    def _trial_quantities(self, plan: TrialPlan, history: list[dict[str, float]], outcome: Any) -> dict[str, float]:
        """Every objective and constrained quantity of a finished trial: reported metrics at their
        best epoch, static ones from the config, measured ones from the worker."""
        from attntune.search.objectives import KNOWN, MEASURED, REPORTED

        names = {o.name: o.mode for o in self.job.objectives}
        for c in self.job.constraints:
            names.setdefault(c.name, KNOWN[c.name][0])
        out: dict[str, float] = {}
        statics = None
        for name, mode in names.items():
            kind = KNOWN[name][1]
            if kind == REPORTED:
                best, _ = trial_value(history, name, mode)
                v = best
            elif kind == MEASURED:
                v = outcome.info.get(name)
            else:
                statics = statics or self.static_values(plan.config, plan.n_params)
                v = statics[name]
            if v is not None and math.isfinite(float(v)):
                out[name] = float(v)
        return out

    def driver_verdict(self, number: int, epoch: int, value: float) -> bool:
        """``moasha``: at a rung, rank every trial settled there by non-dominated sorting of
        (metric, static cost objectives) and stop this one unless it is on the rung's front or
        among the best 1/3 (search.pareto.mo_asha_continues). True = stop.

        A trial is settled at a rung by its first judged report at or past it, with the value it
        has then, and the rung keeps that value (user attr ``rungs``), as Optuna's successive
        halving does: rungs passed during warm-up are settled once warm-up ends (else a trial whose
        warm-up outlasts the rungs would never be judged), and values from warm-up, not yet
        comparable, never rank anyone."""
        from attntune.search.pareto import mo_asha_continues, to_min
        from attntune.search.schedulers import REDUCTION_FACTOR

        plan = self.running[number]
        due = [r for r in self.scheduler.rungs(self.job.budget) if plan.judged_through < r <= epoch]
        plan.judged_through = max(plan.judged_through, epoch)
        if not due:
            return False
        costs = [o for o in self.job.objectives if o.kind == "static"]
        modes = [self.job.mode] + [o.mode for o in costs]
        trials = self.study.get_trials(deepcopy=False)
        mine = next(t for t in trials if t.number == number)
        settled = {**(mine.user_attrs.get(ATTR_RUNGS) or {}), **{str(r): value for r in due}}
        self.study._storage.set_trial_user_attr(plan.trial_id, ATTR_RUNGS, settled)
        for rung in due:
            points, me = [], -1
            for t in trials:
                v = value if t.number == number else (t.user_attrs.get(ATTR_RUNGS) or {}).get(str(rung))
                statics = [t.user_attrs.get(o.name) for o in costs]
                if v is None or not math.isfinite(v) or any(s is None for s in statics):
                    continue
                if t.number == number:
                    me = len(points)
                points.append(to_min([v, *statics], modes))
            if me >= 0 and not mo_asha_continues(points, me, REDUCTION_FACTOR):
                return True
        return False

    @_recorded
    def on_finish(self, number: int, outcome: Any) -> str:
        """Record a finished trial everywhere; returns the final state."""
        import optuna

        plan = self.running.pop(number)
        assert self.tracker is not None
        # The driver saw every reported epoch (across retries); the last report of an epoch wins.
        by_epoch = {int(h["epoch"]): h for h in (plan.history or outcome.history)}
        history = [by_epoch[e] for e in sorted(by_epoch)]
        best, last = trial_value(history, self.job.metric, self.job.mode)
        if history:
            outcome.epochs_run = max(outcome.epochs_run, int(history[-1]["epoch"])) if outcome.state != PRUNED else int(history[-1]["epoch"])
        state = outcome.state
        failure_kind, failure = outcome.failure_kind, outcome.failure
        if state == COMPLETE and best is None:
            state, failure_kind = FAILED, "no_metric"
            failure = f"the trial reported no finite {self.job.metric}"
        values: list[float] = []
        extra: dict[str, Any] = {}
        if state == COMPLETE:
            quantities = self._trial_quantities(plan, history, outcome)
            missing = [o.name for o in self.job.objectives if quantities.get(o.name) is None]
            if missing:
                state, failure_kind = FAILED, "no_metric"
                failure = f"the trial has no finite {', '.join(missing)}"
            else:
                values = [float(quantities[o.name]) for o in self.job.objectives]
                measured = self.job.end_constraints
                if measured:
                    v = violations(measured, quantities)
                    extra["constraint_violations"] = v if v is not None else [math.inf] * len(measured)
                    extra["feasible"] = v is not None and all(x <= 0 for x in v)
                if "latency_ms" in quantities:
                    extra["latency_ms"] = quantities["latency_ms"]
                if len(values) > 1:
                    extra["objective_values"] = values
        storage = self.study._storage
        tid = plan.trial_id
        attrs = {
            "epochs_run": outcome.epochs_run,
            "seconds": round(outcome.seconds, 3),
            "best_value": best,
            "last_value": last,
            "attntune_state": state,
            "end_time": time.time(),
        }
        if outcome.info.get("tokens_per_s") is not None:
            attrs["tokens_per_s"] = outcome.info["tokens_per_s"]
        if failure:
            attrs["failure"] = failure
            attrs["failure_kind"] = failure_kind
        if state == PRUNED:
            attrs["stopped_epoch"] = outcome.epochs_run
        attrs.update(extra)
        for k, v in attrs.items():
            storage.set_trial_user_attr(tid, k, v)
        driver_fault("finishing", number)
        tags: dict[str, Any] = {TAG_STATE: state, "epochs_run": outcome.epochs_run}
        if state == PRUNED:
            tags["stopped_epoch"] = outcome.epochs_run
        if failure:
            tags["failure_reason"] = failure
            tags["failure_kind"] = failure_kind
        if "feasible" in extra:
            tags["feasible"] = str(extra["feasible"]).lower()
            if not extra["feasible"]:
                tags["infeasible_reason"] = "; ".join(
                    str(c) for c, x in zip(measured, extra["constraint_violations"], strict=True) if x > 0
                )
                self.missed_constraints[number] = tags["infeasible_reason"]
        self.tracker.set_tags(plan.run_id, tags)
        if best is not None:
            final = {f"best_{self.job.metric}": best}
            if "latency_ms" in extra:
                final["latency_ms"] = extra["latency_ms"]
            for o, v in zip(self.job.objectives, values, strict=False):  # export --pick reads these
                final[o.name if o.kind != "reported" else f"best_{o.name}"] = v
            self.tracker.log_metrics(plan.run_id, final, step=outcome.epochs_run)
        self.tracker.end_run(plan.run_id, "FAILED" if state == FAILED else "FINISHED")
        # MLflow holds the whole trial (every epoch's metrics) before Optuna calls it finished:
        # resume trusts Optuna, so a driver killed after the tell loses nothing.
        self.tracker.flush()
        driver_fault("ended", number)
        if state == COMPLETE:
            self.study.tell(number, values if len(values) > 1 else best)
        elif state == PRUNED:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        driver_fault("told", number)
        return state

    @_recorded
    def retry(self, number: int, outcome: Any) -> TrialPlan | None:
        """A failed trial with retries left goes back in the queue on the same child run."""
        plan = self.running.get(number)
        if plan is None or outcome.state != FAILED or plan.attempt > self.job.retries:
            return None
        self.running.pop(number)
        plan.attempt += 1
        assert self.tracker is not None
        self.tracker.set_tags(plan.run_id, {"attempts": plan.attempt, "last_failure": outcome.failure or ""})
        self.study._storage.set_trial_user_attr(plan.trial_id, "attempts", plan.attempt)
        self.pending_reruns.insert(0, plan)
        return plan

    def checkpoint_dir(self, plan: TrialPlan) -> Path | None:
        """Per-trial checkpoints only when a failed trial may be retried from them."""
        if self.job.retries <= 0:
            return None
        return self.job.output / "checkpoints" / f"t{plan.number:03d}"

    # ------------------------------------------------------------------ interruption and end
    def abandon_running(self, status: str = "KILLED") -> None:
        """The driver is going down: end running trials' runs KILLED; Optuna keeps them RUNNING
        so ``resume`` reruns them on the same child runs."""
        assert self.tracker is not None
        # Reruns not started yet (after a crash or a retry) have RUNNING runs too.
        for plan in [*self.running.values(), *self.pending_reruns]:
            self.tracker.set_tags(plan.run_id, {TAG_STATE: "KILLED"})
            self.tracker.end_run(plan.run_id, status)
        self.running.clear()

    def _drop_pending_reruns(self) -> None:
        """The search ended (time limit) before trials left by a dead driver were rerun: they
        are FAILED (``failure_kind=killed``), their runs KILLED; nothing stays RUNNING."""
        import optuna

        assert self.tracker is not None
        why = "the driver was killed during this trial and the search ended before it could be rerun"
        for plan in self.pending_reruns:
            for k, v in {ATTR_STATE: FAILED, "failure": why, "failure_kind": "killed", "end_time": time.time()}.items():
                self.study._storage.set_trial_user_attr(plan.trial_id, k, v)
            tags = {TAG_STATE: FAILED, "failure_reason": why, "failure_kind": "killed"}
            self.tracker.set_tags(plan.run_id, tags)
            self.tracker.end_run(plan.run_id, "KILLED")
            self.tracker.flush()
            self.study.tell(plan.number, state=optuna.trial.TrialState.FAIL)
        self.pending_reruns.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Writing one record (a trial's start, report, end): run_search's SIGTERM/SIGINT handlers
        ask ``defer_signal`` first, so a signal never leaves a record half-written."""
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
        """Write results.csv and the parent's summary; returns the results table."""
        from attntune.search.results import results_table, summary_metrics

        assert self.tracker is not None and self.parent_run_id is not None
        if status == "FINISHED" and self.pending_reruns:
            self._drop_pending_reruns()
        self._set_driver_state("finished" if status == "FINISHED" else status.lower())
        table = results_table(self.study)
        out = self.job.output / "results.csv"
        table.to_csv(out, index=False)
        if self.other_drivers_running():
            # A shared study (--join): the last driver to finish writes the summary and ends the
            # parent run; each driver marks itself finished before looking, so one always does.
            return table
        if self.join:
            used = time.time() - float(self.study.user_attrs.get("started_at", self.started))
        else:
            used = float(self.study.user_attrs.get("time_used_s", 0.0)) + (time.time() - self.started)
        self.study.set_user_attr("time_used_s", used)
        metrics = summary_metrics(table, self.job.metric, self.job.mode)
        metrics["wall_seconds"] = used
        if self.job.multi_objective:
            self._tag_pareto(table)
            metrics["n_pareto"] = int(table["pareto"].sum()) if "pareto" in table else 0
        self.tracker.log_metrics(self.parent_run_id, metrics, step=0)
        self.tracker.log_artifact(self.parent_run_id, out)
        best = table[table["state"] == COMPLETE]
        if len(best):
            self.tracker.set_tags(self.parent_run_id, {"best_trial": int(metrics.get("best_trial", -1))})
        self.tracker.end_run(self.parent_run_id, status)
        return table

    def _tag_pareto(self, table: Any) -> None:
        """Every child run gets ``pareto=true/false``; the parent lists the front (tag, artifact)."""
        assert self.tracker is not None and self.parent_run_id is not None
        front = [int(n) for n in table.loc[table["pareto"].astype(bool), "number"]] if "pareto" in table else []
        for _, row in table.iterrows():
            if isinstance(row.get("run_id"), str) and row["run_id"]:
                self.tracker.set_tags(row["run_id"], {"pareto": str(int(row["number"]) in front).lower()})
        self.study.set_user_attr("pareto_trials", front)
        self.tracker.set_tags(self.parent_run_id, {"pareto_trials": ",".join(map(str, front))})
        cols = ["number", *[c for c in table.columns if c.startswith("objective.")], "n_params", "run_id"]
        out = self.job.output / "pareto.csv"
        table[table["number"].isin(front)][[c for c in cols if c in table]].to_csv(out, index=False)
        self.tracker.log_artifact(self.parent_run_id, out)

    def close(self) -> list[str]:
        """Flush MLflow (returns its write warnings) and release the study's storage."""
        warnings = self.tracker.close() if self.tracker else []
        release_storage(getattr(self.study, "_storage", None))
        return warnings


def _pid_alive(pid: int) -> bool:
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


def _hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (for tags)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _flat_config(cfg: RunConfig) -> dict[str, Any]:
    d = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    d.update({f"train.{k}": v for k, v in to_dict(cfg.train).items()})
    return d


def cpu_threads_per_trial(job: SearchJob) -> int:
    """Torch threads per trial: the job's cpus, never more than this machine shares out."""
    n = max(1, int(job.resources.cpus))
    return min(n, max(1, (os.cpu_count() or 1) // max(1, job.concurrency)))


class _ConstraintViolations:
    """Optuna's ``constraints_func``: the violations of the measured constraints the driver
    recorded on the trial before telling it (<= 0 satisfied); a trial without them (pruned,
    failed) counts as satisfying them, as Optuna's samplers only rank complete trials by them.
    A class, not a closure, so a sampler holding it can be pickled."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, trial: Any) -> list[float]:
        v = trial.user_attrs.get("constraint_violations")
        return [float(x) for x in v] if v else [0.0] * self.n
