"""Everything a report shows, read from MLflow alone (so it matches the MLflow UI number for number).

A search is one parent run (tag ``attntune.kind=search``) with one child run per trial. This module
turns those runs into plain dataclasses; ``charts`` and ``report`` never talk to MLflow.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError

STATES = ("COMPLETE", "PRUNED", "FAILED", "INFEASIBLE")
TAG_KIND = "attntune.kind"
TAG_STATE = "attntune.state"
TAG_TRIAL = "attntune.trial_number"
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class SpaceParam:
    """One searched parameter as the report needs it (enough to rebuild an Optuna distribution)."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass
class TrialRecord:
    """One child run: a trial, with its MLflow values as MLflow stores them."""

    number: int
    run_id: str
    run_name: str
    state: str
    start_time: int | None  # ms since the epoch (MLflow run start_time)
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]  # latest value per key, as the MLflow runs table shows it
    tags: dict[str, str]
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, search metric)

    def value(self, metric: str) -> float | None:
        """The trial's final value: ``best_<metric>`` (what Optuna was told), finite only."""
        v = self.metrics.get(f"best_{metric}")
        return v if v is not None and math.isfinite(v) else None

    @property
    def epochs_run(self) -> int:
        try:
            return int(float(self.tags.get("epochs_run", "0")))
        except ValueError:
            return 0

    @property
    def n_params(self) -> int | None:
        try:
            return int(float(self.params["n_params"]))
        except (KeyError, ValueError):
            return None

    @property
    def stopped_epoch(self) -> int | None:
        s = self.tags.get("stopped_epoch")
        return int(float(s)) if s else None


@dataclass
class SearchData:
    """One search: the parent run's settings and summary plus every trial."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    parent_name: str
    parent_status: str
    parent_start: int | None
    parent_end: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    trials: list[TrialRecord]
    space: list[SpaceParam]

    @property
    def job_name(self) -> str:
        return self.params.get("job_name") or self.tags.get("attntune.job") or self.experiment_name

    @property
    def metric(self) -> str:
        return self.params.get("metric", "val_loss")

    @property
    def mode(self) -> str:
        return self.params.get("mode", "min")

    def setting(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def int_setting(self, key: str, default: int = 0) -> int:
        try:
            return int(float(self.params[key]))
        except (KeyError, ValueError):
            return default

    @property
    def round_word(self) -> str:
        """What one report counts: ``epoch``, or ``round`` when the budget was tokens or steps
        (job.py Budget: a round of ``round_size`` tokens/steps stands in for an epoch)."""
        return "round" if self.setting("budget_unit") in ("tokens", "steps") else "epoch"

    def round_note(self) -> str:
        """'' for an epoch budget, else e.g. ' (one round = 100,000 tokens)'."""
        if self.round_word == "epoch":
            return ""
        return f" (one round = {self.int_setting('round_size'):,} {self.setting('budget_unit')})"

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value(self.metric) is not None]

    def best(self) -> TrialRecord | None:
        done = self.completed()
        if not done:
            return None
        key = (lambda t: t.value(self.metric)) if self.mode == "min" else (lambda t: -t.value(self.metric))
        return min(done, key=lambda t: (key(t), t.number))

    def ranked(self) -> list[TrialRecord]:
        """Completed trials, best first (ties by trial number)."""
        sign = 1.0 if self.mode == "min" else -1.0
        return sorted(self.completed(), key=lambda t: (sign * t.value(self.metric), t.number))


# --------------------------------------------------------------------------- MLflow access


def _client(uri: str) -> Any:
    """An MlflowClient for ``uri``; a SQLite store that does not exist is an error, never created."""
    from attntune.search.tracking import check_tracking_uri

    check_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri.split(":///", 1)[1]).expanduser()
        if str(path) not in ("", ":memory:") and not path.exists():
            raise ConfigError(f"tracking uri {uri}: no MLflow store there (file {path} does not exist)")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _search_all(client: Any, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list[Any]:
    from mlflow.entities import ViewType

    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_search_run(uri: str, experiment_name: str) -> tuple[str, str]:
    """(experiment_id, parent_run_id) of the latest search in an MLflow experiment."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise ConfigError(
            f"{experiment_name}: no search output folder and no MLflow experiment of that name at {uri}"
        )
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'search'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ConfigError(f"{experiment_name}: the MLflow experiment holds no attntune search run")
    return exp.experiment_id, runs[0].info.run_id


