"""``attntune export``: the best (or a chosen) trial of a past search as a ``train`` config file.

Why MLflow only: the MLflow store outlives the search's output folder (it may be a shared server,
the search may have run on another machine, on either backend), so everything needed is read from
the search's parent run (params ``metric``/``mode``/``max_epochs``, the ``job.yaml`` artifact, tags)
and its child runs (``model.*``/``train.*`` params, ``best_<metric>``, ``attntune.state``), through
``records``, the read model the report shares (so both agree on the best trial and the front).

The file is deterministic (fixed key order, no timestamps): two exports of one search are
byte-identical, so an exported config can be committed and diffed.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from attntune.model.config import (
    FAMILY_FIELDS,
    ConfigError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    at_width,
    load_dataclass,
    to_dict,
)
from attntune.search.job import parse_job
from attntune.search.outcome import Gain, TrialState, baseline_gain, finite
from attntune.search.pareto import knee_index, to_min
from attntune.search.records import (
    RecordsError,
    SearchData,
    TrialRecord,
    artifact_text,
    best_trial,
    find_search_run,
    objective_vector,
    open_store,
    pareto_front,
    read_search,
    resolve_uri,
)
from attntune.search.yaml_io import parse_yaml_text

EXPORTABLE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
FAMILIES = tuple(FAMILY_FIELDS)  # what --family accepts: model.family's values
PACKAGES = ("attntune", "torch", "optuna", "mlflow")

# The TaskConfig fields each task reads (attntune.model.data): the exported ``task`` section has
# these only, so a tsv task's file carries no generated-task settings (n_train, n_symbols, ...)
# and a generated task's none of a tsv file's (path, src_col, tokenizers, ...).
_TASK_COMMON = ("name", "vocab_size", "max_pairs", "val_size", "test_size", "max_tokens", "split_seed")
_SEQUENCES = ("n_train", "min_seq_len", "max_seq_len", "n_symbols")
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "tsv": _TASK_COMMON
    + ("path", "src_col", "tgt_col", "license", "attribution", "src_tokenizer", "tgt_tokenizer", "lowercase"),
    "reverse": _TASK_COMMON + _SEQUENCES,
    "sort": _TASK_COMMON + _SEQUENCES,
    "numbers": _TASK_COMMON + ("n_train",),
}


class ExportError(RecordsError):
    """The export cannot be done as asked (no such trial, nothing on the front, bad output path)."""


@dataclass(frozen=True)
class Export:
    """What ``export_config`` wrote and how to train it."""

    path: Path
    trial: TrialRecord
    search_run_id: str
    metric: str
    document: dict[str, Any]
    gain: Gain | None = None  # the best trial against the search's baseline

    @property
    def train_command(self) -> str:
        return f"attntune train {shlex.quote(str(self.path))}"


# --------------------------------------------------------------------------- choosing the trial


def pick_trial(trials: list[TrialRecord], mode: str, number: int | None, metric: str, search_id: str) -> TrialRecord:
    """Trial ``number`` (COMPLETE or PRUNED), or the best trial (``records.best_trial``: COMPLETE,
    feasible, NaN/inf never win, ties go to the lower number)."""
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
    best = best_trial(trials, mode)
    if best is not None:
        return best
    done = [t for t in trials if t.state == TrialState.COMPLETE and finite(t.score) is not None]
    if not done:
        raise ExportError(
            f"search run {search_id}: no COMPLETE trial with a finite {metric}; pick one with --trial N"
        )
    # Every such trial missed a measured constraint (tag feasible=false): none is the best.
    raise ExportError(
        f"search run {search_id}: no COMPLETE trial meets the job's constraints (all {len(done)} are "
        "feasible=false); pick one with --trial N"
    )


def check_family(family: str, trial: int | None, pick: PickRule | None) -> None:
    """``--family`` names a model family and chooses the trial alone; checked before the store is read."""
    if family not in FAMILIES:
        raise ExportError(f"--family {family}: not a model family (valid: {', '.join(FAMILIES)})")
    if trial is not None:
        raise ExportError("--family and --trial: choose one (--family exports the best trial of that family)")
    if pick is not None:
        raise ExportError("--family and --pick: choose one (--family exports the best trial of that family)")


def _family_order(family: str) -> tuple[int, str]:
    """``FAMILIES`` order, then any other name a store holds."""
    return (FAMILIES.index(family), "") if family in FAMILIES else (len(FAMILIES), family)


def pick_family(trials: list[TrialRecord], mode: str, family: str, metric: str, search_id: str) -> TrialRecord:
    """The best trial of one model family: ``records.best_trial`` (the best trial's rule) over the
    trials whose ``model.family`` is ``family`` (a run without the param is a transformer)."""
    mine = [t for t in trials if t.family == family]
    best = best_trial(mine, mode)
    if best is not None:
        return best
    done = [t for t in mine if t.state == TrialState.COMPLETE and finite(t.score) is not None]
    if done:  # each missed a measured constraint (tag feasible=false)
        raise ExportError(f"--family {family}: none of its {len(done)} COMPLETE trials meets the job's constraints")
    counts = Counter(t.family for t in trials if t.state == TrialState.COMPLETE and finite(t.score) is not None)
    have = ", ".join(f"{counts[f]} {f}" for f in sorted(counts, key=_family_order)) or "none"
    raise ExportError(
        f"--family {family}: search run {search_id} has no COMPLETE {family} trial with a finite {metric} "
        f"(COMPLETE trials: {have})"
    )


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


def pick_from_front(
    front: list[TrialRecord], objectives: list[tuple[str, str]], rule: PickRule, search_id: str
) -> TrialRecord:
    """Apply ``rule`` to the front (``records.pareto_front``); one clear error when nothing qualifies."""
    if not front:
        raise ExportError(f"search run {search_id}: the Pareto front is empty (no COMPLETE, feasible trial)")
    left = list(front)
    for name, cap in (("n_params", rule.max_params), ("latency_ms", rule.max_latency_ms)):
        if cap is None:
            continue
        have = [(t, finite(t.metrics.get(name, t.params.get(name)))) for t in left]
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


def task_section(task: TaskConfig) -> dict[str, Any]:
    """The ``task`` section: the fields ``task.name`` reads (``TASK_FIELDS``), in TaskConfig's
    order; every field for a task not listed there.

    A generated task's data fingerprint hashes its whole config (``attntune.model.data``), so a
    field it does not read is still written where the search set it away from its default: the
    production run then reads the same config and records the search's fingerprint. A tsv task's
    fingerprint is its file's, so its section has its own fields only."""
    values = to_dict(task)
    used = TASK_FIELDS.get(task.name)
    if used is None:
        return values
    if task.name == "tsv":
        return {k: v for k, v in values.items() if k in used}
    defaults = to_dict(TaskConfig(name=task.name))
    return {k: v for k, v in values.items() if k in used or v != defaults[k]}


def _job_of(client: Any, run_id: str) -> Any:
    """The search job from the parent's ``job.yaml`` artifact (None, None when it cannot be read)."""
    text = artifact_text(client, run_id, "job.yaml")
    if text is None:  # the caller reports the missing job.yaml
        return None, None
    data = parse_yaml_text(text, f"run {run_id} job.yaml")
    try:
        return parse_job(data, text=text, source=f"run {run_id} job.yaml"), data
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


def build_document(client: Any, search: SearchData, trial: TrialRecord, experiment: str) -> dict[str, Any]:
    """The ``train`` config: task / model / train / provenance, validated by RunConfig."""
    params, tags = search.params, search.tags
    metric, mode = search.metric, search.mode
    job, data = _job_of(client, search.parent_run_id)
    if job is not None:
        task, model, train = job.base.task, job.base.model, job.base.train
    elif isinstance(data, dict):
        # The job no longer parses as a whole (e.g. its space file is gone): its sections still do.
        task = load_dataclass(TaskConfig, data.get("task") or {}, "task")
        model = load_dataclass(ModelConfig, data.get("model") or {}, "model")
        train = load_dataclass(TrainConfig, {k: v for k, v in (data.get("train") or {}).items() if k != "epochs"}, "train")
    else:
        raise ExportError(f"search run {search.parent_run_id}: has no job.yaml artifact, so the task is unknown")
    model_d = _section(ModelConfig, _family_base(model, trial), trial.params, "model")
    train_d = _section(TrainConfig, train, trial.params, "train")
    max_epochs = params.get("max_epochs")
    if max_epochs is not None:
        train_d["epochs"] = int(float(max_epochs))
    # A token/step budget: max_epochs counts rounds, which need their size (job.py Budget).
    unit, round_size = params.get("budget_unit"), params.get("round_size")
    if unit in ("tokens", "steps") and round_size is not None:
        train_d[f"round_{unit}"] = int(float(round_size))
    provenance: dict[str, Any] = {
        "search_run_id": search.parent_run_id,
        "trial_run_id": trial.run_id,
        "trial_number": trial.number,
        "trial_state": str(trial.state),  # a plain string: yaml.safe_dump refuses str subclasses
        "experiment": experiment,
        "job": params.get("job_name") or tags.get("attntune.job"),
        "metric": metric,
        "mode": mode,
        "value": trial.score,
        "seed": int(float(params["seed"])) if params.get("seed") is not None else None,
        "data_fingerprint": tags.get("data.fingerprint") or None,
        "data_license": tags.get("data.license") or None,
        "tracking_uri": search.tracking_uri,
        "versions": _versions(),
    }
    if job is not None and job.transfer_width is not None:  # tuned at the proxy width, trained at the target
        proxy = load_dataclass(ModelConfig, model_d, "model")
        model_d = to_dict(at_width(proxy, job.transfer_width))
        provenance["transfer"] = {"proxy_d_model": proxy.d_model, "target_d_model": job.transfer_width}
    doc = {"task": task_section(task), "model": model_d, "train": train_d, "provenance": provenance}
    try:
        load_dataclass(RunConfig, doc)
    except ConfigError as e:
        raise ExportError([f"trial {trial.number}: {p}" for p in e.problems]) from None
    return doc


def _family_base(model: ModelConfig, trial: TrialRecord) -> ModelConfig:
    """The job's model section as the trial's family saw it: a sampled ``model.family`` resets the
    fields that family does not read (``apply_overrides``), as it did when the trial ran; a field
    MLflow never got (a None) must not come back from a base of another family."""
    family = trial.params.get("model.family")
    if family is None or family == model.family:
        return model
    try:
        return apply_overrides(RunConfig(model=model), {"model.family": family}).model
    except ConfigError as e:
        raise ExportError([f"trial {trial.number}: {p}" for p in e.problems]) from None


def render(doc: dict[str, Any], search_run_id: str, trial: TrialRecord) -> str:
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
    family: str | None = None,
) -> Export:
    """Write the chosen trial's ``train`` config; every check runs before the one write."""
    if family is not None:
        check_family(family, trial, pick)
    uri = resolve_uri(tracking_uri)
    client = open_store(uri)
    search = read_search(client, find_search_run(client, experiment, search_run), uri)
    run_id, metric, objectives = search.parent_run_id, search.metric, search.objectives
    if pick is not None:
        if trial is not None:
            raise ExportError("--pick and --trial: choose one")
        if len(objectives) < 2:
            raise ExportError(
                f"--pick: search run {run_id} has one objective ({metric}); --pick chooses from a "
                "multi-objective search's Pareto front (export the best, or --trial N)"
            )
        front = pareto_front(search.trials, objectives)
        chosen = pick_from_front(front, objectives, pick, run_id)
    elif family is not None:
        chosen = pick_family(search.trials, search.mode, family, metric, run_id)
    else:
        chosen = pick_trial(search.trials, search.mode, trial, metric, run_id)
    search_output = search.output
    if output is None:
        if search_output is None:
            raise ExportError(f"search run {run_id}: has no output folder tag; pass --output")
        output = search_output / "best.yaml"
    target = check_output(Path(output), search_output)
    doc = build_document(client, search, chosen, experiment)
    if pick is not None:
        doc["provenance"]["pick"] = str(pick)
        doc["provenance"]["pareto_trials"] = [t.number for t in front]
        doc["provenance"]["objectives"] = {
            name: v for (name, _m), v in zip(objectives, objective_vector(chosen, objectives) or [], strict=False)
        }
    if family is not None:
        doc["provenance"]["family"] = family
    gain = baseline_gain(search.trials, search.mode, baseline=lambda t: t.baseline, value=lambda t: t.score)
    if gain is not None:
        doc["provenance"]["baseline"] = {"value": gain.baseline, "repeats": gain.repeats, "noise": gain.noise}
    text = render(doc, run_id, chosen)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return Export(path=_shown(target), trial=chosen, search_run_id=run_id, metric=metric, document=doc, gain=gain)


