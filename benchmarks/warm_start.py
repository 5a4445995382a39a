"""Warm start, measured by replay: a search seeded with an earlier search's best trials, against a cold start.

issue 16 item 3: a job that says ``warm_start: {from: [earlier searches], top: 10}`` gets the ``top``
best COMPLETE trials of each earlier search (by its metric, in its direction; ties to the lower
trial number) added to its study as finished trials (``study.add_trials`` of
``optuna.trial.create_trial``) before its first trial, so TPE, GP and NSGA-II start from them; they
are never counted in the new budget. The rule for a changed space (``fit``): a prior trial keeps only
the new space's parameters; parameters the new space does not have are dropped from it; if a
parameter of the new space (active for the trial's values) is missing from it, or its value is one
the new space cannot produce (``Param.canonical`` raises ValueError: off the choices, outside a
range, off a step), the prior trial is dropped whole. Values are never clipped.

The replay (``benchmarks/replay.py``, the real samplers attntune uses, trials one at a time, the
budget counted in epochs read): for every recorded table (the *new* search), TPE with scheduler
``none`` and the budget the search-efficiency replay gives that table (half the grid in full trials),
cold, and warm-started from an earlier search on a *related* table:

- ``<other table>``: another recorded table whose trials fit this table's space by the rule above
  (the Tatoeba table's space, n_layers x lr x warmup_steps, is part of the numbers table's, so a
  numbers search's trials fit a Tatoeba search once n_heads and head_dim are dropped; the other way
  round every prior lacks model.n_heads and is dropped, so that pair is skipped);
- ``perturbed copy`` (a stand-in: the recorded tables have no second seed or data size): the same
  table with every configuration's metric, at every epoch, multiplied by one factor 1 + N(0, sigma)
  (``--sigma``, default 0.02) drawn per configuration, a smooth change of each curve; a new copy
  for every seed.

The earlier search is TPE + ``none`` on the related table with that table's search-efficiency
budget, seed ``seed + 1000``; its best ``--top`` COMPLETE trials are the priors (the rule as given:
trials, so a config the earlier search trained several times, or answered as a repeat, can fill
several places), and in a second row (``, distinct``) its best ``--top`` distinct configs (each
config once), a variant this benchmark adds because TPE avoids a config that sits in both its good
and its bad group. The warm and the cold search of one seed use the same sampler seed. Printed,
over the seeds: the cold search's final best (reached by a majority of the cold seeds at the full budget, ``sorted(x)[n // 2]`` as in
``search_efficiency.py``), and for cold and warm the fraction of the budget by which a majority of
seeds had a completed trial at least that good (``> 1``: a majority never got there), the same for
the table's best configuration, and the best after the full budget. Target (issue 16): the warm
start reaches the cold start's final best in <= 1/2 of the cold start's budget.

Each table is replayed without and with the repeat rule (``run_trials(dedupe=True)``: a sample equal
to a finished trial of *this* search is answered from it; priors are another search's and are
never answered from). ``--rule off`` / ``--rule on`` replays one block only.

    python benchmarks/warm_start.py                       # every CSV in benchmarks/data, 21 seeds
    python benchmarks/warm_start.py --seeds 51 --top 5 --sigma 0.05
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/warm_start.py` from anywhere
    sys.path.insert(0, str(REPO))

from attntune.spaces.space import Space  # noqa: E402
from benchmarks.replay import (  # noqa: E402
    COMPLETE,
    CurveError,
    Curves,
    Trace,
    config_id,
    curve_tables,
    load_curves,
    replay,
)

STRATEGY, SCHEDULER = "tpe", "none"
TARGET = 0.5  # the warm start reaches the cold start's final best within half the cold start's budget
PERTURBED = "perturbed copy"


# ------------------------------------------------------------------------------ the rule


def fit(space: Space, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A prior trial's parameters as the new space takes them, or None when it is dropped whole:
    only the new space's parameters are kept; a missing one, or a value the new space cannot
    produce (``Param.canonical`` raises ValueError), drops the trial. Never clipped."""
    kept: dict[str, Any] = {}
    for p in space.ordered():
        if not p.active(kept):  # a conditional parameter the trial's values switch off
            continue
        if p.name not in params:
            return None
        try:
            kept[p.name] = p.canonical(params[p.name])
        except ValueError:
            return None
    return kept