def _read_space(client: Any, run_id: str) -> list[SpaceParam]:
    """The searched parameters from the parent's ``space.yaml`` artifact ([] when it is missing)."""
    import yaml

    saved = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"  # no "Downloading artifacts" bar on the user's terminal
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, "space.yaml", tmp)
            data = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - an old or hand-made run without the artifact
        return []
    finally:
        if saved is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = saved
    return space_params(data)


def space_params(data: Any) -> list[SpaceParam]:
    """Parameters of a space mapping, via ``parse_space`` (each one alone when the whole space does
    not validate against default settings, e.g. a d_model range meant for another base config)."""
    from attntune.spaces.space import _parse_param, parse_space

    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        return []
    try:
        params = list(parse_space(data).params)
    except ConfigError:
        params = []
        for name, spec in data["params"].items():
            p = _parse_param(str(name), spec, [])
            if p is not None:
                params.append(p)
    return [SpaceParam(p.name, p.type, p.low, p.high, p.log, p.step, tuple(p.choices)) for p in params]


def load_search(uri: str, parent_run_id: str) -> SearchData:
    """Read one search (parent run, child runs, their metric histories, the space) from MLflow."""
    client = _client(uri)
    try:
        parent = client.get_run(parent_run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException for unknown ids
        raise ConfigError(f"search run {parent_run_id}: not found at {uri} ({type(e).__name__})") from None
    if parent.data.tags.get(TAG_KIND) != "search":
        raise ConfigError(f"run {parent_run_id}: not an attntune search run (tag {TAG_KIND} is not 'search')")
    exp_id = parent.info.experiment_id
    experiment = client.get_experiment(exp_id)
    metric = parent.data.params.get("metric", "val_loss")
    children = _search_all(client, [exp_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    trials: list[TrialRecord] = []
    for run in children:
        tags = dict(run.data.tags)
        if tags.get(TAG_KIND, "trial") != "trial":
            continue
        try:
            number = int(tags.get(TAG_TRIAL, "-1"))
        except ValueError:
            number = -1
        rec = TrialRecord(
            number=number,
            run_id=run.info.run_id,
            run_name=run.info.run_name or tags.get("mlflow.runName", ""),
            state=tags.get(TAG_STATE, run.info.status),
            start_time=run.info.start_time,
            end_time=run.info.end_time,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=tags,
        )
        if metric in rec.metrics:
            hist = client.get_metric_history(rec.run_id, metric)
            by_step = {int(m.step): float(m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))}
            rec.curve = sorted(by_step.items())
        trials.append(rec)
    trials.sort(key=lambda t: (t.number, t.start_time or 0))
    return SearchData(
        tracking_uri=uri,
        experiment_id=exp_id,
        experiment_name=experiment.name,
        parent_run_id=parent_run_id,
        parent_name=parent.info.run_name or "",
        parent_status=parent.info.status,
        parent_start=parent.info.start_time,
        parent_end=parent.info.end_time,
        params=dict(parent.data.params),
        metrics=dict(parent.data.metrics),
        tags=dict(parent.data.tags),
        trials=trials,
        space=_read_space(client, parent_run_id),
    )


# --------------------------------------------------------------------------- value parsing


def parse_param_value(p: SpaceParam, text: str) -> Any:
    """An MLflow param string back to the value the sampler drew (None if it cannot be)."""
    try:
        if p.type == "categorical":
            for c in p.choices:
                if str(c) == text or _num_eq(c, text):
                    return c
            return None
        if p.type == "int":
            v = int(round(float(text)))
        else:
            v = float(text)
    except (TypeError, ValueError):
        return None
    if p.low is not None and p.high is not None:
        v = min(max(v, type(v)(p.low)), type(v)(p.high))  # MLflow params are rounded strings
    return v


def _num_eq(choice: Any, text: str) -> bool:
    if isinstance(choice, bool) or not isinstance(choice, int | float):
        return False
    try:
        return math.isclose(float(choice), float(text), rel_tol=1e-9, abs_tol=1e-12)
    except ValueError:
        return False
