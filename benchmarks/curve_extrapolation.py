"""Stop trials by where their curves are going? Learning-curve extrapolation against ASHA, by replay.

Issue 15 asks whether a scheduler that ranks trials by an *extrapolated* final value beats one that
ranks them by their current value (ASHA), since early epochs lie (the recorded winners use warm-up
and rank 23rd of 64 at epoch 1). This script replays both on the recorded learning-curve tables
(``benchmarks/data``, ``benchmarks/replay.py``) with the real TPE sampler and the engine's rules
(the warm-up gate, the repeat rule), over many seeds, and prints side by side:

- ``tpe+asha``: Optuna's ``SuccessiveHalvingPruner`` (what ``scheduler: asha`` runs);
- ``tpe+lce-<fit>``: the same successive halving (rungs ``min_epochs x 3^k``, keep the best third at
  each rung, a rung passed during warm-up settled at the first judged report, as ``moasha_due``), but
  each trial is ranked by its *predicted* value at ``max_epochs``: a power law
  ``y(t) = a + b t^-c`` fitted by least squares to every value it has reported so far, the best
  residual over a grid of exponents ``c``, never above its best value so far (``predict_final``).
  ``pow``: c in {0.5, 1, 1.5, 2, 3}; ``fast``: c in {1, 2, 3} (curves assumed to flatten sooner,
  so less optimistic about slow starters). With a single point the prediction is the value itself;
- ``bohb``, ``tpe`` and ``random`` for reference; ``tpe+lce-last`` (the same loop ranking current
  values) is ASHA again, printed as a check on the loop: it must equal ``tpe+asha``.

For each: the fraction of the budget a majority of seeds need to reach random search's final best
(as ``search_efficiency.py``), how many seeds reach it, the fraction to reach the table's best
configuration, and the best value at the full budget (the value a majority reach, and the mean).

    .venv/bin/python benchmarks/curve_extrapolation.py                       # every table, 21 seeds
    .venv/bin/python benchmarks/curve_extrapolation.py --budget-trials 24 --data benchmarks/data/curves_tatoeba_sizes.csv

Not an engine scheduler: it did not beat ASHA on the Tatoeba tables (docs/BENCHMARKS.md "Learning-curve
extrapolation"), so ``attntune`` does not offer it. Data: the Tatoeba tables are derived from Tatoeba
(tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/curve_extrapolation.py` from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from attntune.search.job import Budget  # noqa: E402
from attntune.search.schedulers import REDUCTION_FACTOR, moasha_due, sha_rungs  # noqa: E402
from attntune.search.strategies import STRATEGIES, SamplerContext  # noqa: E402
from benchmarks.replay import (  # noqa: E402
    CurveError,
    Curves,
    StopRule,
    Trace,
    curve_tables,
    load_curves,
    replay,
    run_trials,
)
from benchmarks.search_efficiency import majority, rank_of  # noqa: E402

EXPONENTS = {"pow": (0.5, 1.0, 1.5, 2.0, 3.0), "fast": (1.0, 2.0, 3.0), "last": ()}
REFERENCE = [
    ("random", "random", "none"),
    ("tpe", "tpe", "none"),
    ("bohb", "tpe", "hyperband"),
    ("tpe+asha", "tpe", "asha"),
]


def predict_final(points: Sequence[tuple[int, float]], horizon: int, exponents: Sequence[float]) -> float:
    """A trial's predicted value (minimised) at epoch ``horizon`` from its ``(epoch, value)`` reports:
    ``a + b * horizon^-c`` for the exponent ``c`` whose least-squares fit has the smallest residual,
    never above the best value so far (a trial's result is its best epoch). A rising fit (b < 0)
    predicts no change. No exponents: the latest value (what ASHA ranks); fewer than two points:
    the value itself."""
    finite = [(float(e), float(v)) for e, v in points if math.isfinite(v)]
    best = min(v for _, v in finite)
    if not exponents:
        return finite[-1][1]
    if len(finite) < 2:
        return best
    t = np.array([e for e, _ in finite])
    y = np.array([v for _, v in finite])
    fit: tuple[float, float] | None = None  # (residual, prediction)
    for c in exponents:
        x = t**-c
        (a, b), *_ = np.linalg.lstsq(np.vstack([np.ones_like(x), x]).T, y, rcond=None)
        if b < 0:
            a, b = y[-1], 0.0
        residual = float(((a + b * x - y) ** 2).sum())
        if fit is None or residual < fit[0]:
            fit = (residual, float(a + b * horizon**-c))
    assert fit is not None
    return min(best, fit[1])


class Extrapolating(StopRule):
    """Successive halving on predicted final values (module docstring): at each rung a judged
    report settles, the trial continues only if its prediction is among the best third of the
    predictions settled there (itself included). As Optuna's ``SuccessiveHalvingPruner``: with
    fewer than 3 settled, only the best continues; a trial stopped at a rung settles no rung above."""

    def __init__(self, rungs: Sequence[int], horizon: int, exponents: Sequence[float]):
        self.rungs, self.horizon, self.exponents = list(rungs), horizon, tuple(exponents)
        self.settled: dict[int, list[float]] = {r: [] for r in rungs}
        self.points: list[tuple[int, float]] = []  # the running trial's reports (one trial at a time)
        self.judged_through = 0

    def start(self, trial: Any, values: Mapping[str, Any]) -> None:
        self.points, self.judged_through = [], 0

    def value(self, trial: Any, epoch: int, value: float) -> None:
        trial.report(value, epoch)
        self.points.append((epoch, value))  # a repeat's too: never judged, reset by the next start()

    def stop(self, trial: Any, epoch: int, value: float) -> bool:
        due = moasha_due(self.rungs, self.judged_through, epoch)
        self.judged_through = epoch
        mine = predict_final(self.points, self.horizon, self.exponents)
        for rung in due:
            peers = self.settled[rung]
            peers.append(mine)
            keep = max(len(peers) // REDUCTION_FACTOR - 1, 0)
            if mine > sorted(peers)[keep] + 1e-12:
                return True
        return False


def replay_extrapolating(curves: Curves, fit: str, budget: int, seed: int, min_epochs: int = 1) -> Trace:
    """One tpe search with the extrapolating rule, under the engine's rules (warm-up gate, repeats)."""
    n_ctx = max(1, budget // curves.max_epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = STRATEGIES.get("tpe").make_sampler(SamplerContext(curves.space, seed, n_ctx, 1))
    study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.NopPruner())
    rungs = sha_rungs(Budget(n_trials=n_ctx, max_epochs=curves.max_epochs, min_epochs=min_epochs))
    rule = Extrapolating(rungs, curves.max_epochs, EXPONENTS[fit])
    trace = Trace("tpe", f"lce-{fit}", seed, budget, "min")
    return run_trials(
        study, curves, trace, rule, budget_epochs=budget, metric="val_loss", min_epochs=min_epochs,
        judges=True, warmup_gate=True, dedupe=True,
    )  # fmt: skip


def benchmark(path: Path, budget_trials: int | None, seeds: int) -> None:
    curves = load_curves(path)
    trials = budget_trials or max(1, len(curves.table) // 2)
    budget = trials * curves.max_epochs
    runs: dict[str, list[Trace]] = {}
    for label, strategy, scheduler in REFERENCE:
        runs[label] = [replay(strategy, scheduler, curves, budget, s, dedupe=True) for s in range(seeds)]
    for fit in EXPONENTS:
        runs[f"tpe+lce-{fit}"] = [replay_extrapolating(curves, fit, budget, s) for s in range(seeds)]
    finals = curves.final_values("val_loss", "min")
    target, table_best = majority([t.best for t in runs["random"] if t.best is not None]), min(finals)
    print(
        f"\n== {path.name}: {len(curves.table)} configs x {curves.max_epochs} epochs; budget {trials} full trials"
    )
    print(
        f"random's final best {target:.4f} (rank {rank_of(target, curves, 'val_loss', 'min')} of {len(finals)}); "
        f"table best {table_best:.4f}; {seeds} seeds; warm-up gate and repeat rule on"
    )
    head = f"{'strategy':<15} {'frac':>5} {'reached':>8} {'to table best':>13} {'best@budget':>11} {'mean':>7} {'trials':>6}"
    print(head + "\n" + "-" * len(head))
    for label, traces in runs.items():
        frac = [(t.epochs_to_reach(target) or math.inf) / budget for t in traces]
        to_best = [(t.epochs_to_reach(table_best) or math.inf) / budget for t in traces]
        bests = [t.best if t.best is not None else math.inf for t in traces]
        show = [f"{f:.2f}" if math.isfinite(f) else "> 1" for f in (majority(frac), majority(to_best))]
        print(
            f"{label:<15} {show[0]:>5} {sum(map(math.isfinite, frac)):>5}/{seeds:<2} {show[1]:>13} "
            f"{majority(bests):>11.4f} {statistics.mean(bests):>7.4f} {statistics.median(len(t.trials) for t in traces):>6.0f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, nargs="*", default=None, help="curve CSVs (default: every recorded table)"
    )
    p.add_argument("--seeds", type=int, default=21, help="seeds per strategy (default 21)")
    p.add_argument(
        "--budget-trials", type=int, default=None, help="budget in full trials (default: half the grid)"
    )
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for path in curve_tables(args.data):
            benchmark(path, args.budget_trials, args.seeds)
    except (CurveError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
