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

import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError, RunConfig, to_dict
from attntune.search.job import SearchJob
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


def run_name(number: int, cfg: RunConfig) -> str:
    """``t007 d256 h8 L3 lr3e-4``: scannable in the MLflow runs table."""
    m = cfg.model
    depth = f"L{m.n_encoder_layers}" if m.n_encoder_layers == m.n_decoder_layers else f"L{m.n_encoder_layers}/{m.n_decoder_layers}"
    mant, exp = f"{cfg.train.lr:.0e}".split("e")
    return f"t{number:03d} d{m.d_model} h{m.n_heads} {depth} lr{mant}e{int(exp)}"


def storage_url(job: SearchJob) -> str:
    return f"sqlite:///{(job.output / 'study.db').resolve().as_posix()}"


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

    def spec(self, threads: int | None, checkpoint_dir: Path | None) -> dict[str, Any]:
        return {
            "number": self.number,
            "config": to_dict(self.config),
            "attempt": self.attempt,
            "threads": threads,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
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
        self.pending_reruns: list[TrialPlan] = []
        self.n_launched = 0
        self.interrupted: str | None = None

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Create (or reattach to) the study and parent run. Call only after the job validated."""
        import optuna

        from attntune.search.schedulers import SCHEDULERS
        from attntune.search.strategies import STRATEGIES, SamplerContext

        # Data first: the vocab sizes make n_params exact; bad data exits 2 before anything is written.
        from attntune.search.worker import load_task_cached

        data = load_task_cached(to_dict(self.job.base.task))
        self.vocab = (data.src_vocab_size, data.tgt_vocab_size)
        self.data_license = " ".join(x for x in (data.license, data.attribution) if x) or None
        self.data_fingerprint = data.fingerprint
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
        sampler = strategy.make_sampler(
            SamplerContext(self.job.space, self.job.seed, n_trials, self.job.concurrency)
        )
        pruner = SCHEDULERS.get(self.job.scheduler).optuna_pruner(self.job.budget)
        direction = "minimize" if self.job.mode == "min" else "maximize"
        self.study = optuna.create_study(
            study_name=self.job.name,
            storage=self.storage,
            sampler=sampler,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
        )
        experiment.result()
        attrs = self.study.user_attrs
        if ATTR_PARENT in attrs:
            self.parent_run_id = attrs[ATTR_PARENT]
            self.tracker.reopen_run(self.parent_run_id)
            self._collect_reruns()
        else:
            self._start_parent()

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
            "attntune.storage": self.storage,
            "attntune.host": socket.gethostname(),
            "data.fingerprint": self.data_fingerprint or "",
            "mlflow.note.content": (
                f"attntune search `{job.name}`: {job.strategy} + {job.scheduler} on {job.backend}, "
                f"{job.budget.n_trials} trials, metric {job.metric} ({job.mode})."
            ),
        }
        if self.data_license:
            tags[TAG_LICENSE] = self.data_license
        self.parent_run_id = self.tracker.create_run(
            f"search {job.name}",
            tags=tags,
            params={k: v for k, v in job.settings().items() if v is not None},
        )
        self.tracker.log_text(self.parent_run_id, job.source_text or "", "job.yaml")
        import yaml

        self.tracker.log_text(self.parent_run_id, yaml.safe_dump(job.space.to_dict(), sort_keys=False), "space.yaml")
        self.study.set_user_attr(ATTR_PARENT, self.parent_run_id)
        self.study.set_user_attr("job_name", job.name)
        self.study.set_user_attr("job_yaml", job.source_text)
        self.study.set_user_attr("metric", job.metric)
        self.study.set_user_attr("mode", job.mode)
        self.study.set_user_attr("strategy", job.strategy)
        self.study.set_user_attr("scheduler", job.scheduler)
        self.study.set_user_attr("backend", job.backend)
        self.study.set_user_attr("tracking_uri", self.job.tracking.resolved_uri())
        self.study.set_user_attr("experiment_id", self.tracker.experiment_id)
        self.study.set_user_attr("started_at", self.started)

    def _collect_reruns(self) -> None:
        """Trials left RUNNING by a dead driver are rerun on their existing child runs."""
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            run_id = t.user_attrs.get(ATTR_RUN)
            cfg = make_config(self.job.base, t.params) if t.params else None
            if run_id is None or cfg is None:
                self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                continue
            attempt = int(t.user_attrs.get("attempts", 1)) + 1
            plan = TrialPlan(t.number, t._trial_id, dict(t.params), cfg, int(t.user_attrs.get("n_params", 0)), run_id, attempt)
            self.pending_reruns.append(plan)

    # ------------------------------------------------------------------ budget
    def n_trials_target(self) -> int:
        n = self.job.budget.n_trials
        if self.job.strategy == "grid":
            n = min(n, self.job.space.grid_size())
        return n

    def n_counted(self) -> int:
        """Trials that used budget: finished (not infeasible) plus running."""
        import optuna

        done = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state == optuna.trial.TrialState.RUNNING:
                continue
            if t.user_attrs.get(ATTR_STATE) == INFEASIBLE:
                continue
            done += 1
        return done + len(self.running)

    def time_left(self) -> float | None:
        limit = self.job.budget.time_limit_s
        if limit is None:
            return None
        start = float(self.study.user_attrs.get("started_at", self.started)) if self.study else self.started
        # Resumed searches count from this session's start plus what earlier sessions used.
        used = time.time() - max(start, self.started) + float(self.study.user_attrs.get("time_used_s", 0.0))
        return limit - used

    def can_launch(self) -> bool:
        if self.interrupted:
            return False
        tl = self.time_left()
        if tl is not None and tl <= 0:
            return False
        return self.pending_reruns != [] or self.n_counted() < self.n_trials_target()

    def done(self) -> bool:
        return not self.running and not self.can_launch()

    # ------------------------------------------------------------------ planning trials
    def next_trial(self) -> TrialPlan | None:
        """The next trial to run: a rerun first, else a new feasible sample (or None)."""

        from attntune.model.transformer import n_params

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
            values = self.job.space.sample(trial)
            try:
                cfg = make_config(self.job.base, values)
            except ConfigError as e:  # the space checks make this unreachable; never train it
                self._record_infeasible(trial, values, None, f"invalid config: {e.line()}")
                continue
            count = n_params(cfg.model, *self.vocab)
            if self.job.max_params is not None and count > self.job.max_params:
                self._record_infeasible(
                    trial, values, cfg, f"n_params={count} exceeds max_params={int(self.job.max_params)}", count
                )
                infeasible_streak += 1
                if infeasible_streak >= MAX_CONSECUTIVE_INFEASIBLE:
                    raise ConfigError(
                        f"space: {infeasible_streak} samples in a row exceed max_params={self.job.max_params:g}; "
                        "lower the model sizes or raise max_params"
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
        }
        if self.data_license:
            tags[TAG_LICENSE] = self.data_license
        return tags

    def _start_trial(self, trial: Any, values: dict[str, Any], cfg: RunConfig, count: int) -> TrialPlan:
        assert self.tracker is not None
        run_id = self.tracker.create_run(
            run_name(trial.number, cfg),
            parent_run_id=self.parent_run_id,
            tags={**self._base_tags(trial.number, "RUNNING"), "attempts": 1},
            params=self._child_params(values, cfg, count),
        )
        trial.set_user_attr(ATTR_RUN, run_id)
        trial.set_user_attr("n_params", count)
        trial.set_user_attr("head_dim", cfg.model.head_dim)
        trial.set_user_attr("config", {k: v for k, v in _flat_config(cfg).items()})
        trial.set_user_attr("attempts", 1)
        trial.set_user_attr("start_time", time.time())
        plan = TrialPlan(trial.number, trial._trial_id, values, cfg, count, run_id)
        self.running[plan.number] = plan
        self.n_launched += 1
        return plan

    def _record_infeasible(self, trial: Any, values: dict[str, Any], cfg: RunConfig | None, reason: str, count: int | None = None) -> None:
        import optuna

        assert self.tracker is not None
        trial.set_user_attr(ATTR_STATE, INFEASIBLE)
        trial.set_user_attr("failure", reason)
        if count is not None:
            trial.set_user_attr("n_params", count)
        name = run_name(trial.number, cfg) if cfg else f"t{trial.number:03d} invalid"
        params = self._child_params(values, cfg, count or 0) if cfg else dict(values)
        run_id = self.tracker.create_run(
            name,
            parent_run_id=self.parent_run_id,
            tags={**self._base_tags(trial.number, INFEASIBLE), "failure_reason": reason, "failure_kind": "infeasible"},
            params=params,
        )
        trial.set_user_attr(ATTR_RUN, run_id)
        self.tracker.end_run(run_id, "FINISHED")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    # ------------------------------------------------------------------ events from trials
    def trial_handle(self, plan: TrialPlan) -> Any:
        import optuna

        return optuna.trial.Trial(self.study, plan.trial_id)

    def on_start(self, number: int, info: dict[str, Any]) -> None:
        plan = self.running[number]
        plan.info = dict(info)
        tags = {
            "host": info.get("host", ""),
            "device": info.get("device", ""),
            "cuda_visible_devices": info.get("cuda_visible_devices", ""),
        }
        for k in ("node_id", "worker"):
            if k in info:
                tags[k] = info[k]
        assert self.tracker is not None
        self.tracker.set_tags(plan.run_id, tags)
        for k, v in tags.items():
            self.study._storage.set_trial_user_attr(plan.trial_id, k, v)
        # What the worker actually built, so anyone can check the sample reached the trainer.
        built = {k: info[k] for k in ("n_heads", "head_dim", "n_encoder_layers", "n_decoder_layers", "n_params") if k in info}
        self.study._storage.set_trial_user_attr(plan.trial_id, "built", built)

    def on_report(self, number: int, epoch: int, metrics: dict[str, float], decide: bool = True) -> bool:
        """Log an epoch; with ``decide`` ask the Optuna pruner whether to stop the trial."""
        plan = self.running[number]
        plan.history.append({"epoch": epoch, **metrics})
        assert self.tracker is not None
        self.tracker.log_metrics(plan.run_id, metrics, step=epoch)
        value = metrics.get(self.job.metric)
        if value is None or not math.isfinite(value):
            return False
        trial = self.trial_handle(plan)
        try:
            trial.report(float(value), epoch)
        except (NotImplementedError, ValueError, RuntimeError):
            return False
        if not decide or epoch >= self.job.budget.max_epochs:
            return False
        return bool(trial.should_prune())

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
        for k, v in attrs.items():
            storage.set_trial_user_attr(tid, k, v)
        tags: dict[str, Any] = {TAG_STATE: state, "epochs_run": outcome.epochs_run}
        if state == PRUNED:
            tags["stopped_epoch"] = outcome.epochs_run
        if failure:
            tags["failure_reason"] = failure
            tags["failure_kind"] = failure_kind
        self.tracker.set_tags(plan.run_id, tags)
        if best is not None:
            self.tracker.log_metrics(plan.run_id, {f"best_{self.job.metric}": best}, step=outcome.epochs_run)
        if state == COMPLETE:
            self.study.tell(number, best)
        elif state == PRUNED:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        self.tracker.end_run(plan.run_id, "FAILED" if state == FAILED else "FINISHED")
        return state

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
        for plan in list(self.running.values()):
            self.tracker.set_tags(plan.run_id, {TAG_STATE: "KILLED"})
            self.tracker.end_run(plan.run_id, status)
        self.running.clear()

    def finish(self, status: str = "FINISHED") -> Any:
        """Write results.csv and the parent's summary; returns the results table."""
        from attntune.search.results import results_table, summary_metrics

        assert self.tracker is not None and self.parent_run_id is not None
        used = float(self.study.user_attrs.get("time_used_s", 0.0)) + (time.time() - self.started)
        self.study.set_user_attr("time_used_s", used)
        table = results_table(self.study)
        out = self.job.output / "results.csv"
        table.to_csv(out, index=False)
        metrics = summary_metrics(table, self.job.metric, self.job.mode)
        metrics["wall_seconds"] = used
        self.tracker.log_metrics(self.parent_run_id, metrics, step=0)
        self.tracker.log_artifact(self.parent_run_id, out)
        best = table[table["state"] == COMPLETE]
        if len(best):
            self.tracker.set_tags(self.parent_run_id, {"best_trial": int(metrics.get("best_trial", -1))})
        self.tracker.end_run(self.parent_run_id, status)
        return table

    def close(self) -> list[str]:
        return self.tracker.close() if self.tracker else []


def _flat_config(cfg: RunConfig) -> dict[str, Any]:
    d = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    d.update({f"train.{k}": v for k, v in to_dict(cfg.train).items()})
    return d


def cpu_threads_per_trial(job: SearchJob) -> int:
    """Torch threads per trial: the job's cpus, never more than this machine shares out."""
    n = max(1, int(job.resources.cpus))
    return min(n, max(1, (os.cpu_count() or 1) // max(1, job.concurrency)))
