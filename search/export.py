"""``attntune export``: the best (or a chosen) trial of a past search as a ``train`` config file.

Why MLflow only: the MLflow store outlives the search's output folder (it may be a shared server,
the search may have run on another machine, on either backend), so everything needed is read from
the search's parent run (params ``metric``/``mode``/``max_epochs``, the ``job.yaml`` artifact, tags)
and its child runs (``model.*``/``train.*`` params, ``best_<metric>``, ``attntune.state``).

The file is deterministic (fixed key order, no timestamps): two exports of one search are
byte-identical, so an exported config can be committed and diffed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from attntune.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    load_dataclass,
    to_dict,
)
from attntune.search.job import TrackingConfig
from attntune.search.tracking import TAG_KIND, TAG_STATE, TAG_TRIAL, check_tracking_uri

SEARCH_FILTER = f"tags.`{TAG_KIND}` = 'search'"
EXPORTABLE_STATES = ("COMPLETE", "PRUNED")
PACKAGES = ("attntune", "torch", "optuna", "mlflow")


class ExportError(ConfigError):
    """The export cannot be done as asked (no such experiment/search/trial, bad output path)."""


@dataclass(frozen=True)
class Trial:
    """One child run of a search, as export sees it."""

    run_id: str
    number: int
    state: str
    value: float | None
    params: dict[str, str]
    failure: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    feasible: bool = True


@dataclass(frozen=True)
class Export:
    """What ``export_config`` wrote and how to train it."""

    path: Path
    trial: Trial
    search_run_id: str
    metric: str
    document: dict[str, Any]

    @property
    def train_command(self) -> str:
        return f"attntune train {self.path}"


# --------------------------------------------------------------------------- store access


def resolve_uri(tracking_uri: str | None) -> str:
    """``--tracking-uri``, then MLFLOW_TRACKING_URI, then ``sqlite:///mlflow.db`` (as searches do)."""
    return TrackingConfig(uri=tracking_uri).resolved_uri()


