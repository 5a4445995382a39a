"""Replay searches against recorded learning curves (shared by the search benchmarks).

Why replay: comparing strategies honestly needs many seeds, and real searches cost minutes each. A
table of real learning curves over a full cartesian grid (``benchmarks/record_curves.py``) lets the
*real* Optuna samplers and pruners that ``attntune`` uses (``STRATEGIES[...].make_sampler``,
``SCHEDULERS[...].optuna_pruner``) run in an in-memory study where a trial "trains" by reading its
curve epoch by epoch: ``trial.report`` + ``should_prune`` exactly as the search engine does, a
completed trial's value is its best epoch (``engine.trial_value``), and the budget counts epochs.

    from benchmarks.replay import load_curves, replay
    curves = load_curves("benchmarks/data/curves_numbers.csv")
    trace = replay("tpe", "hyperband", curves, budget_epochs=256, seed=0)
    trace.epochs_to_reach(2.0)   # epochs spent until the best completed trial was <= 2.0

CSV format: ``#`` header lines ``key: <json>`` (``task``, ``model``, ``train``, ``space``; the space in
job-file form), then one row per (config, epoch) with a column per searched parameter (dotted name),
``epoch`` and the metric columns.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attntune.spaces.space import Space, parse_space


class CurveError(ValueError):
    """A curve table that cannot be replayed (missing grid points or epochs, bad cells): one line.

    Not attntune's DataError, whose module imports torch; replays must start in well under a second.
    """


COMPLETE, PRUNED, CUT = "COMPLETE", "PRUNED", "CUT"  # CUT: stopped because the budget ran out


def canon(value: Any) -> Any:
    """One hashable form per value, so 0.001 from a sampler and '0.001' from a CSV cell match."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads '1e-05' as a string
            except ValueError:
                return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(f"{float(value):.12g}")
    return str(value)


