"""What a search left in MLflow, read back: the one module that reads MLflow for commands and reports.

A search is one parent run (tag ``attntune.kind=search``) with one child run per trial
(docs/mlflow.md). ``export``, ``report`` and ``ui`` read them here, so they all page past MLflow's
1,000 runs per answer, agree on what a trial record holds, and rank trials the same way: the best
trial and the Pareto front come from ``outcome.best_of`` / ``outcome.pareto_front`` only.
Metric histories cost one request per trial, so they are read only when a caller asks for them,
and only for the trials it names (the report reads the curves it draws: ``read_search(curves=pick)``).

mlflow is imported inside the functions that talk to a store: it is slow to import, and the CLI
imports this module at start-up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attntune.model.config import ConfigError, ModelConfig
from attntune.search.job import TrackingConfig
from attntune.search.outcome import FINISHED_STATES, Gain, TrialState, baseline_gain, best_of, finite, ranked
from attntune.search.outcome import pareto_front as outcome_front
from attntune.search.study_store import find_output, study_attrs
from attntune.search.tracking import TAG_BASELINE, TAG_KIND, TAG_STATE, TAG_TRIAL, check_tracking_uri
from attntune.spaces.space import Param, parse_param, parse_space

SEARCH_FILTER = f"tags.`{TAG_KIND}` = 'search'"
PAGE_SIZE = 1000  # MLflow's largest page of search_runs by default; search_all asks for every page
STATES = tuple(s.value for s in FINISHED_STATES)  # a finished trial's states, in report order
DEFAULT_FAMILY = ModelConfig().family  # what a run without a ``model.family`` param trained
_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class RecordsError(ConfigError):
    """What was asked for is not in the store: no store, experiment or search run of that name."""


# --------------------------------------------------------------------------- records


@dataclass
class TrialRecord:
    """One child run of a search: a trial, with its MLflow values as MLflow stores them."""

    number: int
    run_id: str
    run_name: str
    state: str  # a TrialState where the run is tagged with one, else the MLflow run status
    start_time: int | None = None  # ms since the epoch (MLflow run start_time)
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value per key, as the runs table shows
    tags: dict[str, str] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, search metric); read on request
    # The search metric's value: ``best_<metric>``, else the best finite epoch of its history
    # (a run that lacks the summary metric); what export ranks by.
    score: float | None = None
    feasible: bool = True  # False when the trial missed a constraint measured at its end

    def value(self, metric: str) -> float | None:
        """The trial's final value of ``metric``: ``best_<metric>`` (what Optuna was told), finite only."""
        return finite(self.metrics.get(f"best_{metric}"))

    @property
    def failure(self) -> str | None:
        return self.tags.get("failure_reason")

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

    @property
    def family(self) -> str:
        """The trial's ``model.family`` param; a run from before families is a Transformer."""
        return self.params.get("model.family") or DEFAULT_FAMILY

    @property
    def baseline(self) -> int | None:
        """The baseline's repeat, for a baseline trial (tag ``attntune.baseline``)."""
        s = self.tags.get(TAG_BASELINE)
        return int(s) if s not in (None, "") else None


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
    space: list[Param] = field(default_factory=list)  # read on request (the report)

    @property
    def job_name(self) -> str:
        return self.params.get("job_name") or self.tags.get("attntune.job") or self.experiment_name

    @property
    def metric(self) -> str:
        return self.params.get("metric", "val_loss")

    @property
    def mode(self) -> str:
        return self.params.get("mode", "min")

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(name, mode) per objective; more than one for a multi-objective search."""
        raw = self.params.get("objectives") or ""
        return [(name, mode) for name, _, mode in (x.partition(":") for x in raw.split(",") if ":" in x)]

    @property
    def output(self) -> Path | None:
        """The search's output folder, as the search tagged it."""
        tagged = self.tags.get("attntune.output")
        return Path(tagged) if tagged else None

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
            out[str(t.state)] = out.get(str(t.state), 0) + 1
        return out

    def completed(self) -> list[TrialRecord]:
        """COMPLETE trials with a finite value, feasible or not (charts show both)."""
        return [t for t in self.trials if t.state == TrialState.COMPLETE and t.value(self.metric) is not None]

    def best(self) -> TrialRecord | None:
        return best_of(self.trials, self.mode, value=self._value)

    def ranked(self) -> list[TrialRecord]:
        """Trials that can be the best, best first (ties by trial number)."""
        return ranked(self.trials, self.mode, value=self._value)

    def gain(self) -> Gain | None:
        """The best trial against the baseline (``outcome.baseline_gain``)."""
        return baseline_gain(self.trials, self.mode, baseline=lambda t: t.baseline, value=self._value)

    def front(self) -> list[TrialRecord]:
        """The Pareto front of a multi-objective search, by trial number ([] for one objective)."""
        objectives = self.objectives
        return pareto_front(self.trials, objectives) if len(objectives) > 1 else []

    def _value(self, t: TrialRecord) -> float | None:
        return t.value(self.metric)