def best_trials(trace: Trace, top: int, distinct: bool = False) -> list[tuple[dict[str, Any], float]]:
    """The ``top`` best COMPLETE trials of an earlier search (its direction; ties: lower number),
    repeats of a config included (trained again, or answered by the repeat rule, they are COMPLETE
    trials too); ``distinct``: each config once (its best trial), the variant this benchmark adds."""
    done = [t for t in trace.trials if t.state == COMPLETE and t.value is not None and math.isfinite(t.value)]
    sign = 1.0 if trace.mode == "min" else -1.0
    done.sort(key=lambda t: (sign * t.value, t.number))
    out: list[tuple[dict[str, Any], float]] = []
    seen: set[Any] = set()
    for t in done:
        key = config_id(t.values)
        if distinct and key in seen:
            continue
        seen.add(key)
        out.append((dict(t.values), float(t.value)))
        if len(out) == top:
            break
    return out


def priors(space: Space, earlier: list[tuple[dict[str, Any], float]]) -> list[Any]:
    """The earlier search's trials that fit ``space``, as finished Optuna trials for ``add_trials``."""
    import optuna

    dists = {p.name: p.distribution() for p in space.params}
    out = []
    for params, value in earlier:
        kept = fit(space, params)
        if kept is not None:
            out.append(
                optuna.trial.create_trial(params=kept, distributions={k: dists[k] for k in kept}, value=value)
            )
    return out


# ------------------------------------------------------------------------------ related tables


def perturbed(curves: Curves, metric: str, sigma: float, seed: int) -> Curves:
    """The stand-in related table: each configuration's ``metric`` at every epoch times one factor
    1 + N(0, sigma) drawn for that configuration (the curve's shape is kept)."""
    rng = random.Random(f"perturb-{seed}")
    table = {}
    for key in sorted(curves.table, key=str):
        factor = 1.0 + rng.gauss(0.0, sigma)
        table[key] = [
            {**ep, metric: ep[metric] * factor} if metric in ep else dict(ep) for ep in curves.table[key]
        ]
    return replace(curves, table=table)


