"""Search efficiency: how much of random search's budget each strategy needs to match it.

Replays every strategy/scheduler pair against recorded learning curves (``benchmarks/data``, made by
``benchmarks/record_curves.py``) with the real Optuna samplers and pruners attntune uses, over many
seeds, with a budget counted in epochs (default: half the grid in full trials, e.g. 32 full trials of
8 epochs for a 64-config grid). Random search's *final best* is the median over seeds of random+none's
best at the full budget; for every pair the script prints the median over seeds of the fraction of the
budget spent until its best completed trial reached that value ("not reached" counts as more than 1),
and the same fraction for reaching the table's best configuration. Both medians are order statistics,
sorted(x)[n // 2] ("what a majority of seeds achieve"; the plain median for the default 21 seeds), so
the target is a recorded value. Targets (issue 3): bohb <= 1/3, tpe <= 1/2. As in the driver, a
pruner is asked only once a trial's learning-rate warmup has ended (``worker.wants_decision``, see
``benchmarks/replay.py``); ``--no-warmup-gate`` asks it during warmup too, for comparison.

Every table is replayed twice, side by side (issue 16): *without* the repeat rule (each sample is
trained, a config sampled again is trained again: the figures recorded before the rule) and *with*
it (the driver's "never train the same config twice", ``search/repeats.py``: a sample equal to a
COMPLETE or PRUNED trial is answered from it and reads no epoch; ``run_trials(dedupe=True)``). Each
block has its own random's final best (random search gets the rule too) and target lines; the
with-rule block also gives each pair's fraction of the budget to reach the without-rule target
(``@old target``), and both give the median number of repeats per search (``repeats``: trials whose
config equals an earlier finished trial's, answered with the rule, trained again without it).
``--rule off`` / ``--rule on`` replays one block only.

    python benchmarks/search_efficiency.py                         # every CSV in benchmarks/data, 21 seeds
    python benchmarks/search_efficiency.py --seeds 50 --jobs 2
    python benchmarks/search_efficiency.py --real-check            # plus one real tpe+asha search (~3 min)
    python benchmarks/search_efficiency.py --no-warmup-gate        # prune during warmup (the old replay)
    python benchmarks/search_efficiency.py --rule off              # without the repeat rule only

``--real-check`` runs ``attntune run`` (optuna backend, tpe+asha, 12 trials, concurrency 1) on the
first table's task with exactly its grid, then prints the real search's trials next to the replay of
the same strategy and seed (with the repeat rule, as the engine now applies it), and the real best
next to the replayed distribution over seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# One thread per replay process: the GP sampler fits with torch, which would oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/search_efficiency.py` from anywhere
    sys.path.insert(0, str(REPO))

from attntune.search.repeats import MAX_CONSECUTIVE_REPEATS  # noqa: E402
from benchmarks.replay import CurveError, Curves, Trace, curve_tables, load_curves, median, replay, step_rule  # noqa: E402

# (label, strategy, scheduler)
PAIRS: list[tuple[str, str, str]] = [
    ("random", "random", "none"),
    ("grid", "grid", "none"),
    ("tpe", "tpe", "none"),
    ("gp", "gp", "none"),
    ("cmaes", "cmaes", "none"),
    ("bohb", "tpe", "hyperband"),
    ("tpe+asha", "tpe", "asha"),
    ("random+asha", "random", "asha"),
]
TARGETS = {"bohb": 1 / 3, "tpe": 1 / 2}

_CURVES: dict[str, Curves] = {}


def _curves(path: str) -> Curves:
    if path not in _CURVES:
        _CURVES[path] = load_curves(path)
    return _CURVES[path]


def _one(args: tuple[str, str, str, int, int, str, str, bool, bool]) -> tuple[str, int, Trace, float]:
    path, strategy, scheduler, budget, seed, metric, mode, gate, dedupe = args
    t0 = time.perf_counter()
    trace = replay(
        strategy,
        scheduler,
        _curves(path),
        budget,
        seed,
        metric=metric,
        mode=mode,
        warmup_gate=gate,
        dedupe=dedupe,
    )
    return f"{strategy}/{scheduler}/{'on' if dedupe else 'off'}", seed, trace, time.perf_counter() - t0


def _fmt_frac(x: float) -> str:
    return "> 1" if not math.isfinite(x) else f"{x:.2f}"


def majority(values: list[float], reverse: bool = False) -> float:
    """The value a majority of seeds achieve: sorted(values)[n // 2] (the median for an odd count).

    An order statistic, not the mean of the two middle values: on a recorded grid that mean is usually
    no configuration's value (and with "not reached" = inf it is inf as soon as one middle run misses).
    """
    return sorted(values, reverse=reverse)[len(values) // 2]


def rank_of(value: float, curves: Curves, metric: str, mode: str) -> int:
    """1-based rank of ``value`` among the table's configurations (how hard the target is)."""
    finals = curves.final_values(metric, mode)
    better = [v for v in finals if (v < value - 1e-9 if mode == "min" else v > value + 1e-9)]
    return len(better) + 1


RULES = {
    "off": "without the repeat rule: a config sampled again is trained again (as recorded before)",
    "on": "with the repeat rule: a repeat of a COMPLETE or PRUNED trial is answered from it, 0 epochs",
}


def benchmark(path: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Replay every pair on one table, without and with the repeat rule; print the figures;
    return rule -> label -> median fraction."""
    curves = load_curves(path)
    budget_trials = args.budget_trials or max(1, len(curves.table) // 2)
    budget = budget_trials * curves.max_epochs
    seeds = list(range(args.seeds))
    wanted = set(args.pairs.split(",")) | {"random"} if args.pairs else {label for label, _, _ in PAIRS}
    pairs = [pair for pair in PAIRS if pair[0] in wanted]
    rules = ["off", "on"] if args.rule == "both" else [args.rule]
    jobs = [
        (str(path), s, sch, budget, seed, args.metric, args.mode, not args.no_warmup_gate, rule == "on")
        for rule in rules
        for _, s, sch in pairs
        for seed in seeds
    ]
    t0 = time.perf_counter()
    traces: dict[str, dict[int, Trace]] = {}
    cpu: dict[str, float] = {}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_one, jobs, chunksize=4))
    else:
        results = [_one(j) for j in jobs]
    for key, seed, trace, seconds in results:
        traces.setdefault(key, {})[seed] = trace
        cpu[key] = cpu.get(key, 0.0) + seconds
    wall = time.perf_counter() - t0

    finals = curves.final_values(args.metric, args.mode)
    table_best = min(finals) if args.mode == "min" else max(finals)
    ordered = sorted(finals, reverse=(args.mode == "max"))
    task = curves.meta.get("task", {})
    print(
        f"\n== {path.name}: {len(curves.table)} configs x {curves.max_epochs} epochs, task {task.get('name', '?')}"
    )
    print(
        f"budget {budget} epochs (= {budget_trials} full trials), {len(seeds)} seeds, "
        f"metric {args.metric} ({args.mode}); replays took {wall:.1f}s wall ({' and '.join(rules)}: rule {args.rule})"
    )
    if args.no_warmup_gate:
        print("no warmup gate (--no-warmup-gate): pruners also judge trials still warming up")
    else:
        print(f"pruners judge a trial only once its warmup has ended (worker.wants_decision): {step_rule(curves)}")
    out: dict[str, dict[str, float]] = {}
    old_target: float | None = None
    for rule in rules:
        random_bests = [t.best for t in traces["random/none/" + rule].values() if t.best is not None]
        # Random's final best: reached by a majority of random+none's seeds (ordered best first).
        target = majority(random_bests, reverse=(args.mode == "max"))
        print(f"\n-- {RULES[rule]}")
        print(
            f"random's final best (reached by a majority of random+none's seeds at the full budget): {target:.4f} "
            f"= rank {rank_of(target, curves, args.metric, args.mode)} of {len(finals)} configs "
            f"(table best {table_best:.4f})"
        )
        # Seed-free reference: uniform sampling over the grid (what random does on this space), the
        # chance that `budget_trials` full trials include a config at least as good as the k-th best;
        # with the rule those trials are distinct configs (a uniform subset), without it independent draws.
        n = len(ordered)
        if rule == "off":
            exact = [1 - (1 - (k + 1) / n) ** budget_trials for k in range(n)]
            how = "uniform random sampling"
        else:
            m = min(budget_trials, n)
            exact = [1 - math.comb(n - k - 1, m) / math.comb(n, m) for k in range(n)]
            how = "uniform random sampling of distinct configs"
        k_med = next(k for k, prob in enumerate(exact) if prob >= 0.5)
        print(
            f"exact median for {how}: rank {k_med + 1} ({ordered[k_med]:.4f}); "
            f"P(random's {budget_trials} trials include the table best) = {exact[0]:.0%}"
        )
        extra = rule == "on" and old_target is not None
        header = (
            f"{'strategy':<12} {'frac of budget':>14} {'reached':>8} {'to table best':>13} {'best@budget':>12} "
            f"{'trials':>7} {'pruned':>7} {'cpu s':>6} {'repeats':>7}" + (f" {'@old target':>11}" if extra else "")
        )
        print(header)
        print("-" * len(header))
        out[rule] = {}
        for label, s, sch in pairs:
            key = f"{s}/{sch}/{rule}"
            runs = traces[key]
            fracs, to_best, to_old, bests, n_trials, n_pruned, n_repeats = [], [], [], [], [], [], []
            for trace in runs.values():
                hit = trace.epochs_to_reach(target)
                fracs.append(hit / budget if hit is not None else math.inf)
                hit = trace.epochs_to_reach(table_best)
                to_best.append(hit / budget if hit is not None else math.inf)
                if old_target is not None:
                    hit = trace.epochs_to_reach(old_target)
                    to_old.append(hit / budget if hit is not None else math.inf)
                if trace.best is not None:
                    bests.append(trace.best)
                n_trials.append(len(trace.trials))
                n_pruned.append(trace.counts()["PRUNED"])
                n_repeats.append(trace.repeats())
            frac = majority(fracs)  # the budget fraction by which a majority of seeds had reached the target
            out[rule][label] = frac
            reached = sum(math.isfinite(f) for f in fracs)
            print(
                f"{label:<12} {_fmt_frac(frac):>14} {reached:>5}/{len(fracs):<2} {_fmt_frac(majority(to_best)):>13} "
                f"{majority(bests, reverse=(args.mode == 'max')):>12.4f} "
                f"{median(n_trials):>7.0f} {median(n_pruned):>7.0f} {cpu[key]:>6.1f} {median(n_repeats):>7.0f}"
                + (f" {_fmt_frac(majority(to_old)):>11}" if extra else "")
            )
        if extra:
            print(f"@old target: fraction of the budget to reach the without-rule target {old_target:.4f}")
        exhausted = [
            f"{label} {sum(t.exhausted for t in traces[f'{s}/{sch}/{rule}'].values())}/{len(seeds)}"
            for label, s, sch in pairs
            if any(t.exhausted for t in traces[f"{s}/{sch}/{rule}"].values())
        ]
        if exhausted:
            print(
                f"stopped sampling before the budget was spent ({MAX_CONSECUTIVE_REPEATS} repeats in a row: the "
                f"space looks exhausted): {', '.join(exhausted)}"
            )
        verdicts = []
        for label, limit in TARGETS.items():
            if label not in out[rule]:
                continue
            ok = out[rule][label] <= limit
            verdicts.append(f"{label} {_fmt_frac(out[rule][label])} <= {limit:.2f}: {'met' if ok else 'MISSED'}")
        if verdicts:
            print(f"targets ({'with' if rule == 'on' else 'without'} the rule): " + "; ".join(verdicts))
        old_target = target
    return out


# ------------------------------------------------------------------------------ real check


def real_check(path: Path, args: argparse.Namespace) -> None:
    """One real tpe+asha search on the table's task and grid, compared with its replay."""
    import optuna
    import yaml

    curves = load_curves(path)
    meta = curves.meta
    n_trials, seed, name = args.real_trials, args.real_seed, "efficiency-check"
    task = dict(meta["task"])
    if task.get("path"):
        task["path"] = str((REPO / task["path"]).resolve())  # only in the temporary job file
    train = {k: v for k, v in meta["train"].items() if k != "epochs"}
    job = {
        "name": name,
        "task": task,
        "space": meta["space"],
        "strategy": "tpe",
        "scheduler": "asha",
        "budget": {"n_trials": n_trials, "max_epochs": curves.max_epochs, "min_epochs": 1},
        "metric": args.metric,
        "mode": args.mode,
        "concurrency": 1,
        "resources": {"cpus": 1},
        "seed": seed,
        "model": meta["model"],
        "train": train,
    }
    with tempfile.TemporaryDirectory(prefix="attntune-efficiency-") as tmp:
        folder = Path(tmp)
        job_path = folder / "job.yaml"
        job_path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
        out = folder / "out"
        print(
            f"\n== real check: attntune run (optuna backend, tpe+asha, {n_trials} trials, seed {seed}) on {path.name}'s grid"
        )
        t0 = time.perf_counter()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from attntune.search.cli import main; main()",
                "run",
                str(job_path),
                "--output",
                str(out),
                "--tracking-uri",
                f"sqlite:///{(folder / 'mlflow.db').as_posix()}",
                "--quiet",
                "--no-report",
            ],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"real search failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{(out / 'study.db').as_posix()}")
        real = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("attntune_state") != "INFEASIBLE"
        ]
    same = replay(
        "tpe",
        "asha",
        curves,
        10**9,
        seed,
        metric=args.metric,
        mode=args.mode,
        n_trials=n_trials,
        study_name=name,
        dedupe=True,  # the engine answers a repeat from the trial it repeats (search/repeats.py)
    )
    print(f"real search: {wall:.0f}s wall, {len(real)} trials")
    print(f"{'#':>3}  {'config':<52} {'real':>18}   {'replay (same seed)':>18}")
    matching = 0
    for i, t in enumerate(real):
        r = same.trials[i] if i < len(same.trials) else None
        cfg = " ".join(
            f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in t.params.items()
        )
        real_state = t.user_attrs.get("attntune_state", t.state.name)
        real_val = t.value if real_state == "COMPLETE" else None  # Optuna keeps a pruned trial's last report
        real_s = f"{real_state[:4]} {t.user_attrs.get('epochs_run', '?')}ep " + (
            f"{real_val:.4f}" if real_val is not None else "-"
        )
        rep_s = "-"
        if r is not None:
            rep_s = f"{r.state[:4]} {r.epochs}ep " + (f"{r.value:.4f}" if r.value is not None else "-")
            if r.repeat_of is not None:
                rep_s += f" (= #{r.repeat_of})"
            same_cfg = curves.key(r.values) == curves.key(t.params)
            matching += int(same_cfg and r.state[:4] == real_state[:4])
            if not same_cfg:
                rep_s += " (other config)"
        print(f"{t.number:>3}  {cfg:<52} {real_s:>18}   {rep_s:>18}")
    real_best = min((t.value for t in real if t.value is not None), default=math.nan)
    if args.mode == "max":
        real_best = max((t.value for t in real if t.value is not None), default=math.nan)
    dist = sorted(
        b
        for b in (
            replay(
                "tpe",
                "asha",
                curves,
                10**9,
                s,
                metric=args.metric,
                mode=args.mode,
                n_trials=n_trials,
                study_name=name,
                dedupe=True,
            ).best
            for s in range(args.seeds)
        )
        if b is not None
    )
    print(f"trials with the same config and outcome as the replay: {matching}/{len(real)}")
    print(
        f"best {args.metric}: real {real_best:.4f}; replay same seed {same.best:.4f}; replay over {len(dist)} seeds "
        f"min {dist[0]:.4f} / median {median(dist):.4f} / max {dist[-1]:.4f}"
    )
    inside = dist[0] - 1e-9 <= real_best <= dist[-1] + 1e-9
    print(f"real best within the replayed range: {'yes' if inside else 'NO'}")


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
        "--seeds",
        type=int,
        default=21,
        help="seeds per strategy (default 21: an odd count has a plain median)",
    )
    p.add_argument(
        "--pairs", default=None, help="comma-separated labels to replay (default all; random is always run)"
    )
    p.add_argument(
        "--budget-trials",
        type=int,
        default=None,
        help="budget in full trials; epochs = this x max_epochs (default: half the grid, 32 for 64 configs)",
    )
    p.add_argument("--metric", default="val_loss")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--jobs", type=int, default=2, help="replay processes (default 2)")
    p.add_argument(
        "--no-warmup-gate",
        action="store_true",
        help="let pruners judge trials still in their warmup (the driver never does; for comparison)",
    )
    p.add_argument(
        "--rule",
        choices=["both", "off", "on"],
        default="both",
        help="the repeat rule (never train the same config twice): both blocks side by side (default), "
        "without it only, or with it only",
    )
    p.add_argument(
        "--real-check", action="store_true", help="also run one real tpe+asha search on the first table"
    )
    p.add_argument("--real-trials", type=int, default=12)
    p.add_argument("--real-seed", type=int, default=0)
    args = p.parse_args()
    labels = [label for label, _, _ in PAIRS]
    unknown = sorted(set(args.pairs.split(",")) - set(labels)) if args.pairs else []
    if unknown:
        print(f"error: --pairs: unknown label {unknown[0]!r} (valid: {', '.join(labels)})", file=sys.stderr)
        sys.exit(2)
    paths = curve_tables(args.data)
    try:
        for path in paths:
            benchmark(path, args)
        if args.real_check:
            real_check(paths[0], args)
    except (CurveError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