# --------------------------------------------------------------------------- ranking


def best_trial(trials: Iterable[TrialRecord], mode: str) -> TrialRecord | None:
    """The best trial by ``score`` (``outcome.best_of``: COMPLETE, feasible, finite; ties to the
    lower number)."""
    return best_of(trials, mode, value=_score)


def _score(t: TrialRecord) -> float | None:
    return t.score


def objective_vector(t: TrialRecord, objectives: Sequence[tuple[str, str]]) -> list[float] | None:
    """A trial's objective values as logged on its run: ``best_<metric>`` for a reported metric
    (its run's plain ``<metric>`` is the last epoch's value, not the one the search scored), the
    plain name for static and measured ones (``n_params``, ``flops``, ``latency_ms``)."""
    out = []
    for name, _mode in objectives:
        v = finite(t.metrics.get(f"best_{name}", t.metrics.get(name)))
        if v is None and name == "n_params":
            v = finite(t.params.get("n_params"))
        if v is None:
            return None
        out.append(v)
    return out


def pareto_front(trials: Iterable[TrialRecord], objectives: Sequence[tuple[str, str]]) -> list[TrialRecord]:
    """COMPLETE, feasible trials no other such trial dominates (``outcome.pareto_front``), by number;
    a repeat answered from another trial (tag ``duplicate_of``) is represented by that trial."""
    originals = [t for t in trials if not t.tags.get("duplicate_of")]
    front = outcome_front(originals, [m for _, m in objectives], lambda t: objective_vector(t, objectives))
    return sorted(front, key=lambda t: t.number)


# --------------------------------------------------------------------------- the store


def resolve_uri(tracking_uri: str | None = None) -> str:
    """``--tracking-uri``, then MLFLOW_TRACKING_URI, then ``sqlite:///mlflow.db`` (as searches do)."""
    return TrackingConfig(uri=tracking_uri).resolved_uri()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path).expanduser()


def open_store(uri: str) -> Any:
    """An MlflowClient on an existing store. A missing SQLite file is an error, never created:
    MLflow would make an empty store and then report that nothing is in it."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise RecordsError(
            f"tracking uri {uri}: no MLflow store there ({path} does not exist); "
            "run the command where the search ran, or pass --tracking-uri"
        )
    check_tracking_uri(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def search_all(
    client: Any,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    limit: int | None = None,
) -> list[Any]:
    """Every run that matches, all pages (MLflow answers one page per call), or the first ``limit``."""
    runs: list[Any] = []
    token = None
    while True:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(runs))
        page = client.search_runs(
            list(experiment_ids), filter_string=filter_string, order_by=order_by, max_results=size, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs


def artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """A run's text artifact (None when it cannot be read: an old or hand-made run lacks it)."""
    saved = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "false"  # no "Downloading artifacts" bar on the user's terminal
    try:
        with tempfile.TemporaryDirectory(prefix="attntune-") as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - any store problem means the artifact is not there for us
        return None
    finally:
        if saved is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = saved


# --------------------------------------------------------------------------- finding a search


