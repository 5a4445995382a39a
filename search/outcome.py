"""What a trial ends as: its state, its outcome, its quantities, and which trial is the best.

Pure functions and small records only (no Optuna, no MLflow): the driver, the backends, the
results table, the read model, export and the report all rank trials through ``best_of`` and
name states through ``TrialState``, so "the best trial" means the same thing everywhere.

State mapping (docs/mlflow.md): COMPLETE -> Optuna COMPLETE, MLflow FINISHED; PRUNED -> PRUNED,
FINISHED; FAILED -> FAIL, FAILED; INFEASIBLE -> FAIL + user attr ``attntune_state``, FINISHED.
RUNNING and KILLED only ever appear on MLflow runs: a trial in flight, and one whose driver went
down during it (Optuna keeps it RUNNING; ``attntune resume`` reruns it on the same child run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar

from attntune.model.config import RunConfig
from attntune.search.objectives import KNOWN, MEASURED, REPORTED, Constraint, Objective, violations
from attntune.search.pareto import front_indices


class TrialState(str, Enum):
    """A trial's state as attntune records it (the ``attntune.state`` tag, results' ``state``)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    INFEASIBLE = "INFEASIBLE"  # a config over a budget or constraint: never trained
    RUNNING = "RUNNING"
    KILLED = "KILLED"
    PRIOR = "PRIOR"  # a finished trial of an earlier search, seeding the sampler (warm_start.py)

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.INFEASIBLE)


@dataclass
class TrialOutcome:
    """What a trial hands back to the driver, on either backend."""

    state: TrialState  # COMPLETE | PRUNED | FAILED
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    seconds: float = 0.0
    failure_kind: str | None = None
    failure: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)


def failed(
    history: Sequence[Mapping[str, float]], seconds: float, kind: str, reason: str, info: Mapping[str, Any] | None = None,
    epochs_run: int | None = None,
) -> TrialOutcome:
    """The outcome of a trial that failed outside its own code (a dead worker or actor)."""
    hist = [dict(h) for h in history]
    return TrialOutcome(
        TrialState.FAILED,
        hist,
        len(hist) if epochs_run is None else epochs_run,
        seconds,
        failure_kind=kind,
        failure=reason,
        info=dict(info or {}),
    )


@dataclass
class RunningTrial:
    """A trial between ``next_trial`` and ``on_finish``: its live Optuna trial, its config and
    child run, and what the driver has seen of it so far (across retries)."""

    number: int
    trial: Any  # optuna.trial.Trial, kept from ask() so nothing rebuilds it
    trial_id: int
    values: dict[str, Any]
    config: RunConfig
    n_params: int
    run_id: str
    attempt: int = 1
    started: float = field(default_factory=time.time)
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    judged_through: int = 0  # the last epoch a driver-side scheduler judged
    baseline: int | None = None  # the baseline's repeat, for a baseline trial (never stopped early)

    @property
    def seen_epoch(self) -> int:
        return max((int(h["epoch"]) for h in self.history), default=0)



# --------------------------------------------------------------------------- values


def finite(v: Any) -> float | None:
    """``v`` as a float if it is a finite number, else None (MLflow params are strings)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def trial_value(history: Iterable[Mapping[str, float]], metric: str, mode: str) -> tuple[float | None, float | None]:
    """(best, last) of ``metric`` over a trial's epochs; NaN/inf never count as best."""
    vals = [h[metric] for h in history if metric in h]
    if not vals:
        return None, None
    ok = [v for v in vals if math.isfinite(v)]
    best = (min(ok) if mode == "min" else max(ok)) if ok else None
    return best, vals[-1]


def merge_history(*histories: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """One report per epoch, in order; a later report of an epoch (a retry, a resumed pause) wins."""
    by_epoch: dict[int, dict[str, float]] = {}
    for history in histories:
        for h in history:
            by_epoch[int(h["epoch"])] = dict(h)
    return [by_epoch[e] for e in sorted(by_epoch)]


def quantities(
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint],
    history: Sequence[Mapping[str, float]],
    measured: Mapping[str, Any],
    statics: Mapping[str, float],
) -> dict[str, float]:
    """Every objective and constrained quantity of a finished trial: reported metrics at their
    best epoch, static ones from the config, measured ones from the worker; finite values only."""
    names = {o.name: o.mode for o in objectives}
    for c in constraints:
        names.setdefault(c.name, KNOWN[c.name][0])
    out: dict[str, float] = {}
    for name, mode in names.items():
        kind = KNOWN[name][1]
        if kind == REPORTED:
            v: Any = trial_value(history, name, mode)[0]
        elif kind == MEASURED:
            v = measured.get(name)
        else:
            v = statics.get(name)
        f = finite(v)
        if f is not None:
            out[name] = f
    return out


