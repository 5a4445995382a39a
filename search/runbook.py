"""What a search writes to MLflow: its parent run, one child run per trial, names, tags, metrics.

Every write goes through the one ``Tracker`` (a single writer thread, batched, explicit run ids);
the driver calls the runbook at each trial event, and nothing else writes a search's runs. A
driver killed between two writes leaves runs that the next one adopts (``orphan_parent``,
``orphan_child``: found by their tags) instead of creating twins.

Run names: ``t007 d256 h8 L3 lr3e-4`` (docs/conventions.md). Tags: ``attntune.*`` (docs/mlflow.md).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from attntune.model.config import RunConfig, fields_unread, to_dict
from attntune.search.faults import driver_fault
from attntune.search.job import SearchJob
from attntune.search.outcome import Settled, TrialState
from attntune.search.records import search_all
from attntune.search.tracking import (
    TAG_BASELINE,
    TAG_FAMILY_START,
    TAG_JOB,
    TAG_KIND,
    TAG_LICENSE,
    TAG_SEARCH,
    TAG_STATE,
    TAG_TRIAL,
    Tracker,
)


def run_name(number: int, cfg: RunConfig) -> str:
    """``t007 d256 h8 L3 lr3e-4``, ``t008 rnn-gru d128 L2 lr1e-3``, ``t009 mlp d64 L1 lr3e-3``:
    scannable in the MLflow runs table; another family than the transformer is named first."""
    m = cfg.model
    same = m.n_encoder_layers == m.n_decoder_layers
    depth = f"L{m.n_encoder_layers}" if same else f"L{m.n_encoder_layers}/{m.n_decoder_layers}"
    mant, exp = f"{cfg.train.lr:.0e}".split("e")
    shape = {
        "transformer": f"d{m.d_model} h{m.n_heads}",
        "rnn": f"rnn-{m.rnn_cell}{'-bi' if m.bidirectional else ''} d{m.d_model}",
        "mlp": f"mlp d{m.d_model}",
    }[m.family]
    return f"t{number:03d} {shape} {depth} lr{mant}e{int(exp)}"


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """``model.*`` and ``train.*`` keys of a trial's config."""
    d = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
    d.update({f"train.{k}": v for k, v in to_dict(cfg.train).items()})
    return d


def hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (for tags)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