def find_search_run(
    client: Any, experiment: str, search_run: str | None = None, *, option: str = "--experiment", also: str = ""
) -> Any:
    """The search's parent run: ``search_run`` if given (it must belong to ``experiment``), else
    the most recent one in ``experiment``. Errors name the experiment as ``option`` does; ``also``
    says what else was looked for."""
    label = f"{option} {experiment}" if option else experiment
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = f" (experiments: {', '.join(names)})" if names else " (the store has no experiments)"
        raise RecordsError(f"{label}: no such MLflow experiment{also}{hint}")
    if search_run:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(search_run)
        except MlflowException:
            raise RecordsError(f"--search-run {search_run}: no such run in {experiment}") from None
        if run.info.experiment_id != exp.experiment_id or run.data.tags.get(TAG_KIND) != "search":
            raise RecordsError(f"--search-run {search_run}: not an attntune search run of experiment {experiment}")
        return run
    runs = search_all(client, [exp.experiment_id], SEARCH_FILTER, order_by=["attributes.start_time DESC"], limit=1)
    if not runs:
        raise RecordsError(f"{label}: holds no attntune search run (tag {TAG_KIND}=search)")
    return runs[0]


def get_search_run(client: Any, run_id: str, uri: str) -> Any:
    """The parent run ``run_id``; an unknown id, or a run that is not a search, is a clear error."""
    try:
        parent = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException for unknown ids
        raise RecordsError(f"search run {run_id}: not found at {uri} ({type(e).__name__})") from None
    if parent.data.tags.get(TAG_KIND) != "search":
        raise RecordsError(f"run {run_id}: not an attntune search run (tag {TAG_KIND} is not 'search')")
    return parent


@dataclass(frozen=True)
class FolderSearch:
    """A search output folder and what its study says about the search's MLflow records."""

    folder: Path
    tracking_uri: str | None
    parent_run_id: str | None


def search_of_folder(name_or_folder: str) -> FolderSearch | None:
    """The search output folder ``name_or_folder`` (a path or a job name) and the store and parent
    run its study names; None when there is no such folder."""
    try:
        folder = find_output(name_or_folder)
    except ConfigError:
        return None
    attrs = study_attrs(folder)
    return FolderSearch(folder, locate_store(attrs.get("tracking_uri"), folder), attrs.get("mlflow_parent_run_id"))


def locate_store(uri: str | None, folder: Path) -> str | None:
    """A relative ``sqlite:///mlflow.db`` was relative to where the search ran; with the default
    output (``./attntune-runs/<name>``) that is two folders above the search folder."""
    if not uri or not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.split(":///", 1)[1])
    if path.is_absolute() or path.exists():
        return uri
    guess = folder.resolve().parent.parent / path
    return f"sqlite:///{guess.as_posix()}" if guess.exists() else uri


# --------------------------------------------------------------------------- reading a search


# Which trials' curves to read, chosen from the search read without them (e.g. the ones a chart draws).
CurvePick = Callable[[SearchData], Iterable[TrialRecord]]


def load_search(uri: str, parent_run_id: str, *, curves: bool | CurvePick = True, space: bool = True) -> SearchData:
    """One search read from the store at ``uri`` (by default with curves and space, as the report needs)."""
    client = open_store(uri)
    parent = get_search_run(client, parent_run_id, uri)
    return read_search(client, parent, uri, curves=curves, space=space)


def read_search(
    client: Any, parent: Any, uri: str, *, curves: bool | CurvePick = False, space: bool = False
) -> SearchData:
    """The search record of ``parent``: its settings, summary and every trial; metric curves and the
    searched space only when asked (one request per curve, one download). ``curves`` is True for
    every trial's curve, or a function that picks the trials whose curves to read from the search
    read without them."""
    params = dict(parent.data.params)
    metric, mode = params.get("metric", "val_loss"), params.get("mode", "min")
    exp_id = parent.info.experiment_id
    data = SearchData(
        tracking_uri=uri,
        experiment_id=exp_id,
        experiment_name=client.get_experiment(exp_id).name,
        parent_run_id=parent.info.run_id,
        parent_name=parent.info.run_name or "",
        parent_status=parent.info.status,
        parent_start=parent.info.start_time,
        parent_end=parent.info.end_time,
        params=params,
        metrics=dict(parent.data.metrics),
        tags=dict(parent.data.tags),
        trials=read_trials(client, parent, metric, mode, curves=curves is True),
        space=read_space(client, parent.info.run_id) if space else [],
    )
    if callable(curves):
        read_curves(client, [t for t in curves(data) if not t.curve], metric, mode)
    return data


