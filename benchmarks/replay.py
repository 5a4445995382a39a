"""Replay searches against recorded learning curves (shared by the search benchmarks).

Why replay: comparing strategies honestly needs many seeds, and real searches cost minutes each. A
table of real learning curves over a full cartesian grid (``benchmarks/record_curves.py``) lets the
*real* Optuna samplers and pruners that ``attntune`` uses (``STRATEGIES[...].make_sampler``,
``SCHEDULERS[...].optuna_pruner``) run in an in-memory study where a trial "trains" by reading its
curve epoch by epoch: ``trial.report`` + ``should_prune`` exactly as the search driver does, a
completed trial's value is its best epoch (``outcome.trial_value``), and the budget counts epochs.

The scheduler judges a report only when the driver would: ``attntune.search.schedulers.wants_decision``
with the driver's ``(min_epochs, max_epochs, the trial's train.warmup_steps)`` (as
``schedulers.decision_window``) and the report's ``step``, the global optimizer step at the end of
the epoch, so no trial is judged before its learning-rate warmup has ended. The step is the table's
``step`` column where it has one; otherwise epoch x the recorded runs' steps per epoch
(``epoch_steps``: min(training batches, ``train.max_steps_per_epoch``) as ``model.train`` counts them,
the batches counted by building the header's task; 15 on both recorded tables). A table without a
``train`` header (hand-made ones) has no step, and its reports are judged at every epoch from
``min_epochs`` to the last but one, as the driver judges a report without a step.

    from benchmarks.replay import load_curves, replay
    curves = load_curves("benchmarks/data/curves_numbers.csv")
    trace = replay("tpe", "hyperband", curves, budget_epochs=256, seed=0)
    trace.epochs_to_reach(2.0)   # epochs spent until the best completed trial was <= 2.0

Never training the same config twice (``dedupe=True``, the driver's rule, ``search/repeats.py``): a
sampled config equal to a trial that ended COMPLETE or PRUNED (same ``Curves.key``) is answered from
that trial: the same intermediate values are reported to it, then it is told the same result (the
values the original told, or PRUNED), and it reads no epoch of the budget. It is a trial for the
sampler. After ``MAX_CONSECUTIVE_REPEATS`` repeats in a row the space is taken as exhausted and the
search stops sampling. Trials run one at a time, so a repeat of a trial still running (parked by the
driver) never arises here.

CSV format: ``#`` header lines ``key: <json>`` (``task``, ``model``, ``train``, ``space``; the space in
job-file form), then one row per (config, epoch) with a column per searched parameter (dotted name),
``epoch`` and the metric columns.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attntune.search.repeats import MAX_CONSECUTIVE_REPEATS
from attntune.search.schedulers import wants_decision
from attntune.spaces.space import Space, parse_space

REPO = Path(__file__).resolve().parents[1]  # recorded task paths are relative to the repository root
DATA_DIR = REPO / "benchmarks" / "data"


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


# ----------------------------------------------------------------------- scheduler decisions

_EPOCH_STEPS: dict[str, tuple[int | None, str]] = {}


def _train_config(curves: Curves) -> Any:
    from attntune.model.config import ConfigError, TrainConfig, load_dataclass

    try:
        return load_dataclass(TrainConfig, dict(curves.meta.get("train") or {}))
    except ConfigError as e:
        raise CurveError(f"{curves.path}: train header: {e}") from None


def epoch_steps(curves: Curves) -> tuple[int | None, str]:
    """(optimizer steps per epoch of the recorded runs, how that was found), for the ``step`` of a
    report when the table has no ``step`` column; (None, why) when it cannot be known.

    As ``model.train``: min(batches of the training split, ``train.max_steps_per_epoch``), or
    ``train.round_steps``. The batches are counted exactly (``load_task`` + ``batch_indices``, as
    training does; no torch, well under a second); when the task's data cannot be read, from the
    header's pair counts (``n_train``, or ``max_pairs`` minus validation and test), an upper bound
    that ignores the pairs ``max_tokens`` drops.
    """
    meta = curves.meta
    cache_key = json.dumps([curves.path, meta.get("task"), meta.get("train")], sort_keys=True, default=str)
    if cache_key in _EPOCH_STEPS:
        return _EPOCH_STEPS[cache_key]
    if "train" not in meta:
        out: tuple[int | None, str] = (None, "no train header: reports carry no step")
    else:
        train = _train_config(curves)
        if train.round_steps is not None:
            out = (int(train.round_steps), f"train.round_steps {train.round_steps}")
        elif train.round_tokens is not None:
            raise CurveError(
                f"{curves.path}: epochs are rounds of train.round_tokens={train.round_tokens} tokens, "
                "so the step of a report is unknown: record the table with a 'step' column"
            )
        elif "task" not in meta:
            out = (None, "no task header: reports carry no step")
        else:
            n_batches, how = _count_batches(meta["task"], train)
            cap = train.max_steps_per_epoch
            if n_batches is None and cap is None:
                out = (None, f"{how}; reports carry no step")
            else:
                per = min(x for x in (n_batches, cap) if x is not None)
                out = (per, f"min({n_batches} batches ({how}), max_steps_per_epoch {cap})")
    _EPOCH_STEPS[cache_key] = out
    return out


def _count_batches(task: Mapping[str, Any], train: Any) -> tuple[int | None, str]:
    """Training batches per epoch of the recorded task: exact, else the header's upper bound."""
    from attntune.model.config import ConfigError, TaskConfig, load_dataclass

    try:
        cfg = load_dataclass(TaskConfig, dict(task))
    except ConfigError as e:
        raise CurveError(f"task header: {e}") from None
    try:
        from attntune.model.data import DataError, batch_indices, load_task

        data = load_task(cfg, base_dir=REPO)
        return len(batch_indices(data.train, train.batch_size, train.batch_unit)), "counted"
    except (ConfigError, DataError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if train.batch_unit != "sentences":
        return None, f"task not readable ({reason})"
    n_eval = cfg.val_size + cfg.test_size
    total = cfg.max_pairs if cfg.path else cfg.n_train + n_eval
    if cfg.path is None and cfg.max_pairs is not None:
        total = min(total, cfg.max_pairs)
    if total is None:
        return None, f"task not readable ({reason})"
    pairs = total - n_eval
    return -(-pairs // train.batch_size), f"from the header's {pairs} training pairs, task not readable"


def trial_warmup(curves: Curves, values: Mapping[str, Any]) -> int:
    """The trial's ``train.warmup_steps``: its searched value, else the header's fixed setting."""
    if "train.warmup_steps" in values:
        return int(canon(values["train.warmup_steps"]))
    return int(_train_config(curves).warmup_steps)


def decision_epochs(
    curves: Curves, values: Mapping[str, Any], min_epochs: int, judges: bool = True
) -> tuple[int, int, int] | None:
    """``schedulers.decision_window`` for a replayed trial: (min_epochs, the last epoch, the
    trial's warmup steps), None for a scheduler that never stops trials."""
    if not judges:
        return None
    return (min_epochs, curves.max_epochs, trial_warmup(curves, values))


def step_rule(curves: Curves) -> str:
    """How a replayed report's step is found, for the benchmarks' header lines."""
    per_epoch, how = epoch_steps(curves)
    return (
        f"step at the end of epoch e = {'e x ' + str(per_epoch) if per_epoch else 'unknown'} ({how}) unless "
        "the table has a step column"
    )


def curve_tables(given: list[Path] | None) -> list[Path]:
    """The tables to replay: those given, else every recorded one; exits when there are none."""
    paths = list(given or sorted(DATA_DIR.glob("curves_*.csv")))
    if not paths:
        sys.exit(
            f"error: no curve tables in {DATA_DIR.relative_to(REPO)}; record them with benchmarks/record_curves.py"
        )
    return paths


def report(metrics: Mapping[str, float], epoch: int, per_epoch: int | None) -> Mapping[str, float]:
    """An epoch's report as the driver receives it: the recorded metrics, with ``step`` (the global
    optimizer step at the end of the epoch) from the table, else ``epoch x per_epoch``."""
    if "step" in metrics or per_epoch is None:
        return metrics
    return {**metrics, "step": float(epoch * per_epoch)}


# ------------------------------------------------------------------------------------ replay


@dataclass(frozen=True)
class TrialRecord:
    number: int
    values: dict[str, Any]
    state: str  # COMPLETE | PRUNED | CUT
    epochs: int  # epochs this trial consumed
    value: float | None  # best epoch value (COMPLETE only)
    epochs_total: int  # budget consumed when this trial ended
    repeat_of: int | None = None  # answered from this earlier trial (run_trials(dedupe=True)); 0 epochs


def config_id(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """One hashable form of a trial's configuration (its parameter values, as ``canon`` reads them)."""
    return tuple(sorted((k, canon(v)) for k, v in values.items()))


@dataclass
class Trace:
    """What one replayed search did, trial by trial, in order."""

    strategy: str
    scheduler: str
    seed: int
    budget_epochs: int
    mode: str
    trials: list[TrialRecord] = field(default_factory=list)
    exhausted: bool = False  # stopped sampling after MAX_CONSECUTIVE_REPEATS repeats in a row (dedupe)

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

    def repeats(self) -> int:
        """Trials whose configuration equals an earlier trial that ended COMPLETE or PRUNED: those
        ``dedupe`` answers without training (with the rule), or trains again (without it)."""
        seen: set[tuple[tuple[str, Any], ...]] = set()
        n = 0
        for t in self.trials:
            key = config_id(t.values)
            n += key in seen
            if t.state in (COMPLETE, PRUNED):
                seen.add(key)
        return n


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
    warmup_gate: bool = True,
    dedupe: bool = False,
    priors: Sequence[Any] = (),
) -> Trace:
    """Run ``strategy`` + ``scheduler`` on ``curves`` until ``budget_epochs`` epochs (or ``n_trials``) are spent.

    ``strategy`` may be a preset (``bohb``) when ``scheduler`` is ``None``. The sampler is told
    ``n_trials`` (default: the budget in full trials, ``budget_epochs // max_epochs``), which sets
    the model-based samplers' random start-up trials the way ``attntune run`` does. Trials run one
    at a time (concurrency 1). The Hyperband pruner assigns brackets by study name and trial
    number, so ``study_name`` must match a real search's job name to reproduce it. The pruner
    judges a report only when ``schedulers.wants_decision`` lets the driver ask it (module docstring);
    ``warmup_gate=False`` leaves the step out of the reports, i.e. judges during warmup too (the
    replays before the driver had the gate). ``dedupe=True`` answers a repeat of a finished trial
    from it (``run_trials``); ``n_trials`` then counts trained trials, as ``budget.n_trials`` does.
    ``priors`` (``optuna.trial.FrozenTrial``s, e.g. a warm start's) are added to the study before
    the first trial; they are never counted in the budget, the trial count or the trace.
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
    sched = SCHEDULERS.get(scheduler)
    pruner = sched.optuna_pruner(Budget(n_trials=n_ctx, max_epochs=full, min_epochs=min_epochs))
    study = optuna.create_study(
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        direction="minimize" if mode == "min" else "maximize",
    )
    if priors:
        study.add_trials(list(priors))
    trace = Trace(strategy, scheduler, seed, budget_epochs, mode)
    max_trials = n_trials if n_trials is not None else math.inf
    if strategy == "grid":
        max_trials = min(max_trials, curves.space.grid_size())
    return run_trials(
        study, curves, trace, StopRule(), budget_epochs=budget_epochs, metric=metric, min_epochs=min_epochs,
        judges=sched.judges, warmup_gate=warmup_gate, max_trials=max_trials, dedupe=dedupe,
    )  # fmt: skip


class StopRule:
    """The scheduler's side of a replayed trial (``run_trials``). This one is an Optuna pruner, as
    ``Driver.on_report`` uses it: every finite value is reported to the trial, and where
    the driver would ask, ``should_prune`` decides. Other rules (``benchmarks/multiobjective.py``'s
    MO-ASHA) override what they need."""

    def start(self, trial: Any, values: Mapping[str, Any]) -> None:
        """A new trial begins."""

    def value(self, trial: Any, epoch: int, value: float) -> None:
        """Every finite value the trial reports."""
        trial.report(value, epoch)

    def stop(self, trial: Any, epoch: int, value: float) -> bool:
        """Asked only where ``wants_decision`` holds (the driver's rule); True stops the trial."""
        return bool(trial.should_prune())

    def told(self, values: Mapping[str, Any], best: float) -> float | list[float]:
        """What a completed trial tells the study."""
        return best


@dataclass(frozen=True)
class _Finished:
    """What a repeat of a finished trial is answered with (``run_trials(dedupe=True)``)."""

    number: int
    state: str  # COMPLETE | PRUNED
    reported: tuple[tuple[int, float], ...]  # (epoch, value) as the original gave them to ``rule.value``
    told: Any  # what the original told the study when COMPLETE (``rule.told``)
    value: float | None


def run_trials(
    study: Any,
    curves: Curves,
    trace: Trace,
    rule: StopRule,
    *,
    budget_epochs: int,
    metric: str,
    min_epochs: int,
    judges: bool,
    warmup_gate: bool,
    max_trials: float = math.inf,
    dedupe: bool = False,
) -> Trace:
    """Ask ``study`` for trials one at a time and "train" each by reading its curve, until
    ``budget_epochs`` epochs (or ``max_trials`` trials) are spent; ``rule`` decides stops. A trial
    cut by the end of the budget is told FAIL, a stopped one PRUNED.

    ``dedupe``: the driver's rule (``search/repeats.py``, ``Driver.place`` / ``Driver.answer``). A
    sample whose ``curves.key`` equals a trial that ended COMPLETE or PRUNED is answered from it:
    every value the original reported is reported again (``rule.value``, so a pruner sees the same
    statistics), then it is told the original's result (``rule.told``'s values, or PRUNED). It reads
    no epoch, is recorded with ``repeat_of`` and ``epochs=0``, and does not count towards
    ``max_trials`` (trained trials, as ``budget.n_trials``). ``MAX_CONSECUTIVE_REPEATS`` repeats in a
    row end the search (the space looks exhausted), as in the driver.
    """
    import optuna

    per_epoch = epoch_steps(curves)[0] if warmup_gate else None
    used = trained = streak = 0
    finished: dict[tuple[Any, ...], _Finished] = {}

    def tell(trial: Any, state: str, told: Any) -> None:
        try:
            if state == COMPLETE:
                study.tell(trial, told)
            elif state == PRUNED:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except RuntimeError:  # GridSampler stops the study once every point was visited
            pass

    while used < budget_epochs and trained < max_trials:
        trial = study.ask()
        values = curves.space.sample(trial)
        key = curves.key(values)
        twin = finished.get(key) if dedupe else None
        if twin is not None:  # answered from the finished trial: nothing is read, no budget spent
            for epoch, value in twin.reported:
                rule.value(trial, epoch, value)
            tell(trial, twin.state, twin.told)
            trace.trials.append(
                TrialRecord(
                    trial.number, dict(values), twin.state, 0, twin.value, used, repeat_of=twin.number
                )
            )
            streak += 1
            if streak >= MAX_CONSECUTIVE_REPEATS:
                trace.exhausted = True  # the sampler only repeats itself: the space looks exhausted
                break
            continue
        streak = 0
        trained += 1
        curve = curves.curve(values)
        decide = decision_epochs(curves, values, min_epochs, judges)
        rule.start(trial, values)
        seen: list[float] = []
        reported: list[tuple[int, float]] = []
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
            rule.value(trial, epoch, value)
            reported.append((epoch, value))
            # As the driver (Driver.on_report): the scheduler is asked only when
            # wants_decision holds: min_epochs <= epoch < the last epoch, and the warmup has ended.
            shown = report(metrics, epoch, per_epoch) if warmup_gate else None
            if wants_decision(decide, epoch, shown) and rule.stop(trial, epoch, value):
                state = PRUNED
                break
        finite = [v for v in seen if math.isfinite(v)]
        best = (min(finite) if trace.mode == "min" else max(finite)) if finite else None
        if state == COMPLETE and best is None:
            state = CUT  # nothing to report; never happens with a complete table
        told = rule.told(values, best) if state == COMPLETE else None
        tell(trial, state, told)
        value = best if state == COMPLETE else None
        if state in (COMPLETE, PRUNED):
            finished.setdefault(key, _Finished(trial.number, state, tuple(reported), told, value))
        trace.trials.append(TrialRecord(trial.number, dict(values), state, len(seen), value, used))
    return trace


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