def open_store(uri: str) -> Any:
    """An MlflowClient on an existing store; a missing SQLite file is an error, never created."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path not in ("", ":memory:") and not Path(path).expanduser().is_file():
            raise ExportError(
                f"tracking uri {uri}: no MLflow store there ({path} does not exist); "
                "run the export where the search ran or pass --tracking-uri"
            )
    check_tracking_uri(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def find_search_run(client: Any, experiment: str, search_run: str | None = None) -> Any:
    """The search's parent run: ``search_run`` if given, else the most recent in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = f" (experiments: {', '.join(names)})" if names else " (the store has no experiments)"
        raise ExportError(f"--experiment {experiment}: no such MLflow experiment{hint}")
    if search_run:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(search_run)
        except MlflowException:
            raise ExportError(f"--search-run {search_run}: no such run in {experiment}") from None
        if run.info.experiment_id != exp.experiment_id or run.data.tags.get(TAG_KIND) != "search":
            raise ExportError(f"--search-run {search_run}: not an attntune search run of experiment {experiment}")
        return run
    runs = client.search_runs(
        [exp.experiment_id], filter_string=SEARCH_FILTER, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise ExportError(f"--experiment {experiment}: holds no attntune search run (tag {TAG_KIND}=search)")
    return runs[0]


def child_runs(client: Any, parent: Any) -> list[Any]:
    """Every child run of the search (all pages)."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def trial_of(client: Any, run: Any, metric: str, mode: str) -> Trial | None:
    """A child run as a Trial; its value is ``best_<metric>``, else the best finite epoch value."""
    tags = run.data.tags
    if tags.get(TAG_TRIAL) is None:
        return None
    value = _finite(run.data.metrics.get(f"best_{metric}"))
    if value is None and metric in run.data.metrics:
        hist = [_finite(m.value) for m in client.get_metric_history(run.info.run_id, metric)]
        vals = [v for v in hist if v is not None]
        value = (min(vals) if mode == "min" else max(vals)) if vals else None
    return Trial(
        run_id=run.info.run_id,
        number=int(tags[TAG_TRIAL]),
        state=tags.get(TAG_STATE, run.info.status),
        value=value,
        params=dict(run.data.params),
        failure=tags.get("failure_reason"),
        metrics=dict(run.data.metrics),
        feasible=tags.get("feasible", "true") != "false",
    )


def pick_trial(trials: list[Trial], mode: str, number: int | None, metric: str, search_id: str) -> Trial:
    """Trial ``number``, or the best COMPLETE, feasible trial (NaN/inf never win; ties go to the
    lower number)."""
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            numbers = sorted(t.number for t in trials)
            known = ", ".join(map(str, numbers)) if len(numbers) <= 20 else f"{len(numbers)} between {numbers[0]} and {numbers[-1]}"
            known = known or "none"
            raise ExportError(f"--trial {number}: search run {search_id} has no trial {number} (trials: {known})")
        t = match[0]
        if t.state not in EXPORTABLE_STATES:
            why = f" ({t.failure})" if t.failure else ""
            raise ExportError(
                f"--trial {number}: trial {number} is {t.state}{why}; only COMPLETE or PRUNED trials can be exported"
            )
        return t
    done = [t for t in trials if t.state == "COMPLETE" and _finite(t.value) is not None]
    if not done:
        raise ExportError(
            f"search run {search_id}: no COMPLETE trial with a finite {metric}; pick one with --trial N"
        )
    # A trial that missed a measured constraint (tag feasible=false) is never the best.
    feasible = [t for t in done if t.feasible]
    if not feasible:
        raise ExportError(
            f"search run {search_id}: no COMPLETE trial meets the job's constraints (all {len(done)} are "
            "feasible=false); pick one with --trial N"
        )
    done = feasible
    sign = 1.0 if mode == "min" else -1.0
    return min(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


@dataclass(frozen=True)
class PickRule:
    """How ``export --pick`` chooses from a multi-objective search's Pareto front: the trial
    with the best first objective among front trials under the caps, or the front's knee."""

    max_params: float | None = None
    max_latency_ms: float | None = None
    knee: bool = False

    def __str__(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"n_params <= {self.max_params:g}")
        if self.max_latency_ms is not None:
            parts.append(f"latency_ms <= {self.max_latency_ms:g}")
        parts.append("knee of the front" if self.knee else "best first objective")
        return ", then ".join(parts)


def objective_vector(t: Trial, objectives: list[tuple[str, str]]) -> list[float] | None:
    """A trial's objective values as logged on its run: ``best_<metric>`` for a reported metric
    (its run's plain ``<metric>`` is the last epoch's value, not the one the search scored), the
    plain name for static and measured ones (``n_params``, ``flops``, ``latency_ms``)."""
    out = []
    for name, _mode in objectives:
        v = _finite(t.metrics.get(f"best_{name}", t.metrics.get(name)))
        if v is None and name == "n_params":
            v = _finite(t.params.get("n_params"))
        if v is None:
            return None
        out.append(v)
    return out


def pareto_front(trials: list[Trial], objectives: list[tuple[str, str]]) -> list[Trial]:
    """COMPLETE, feasible trials no other such trial dominates, by trial number."""
    from attntune.search.pareto import front_indices

    done = [(t, objective_vector(t, objectives)) for t in trials if t.state == "COMPLETE" and t.feasible]
    done = [(t, v) for t, v in done if v is not None]
    front = front_indices([v for _, v in done], [m for _, m in objectives])
    return sorted((done[i][0] for i in front), key=lambda t: t.number)


def pick_from_front(front: list[Trial], objectives: list[tuple[str, str]], rule: PickRule, search_id: str) -> Trial:
    """Apply ``rule`` to the front; one clear error when nothing qualifies."""
    from attntune.search.pareto import knee_index, to_min

    if not front:
        raise ExportError(f"search run {search_id}: the Pareto front is empty (no COMPLETE, feasible trial)")
    left = list(front)
    for name, cap in (("n_params", rule.max_params), ("latency_ms", rule.max_latency_ms)):
        if cap is None:
            continue
        have = [(t, _finite(t.metrics.get(name, t.params.get(name)))) for t in left]
        known = [v for _, v in have if v is not None]
        if not known:
            raise ExportError(f"--pick: the trials of search run {search_id} have no {name}")
        left = [t for t, v in have if v is not None and v <= cap]
        if not left:
            raise ExportError(
                f"--pick: no Pareto trial has {name} <= {cap:g} (the smallest on the front: {min(known):g})"
            )
    modes = [m for _, m in objectives]
    vectors = [to_min(objective_vector(t, objectives) or [], modes) for t in left]
    if rule.knee:
        return left[knee_index(vectors)]
    return min(zip(left, vectors, strict=True), key=lambda tv: (tv[1][0], tv[0].number))[0]


# --------------------------------------------------------------------------- building the config


def _typed(raw: str, tp: Any) -> Any:
    """An MLflow param string back to the config field's type (None, bool, int, float, str)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if raw == "None":
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return _typed(raw, a)
            except ValueError:
                continue
        return raw
    if tp is bool:
        if raw in ("True", "true"):
            return True
        if raw in ("False", "false"):
            return False
        raise ValueError(raw)
    if tp is int:
        f = float(raw)
        if not f.is_integer():
            raise ValueError(raw)
        return int(f)
    if tp is float:
        return float(raw)
    return raw


def _section(cls: type, base: Any, params: dict[str, str], prefix: str) -> dict[str, Any]:
    """The search's base section, overridden by the trial's ``prefix.*`` params, typed by ``cls``."""
    hints = typing.get_type_hints(cls)
    values = to_dict(base)
    for f in dataclasses.fields(cls):
        raw = params.get(f"{prefix}.{f.name}")
        if raw is None:
            continue
        try:
            values[f.name] = _typed(raw, hints[f.name])
        except ValueError:
            raise ExportError(f"{prefix}.{f.name}: MLflow param {raw!r} is not a valid {hints[f.name]}") from None
    return values


def _job_of(client: Any, parent: Any) -> Any:
    """The search job from the parent's ``job.yaml`` artifact (None when it cannot be read)."""
    import tempfile

    from attntune.search.job import parse_job, parse_yaml_text

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="attntune-export-") as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, "job.yaml", tmp)
            text = Path(local).read_text(encoding="utf-8")
        except Exception:  # noqa: BLE001 - any store problem: the caller reports a missing job.yaml
            return None, None
    data = parse_yaml_text(text, f"run {parent.info.run_id} job.yaml")
    try:
        return parse_job(data, text=text, source=f"run {parent.info.run_id} job.yaml"), data
    except ConfigError:
        # The job may name a space file that is gone; the task section is all export needs.
        return None, data


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def build_document(client: Any, parent: Any, trial: Trial, experiment: str, uri: str) -> dict[str, Any]:
    """The ``train`` config: task / model / train / provenance, validated by RunConfig."""
    params = parent.data.params
    tags = parent.data.tags
    metric, mode = params.get("metric", "val_loss"), params.get("mode", "min")
    job, data = _job_of(client, parent)
    if job is not None:
        task, model, train = job.base.task, job.base.model, job.base.train
    elif isinstance(data, dict):
        # The job no longer parses as a whole (e.g. its space file is gone): its sections still do.
        task = load_dataclass(TaskConfig, data.get("task") or {}, "task")
        model = load_dataclass(ModelConfig, data.get("model") or {}, "model")
        train = load_dataclass(TrainConfig, {k: v for k, v in (data.get("train") or {}).items() if k != "epochs"}, "train")
    else:
        raise ExportError(f"search run {parent.info.run_id}: has no job.yaml artifact, so the task is unknown")
    model_d = _section(ModelConfig, model, trial.params, "model")
    train_d = _section(TrainConfig, train, trial.params, "train")
    max_epochs = params.get("max_epochs")
    if max_epochs is not None:
        train_d["epochs"] = int(float(max_epochs))
    # A token/step budget: max_epochs counts rounds, which need their size (job.py Budget).
    unit, round_size = params.get("budget_unit"), params.get("round_size")
    if unit in ("tokens", "steps") and round_size is not None:
        train_d[f"round_{unit}"] = int(float(round_size))
    provenance: dict[str, Any] = {
        "search_run_id": parent.info.run_id,
        "trial_run_id": trial.run_id,
        "trial_number": trial.number,
        "trial_state": trial.state,
        "experiment": experiment,
        "job": params.get("job_name") or tags.get("attntune.job"),
        "metric": metric,
        "mode": mode,
        "value": trial.value,
        "seed": int(float(params["seed"])) if params.get("seed") is not None else None,
        "data_fingerprint": tags.get("data.fingerprint") or None,
        "data_license": tags.get("data.license") or None,
        "tracking_uri": uri,
        "versions": _versions(),
    }
    doc = {"task": to_dict(task), "model": model_d, "train": train_d, "provenance": provenance}
    try:
        load_dataclass(RunConfig, doc)
    except ConfigError as e:
        raise ExportError([f"trial {trial.number}: {p}" for p in e.problems]) from None
    return doc