def read_trials(client: Any, parent: Any, metric: str, mode: str, *, curves: bool = False) -> list[TrialRecord]:
    """Every trial of the search (all pages), by number. A trial's history of ``metric`` is read
    when ``curves`` is set, and for a run without ``best_<metric>`` (its score comes from it)."""
    children = search_all(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = [t for t in map(trial_record, children) if t is not None]
    for t in trials:
        t.score = t.value(metric)
    read_curves(client, [t for t in trials if curves or t.score is None], metric, mode)
    trials.sort(key=lambda t: (t.number, t.start_time or 0))
    return trials


def read_curves(client: Any, trials: Iterable[TrialRecord], metric: str, mode: str) -> None:
    """Fill each trial's ``curve`` (its last value per epoch) from its history of ``metric``, one
    request per trial that logged it; a trial without a score gets its best finite epoch as one."""
    for t in trials:
        if metric not in t.metrics:
            continue
        history = client.get_metric_history(t.run_id, metric)
        by_step = {int(m.step): float(m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
        t.curve = sorted(by_step.items())
        if t.score is None:
            values = [v for v in (finite(m.value) for m in history) if v is not None]
            t.score = (min(values) if mode == "min" else max(values)) if values else None


def best_values(uri: str, run_ids: Iterable[str], name: str, mode: str) -> dict[str, float]:
    """Each run's best finite ``name`` over its metric history (one request per run), by run id;
    runs that never logged it are left out. ``results`` reads a trial's best ``val_bleu`` here when
    its study record lacks it."""
    client = open_store(uri)
    out: dict[str, float] = {}
    for run_id in run_ids:
        values = [v for v in (finite(m.value) for m in client.get_metric_history(run_id, name)) if v is not None]
        if values:
            out[run_id] = min(values) if mode == "min" else max(values)
    return out


def trial_record(run: Any) -> TrialRecord | None:
    """A child run as a TrialRecord (None for a child that is not a trial); no score yet."""
    tags = dict(run.data.tags)
    if tags.get(TAG_KIND, "trial") != "trial":
        return None
    try:
        number = int(tags[TAG_TRIAL])
    except (KeyError, ValueError):
        return None
    return TrialRecord(
        number=number,
        run_id=run.info.run_id,
        run_name=run.info.run_name or tags.get("mlflow.runName", ""),
        state=_state(tags.get(TAG_STATE, run.info.status)),
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=tags,
        feasible=tags.get("feasible", "true") != "false",
    )


def _state(raw: str) -> str:
    """A TrialState where ``raw`` names one; an untagged run's MLflow status stays as it is."""
    try:
        return TrialState(raw)
    except ValueError:
        return raw


# --------------------------------------------------------------------------- the searched space


def read_space(client: Any, run_id: str) -> list[Param]:
    """The searched parameters from the parent's ``space.yaml`` artifact ([] when it is missing)."""
    text = artifact_text(client, run_id, "space.yaml")
    if text is None:
        return []
    try:
        return space_params(yaml.safe_load(text))
    except yaml.YAMLError:
        return []


def space_params(data: Any) -> list[Param]:
    """Parameters of a space mapping, via ``parse_space``; each one alone when the whole space does
    not validate against default settings (e.g. a d_model range meant for another base config)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("params"), Mapping):
        return []
    try:
        params = list(parse_space(data).params)
    except ConfigError:
        params = [p for p in (_one_param(str(n), spec) for n, spec in data["params"].items()) if p is not None]
    return params


def _one_param(name: str, spec: Any) -> Param | None:
    """One parameter parsed alone (its ``when`` may name parameters that are not there; the
    report does not use it)."""
    try:
        return parse_param(name, spec)
    except ConfigError:
        return None
