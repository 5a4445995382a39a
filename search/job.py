"""The search job: one YAML file, validated at load, every problem reported at once.

Parsing never imports Optuna, Ray or MLflow and never touches the disk beyond reading the file,
so a bad job exits 2 before anything starts (no experiment, no run, no Ray, no folder).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from attntune.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    Validated,
    load_dataclass,
    parse_dataclass,
    parse_fields,
    to_dict,
)
from attntune.search.backends import BACKENDS
from attntune.search.job_sections import Baseline, WarmStart, parse_baseline, parse_transfer, parse_warm_start
from attntune.search.objectives import (
    METRIC_MODES,
    REPORTED,
    Objective,
    parse_constraints,
    parse_objectives,
)
from attntune.search.schedulers import SCHEDULERS, Scheduler
from attntune.search.strategies import PRESETS, STRATEGIES, Strategy
from attntune.search.yaml_io import read_yaml
from attntune.spaces.space import Space, load_space

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_OUTPUT_ROOT = "attntune-runs"


@dataclass(frozen=True)
class Budget(Validated):
    """How much to spend: trials, wall time, epochs per trial (min_epochs is the first rung).

    A trial's budget may instead be training tokens (``max_tokens``) or optimizer steps
    (``max_steps``), so models with different batch sizes compete fairly. Then a *round* of
    ``min_tokens`` tokens (``min_steps`` steps; default a ninth of the maximum) stands in for an
    epoch: ``parse_job`` sets ``max_epochs`` to the number of rounds and ``min_epochs`` to 1, and
    the rest of the search (rungs, reports, checkpoints) counts rounds as it counts epochs.
    """

    n_trials: int = 8
    time_limit: float | str | None = None
    max_epochs: int = 4
    min_epochs: int = 1
    max_tokens: int | None = None
    min_tokens: int | None = None
    max_steps: int | None = None
    min_steps: int | None = None

    def _check(self, problems: list[str]) -> None:
        if self.n_trials <= 0:
            problems.append(f"n_trials: must be > 0, got {self.n_trials}")
        if self.max_epochs <= 0:
            problems.append(f"max_epochs: must be > 0, got {self.max_epochs}")
        if self.min_epochs <= 0:
            problems.append(f"min_epochs: must be > 0, got {self.min_epochs}")
        elif self.min_epochs > self.max_epochs:
            problems.append(f"min_epochs: {self.min_epochs} is above max_epochs={self.max_epochs}")
        if self.max_tokens is not None and self.max_steps is not None:
            problems.append(
                f"max_tokens/max_steps: a budget is in tokens or in steps, not both "
                f"(got max_tokens={self.max_tokens}, max_steps={self.max_steps})"
            )
        for unit in ("tokens", "steps"):
            hi, lo = getattr(self, f"max_{unit}"), getattr(self, f"min_{unit}")
            for key, v in ((f"max_{unit}", hi), (f"min_{unit}", lo)):
                if v is not None and v <= 0:
                    problems.append(f"{key}: must be > 0, got {v}")
            if lo is not None and hi is None:
                problems.append(f"min_{unit}: {lo} needs max_{unit} (the trial's full budget in {unit})")
            elif lo is not None and hi is not None and 0 < hi < lo:
                problems.append(f"min_{unit}: {lo} is above max_{unit}={hi}")
        try:
            seconds = parse_duration(self.time_limit)
            if seconds is not None and seconds <= 0:
                problems.append(f"time_limit: must be > 0, got {self.time_limit!r}")
        except ValueError as e:
            problems.append(f"time_limit: {e}")

    @property
    def time_limit_s(self) -> float | None:
        return parse_duration(self.time_limit)

    @property
    def unit(self) -> str:
        """What a trial's budget counts: ``epochs``, ``tokens`` or ``steps``."""
        return "tokens" if self.max_tokens is not None else "steps" if self.max_steps is not None else "epochs"

    @property
    def round_size(self) -> int | None:
        """Tokens (steps) of one round, the unit rungs count in; None for an epoch budget."""
        if self.unit == "epochs":
            return None
        hi, lo = getattr(self, f"max_{self.unit}"), getattr(self, f"min_{self.unit}")
        return lo if lo is not None else max(1, -(-hi // 9))  # 9 rounds: rungs 1, 3, 9 at factor 3

    def train_overrides(self) -> dict[str, int]:
        """The ``train`` settings a token/step budget implies: the round size."""
        return {} if self.unit == "epochs" else {f"round_{self.unit}": self.round_size}

    def rounds_note(self) -> str:
        """For messages about max_epochs/min_epochs: what they mean under a token/step budget."""
        if self.unit == "epochs":
            return ""
        u = self.unit
        return (
            f" (a budget in {u} counts rounds of budget.min_{u}={self.round_size}: "
            f"max_{u}={getattr(self, f'max_{u}')} is {self.max_epochs} rounds)"
        )


def budget_in_rounds(budget: Budget, data: dict[str, Any], problems: list[str]) -> Budget:
    """A token/step budget as rounds: ``max_epochs`` = ceil(max / round), ``min_epochs`` = 1.

    ``data`` is the raw job mapping: a token/step budget replaces epochs, so ``max_epochs`` or
    ``min_epochs`` written next to it, or a round size in the ``train`` section, is a problem.
    """
    raw = data.get("budget") if isinstance(data.get("budget"), dict) else {}
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    for key in ("round_tokens", "round_steps"):
        if key in train:
            problems.append(
                f"train.{key}: set budget.max_tokens/min_tokens or budget.max_steps/min_steps instead "
                "(the search decides rounds)"
            )
    unit = budget.unit
    if unit == "epochs":
        return budget
    for key in ("max_epochs", "min_epochs"):
        if key in raw:
            problems.append(
                f"budget.{key}: cannot be combined with budget.max_{unit} (a budget in {unit} replaces "
                f"epochs; budget.min_{unit} sets the first rung)"
            )
    hi, size = getattr(budget, f"max_{unit}"), budget.round_size
    if hi is None or hi <= 0 or size is None or size <= 0 or size > hi:
        return budget  # already reported by Budget._check
    return replace(budget, max_epochs=-(-hi // size), min_epochs=1, **{f"min_{unit}": size})


def parse_duration(value: float | str | None) -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 600, '10m', '2h')")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass(frozen=True)
class Resources(Validated):
    """Per-trial resources. ``gpus`` may be a fraction (several trials share one GPU)."""

    cpus: float = 1.0
    gpus: float = 0.0
    # Memory one trial may use (GiB); a config whose estimate exceeds it is INFEASIBLE, never
    # started (attntune.search.memory). Unset on a GPU job: the device's memory x gpus.
    memory_gb: float | None = None

    def _check(self, problems: list[str]) -> None:
        if self.cpus <= 0:
            problems.append(f"cpus: must be > 0, got {self.cpus}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            problems.append(f"memory_gb: must be > 0, got {self.memory_gb}")
        if self.gpus < 0:
            problems.append(f"gpus: must be >= 0, got {self.gpus}")
        if self.gpus > 1 and not float(self.gpus).is_integer():
            problems.append(f"gpus: above 1 must be a whole number, got {self.gpus}")


@dataclass(frozen=True)
class TrackingConfig(Validated):
    """Where MLflow runs go. ``uri`` defaults to MLFLOW_TRACKING_URI, then ``sqlite:///mlflow.db``."""

    uri: str | None = None
    experiment: str | None = None

    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass(frozen=True)
class _JobFile:
    """The raw schema of a job file (sections are parsed by their own dataclasses)."""

    name: str
    task: TaskConfig = field(default_factory=TaskConfig)
    space: Any = "cpu-small"
    strategy: str = "tpe"
    scheduler: str | None = None
    budget: Budget = field(default_factory=Budget)
    metric: str = "val_loss"
    mode: Literal["min", "max"] | None = None
    concurrency: int = 1
    resources: Resources = field(default_factory=Resources)
    seed: int = 0
    backend: str = "optuna"
    tracking: Any = None
    output: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_params: float | None = None
    retries: int = 0
    description: str = ""
    objectives: Any = None  # {name: min|max}: several make a multi-objective search
    constraints: Any = None  # ["n_params <= 20e6", "latency_ms <= 5"]
    baseline: Any = "default"  # the config trials are compared with: default | none | a file | {key: value}
    warm_start: Any = None  # {from: [earlier searches], top: 10}: their best trials seed the sampler
    transfer: Any = None  # {model.d_model: 512}: tune at the proxy width, export at this one (muP)


@dataclass(frozen=True)
class SearchJob:
    """A validated search job. ``base`` holds the fixed (non-searched) task/model/train settings."""

    name: str
    base: RunConfig
    space: Space
    strategy: str
    scheduler: str
    budget: Budget
    metric: str
    mode: str
    concurrency: int
    resources: Resources
    seed: int
    backend: str
    tracking: TrackingConfig
    output: Path
    max_params: float | None
    retries: int = 0
    description: str = ""
    source_text: str = ""
    source_path: str | None = None
    # (search.objectives.Objective, ...): the first reported one is ``metric``/``mode``.
    objectives: tuple = ()
    constraints: tuple = ()
    baseline: Baseline | None = None
    baseline_note: str = ""  # why a default baseline was left out (its config is outside the space)
    warm_start: WarmStart | None = None
    transfer_width: int | None = None  # ``transfer: {model.d_model: N}``: export at this width (muP)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        modes = [o.mode for o in self.objectives] or [self.mode]
        return ["minimize" if m == "min" else "maximize" for m in modes]

    def uses(self, name: str) -> bool:
        """Whether ``name`` (``latency_ms``, ``flops``, ...) is an objective or constrained."""
        return any(x.name == name for x in (*self.objectives, *self.constraints))

    @property
    def launch_constraints(self) -> tuple:
        """Constraints on the config (``n_params``, ``flops``): missing one makes a sample INFEASIBLE."""
        return tuple(c for c in self.constraints if c.kind == "static")

    @property
    def end_constraints(self) -> tuple:
        """Constraints on reported or measured values, checked when a trial completes."""
        return tuple(c for c in self.constraints if c.kind != "static")

    def settings(self) -> dict[str, Any]:
        """The job's settings as flat params (for the MLflow parent run)."""
        return {
            "job_name": self.name,
            "strategy": self.strategy,
            "scheduler": self.scheduler,
            "backend": self.backend,
            "seed": self.seed,
            "metric": self.metric,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "n_trials": self.budget.n_trials,
            "time_limit_s": self.budget.time_limit_s,
            "max_epochs": self.budget.max_epochs,
            "min_epochs": self.budget.min_epochs,
            "budget_unit": self.budget.unit,
            "round_size": self.budget.round_size,
            "max_params": self.max_params,
            "resources.cpus": self.resources.cpus,
            "resources.gpus": self.resources.gpus,
            "resources.memory_gb": self.resources.memory_gb,
            "space": self.space.name,
            "space_fingerprint": self.space.fingerprint(),
            "task": self.base.task.name,
            "retries": self.retries,
            "objectives": ",".join(f"{o.name}:{o.mode}" for o in self.objectives),
            "constraints": "; ".join(str(c) for c in self.constraints) or None,
            "transfer_d_model": self.transfer_width,
        }


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def load_job(path: str | Path, **overrides: Any) -> SearchJob:
    data, text = read_yaml(path)
    return parse_job(data, text=text, source=str(path), **overrides)


def parse_job(
    data: Any,
    *,
    text: str = "",
    source: str = "<job>",
    backend: str | None = None,
    tracking_uri: str | None = None,
    output: str | Path | None = None,
) -> SearchJob:
    """Validate a job mapping; raise one ConfigError naming the file and every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with at least a 'name' key", source)
    raw = _parse_sections(data, problems)
    if not _NAME_RE.match(raw.name):
        problems.append(f"name: {raw.name!r} must be 1-100 letters, digits, '_', '-' or '.'")
    tracking = _parse_tracking(raw.tracking, problems)
    if tracking_uri:
        tracking = TrackingConfig(uri=tracking_uri, experiment=tracking.experiment)
    plan = _plugins(raw, problems)
    backend_name = backend or raw.backend
    if backend_name not in BACKENDS:
        problems.append(f"backend: {backend_name!r} is not a known backend (valid: {', '.join(BACKENDS)})")
    raw, metric, mode, objectives = _objectives(raw, data, problems)
    constraints = parse_constraints(raw.constraints, problems)
    for key, bad, rule in (
        ("concurrency", raw.concurrency <= 0, "must be > 0"),
        ("retries", raw.retries < 0, "must be >= 0"),
        ("max_params", raw.max_params is not None and raw.max_params <= 0, "must be > 0"),
    ):
        if bad:
            problems.append(f"{key}: {rule}, got {getattr(raw, key)}")
    raw = replace(raw, budget=budget_in_rounds(raw.budget, data, problems))
    base = _base_config(raw, data, problems)
    space = None
    try:
        space = load_space(raw.space, base)
    except ConfigError as e:
        problems.extend(e.problems)
    problems.extend(_compatibility(plan, space, raw.budget, metric, objectives))
    baseline, note = None, ""
    if space is not None:
        n_trials = raw.budget.n_trials
        baseline, note = parse_baseline(raw.baseline, n_trials, plan.strategy, space, base, source, problems)
    warm = parse_warm_start(raw.warm_start, plan.strategy, problems)
    width = parse_transfer(raw.transfer, base, space, problems)
    if problems:
        raise ConfigError(problems, source)
    assert space is not None and mode is not None
    out = Path(output) if output else Path(raw.output) if raw.output else Path(DEFAULT_OUTPUT_ROOT) / raw.name
    return SearchJob(
        name=raw.name, base=base, space=space, strategy=plan.strategy, scheduler=plan.scheduler, budget=raw.budget,
        metric=metric, mode=mode, concurrency=raw.concurrency, resources=raw.resources, seed=raw.seed,
        backend=backend_name, tracking=tracking, output=out,
        max_params=raw.max_params if raw.max_params is not None else space.max_params,
        retries=raw.retries, description=raw.description, source_text=text, source_path=source,
        objectives=objectives, constraints=constraints, baseline=baseline, baseline_note=note, warm_start=warm,
        transfer_width=width,
    )  # fmt: skip


@dataclass(frozen=True)
class _Plugins:
    """The job's strategy and scheduler, presets expanded; None where the name is unknown."""

    strategy: str
    scheduler: str
    strat: Strategy | None
    sched: Scheduler | None


def _plugins(raw: _JobFile, problems: list[str]) -> _Plugins:
    strategy, scheduler = raw.strategy, raw.scheduler
    if strategy in PRESETS:
        preset_strategy, preset_scheduler = PRESETS[strategy]
        if scheduler not in (None, preset_scheduler):
            problems.append(
                f"scheduler: preset {strategy!r} is {preset_strategy} + {preset_scheduler}; "
                f"it cannot be combined with scheduler {scheduler!r}"
            )
        strategy, scheduler = preset_strategy, preset_scheduler
    scheduler = scheduler or "none"
    strat = sched = None
    try:
        strat = STRATEGIES.get(strategy, "strategy")
    except ConfigError as e:
        problems.extend(e.problems)
    try:
        sched = SCHEDULERS.get(scheduler, "scheduler")
    except ConfigError as e:
        problems.extend(e.problems)
    return _Plugins(strategy, scheduler, strat, sched)


def _objectives(
    raw: _JobFile, data: dict[str, Any], problems: list[str]
) -> tuple[_JobFile, str, str | None, tuple[Objective, ...]]:
    """(raw, metric, mode, objectives): several objectives make a multi-objective search, whose
    first reported one is the metric; else the job's one metric and mode."""
    objectives = parse_objectives(raw.objectives, problems)
    metric = raw.metric
    if objectives:
        if "metric" in data or "mode" in data:
            problems.append("metric/mode: a job with objectives takes its metric from them; remove metric and mode")
        first = next((o for o in objectives if o.kind == REPORTED), None)
        if first is not None:
            metric, raw = first.name, replace(raw, mode=first.mode)
    mode = raw.mode or METRIC_MODES.get(metric)
    if mode is not None and not objectives:
        objectives = (Objective(metric, mode),)
    if mode is None:
        problems.append(
            f"mode: metric {raw.metric!r} has no default direction; set mode: min or max "
            f"(known metrics: {', '.join(METRIC_MODES)})"
        )
    return raw, metric, mode, objectives


def _base_config(raw: _JobFile, data: dict[str, Any], problems: list[str]) -> RunConfig:
    """The fixed settings, epochs set by the budget (a token/step budget: rounds of tokens/steps)."""
    base = RunConfig(task=raw.task, model=raw.model, train=raw.train)
    if "epochs" in (data.get("train") or {}):
        problems.append("train.epochs: set budget.max_epochs instead (the search decides epochs)")
    train = {**to_dict(raw.train), "epochs": raw.budget.max_epochs, **raw.budget.train_overrides()}
    try:
        return load_dataclass(RunConfig, {"task": to_dict(raw.task), "model": to_dict(raw.model), "train": train})
    except ConfigError as e:
        problems.extend(e.problems)
        return base


def _compatibility(plan: _Plugins, space: Space | None, budget: Budget, metric: str,
                   objectives: tuple[Objective, ...]) -> list[str]:  # fmt: skip
    """Strategy rules on the space and the objectives, scheduler rules on the budget."""
    out: list[str] = []
    strategy, scheduler, strat, sched = plan.strategy, plan.scheduler, plan.strat, plan.sched
    multi = len(objectives) > 1
    if strat is not None and space is not None:
        out.extend(strat.check(space))
        if not strat.single_objective and not multi:
            out.append(f"strategy {strategy!r} is multi-objective; this job has one metric ({metric})")
        if multi and not strat.multi_objective:
            multi_ok = ", ".join(n for n in STRATEGIES if STRATEGIES.get(n).multi_objective)
            out.append(
                f"strategy {strategy!r} is single-objective; this job has {len(objectives)} objectives "
                f"({', '.join(o.name for o in objectives)}): use one of {multi_ok}"
            )
    if sched is None:
        return out
    pair = f"scheduler {scheduler!r} with strategy {strategy!r}"
    if multi and not sched.multi_objective and sched.judges:
        out.append(
            f"{pair}: {scheduler} ranks trials on one metric; a job with {len(objectives)} objectives "
            "takes scheduler moasha (or none)"
        )
    if sched.multi_objective and not multi:
        out.append(f"{pair}: {scheduler} ranks several objectives; this job has one ({metric}): use asha")
    if sched.bandit and budget.max_epochs < budget.min_epochs * 3:
        out.append(
            f"{pair}: budget.max_epochs ({budget.max_epochs}) must be >= 3 x budget.min_epochs "
            f"({budget.min_epochs}) so at least one rung can stop a trial" + budget.rounds_note()
        )
    return out


def _parse_sections(data: dict[str, Any], problems: list[str]) -> _JobFile:
    """Each top-level key on its own, so one bad section does not hide the others' problems.
    A section that fails to parse falls back to its default for the checks that follow."""
    values = parse_fields(_JobFile, data, "", problems) or {}
    values.setdefault("name", "search")  # missing or not a string: already reported
    return _JobFile(**values)


def _parse_tracking(value: Any, problems: list[str]) -> TrackingConfig:
    if value is None:
        return TrackingConfig()
    if isinstance(value, str):
        return TrackingConfig(uri=value)
    obj = parse_dataclass(TrackingConfig, value, "tracking", problems)
    return obj or TrackingConfig()