def budget_of(curves: Curves) -> int:
    """The search-efficiency replay's budget for a table: half the grid in full trials, in epochs."""
    return max(1, len(curves.table) // 2) * curves.max_epochs


def fitting_share(space: Space, other: Curves) -> tuple[int, str]:
    """(how many of ``other``'s grid points fit ``space``, why the first one that does not is dropped)."""
    n, why = 0, ""
    for key in other.table:
        params = dict(zip(other.names, key, strict=True))
        if fit(space, params) is not None:
            n += 1
        elif not why:
            missing = [p.name for p in space.params if p.name not in params]
            why = f"lacks {missing[0]}" if missing else "a value the space cannot produce"
    return n, why


# ------------------------------------------------------------------------------ the benchmark


def majority(values: list[float]) -> float:
    """sorted(values)[n // 2]: the value a majority of seeds achieve (as search_efficiency.py)."""
    return sorted(values)[len(values) // 2]


def _frac(x: float) -> str:
    return "> 1" if not math.isfinite(x) else f"{x:.2f}"


def benchmark(path: Path, others: list[Path], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Cold vs warm starts on one table; prints the figures; returns rule -> source -> warm fraction."""
    curves = load_curves(path)
    budget = budget_of(curves)
    seeds = list(range(args.seeds))
    mode = args.mode
    sign = 1.0 if mode == "min" else -1.0
    finals = curves.final_values(args.metric, mode)
    table_best = min(finals) if mode == "min" else max(finals)
    print(
        f"\n== {path.name}: {len(curves.table)} configs x {curves.max_epochs} epochs; {STRATEGY}+{SCHEDULER}, "
        f"budget {budget} epochs (= {budget // curves.max_epochs} full trials), {len(seeds)} seeds, "
        f"metric {args.metric} ({mode}); priors: the best {args.top} COMPLETE trials of an earlier search"
    )
    sources: list[tuple[str, Curves | None]] = []
    for other in others:
        if other.resolve() == path.resolve():
            continue
        related = load_curves(other)
        n_fit, why = fitting_share(curves.space, related)
        if n_fit == 0:
            print(
                f"related {other.name}: skipped, none of its {len(related.table)} configs fits this space ({why})"
            )
            continue
        dropped = sorted(set(related.names) - set(curves.names))
        print(
            f"related {other.name}: {n_fit} of its {len(related.table)} configs fit this space"
            + (f" (dropped from each prior: {', '.join(dropped)})" if dropped else "")
            + f"; earlier search: {STRATEGY} with its budget ({budget_of(related)} epochs), seed + 1000"
        )
        sources.append((other.name, related))
    print(
        f"related {PERTURBED} (stand-in): this table, each config's {args.metric} x (1 + N(0, {args.sigma:g})) "
        f"at every epoch, a new copy per seed; earlier search: {STRATEGY} with this budget, seed + 1000"
    )
    sources.append((PERTURBED, None))

    rules = ["off", "on"] if args.rule == "both" else [args.rule]
    out: dict[str, dict[str, float]] = {}
    for rule in rules:
        dedupe = rule == "on"
        t0 = time.perf_counter()
        cold = [
            replay(STRATEGY, SCHEDULER, curves, budget, s, metric=args.metric, mode=mode, dedupe=dedupe)
            for s in seeds
        ]
        warm: dict[str, list[Trace]] = {}
        kept: dict[str, list[tuple[int, int]]] = {}  # (prior trials, distinct configs among them)
        for name, related in sources:
            for s in seeds:
                base = related if related is not None else perturbed(curves, args.metric, args.sigma, s)
                earlier = replay(
                    STRATEGY,
                    SCHEDULER,
                    base,
                    budget_of(base),
                    s + 1000,
                    metric=args.metric,
                    mode=mode,
                    dedupe=dedupe,
                )
                for variant, distinct in ((name, False), (f"{name}, distinct", True)):
                    seeded = priors(curves.space, best_trials(earlier, args.top, distinct))
                    n_configs = len({config_id(t.params) for t in seeded})
                    kept.setdefault(variant, []).append((len(seeded), n_configs))
                    warm.setdefault(variant, []).append(
                        replay(
                            STRATEGY,
                            SCHEDULER,
                            curves,
                            budget,
                            s,
                            metric=args.metric,
                            mode=mode,
                            dedupe=dedupe,
                            priors=seeded,
                        )  # fmt: skip
                    )
        wall = time.perf_counter() - t0
        target = majority([sign * t.best for t in cold if t.best is not None]) * sign
        rank = 1 + sum(1 for v in finals if sign * v < sign * target - 1e-9)
        print(
            f"\n-- {'with' if dedupe else 'without'} the repeat rule ({wall:.1f}s wall); cold start's final best "
            f"(reached by a majority of cold seeds at the full budget): {target:.4f} = rank {rank} of "
            f"{len(finals)} configs (table best {table_best:.4f})"
        )
        header = (
            f"{'start':<38} {'priors':>9} {'frac of budget':>14} {'reached':>8} {'to table best':>13} "
            f"{'best@budget':>12} {'trials':>7}"
        )
        print("priors: prior trials added (distinct configs among them), median over seeds")
        print(header)
        print("-" * len(header))

        def row(label: str, runs: list[Trace], n_priors: str, target: float = target) -> float:
            fracs, to_best, bests = [], [], []
            for t in runs:
                hit = t.epochs_to_reach(target)
                fracs.append(hit / budget if hit is not None else math.inf)
                hit = t.epochs_to_reach(table_best)
                to_best.append(hit / budget if hit is not None else math.inf)
                if t.best is not None:
                    bests.append(sign * t.best)
            frac = majority(fracs)
            reached = sum(math.isfinite(f) for f in fracs)
            print(
                f"{label:<38} {n_priors:>9} {_frac(frac):>14} {reached:>5}/{len(fracs):<2} "
                f"{_frac(majority(to_best)):>13} {sign * majority(bests):>12.4f} "
                f"{majority([float(len(t.trials)) for t in runs]):>7.0f}"
            )
            return frac

        row("cold", cold, "-")
        out[rule] = {}
        for name in warm:
            n_trials = majority([float(k) for k, _ in kept[name]])
            n_configs = majority([float(c) for _, c in kept[name]])
            out[rule][name] = row(f"warm from {name}", warm[name], f"{n_trials:.0f} ({n_configs:.0f})")
        for name, frac in out[rule].items():
            ok = frac <= TARGET
            print(
                f"warm start ({name}) reaches the cold start's final best in <= 1/2 of the cold start's budget: "
                f"{'met' if ok else 'MISSED'} ({_frac(frac)})"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        nargs="*",
        default=None,
        help="curve CSVs (default: benchmarks/data/curves_*.csv)",
    )
    p.add_argument(
        "--seeds", type=int, default=21, help="seeds (default 21: an odd count has a plain median)"
    )
    p.add_argument(
        "--top", type=int, default=10, help="prior trials taken from the earlier search (default 10)"
    )
    p.add_argument(
        "--sigma", type=float, default=0.02, help="the perturbed copy's factor spread (default 0.02)"
    )
    p.add_argument("--metric", default="val_loss")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument(
        "--rule",
        choices=["both", "off", "on"],
        default="both",
        help="the repeat rule (never train the same config twice): both blocks (default), without, with",
    )
    args = p.parse_args()
    if args.seeds < 1 or args.top < 1 or args.sigma < 0:
        print("error: --seeds and --top must be >= 1, --sigma >= 0", file=sys.stderr)
        sys.exit(2)
    paths = curve_tables(args.data)
    others = curve_tables(None)  # every recorded table may be a related one
    try:
        for path in paths:
            benchmark(path, others, args)
    except (CurveError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
