"""Multi-objective search (quality vs size), replayed on recorded learning curves.

Objectives: ``val_loss`` (min; a completed trial scores its best epoch) and ``n_params`` (min; known
before training). Three searches are replayed against the tables in ``benchmarks/data`` with the real
Optuna samplers attntune uses (``STRATEGIES[...].make_sampler``, told ``n_objectives=2``) in an
in-memory study with ``directions=["minimize", "minimize"]``, one trial at a time, the budget
counted in epochs read (as ``benchmarks/replay.py`` does for one objective):

- ``nsga2+mo-asha``: NSGA-II plus attntune's MO-ASHA rule (scheduler ``moasha``:
  ``search/pareto.py``'s ``mo_asha_continues`` as the driver applies it, ``schedulers.moasha_stops``): at
  each rung (``min_epochs`` 1 x 3^k below ``max_epochs``, the successive halving rungs of
  ``search/schedulers.py``), the point (val_loss it was settled with, n_params) of every trial settled
  at the rung so far, in arrival order, is ranked; the trial goes on if it is on the rung's first
  front or among the best ``max(1, n // 3)`` by NSGA-II selection order, otherwise it stops and is
  told to Optuna as ``PRUNED`` (a non-finite val_loss is not judged). A trial is judged only where
  the driver judges it: ``attntune.search.schedulers.wants_decision`` with ``(min_epochs, max_epochs, the
  trial's train.warmup_steps)`` and the report's ``step`` (``benchmarks/replay.py``: the table's
  ``step`` column, else epoch x the recorded steps per epoch, 15 on both tables), so never before its
  learning-rate warmup has ended. Its first judged report settles every rung it has passed since its
  last one, with its val_loss then (the driver's ``schedulers.moasha_due``; Optuna's successive halving
  does the same), so a value from warmup ranks no one;
- ``nsga2``: NSGA-II, every trial trained to the last epoch;
- ``random``: random sampling, every trial trained to the last epoch.

Metric: the hypervolume of the completed trials' (val_loss, n_params / max n_params on the grid)
front, with the reference point (1.1 x the grid's worst final val_loss, 1.1), as a function of the
epochs spent. The ceiling is the hypervolume of the whole grid (every configuration's final values).
Medians over seeds are plain medians (the mean of the two middle values for an even count). The key
figure: the fraction of the budget at which nsga2+mo-asha's median hypervolume first reaches
nsga2's median hypervolume at the full budget (target: <= 1/2).

Every table is replayed twice, side by side (issue 16): *without* the repeat rule (a config sampled
again is trained again: the figures recorded before the rule) and *with* it (the driver's "never
train the same config twice", ``search/repeats.py``: a sample equal to a COMPLETE or PRUNED trial is
answered from it, told the values the original told or PRUNED, and reads no epoch;
``run_trials(dedupe=True)``; a repeat does not rank at MO-ASHA's rungs, as the driver copies no
``rungs`` attribute to it). Each block has its own key line; ``repeats`` is the median number of
trials per search whose config equals an earlier finished trial's. ``--rule off`` / ``--rule on``
replays one block only.

    python benchmarks/multiobjective.py                          # both tables, 20 seeds, 2 processes
    python benchmarks/multiobjective.py --quick                  # 4 seeds, a smoke test
    python benchmarks/multiobjective.py --curves benchmarks/data/curves_numbers.csv --budget-epochs 128
    python benchmarks/multiobjective.py --no-warmup-gate         # judge during warmup too (the old replay)
    python benchmarks/multiobjective.py --rule off               # without the repeat rule only

Sizes come from the tables' ``n_params`` column (``benchmarks/record_curves.py`` writes one). A table
without it gets them computed from the configurations with ``attntune.model.cost.n_params``,
after building the table's task once for its vocabulary sizes (on both recorded tables this gives
exactly the recorded column).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/multiobjective.py` from anywhere
    sys.path.insert(0, str(REPO))

from attntune.search.pareto import hypervolume_2d, pareto_mask  # noqa: E402
from attntune.search.repeats import MAX_CONSECUTIVE_REPEATS  # noqa: E402
from attntune.search.schedulers import moasha_due, moasha_stops  # noqa: E402
from benchmarks.replay import (  # noqa: E402
    COMPLETE,
    PRUNED,
    CurveError,
    Curves,
    StopRule,
    Trace,
    curve_tables,
    load_curves,
    median,
    run_trials,
    step_rule,
)

METRIC = "val_loss"
# (label, strategy, MO-ASHA early stopping)
METHODS: list[tuple[str, str, bool]] = [
    ("nsga2+mo-asha", "nsga2", True),
    ("nsga2", "nsga2", False),
    ("random", "random", False),
]
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
TARGET = 0.5  # nsga2+mo-asha should reach nsga2's final median hypervolume within half the budget
REF_MARGIN = 1.1

Key = tuple[Any, ...]


# ------------------------------------------------------------------------------------ sizes


def _computed_sizes(curves: Curves) -> dict[Key, int]:
    """n_params of every grid point from its configuration (tables recorded without the column)."""
    import itertools

    from attntune.model.config import RunConfig, load_dataclass
    from attntune.model.cost import n_params
    from attntune.model.data import load_task
    from attntune.spaces.space import make_config

    meta = curves.meta
    if not all(k in meta for k in ("task", "model", "train")):
        raise CurveError(f"{curves.path}: no n_params column and no task/model/train header to compute it")
    task = dict(meta["task"])
    if task.get("path"):
        task["path"] = str((REPO / task["path"]).resolve())
    base = load_dataclass(RunConfig, {"task": task, "model": meta["model"], "train": meta["train"]})
    data = load_task(base.task)  # only for the vocabulary sizes
    grid = curves.space.grid()
    out: dict[Key, int] = {}
    for combo in itertools.product(*(grid[n] for n in curves.names)):
        values = dict(zip(curves.names, combo, strict=True))
        cfg = make_config(base, values)
        out[curves.key(values)] = n_params(cfg.model, data.src_vocab_size, data.tgt_vocab_size)
    return out


def load_sizes(path: str | Path, curves: Curves) -> dict[Key, int]:
    """n_params of every configuration: the table's ``n_params`` column, else computed."""
    with Path(path).open(encoding="utf-8") as f:
        body = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    rows = list(csv.DictReader(body))
    if not rows or "n_params" not in rows[0]:
        return _computed_sizes(curves)
    out: dict[Key, int] = {}
    for r in rows:
        key, size = curves.key(r), int(float(r["n_params"]))
        if out.setdefault(key, size) != size:
            raise CurveError(
                f"{Path(path).name}: {dict(zip(curves.names, key, strict=True))} has two n_params"
            )
    return out