# --------------------------------------------------------------------------- settling a trial


@dataclass(frozen=True)
class Settled:
    """A finished trial as the driver records it: what Optuna is told, the study's user attrs,
    the child run's tags and final metrics. Computed by ``settle`` from the outcome alone."""

    state: TrialState
    values: list[float]  # one per objective; empty unless COMPLETE
    best: float | None
    epochs_run: int
    attrs: dict[str, Any]
    tags: dict[str, Any]
    final_metrics: dict[str, float]
    missed: str | None = None  # the measured constraints a COMPLETE trial missed, if any


def settle(
    outcome: TrialOutcome,
    history: Sequence[Mapping[str, float]],
    *,
    metric: str,
    mode: str,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint],
    statics: Mapping[str, float],
    end_time: float,
) -> Settled:
    """Decide a finished trial's record from its outcome and the history the driver saw.

    A COMPLETE trial without a finite ``metric`` (or objective) becomes FAILED ``no_metric``; one
    that misses a measured constraint (``latency_ms <= 5``) stays COMPLETE with ``feasible=false``
    and is never the best (``best_of``)."""
    state, kind, why = outcome.state, outcome.failure_kind, outcome.failure
    best, last = trial_value(history, metric, mode)
    epochs = outcome.epochs_run
    if history:
        seen = int(history[-1]["epoch"])
        epochs = seen if state == TrialState.PRUNED else max(epochs, seen)
    if state == TrialState.COMPLETE and best is None:
        state, kind, why = TrialState.FAILED, "no_metric", f"the trial reported no finite {metric}"
    values: list[float] = []
    extra: dict[str, Any] = {}
    measured = [c for c in constraints if c.kind != "static"]
    if state == TrialState.COMPLETE:
        q = quantities(objectives, constraints, history, outcome.info, statics)
        missing = [o.name for o in objectives if o.name not in q]
        if missing:
            state, kind, why = TrialState.FAILED, "no_metric", f"the trial has no finite {', '.join(missing)}"
        else:
            values = [q[o.name] for o in objectives]
            if measured:
                v = violations(measured, q)
                extra["constraint_violations"] = v if v is not None else [math.inf] * len(measured)
                extra["feasible"] = v is not None and all(x <= 0 for x in v)
            if "latency_ms" in q:
                extra["latency_ms"] = q["latency_ms"]
            if len(values) > 1:
                extra["objective_values"] = values
    attrs: dict[str, Any] = {
        "epochs_run": epochs,
        "seconds": round(outcome.seconds, 3),
        "best_value": best,
        "last_value": last,
        "attntune_state": state.value,
        "end_time": end_time,
    }
    if outcome.info.get("tokens_per_s") is not None:
        attrs["tokens_per_s"] = outcome.info["tokens_per_s"]
    bleu = trial_value(history, "val_bleu", "max")[0]  # shown by `attntune results` whatever the metric
    if bleu is not None:
        attrs["best_val_bleu"] = bleu
    tags: dict[str, Any] = {"epochs_run": epochs}
    if why:
        attrs["failure"] = tags["failure_reason"] = why
        attrs["failure_kind"] = tags["failure_kind"] = kind
    if state == TrialState.PRUNED:
        attrs["stopped_epoch"] = tags["stopped_epoch"] = epochs
    attrs.update(extra)
    missed = None
    if "feasible" in extra:
        tags["feasible"] = str(extra["feasible"]).lower()
        if not extra["feasible"]:
            missed = "; ".join(str(c) for c, x in zip(measured, extra["constraint_violations"], strict=True) if x > 0)
            tags["infeasible_reason"] = missed
    final = final_metrics(metric, objectives, best, values, extra.get("latency_ms"), bleu)
    return Settled(state, values, best, epochs, attrs, tags, final, missed)


def final_metrics(
    metric: str, objectives: Sequence[Objective], best: float | None, values: Sequence[float],
    latency_ms: float | None, best_bleu: float | None,
) -> dict[str, float]:
    """A finished trial's metrics logged once at its end: ``best_<metric>``, ``best_val_bleu``,
    ``latency_ms`` when measured, and every objective's value (``export --pick`` reads them)."""
    final: dict[str, float] = {"best_val_bleu": best_bleu} if best_bleu is not None else {}
    if best is not None:
        final[f"best_{metric}"] = best
        if latency_ms is not None:
            final["latency_ms"] = latency_ms
        for o, v in zip(objectives, values, strict=False):
            final[o.name if o.kind != REPORTED else f"best_{o.name}"] = v
    return final


