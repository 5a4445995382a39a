"""Search strategies (what to try next): Optuna samplers behind a registry.

Each strategy is a factory plus the rules it places on a space; an incompatible space exits 2
naming the strategy and the rule (see ``docs/search-job.md`` for the compatibility table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from attntune.search.registry import Registry
from attntune.spaces.space import Space


@dataclass(frozen=True)
class SamplerContext:
    space: Space
    seed: int
    n_trials: int
    concurrency: int
    n_objectives: int = 1
    # Optuna's constraints_func (measured constraints such as latency_ms <= 5), or None.
    constraints_func: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Strategy:
    name: str
    make_sampler: Callable[[SamplerContext], Any]
    check: Callable[[Space], list[str]] = field(default=lambda space: [])
    multi_objective: bool = False
    single_objective: bool = True
    description: str = ""


# Presets expand into a (strategy, scheduler) pair; they are valid strategy names.
PRESETS: dict[str, tuple[str, str]] = {"bohb": ("tpe", "hyperband")}

STRATEGIES: Registry[Strategy] = Registry("strategy", presets=PRESETS)


def _quiet(factory: Callable[[SamplerContext], Any]) -> Callable[[SamplerContext], Any]:
    """Build the sampler without Optuna's notices (multivariate/grouped TPE and GP are
    "experimental"; ``warn_independent_sampling`` is deprecated): the choices are attntune's, and a
    user's terminal should not carry them on every run."""
    import functools

    @functools.wraps(factory)
    def make(ctx: SamplerContext) -> Any:
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Optuna 4.9 deprecated the flag, but without it CMA-ES and GP still log a line per
            # parameter they sample independently.
            warnings.filterwarnings("ignore", message=".*warn_independent_sampling.*", category=FutureWarning)
            return factory(ctx)

    return make


def _startup(n_trials: int, cap: int = 10) -> int:
    """Random trials before a sampler's model kicks in: ~1/4 of the budget, between 2 and ``cap``."""
    return max(2, min(cap, n_trials // 4))


def tpe_startup(n_trials: int) -> int:
    """TPE's random trials: at most 5, not Optuna's 10 (which GP and CMA-ES keep). At the 24-48
    trials a CPU search affords, ten random trials are a fifth to two fifths of the budget, and
    five reached random search's best sooner in the replays (docs/BENCHMARKS.md, "TPE's start-up")."""
    return _startup(n_trials, cap=5)


@_quiet
def _random(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=ctx.seed)


@_quiet
def _grid(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.GridSampler(ctx.space.grid(), seed=ctx.seed)


@_quiet
def _tpe(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.TPESampler(
        seed=ctx.seed,
        n_startup_trials=tpe_startup(ctx.n_trials),
        multivariate=True,
        group=True,
        constant_liar=ctx.concurrency > 1,
        warn_independent_sampling=False,
        constraints_func=ctx.constraints_func,
    )


@_quiet
def _gp(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.GPSampler(
        seed=ctx.seed, n_startup_trials=_startup(ctx.n_trials), warn_independent_sampling=False
    )


@_quiet
def _cmaes(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.CmaEsSampler(
        seed=ctx.seed,
        n_startup_trials=_startup(ctx.n_trials),
        warn_independent_sampling=False,
        consider_pruned_trials=True,
    )


@_quiet
def _nsga2(ctx: SamplerContext) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(
        seed=ctx.seed,
        population_size=max(4, min(50, ctx.n_trials // 3)),
        constraints_func=ctx.constraints_func,
    )


def _conditional(name: str, space: Space) -> list[str]:
    """A strategy that needs one fixed set of parameters cannot search a conditional space."""
    p = next((p for p in space.params if p.when), None)
    if p is None:
        return []
    cond = ", ".join(f"{k}={'/'.join(map(str, v))}" for k, v in p.when)
    return [
        f"strategy {name} cannot search a conditional space (space.{p.name} exists only when {cond}); "
        "use tpe, random or nsga2"
    ]


def _check_grid(space: Space) -> list[str]:
    if _conditional("grid", space):
        return _conditional("grid", space)
    bad = [p.name for p in space.params if not p.enumerable]
    out = [
        f"strategy grid cannot enumerate space.{n}: a continuous float range (give choices or a step)"
        for n in bad
    ]
    if not out and space.grid_size() > 100_000:
        out.append(f"strategy grid: the space has {space.grid_size()} points (limit 100000)")
    return out


def _check_cmaes(space: Space) -> list[str]:
    if _conditional("cmaes", space):
        return _conditional("cmaes", space)
    if all(p.type == "categorical" for p in space.params):
        return ["strategy cmaes needs at least one int or float parameter; this space has only categoricals (use tpe)"]
    return []


STRATEGIES.register("random", Strategy("random", _random, multi_objective=True, description="uniform random sampling"))
STRATEGIES.register("grid", Strategy("grid", _grid, _check_grid, description="every combination, in random order"))
STRATEGIES.register(
    "tpe",
    Strategy("tpe", _tpe, multi_objective=True, description="Tree-structured Parzen Estimator (multivariate)"),
)
STRATEGIES.register(
    "gp", Strategy("gp", _gp, lambda space: _conditional("gp", space), description="Gaussian-process Bayesian optimisation")
)
STRATEGIES.register("cmaes", Strategy("cmaes", _cmaes, _check_cmaes, description="CMA evolution strategy"))
STRATEGIES.register(
    "nsga2",
    Strategy("nsga2", _nsga2, multi_objective=True, single_objective=False, description="NSGA-II (multi-objective)"),
)


class ConstraintViolations:
    """Optuna's ``constraints_func``: the violations of the measured constraints the driver
    recorded on the trial before telling it (<= 0 satisfied); a trial without them (pruned,
    failed) counts as satisfying them, as Optuna's samplers only rank complete trials by them.
    A class, not a closure, so a sampler holding it can be pickled."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, trial: Any) -> list[float]:
        v = trial.user_attrs.get("constraint_violations")
        return [float(x) for x in v] if v else [0.0] * self.n


def sampler_for(job: Any, seed: int, n_trials: int) -> Any:
    """The job's sampler with ``seed`` (a joined or resumed driver passes its own, so it does
    not replay the first driver's draws)."""
    measured = job.end_constraints
    ctx = SamplerContext(
        job.space,
        seed,
        n_trials,
        job.concurrency,
        n_objectives=len(job.directions),
        constraints_func=ConstraintViolations(len(measured)) if measured else None,
    )
    return STRATEGIES.get(job.strategy).make_sampler(ctx)