def _shown(path: Path) -> Path:
    """Relative to the current folder when inside it (shorter, copy-pasteable)."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def print_export(result: Export, file: Any = None) -> None:
    """What was written (docs/mlflow.md): the trial, its metric, the file, the command to train it;
    for ``--pick``, the rule and the trial's objectives."""
    out = file or sys.stdout
    t = result.trial
    prov = result.document.get("provenance") or {}
    value = f"{result.metric}={t.score:.6g}" if t.score is not None else f"{result.metric}=n/a"
    experiment = f" (experiment {prov['experiment']})" if prov.get("experiment") else ""
    print(f"exported trial {t.number} ({t.state}, {value}) of search run {result.search_run_id}{experiment}", file=out)
    if "pick" in prov:
        objectives = ", ".join(f"{k}={v:.6g}" for k, v in (prov.get("objectives") or {}).items())
        print(f"picked: {prov['pick']}, from {len(prov.get('pareto_trials') or [])} Pareto trials ({objectives})", file=out)
    if "family" in prov:
        print(f"family: {prov['family']} (its best trial by {result.metric})", file=out)
    print(f"config: {result.path}", file=out)
    print(f"train it: {result.train_command}", file=out)
    note = gain_note(result)
    if note:
        print(note, file=sys.stderr)


def gain_note(result: Export) -> str | None:
    """A warning when the exported best trial does not beat the search's baseline by more than
    the baseline repeats' spread (its noise): its config may train no better than the baseline."""
    gain, t = result.gain, result.trial
    if gain is None or t.number != gain.best_number:
        return None
    if gain.gain <= 0:
        return f"note: no trial beat the baseline on {result.metric}; the exported config is the baseline's or ties it"
    if gain.beats is None:
        return f"note: {gain.line(result.metric)}; the baseline ran once, so its noise is unknown"
    if not gain.beats:
        return f"warning: {gain.line(result.metric)}: the exported config may train no better than the baseline"
    return None