# ------------------------------------------------------------------------------------ replay


def mo_replay(
    strategy: str,
    early_stop: bool,
    curves: Curves,
    sizes: dict[Key, int],
    budget_epochs: int,
    seed: int,
    *,
    min_epochs: int = 1,
    warmup_gate: bool = True,
    dedupe: bool = False,
) -> Trace:
    """One multi-objective search on ``curves`` until ``budget_epochs`` epochs are spent.

    A completed trial's ``value`` is its best val_loss; its size is ``sizes[curves.key(values)]``.
    ``warmup_gate=False`` judges trials during their warmup too (the replay before the driver had the
    gate). ``dedupe=True`` answers a repeat of a finished trial from it (``run_trials``).
    """
    import optuna

    from attntune.search.job import Budget
    from attntune.search.schedulers import SCHEDULERS
    from attntune.search.strategies import STRATEGIES, SamplerContext

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    full = curves.max_epochs
    n_ctx = max(1, budget_epochs // full)  # as replay(): the budget in full trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        sampler = STRATEGIES.get(strategy).make_sampler(
            SamplerContext(curves.space, seed, n_ctx, 1, n_objectives=2)
        )
    study = optuna.create_study(sampler=sampler, directions=["minimize", "minimize"])
    moasha = SCHEDULERS.get("moasha")
    rungs = moasha.rungs(Budget(n_trials=n_ctx, max_epochs=full, min_epochs=min_epochs)) if early_stop else []
    trace = Trace(strategy, "mo-asha" if early_stop else "none", seed, budget_epochs, "min")
    return run_trials(
        study, curves, trace, MoAsha(rungs, curves, sizes), budget_epochs=budget_epochs, metric=METRIC,
        min_epochs=min_epochs, judges=early_stop and moasha.judges, warmup_gate=warmup_gate, dedupe=dedupe,
    )  # fmt: skip