def render(doc: dict[str, Any], search_run_id: str, trial: Trial) -> str:
    """Deterministic YAML (fixed key order, no timestamps) with a one-line header."""
    head = (
        f"# attntune train config: trial {trial.number} of search run {search_run_id}\n"
        f"# train it with: attntune train <this file>\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


# --------------------------------------------------------------------------- output path rule


def check_output(path: Path, search_output: Path | None) -> Path:
    """The output must lie inside the current folder or the search's output folder."""
    target = path.expanduser().resolve()
    roots = [Path.cwd().resolve()] + ([search_output.expanduser().resolve()] if search_output else [])
    if not any(target == r or target.is_relative_to(r) for r in roots):
        allowed = " or ".join(str(r) for r in roots)
        raise ExportError(
            f"--output {path}: must be inside the current folder or the search's output folder ({allowed}); "
            "nothing written"
        )
    if target.is_dir():
        raise ExportError(f"--output {path}: is a folder; give a file name such as best.yaml")
    return target


def export_config(
    experiment: str,
    *,
    search_run: str | None = None,
    trial: int | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
    pick: PickRule | None = None,
) -> Export:
    """Write the chosen trial's ``train`` config; every check runs before the one write."""
    uri = resolve_uri(tracking_uri)
    client = open_store(uri)
    parent = find_search_run(client, experiment, search_run)
    metric = parent.data.params.get("metric", "val_loss")
    mode = parent.data.params.get("mode", "min")
    trials = [t for t in (trial_of(client, r, metric, mode) for r in child_runs(client, parent)) if t is not None]
    objectives = [tuple(x.split(":", 1)) for x in (parent.data.params.get("objectives") or "").split(",") if ":" in x]
    if pick is not None:
        if trial is not None:
            raise ExportError("--pick and --trial: choose one")
        if len(objectives) < 2:
            raise ExportError(
                f"--pick: search run {parent.info.run_id} has one objective ({metric}); --pick chooses from a "
                "multi-objective search's Pareto front (export the best, or --trial N)"
            )
        front = pareto_front(trials, objectives)
        chosen = pick_from_front(front, objectives, pick, parent.info.run_id)
    else:
        chosen = pick_trial(trials, mode, trial, metric, parent.info.run_id)
    out_tag = parent.data.tags.get("attntune.output")
    search_output = Path(out_tag) if out_tag else None
    if output is None:
        if search_output is None:
            raise ExportError(f"search run {parent.info.run_id}: has no output folder tag; pass --output")
        output = search_output / "best.yaml"
    target = check_output(Path(output), search_output)
    doc = build_document(client, parent, chosen, experiment, uri)
    if pick is not None:
        doc["provenance"]["pick"] = str(pick)
        doc["provenance"]["pareto_trials"] = [t.number for t in front]
        doc["provenance"]["objectives"] = {
            name: v for (name, _m), v in zip(objectives, objective_vector(chosen, objectives) or [], strict=False)
        }
    text = render(doc, parent.info.run_id, chosen)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return Export(path=_shown(target), trial=chosen, search_run_id=parent.info.run_id, metric=metric, document=doc)


def _shown(path: Path) -> Path:
    """Relative to the current folder when inside it (shorter, copy-pasteable)."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def print_export(result: Export, file: Any = None) -> None:
    out = file or sys.stdout
    t = result.trial
    value = f"{result.metric}={t.value:.6g}" if t.value is not None else f"{result.metric}=n/a"
    print(f"exported trial {t.number} ({t.state}, {value}) of search run {result.search_run_id}", file=out)
    print(f"config: {result.path}", file=out)
    print(f"train it: {result.train_command}", file=out)