# --------------------------------------------------------------------------- the best trial


class Ranked(Protocol):
    """What ``best_of`` needs of a trial record (results rows, MLflow records, export's trials);
    a record whose value needs the metric's name passes ``value=`` instead of having one."""

    @property
    def number(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def feasible(self) -> bool: ...


R = TypeVar("R", bound=Ranked)


def _own_value(t: Any) -> Any:
    return t.value


def ranked(trials: Iterable[R], mode: str, value: Callable[[R], Any] = _own_value) -> list[R]:
    """Trials that can be the best, best first: COMPLETE, with a finite value, meeting every
    constraint checked at their end (``feasible``); ties go to the lower trial number."""
    sign = 1.0 if mode == "min" else -1.0
    keyed = [(finite(value(t)), t) for t in trials if t.state == TrialState.COMPLETE and bool(t.feasible)]
    return [t for v, t in sorted(((v, t) for v, t in keyed if v is not None), key=lambda vt: (sign * vt[0], vt[1].number))]


def best_of(trials: Iterable[R], mode: str, value: Callable[[R], Any] = _own_value) -> R | None:
    """The best trial: the one definition of "best" that the driver, ``results``, ``export``,
    the report and the progress line use."""
    order = ranked(trials, mode, value)
    return order[0] if order else None


def better(a: float, b: float, mode: str) -> bool:
    """Whether value ``a`` beats ``b`` under ``mode``."""
    return a < b if mode == "min" else a > b


T = TypeVar("T")


def pareto_front(trials: Iterable[T], modes: Sequence[str], vector: Callable[[T], Sequence[float] | None]) -> list[T]:
    """The trials on the Pareto front, best first along the first objective: COMPLETE trials
    that met every measured constraint, with a full objective ``vector``, that no other such
    trial dominates (``search.pareto.front_indices``). The one front of ``results``, ``export``,
    the report and the driver's Pareto tags."""
    done = [(t, vector(t)) for t in trials if getattr(t, "state", None) == TrialState.COMPLETE and getattr(t, "feasible", True)]
    done = [(t, v) for t, v in done if v is not None]
    return [done[i][0] for i in front_indices([v for _, v in done], modes)]


# --------------------------------------------------------------------------- the baseline


@dataclass(frozen=True)
class Gain:
    """The best trial against the baseline (the job's ``baseline``: trained first, its repeats
    differing in the training seed). ``gain`` > 0 means better, whatever the mode; ``noise`` is
    the spread of the baseline's repeats (max - min), None with one repeat."""

    baseline: float  # the baseline's value: the mean of its completed repeats
    noise: float | None
    repeats: int
    best_number: int
    best: float
    gain: float

    @property
    def beats(self) -> bool | None:
        """Whether the best beats the baseline by more than the noise (None: no noise estimate)."""
        return None if self.noise is None else self.gain > self.noise

    def line(self, metric: str) -> str:
        """``gain over the baseline: 0.042 val_loss (baseline 2.31, 2 seeds 0.011 apart; best t007 2.268); beyond its noise``."""
        spread = f", {self.repeats} seeds {self.noise:.2g} apart" if self.noise is not None else ", 1 seed"
        if self.gain <= 0:
            head = f"no gain over the baseline: the best is the baseline or no better ({metric})"
        else:
            head = f"gain over the baseline: {self.gain:.4g} {metric}"
        verdict = "" if self.beats is None else ("; beyond its noise" if self.beats else "; within its noise")
        return f"{head} (baseline {self.baseline:.4g}{spread}; best t{self.best_number:03d} {self.best:.4g}){verdict}"


def baseline_gain(trials: Iterable[R], mode: str, baseline: Callable[[R], Any], value: Callable[[R], Any] = _own_value) -> Gain | None:
    """The best trial against the baseline's completed repeats (``baseline(t)`` is a trial's
    repeat number, None for other trials); None without a completed baseline."""
    trials = list(trials)
    repeats = [v for t in trials if baseline(t) is not None for v in [finite(value(t))] if v is not None and t.state == TrialState.COMPLETE]
    best = best_of(trials, mode, value)
    if not repeats or best is None:
        return None
    base = sum(repeats) / len(repeats)
    top = float(finite(value(best)))  # type: ignore[arg-type]
    gain = base - top if mode == "min" else top - base
    noise = max(repeats) - min(repeats) if len(repeats) > 1 else None
    return Gain(base, noise, len(repeats), best.number, top, gain)