class MoAsha(StopRule):
    """attntune's MO-ASHA, the driver's rule (``schedulers.moasha_due`` / ``moasha_stops``): a
    judged report settles every rung passed since the trial's last judged one, with its value
    then; at each, the points (settled value, n_params) of every trial settled there so far are
    ranked, and the trial goes on if ``mo_asha_continues``. A completed trial tells (best
    val_loss, n_params)."""

    def __init__(self, rungs: Sequence[int], curves: Curves, sizes: dict[Key, int]) -> None:
        self.rungs = list(rungs)
        self.settled: dict[int, list[tuple[int, tuple[float, float]]]] = {r: [] for r in rungs}
        self.curves, self.sizes = curves, sizes
        self.size, self.judged_through = 0.0, 0

    def start(self, trial: Any, values: Any) -> None:
        self.size = float(self.sizes[self.curves.key(values)])
        self.judged_through = 0

    def value(self, trial: Any, epoch: int, value: float) -> None:
        """Nothing: a rung ranks settled values only (a value from warmup ranks no one)."""

    def stop(self, trial: Any, epoch: int, value: float) -> bool:
        due = moasha_due(self.rungs, self.judged_through, epoch)
        self.judged_through = epoch
        stop = moasha_stops(due, trial.number, (value, self.size), lambda rung: self.settled[rung])
        for rung in due:
            self.settled[rung].append((trial.number, (value, self.size)))
        return stop

    def told(self, values: Any, best: float) -> list[float]:
        return [best, self.size]


# ------------------------------------------------------------------------------- hypervolume


class Scale:
    """The normalisation: n_params / max n_params on the grid; reference (1.1 x worst val_loss, 1.1)."""

    def __init__(self, curves: Curves, sizes: dict[Key, int]) -> None:
        self.size_max = float(max(sizes.values()))
        finals = curves.final_values(METRIC, "min")
        self.reference = (REF_MARGIN * max(finals), REF_MARGIN)
        keys = list(curves.table)
        self.grid_points = [(f, sizes[k]) for f, k in zip(finals, keys, strict=True)]
        self.front_keys = {k for k, on in zip(keys, pareto_mask(self.grid_points), strict=True) if on}
        self.ceiling = self.hv(self.grid_points)

    def hv(self, points: Sequence[tuple[float, float]]) -> float:
        return hypervolume_2d([(loss, size / self.size_max) for loss, size in points], self.reference)


def hv_steps(
    trace: Trace, curves: Curves, sizes: dict[Key, int], scale: Scale
) -> tuple[list[int], list[float]]:
    """(epochs spent, hypervolume) after each completed trial: a step function of the budget."""
    at, hv, points = [], [], []
    for t in trace.trials:
        if t.state == COMPLETE and t.value is not None:
            points.append((t.value, sizes[curves.key(t.values)]))
            at.append(t.epochs_total)
            hv.append(scale.hv(points))
    return at, hv


def hv_at(steps: tuple[list[int], list[float]], epochs: int) -> float:
    at, hv = steps
    i = bisect.bisect_right(at, epochs)
    return hv[i - 1] if i else 0.0


# ------------------------------------------------------------------------------------ real run