@dataclass(frozen=True)
class Curves:
    """A recorded table: for every point of ``space``'s grid, one metrics dict per epoch."""

    space: Space
    table: dict[tuple[Any, ...], list[dict[str, float]]]
    max_epochs: int
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def names(self) -> list[str]:
        return self.space.names()

    def key(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(canon(values[n]) for n in self.names)

    def curve(self, values: Mapping[str, Any]) -> list[dict[str, float]]:
        """The per-epoch metrics of one configuration; KeyError names a value off the grid."""
        try:
            return self.table[self.key(values)]
        except KeyError:
            raise KeyError(
                f"{dict(values)} is not a recorded configuration of {self.path or 'the table'}"
            ) from None

    def final_values(self, metric: str = "val_loss", mode: str = "min") -> list[float]:
        """Each configuration's best ``metric`` over all epochs (what a full trial scores)."""
        pick = min if mode == "min" else max
        return [pick(ep[metric] for ep in c if math.isfinite(ep[metric])) for c in self.table.values()]


def _read_meta(lines: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"comments": []}
    for line in lines:
        text = line[1:].strip()
        key, sep, rest = text.partition(": ")
        if sep and key.isidentifier():
            try:
                meta[key] = json.loads(rest)
                continue
            except json.JSONDecodeError:
                pass
        meta["comments"].append(text)
    return meta


def curves_from_rows(
    space: Space, rows: list[Mapping[str, Any]], meta: dict[str, Any] | None = None, path: str = ""
) -> Curves:
    """Build a Curves table from (config values + epoch + metrics) rows; checks the grid is complete."""
    shown = path or "curve table"
    names = space.names()
    grid = space.grid()
    metric_keys: list[str] | None = None
    by_key: dict[tuple[Any, ...], dict[int, dict[str, float]]] = {}
    for i, r in enumerate(rows, 1):
        missing = [n for n in [*names, "epoch"] if n not in r]
        if missing:
            raise CurveError(f"{shown}: row {i} lacks column {missing[0]!r}")
        if metric_keys is None:
            skip = {*names, "epoch", "config", "n_params"}
            metric_keys = [k for k in r if k not in skip]
        key = tuple(canon(r[n]) for n in names)
        metrics = {}
        for k in metric_keys:
            cell = r.get(k)
            if cell is None or cell == "":
                continue
            try:
                metrics[k] = float(cell)
            except (TypeError, ValueError):
                raise CurveError(f"{shown}: row {i}: {k}={cell!r} is not a number") from None
        by_key.setdefault(key, {})[int(canon(r["epoch"]))] = metrics
    expected = {tuple(canon(v) for v in combo) for combo in itertools.product(*(grid[n] for n in names))}
    absent = expected - set(by_key)
    extra = set(by_key) - expected
    if absent:
        example = dict(zip(names, sorted(absent, key=str)[0], strict=True))
        raise CurveError(
            f"{shown}: {len(absent)} of {len(expected)} grid points have no curve (e.g. {example})"
        )
    if extra:
        example = dict(zip(names, sorted(extra, key=str)[0], strict=True))
        raise CurveError(f"{shown}: {len(extra)} rows' configurations are not in the space (e.g. {example})")
    lengths = {len(v) for v in by_key.values()}
    max_epochs = max(lengths)
    table: dict[tuple[Any, ...], list[dict[str, float]]] = {}
    for key, epochs in by_key.items():
        if sorted(epochs) != list(range(1, max_epochs + 1)):
            example = dict(zip(names, key, strict=True))
            raise CurveError(f"{shown}: {example} has epochs {sorted(epochs)}, expected 1..{max_epochs}")
        table[key] = [epochs[e] for e in range(1, max_epochs + 1)]
    return Curves(space, table, max_epochs, meta or {}, path)


def load_curves(path: str | Path) -> Curves:
    """Read a recorded curve CSV (``#`` header lines with the space, then rows)."""
    p = Path(path)
    with p.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    head = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    meta = _read_meta(head)
    if "space" not in meta:
        raise CurveError(f"{p.name}: no '# space: {{...}}' header line")
    space = parse_space(meta["space"], name=p.stem)
    return curves_from_rows(space, list(csv.DictReader(body)), meta, p.name)


# ------------------------------------------------------------------------------------ replay


@dataclass(frozen=True)
class TrialRecord:
    number: int
    values: dict[str, Any]
    state: str  # COMPLETE | PRUNED | CUT
    epochs: int  # epochs this trial consumed
    value: float | None  # best epoch value (COMPLETE only)
    epochs_total: int  # budget consumed when this trial ended


@dataclass
class Trace:
    """What one replayed search did, trial by trial, in order."""

    strategy: str
    scheduler: str
    seed: int
    budget_epochs: int
    mode: str
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def epochs_used(self) -> int:
        return self.trials[-1].epochs_total if self.trials else 0

    @property
    def best(self) -> float | None:
        vals = [t.value for t in self.trials if t.value is not None]
        if not vals:
            return None
        return min(vals) if self.mode == "min" else max(vals)

    def best_after(self, epochs: int) -> float | None:
        """Best completed value among trials that ended within ``epochs`` epochs of budget."""
        vals = [t.value for t in self.trials if t.value is not None and t.epochs_total <= epochs]
        if not vals:
            return None
        return min(vals) if self.mode == "min" else max(vals)

    def epochs_to_reach(self, target: float, tol: float = 1e-9) -> int | None:
        """Budget consumed when a completed trial first scored ``target`` or better (None: never)."""
        for t in self.trials:
            if t.value is None:
                continue
            if (t.value <= target + tol) if self.mode == "min" else (t.value >= target - tol):
                return t.epochs_total
        return None

    def counts(self) -> dict[str, int]:
        out = {COMPLETE: 0, PRUNED: 0, CUT: 0}
        for t in self.trials:
            out[t.state] += 1
        return out


def replay(
    strategy: str,
    scheduler: str,
    curves: Curves,
    budget_epochs: int,
    seed: int,
    *,
    metric: str = "val_loss",
    mode: str = "min",
    n_trials: int | None = None,
    min_epochs: int = 1,
    study_name: str = "replay",
) -> Trace:
    """Run ``strategy`` + ``scheduler`` on ``curves`` until ``budget_epochs`` epochs (or ``n_trials``) are spent.

    ``strategy`` may be a preset (``bohb``) when ``scheduler`` is ``None``. The sampler is told
    ``n_trials`` (default: the budget in full trials, ``budget_epochs // max_epochs``), which sets
    the model-based samplers' random start-up trials the way ``attntune run`` does. Trials run one
    at a time (concurrency 1). The Hyperband pruner assigns brackets by study name and trial
    number, so ``study_name`` must match a real search's job name to reproduce it.
    """
    import optuna

    from attntune.search.job import Budget
    from attntune.search.schedulers import SCHEDULERS
    from attntune.search.strategies import PRESETS, STRATEGIES, SamplerContext

    if scheduler is None:
        strategy, scheduler = PRESETS.get(strategy, (strategy, "none"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    full = curves.max_epochs
    n_ctx = n_trials if n_trials is not None else max(1, budget_epochs // full)
    if strategy == "grid":
        n_ctx = min(n_ctx, curves.space.grid_size())
    with warnings.catch_warnings():  # multivariate TPE's "experimental" notices, once per replay
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        sampler = STRATEGIES.get(strategy).make_sampler(SamplerContext(curves.space, seed, n_ctx, 1))
    pruner = SCHEDULERS.get(scheduler).optuna_pruner(
        Budget(n_trials=n_ctx, max_epochs=full, min_epochs=min_epochs)
    )
    study = optuna.create_study(
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if mode == "min" else "maximize",
    )
    trace = Trace(strategy, scheduler, seed, budget_epochs, mode)
    used = 0
    max_trials = n_trials if n_trials is not None else math.inf
    if strategy == "grid":
        max_trials = min(max_trials, curves.space.grid_size())
    while used < budget_epochs and len(trace.trials) < max_trials:
        trial = study.ask()
        values = curves.space.sample(trial)
        curve = curves.curve(values)
        seen: list[float] = []
        state = COMPLETE
        for epoch, metrics in enumerate(curve, 1):
            if used >= budget_epochs:
                state = CUT
                break
            used += 1
            value = metrics.get(metric, math.nan)
            seen.append(value)
            if not math.isfinite(value):
                continue
            trial.report(value, epoch)
            # As the engine: no pruning decision at the last epoch.
            if epoch < full and trial.should_prune():
                state = PRUNED
                break
        finite = [v for v in seen if math.isfinite(v)]
        best = (min(finite) if mode == "min" else max(finite)) if finite else None
        if state == COMPLETE and best is None:
            state = CUT  # nothing to report; never happens with a complete table
        try:
            if state == COMPLETE:
                study.tell(trial, best)
            elif state == PRUNED:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except RuntimeError:  # GridSampler stops the study once every point was visited
            pass
        trace.trials.append(
            TrialRecord(
                trial.number, dict(values), state, len(seen), best if state == COMPLETE else None, used
            )
        )
    return trace


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