class Runbook:
    """The MLflow records of one search, written for its driver."""

    def __init__(self, job: SearchJob, tracker: Tracker, *, driver_id: str, storage: str, data_license: str | None):
        self.job = job
        self.tracker = tracker
        self.driver_id = driver_id
        self.storage = hide_password(storage)
        self.data_license = data_license
        self.parent_run_id: str | None = None

    # ------------------------------------------------------------------ the search's run
    def start_parent(self, data_fingerprint: str | None, adopt: bool, started_at: float) -> str:
        """Create the search's parent run (or adopt one a killed driver created but never
        recorded), with the job's settings as params and ``job.yaml``/``space.yaml`` artifacts."""
        job = self.job
        tags = {
            TAG_KIND: "search",
            TAG_JOB: job.name,
            "attntune.output": str(job.output),
            "attntune.storage": self.storage,
            "attntune.host": socket.gethostname(),
            "data.fingerprint": data_fingerprint or "",
            "mlflow.note.content": (
                f"attntune search `{job.name}`: {job.strategy} + {job.scheduler} on {job.backend}, "
                f"{job.budget.n_trials} trials, metric {job.metric} ({job.mode})."
            ),
        }
        if self.data_license:
            tags[TAG_LICENSE] = self.data_license
        params = {k: v for k, v in job.settings().items() if v is not None}
        orphan = self.orphan_parent(started_at) if adopt else None
        if orphan is not None:
            self.parent_run_id = orphan
            self.tracker.set_tags(orphan, tags)
            self.tracker.log_params(orphan, params)
        else:
            self.parent_run_id = self.tracker.create_run(f"search {job.name}", tags=tags, params=params)
        driver_fault("parent")
        self.tracker.log_text(self.parent_run_id, job.source_text or "", "job.yaml")
        self.tracker.log_text(self.parent_run_id, yaml.safe_dump(job.space.to_dict(), sort_keys=False), "space.yaml")
        return self.parent_run_id

    def reopen_parent(self, run_id: str) -> None:
        self.parent_run_id = run_id
        self.tracker.reopen_run(run_id)

    def extended(self, budget: Mapping[str, Any]) -> None:
        """A finished search given more trials or time: its parent run says so (its params keep
        the job as first run; params cannot change)."""
        assert self.parent_run_id is not None
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items())
        self.tracker.set_tags(self.parent_run_id, {"attntune.extended": shown})

    def _find(self, filter_string: str) -> list[Any]:
        exp = self.tracker.experiment_id
        return self.tracker.call(lambda c: search_all(c, [exp], filter_string))

    def orphan_parent(self, started_at: float) -> str | None:
        """This study's parent run that a killed driver created but never recorded."""
        if "'" in self.storage:
            return None
        since_ms = started_at * 1000 - 5000
        runs = self._find(f"tags.`{TAG_KIND}` = 'search' and tags.`attntune.storage` = '{self.storage}'")
        runs = [r for r in runs if r.info.status == "RUNNING" and r.info.start_time >= since_ms]
        return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def orphan_child(self, number: int) -> str | None:
        """Trial ``number``'s child run, created by a killed driver that never recorded it."""
        runs = self._find(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.`{TAG_TRIAL}` = '{number}'")
        return min(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def running_children(self) -> list[tuple[str, int]]:
        """(run id, trial number) of child runs MLflow still shows RUNNING."""
        runs = self._find(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and attributes.status = 'RUNNING'")
        return [(r.info.run_id, int(r.data.tags.get(TAG_TRIAL, -1))) for r in runs]

    def summary(self, metrics: Mapping[str, float], best_trial: int | None, artifacts: list[Any]) -> None:
        assert self.parent_run_id is not None
        self.tracker.log_metrics(self.parent_run_id, metrics, step=0)
        for path in artifacts:
            self.tracker.log_artifact(self.parent_run_id, path)
        if best_trial is not None:
            self.tracker.set_tags(self.parent_run_id, {"best_trial": best_trial})

    def pareto(self, run_ids: Mapping[int, str], front: list[int]) -> None:
        """Every child run gets ``pareto=true/false``; the parent lists the front."""
        assert self.parent_run_id is not None
        for number, run_id in run_ids.items():
            self.tracker.set_tags(run_id, {"pareto": str(number in front).lower()})
        self.tracker.set_tags(self.parent_run_id, {"pareto_trials": ",".join(map(str, front))})

    def end_parent(self, status: str) -> None:
        assert self.parent_run_id is not None
        self.tracker.end_run(self.parent_run_id, status)

    # ------------------------------------------------------------------ trials
    def _tags(self, number: int, state: TrialState) -> dict[str, Any]:
        tags: dict[str, Any] = {
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

    @staticmethod
    def _params(values: Mapping[str, Any], cfg: RunConfig, count: int) -> dict[str, Any]:
        unread = fields_unread(cfg.model.family, cfg.model.parameterization)  # at their defaults: no param each
        params = {k: v for k, v in flat_config(cfg).items() if v is not None and k.removeprefix("model.") not in unread}
        params.update(values)  # pseudo-parameters (head_dim, d_ff_ratio, n_layers) as sampled
        params["n_params"] = count
        if cfg.model.head_dim is not None:
            params["head_dim"] = cfg.model.head_dim
        return params

    def _open(self, name: str, tags: dict[str, Any], params: dict[str, Any], run_id: str | None) -> str:
        """A child run, or (``run_id``) the one a killed driver created and never recorded."""
        if run_id is None:
            return self.tracker.create_run(name, parent_run_id=self.parent_run_id, tags=tags, params=params)
        self.tracker.reopen_run(run_id)
        self.tracker.set_tags(run_id, tags)
        self.tracker.log_params(run_id, params)
        return run_id

    def trial_started(self, number: int, values: Mapping[str, Any], cfg: RunConfig, count: int, run_id: str | None,
                      baseline: int | None = None, family_start: str | None = None) -> str:  # fmt: skip
        tags = {**self._tags(number, TrialState.RUNNING), "attempts": 1}
        name = run_name(number, cfg)
        if baseline is not None:
            tags[TAG_BASELINE] = baseline
            name += " baseline"
        if family_start is not None:
            tags[TAG_FAMILY_START] = family_start
            name += " start"
        return self._open(name, tags, self._params(values, cfg, count), run_id)

    def trial_infeasible(
        self, number: int, values: Mapping[str, Any], cfg: RunConfig | None, reason: str, count: int | None,
        run_id: str | None,
    ) -> str:
        """A config never trained: its run is created (or adopted) and ended at once."""
        tags = {**self._tags(number, TrialState.INFEASIBLE), "failure_reason": reason, "failure_kind": "infeasible"}
        name = run_name(number, cfg) if cfg else f"t{number:03d} invalid"
        params = self._params(values, cfg, count or 0) if cfg else dict(values)
        run_id = self._open(name, tags, params, run_id)
        driver_fault("infeasible", number)
        self.tracker.end_run(run_id, "FINISHED")
        return run_id

    def trial_repeated(
        self, number: int, values: Mapping[str, Any], cfg: RunConfig, count: int, of: int, state: TrialState,
        attrs: Mapping[str, Any], final: Mapping[str, float], run_id: str | None,
    ) -> str:  # fmt: skip
        """A sample that repeats trial ``of``: its run carries that trial's result (tags and final
        metrics, no epochs: nothing was trained) and ``duplicate_of``."""
        tags = {**self._tags(number, state), "duplicate_of": of, "epochs_run": attrs.get("epochs_run", 0)}
        for key, tag in (("stopped_epoch", "stopped_epoch"), ("feasible", "feasible")):
            if key in attrs:
                tags[tag] = str(attrs[key]).lower() if key == "feasible" else attrs[key]
        name = f"{run_name(number, cfg)} =t{of:03d}"
        run_id = self._open(name, tags, self._params(values, cfg, count), run_id)
        if final:
            self.tracker.log_metrics(run_id, final, step=int(attrs.get("epochs_run", 0) or 0))
        self.tracker.end_run(run_id, "FINISHED")
        return run_id

    def worker_info(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(run_id, tags)

    def epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        self.tracker.log_metrics(run_id, metrics, step=epoch)

    def trial_finished(self, run_id: str, settled: Settled) -> None:
        """State tags, final metrics, the run ended; flushed, so MLflow holds the whole trial
        before Optuna is told (resume trusts Optuna: a driver killed after the tell loses nothing)."""
        self.tracker.set_tags(run_id, {TAG_STATE: settled.state, **settled.tags})
        if settled.final_metrics:
            self.tracker.log_metrics(run_id, settled.final_metrics, step=settled.epochs_run)
        self.tracker.end_run(run_id, "FAILED" if settled.state == TrialState.FAILED else "FINISHED")
        self.tracker.flush()

    def trial_ended_as(self, run_id: str, state: TrialState, epochs_run: int, failure: str | None, kind: str | None) -> None:
        """End a run whose trial Optuna already finished (the driver died before MLflow heard)."""
        tags: dict[str, Any] = {TAG_STATE: state, "epochs_run": epochs_run}
        if failure:
            tags["failure_reason"] = failure
            tags["failure_kind"] = kind or ""
        self.tracker.set_tags(run_id, tags)
        self.tracker.end_run(run_id, "FAILED" if state == TrialState.FAILED else "FINISHED")

    def attempt(self, run_id: str, attempt: int, failure: str | None = None, reopen: bool = False) -> None:
        """A retry (after ``failure``) or a rerun of a dead driver's trial, on the same run."""
        if reopen:
            self.tracker.reopen_run(run_id)
        tags: dict[str, Any] = {"attempts": attempt}
        if failure is not None:
            tags["last_failure"] = failure
        if reopen:
            tags[TAG_STATE] = TrialState.RUNNING
        self.tracker.set_tags(run_id, tags)

    def killed(self, run_id: str, status: str = "KILLED") -> None:
        """The driver is going down during this trial: ``resume`` reruns it on this run."""
        self.tracker.set_tags(run_id, {TAG_STATE: TrialState.KILLED})
        self.tracker.end_run(run_id, status)

    def dropped(self, run_id: str, why: str) -> None:
        """A dead driver's trial the search ended without rerunning: FAILED ``killed``."""
        self.tracker.set_tags(run_id, {TAG_STATE: TrialState.FAILED, "failure_reason": why, "failure_kind": "killed"})
        self.tracker.end_run(run_id, "KILLED")
        self.tracker.flush()