def real_check(path: Path, args: argparse.Namespace) -> None:
    """Two real searches on the table's task and grid (optuna backend, concurrency 1, seed 0):
    nsga2 + moasha and nsga2 alone, the same number of trials. Prints each one's epochs and final
    hypervolume (same normalisation as the replay) next to the replay's median at those epochs,
    so replay and reality can be compared. The replays apply the repeat rule, as the engine does."""
    import subprocess
    import tempfile

    import yaml

    from attntune.search.study_store import load_study

    curves, sizes = _table(str(path))
    scale = Scale(curves, sizes)
    meta = curves.meta
    task = dict(meta["task"])
    if task.get("path"):
        task["path"] = str((REPO / task["path"]).resolve())  # only in the temporary job file
    train = {k: v for k, v in meta["train"].items() if k != "epochs"}
    for label, scheduler in (("nsga2+mo-asha", "moasha"), ("nsga2", "none")):
        job = {
            "name": f"mo-real-{scheduler}",
            "task": task,
            "space": meta["space"],
            "strategy": "nsga2",
            "scheduler": scheduler,
            "objectives": {METRIC: "min", "n_params": "min"},
            "budget": {"n_trials": args.real_trials, "max_epochs": curves.max_epochs, "min_epochs": 1},
            "concurrency": 1,
            "seed": 0,
            "model": meta["model"],
            "train": train,
        }
        with tempfile.TemporaryDirectory(prefix="attntune-mo-") as tmp:
            folder = Path(tmp)
            (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", "from attntune.search.cli import main; main()", "run", "job.yaml",
                 "--output", "out", "--tracking-uri", "sqlite:///mlflow.db", "--quiet", "--no-report"],
                cwd=folder, env=env, capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"real {label} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                continue
            study = load_study(folder / "out")
            done = [t for t in study.trials if t.state.name == "COMPLETE" and t.values]
            epochs = sum(int(t.user_attrs.get("epochs_run") or 0) for t in study.trials)
            pruned = sum(1 for t in study.trials if t.state.name == "PRUNED")
            real_hv = scale.hv([(t.values[0], t.values[1]) for t in done])
            replays = [
                mo_replay("nsga2", scheduler == "moasha", curves, sizes, epochs, seed,
                          warmup_gate=not args.no_warmup_gate, dedupe=True)  # fmt: skip
                for seed in range(args.seeds)
            ]
            replay_hv = median([hv_at(hv_steps(tr, curves, sizes, scale), epochs) for tr in replays])
            print(
                f"real {label:14s} {len(study.trials)} trials, {pruned} stopped, {epochs} epochs, {wall:.0f} s: "
                f"hypervolume {real_hv:.4f} ({real_hv / scale.ceiling:.1%} of the ceiling); "
                f"replay median at {epochs} epochs {replay_hv:.4f}"
            )


# ------------------------------------------------------------------------------------ driver

_CACHE: dict[str, tuple[Curves, dict[Key, int]]] = {}


def _table(path: str) -> tuple[Curves, dict[Key, int]]:
    if path not in _CACHE:
        curves = load_curves(path)
        _CACHE[path] = (curves, load_sizes(path, curves))
    return _CACHE[path]


def _one(job: tuple[str, str, str, bool, int, int, bool, str]) -> tuple[str, str, int, Trace, float]:
    path, label, strategy, early_stop, budget, seed, gate, rule = job
    curves, sizes = _table(path)
    t0 = time.perf_counter()
    trace = mo_replay(strategy, early_stop, curves, sizes, budget, seed, warmup_gate=gate, dedupe=rule == "on")
    return rule, label, seed, trace, time.perf_counter() - t0


def _frac(x: float) -> str:
    return "> 1" if not math.isfinite(x) else f"{x:.3f}"


RULES = {
    "off": "without the repeat rule: a config sampled again is trained again (as recorded before)",
    "on": "with the repeat rule: a repeat of a COMPLETE or PRUNED trial is answered from it, 0 epochs",
}


def benchmark(path: Path, args: argparse.Namespace, pool: ProcessPoolExecutor | None) -> dict[str, float]:
    """Replay every method on one table, without and with the repeat rule, and print the figures;
    returns rule -> the key fraction."""
    curves, sizes = _table(str(path))
    scale = Scale(curves, sizes)
    budget = args.budget_epochs or max(1, len(curves.table) // 2) * curves.max_epochs
    seeds = list(range(args.seeds))
    gate = not args.no_warmup_gate
    rules = ["off", "on"] if args.rule == "both" else [args.rule]
    jobs = [
        (str(path), label, s, stop, budget, seed, gate, rule)
        for rule in rules
        for label, s, stop in METHODS
        for seed in seeds
    ]
    t0 = time.perf_counter()
    results = list(pool.map(_one, jobs, chunksize=2)) if pool else [_one(j) for j in jobs]
    wall = time.perf_counter() - t0
    traces: dict[tuple[str, str], list[Trace]] = {}
    cpu: dict[tuple[str, str], float] = {}
    for rule, label, _seed, trace, seconds in sorted(results, key=lambda r: (r[0], r[1], r[2])):
        traces.setdefault((rule, label), []).append(trace)
        cpu[(rule, label)] = cpu.get((rule, label), 0.0) + seconds
    steps = {key: [hv_steps(t, curves, sizes, scale) for t in runs] for key, runs in traces.items()}

    def med_hv(key: tuple[str, str], epochs: int) -> float:
        return median([hv_at(s, epochs) for s in steps[key]])

    def first_reach(key: tuple[str, str], target: float) -> float:
        reach = next((e for e in range(1, budget + 1) if med_hv(key, e) >= target - 1e-12), None)
        return reach / budget if reach is not None else math.inf

    n_sizes = len(set(sizes.values()))
    print(
        f"\n== {path.name}: {len(curves.table)} configs x {curves.max_epochs} epochs, "
        f"{n_sizes} distinct n_params ({min(sizes.values())}..{max(sizes.values())}), "
        f"true front {len(scale.front_keys)} configs"
    )
    print(
        f"budget {budget} epochs (= {budget // curves.max_epochs} full trials), {len(seeds)} seeds; "
        f"replays took {wall:.1f}s wall ({' and '.join(rules)}: rule {args.rule})"
    )
    if gate:
        print(
            f"MO-ASHA judges a trial only once its warmup has ended (schedulers.wants_decision): {step_rule(curves)}"
        )
    else:
        print("no warmup gate (--no-warmup-gate): MO-ASHA also judges trials still warming up")
    print(
        f"hypervolume of (val_loss, n_params / {int(scale.size_max)}), reference "
        f"({scale.reference[0]:.4f} = {REF_MARGIN} x worst final val_loss, {REF_MARGIN}); "
        f"ceiling (whole grid's front) {scale.ceiling:.4f}"
    )
    cols = "".join(f"{'hv@' + format(f, 'g'):>9}" for f in FRACTIONS)
    header = (
        f"{'method':<14}{cols} {'of ceil':>8} {'front found':>11} {'trials':>7} {'pruned':>7} {'cpu s':>6}"
        f" {'repeats':>7}"
    )
    out: dict[str, float] = {}
    old_target: float | None = None
    for rule in rules:
        print(f"\n-- {RULES[rule]}")
        print(f"medians over {len(seeds)} seeds (hv@f: hypervolume after f x the budget; front found: true-front")
        print("configurations among the completed trials; repeats: trials repeating a finished trial's config)")
        print(header)
        print("-" * len(header))
        for label, _, _ in METHODS:
            runs = traces[(rule, label)]
            hvs = "".join(f"{med_hv((rule, label), max(1, round(f * budget))):>9.4f}" for f in FRACTIONS)
            final = med_hv((rule, label), budget)
            found = median(
                [
                    float(len({curves.key(t.values) for t in r.trials if t.state == COMPLETE} & scale.front_keys))
                    for r in runs
                ]
            )
            n_trials = median([float(len(r.trials)) for r in runs])
            n_pruned = median([float(r.counts()[PRUNED]) for r in runs])
            n_repeats = median([float(r.repeats()) for r in runs])
            print(
                f"{label:<14}{hvs} {final / scale.ceiling:>8.1%} {found:>7.1f}/{len(scale.front_keys):<3} "
                f"{n_trials:>7.0f} {n_pruned:>7.0f} {cpu[(rule, label)]:>6.1f} {n_repeats:>7.1f}"
            )
        exhausted = [
            f"{label} {sum(t.exhausted for t in traces[(rule, label)])}/{len(seeds)}"
            for label, _, _ in METHODS
            if any(t.exhausted for t in traces[(rule, label)])
        ]
        if exhausted:
            print(
                f"stopped sampling before the budget was spent ({MAX_CONSECUTIVE_REPEATS} repeats in a row: the "
                f"space looks exhausted): {', '.join(exhausted)}"
            )
        target = med_hv((rule, "nsga2"), budget)
        key_frac = first_reach((rule, "nsga2+mo-asha"), target)
        per_seed = [
            next((a for a, h in zip(*s, strict=True) if h >= target - 1e-12), None)
            for s in steps[(rule, "nsga2+mo-asha")]
        ]
        hit = sum(a is not None for a in per_seed)
        ok = key_frac <= TARGET
        print(
            f"nsga2+mo-asha's median hypervolume first reaches nsga2's final median ({target:.4f}) at "
            f"{_frac(key_frac)} of the budget (single seeds reaching it within the budget: {hit}/{len(per_seed)}); "
            f"target <= {TARGET:g}: {'met' if ok else 'MISSED'}"
        )
        if rule == "on" and old_target is not None:
            print(
                f"against the without-rule nsga2's final median ({old_target:.4f}): nsga2+mo-asha reaches it at "
                f"{_frac(first_reach((rule, 'nsga2+mo-asha'), old_target))} of the budget, nsga2 at "
                f"{_frac(first_reach((rule, 'nsga2'), old_target))}, random at "
                f"{_frac(first_reach((rule, 'random'), old_target))}"
            )
        out[rule] = key_frac
        old_target = target
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--curves",
        type=Path,
        nargs="*",
        default=None,
        help="curve CSVs (default: benchmarks/data/curves_*.csv)",
    )
    p.add_argument("--seeds", type=int, default=20, help="seeds per method (default 20)")
    p.add_argument(
        "--budget-epochs",
        type=int,
        default=None,
        help="budget in epochs per search (default: half the grid in full trials, 256 for 64 configs x 8)",
    )
    p.add_argument("--jobs", type=int, default=2, help="replay processes (default 2)")
    p.add_argument("--quick", action="store_true", help="4 seeds: a smoke test")
    p.add_argument(
        "--real",
        action="store_true",
        help="also run two real searches (nsga2+moasha, nsga2) on the first table's task and compare with the replay",
    )
    p.add_argument("--real-trials", type=int, default=16, help="trials per real search (default 16)")
    p.add_argument(
        "--rule",
        choices=["both", "off", "on"],
        default="both",
        help="the repeat rule (never train the same config twice): both blocks side by side (default), "
        "without it only, or with it only",
    )
    p.add_argument(
        "--no-warmup-gate",
        action="store_true",
        help="let MO-ASHA judge trials still in their warmup (the driver never does; for comparison)",
    )
    args = p.parse_args()
    if args.quick:
        args.seeds = min(args.seeds, 4)
    if args.seeds < 1 or (args.budget_epochs is not None and args.budget_epochs < 1):
        print("error: --seeds and --budget-epochs must be >= 1", file=sys.stderr)
        sys.exit(2)
    paths = curve_tables(args.curves)
    try:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                for path in paths:
                    benchmark(path, args, pool)
        else:
            for path in paths:
                benchmark(path, args, None)
        if args.real:
            print(f"\n== real check on {paths[0].name}'s task and grid (optuna backend, concurrency 1, seed 0)")
            real_check(paths[0], args)
    except (CurveError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
