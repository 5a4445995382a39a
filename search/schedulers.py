"""Schedulers (when to stop a trial): Optuna pruners and Ray Tune schedulers behind one registry.

A scheduler judges trials on their per-epoch reports. ``budget.min_epochs`` is the grace period
(first rung); ``budget.max_epochs`` the full budget. Bandit schedulers use reduction factor 3.

Two rules every scheduler follows on both backends live here, once, as pure functions:

- the warm-up rule (``wants_decision``): no scheduler judges a report made while the trial's
  learning rate still warms up (its ``step`` <= ``train.warmup_steps``): such a trial is not yet
  comparable. The local worker, the driver, Ray's schedulers (``WarmupGate``) and the replay
  benchmarks all ask it;
- the MO-ASHA verdict (``moasha_due`` + ``moasha_stops``): the multi-objective successive-halving
  rule that neither Optuna nor Ray Tune has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attntune.search.pareto import mo_asha_continues
from attntune.search.registry import Registry

if TYPE_CHECKING:  # pragma: no cover - a type only: job.py imports this module
    from attntune.search.job import Budget

REDUCTION_FACTOR = 3


@dataclass(frozen=True)
class Scheduler:
    name: str
    optuna_pruner: Callable[[Budget], Any]
    ray_scheduler: Callable[[Budget, str, str], Any]
    rungs: Callable[[Budget], list[int]] = field(default=lambda b: [])
    bandit: bool = False
    description: str = ""
    judges: bool = True  # False: never stops a trial, so a worker need not wait for a verdict
    # Decided by the search driver (``moasha_stops``, asked by the driver) on both backends rather than
    # by an Optuna pruner or a Ray scheduler: the multi-objective rule, which neither library has.
    driver_side: bool = False
    multi_objective: bool = False


SCHEDULERS: Registry[Scheduler] = Registry("scheduler")


def sha_rungs(budget: Budget) -> list[int]:
    """Epochs at which successive halving compares trials: min_epochs x 3^k below max_epochs."""
    out, r = [], budget.min_epochs
    while r < budget.max_epochs:
        out.append(r)
        r *= REDUCTION_FACTOR
    return out


def _none_pruner(b: Budget) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _none_ray(b: Budget, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha_pruner(b: Budget) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=b.min_epochs, reduction_factor=REDUCTION_FACTOR
    )


def _asha_ray(b: Budget, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=b.max_epochs,
        grace_period=b.min_epochs,
        reduction_factor=REDUCTION_FACTOR,
    )


def _hyperband_pruner(b: Budget) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=b.min_epochs, max_resource=b.max_epochs, reduction_factor=REDUCTION_FACTOR
    )


def _hyperband_ray(b: Budget, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=b.max_epochs,
        reduction_factor=REDUCTION_FACTOR,
    )


def _median_pruner(b: Budget) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=b.min_epochs - 1)


def _median_ray(b: Budget, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        grace_period=b.min_epochs,
        min_samples_required=3,
    )


SCHEDULERS.register("none", Scheduler("none", _none_pruner, _none_ray, description="train every trial to max_epochs", judges=False))
SCHEDULERS.register(
    "asha",
    Scheduler("asha", _asha_pruner, _asha_ray, sha_rungs, bandit=True, description="asynchronous successive halving"),
)
SCHEDULERS.register(
    "hyperband",
    Scheduler("hyperband", _hyperband_pruner, _hyperband_ray, sha_rungs, bandit=True, description="Hyperband brackets of successive halving"),
)
SCHEDULERS.register(
    "moasha",
    Scheduler(
        "moasha",
        _none_pruner,  # the driver decides (search.pareto.mo_asha_continues)
        _none_ray,  # replaced by the ray backend's DriverDecides
        sha_rungs,
        bandit=True,
        description="multi-objective successive halving: non-dominated sorting at each rung",
        driver_side=True,
        multi_objective=True,
    ),
)
SCHEDULERS.register(
    "median",
    Scheduler("median", _median_pruner, _median_ray, description="stop below the median of earlier trials at the same epoch"),
)


# --------------------------------------------------------------------------- the warm-up rule


Decide = Sequence[int]  # (first judged epoch, end epoch (exclusive), the trial's warmup_steps)


def decision_window(scheduler: Scheduler, budget: Budget, warmup_steps: int) -> tuple[int, int, int] | None:
    """(first, end, warmup_steps): the scheduler may stop a trial after epochs first <= e < end
    once its warm-up has ended; None when it never stops trials."""
    if not scheduler.judges:
        return None
    return (budget.min_epochs, budget.max_epochs, int(warmup_steps))


def warming_up(step: Any, warmup_steps: Any) -> bool:
    """Whether a report at optimizer ``step`` came while the learning rate still warmed up."""
    return step is not None and float(step) <= float(warmup_steps or 0)


def wants_decision(decide: Decide | None, epoch: int, metrics: Mapping[str, float] | None = None) -> bool:
    """Whether the scheduler may stop a trial after this report (``decide`` from
    ``decision_window``): epochs first <= epoch < end are judged, never during warm-up. The
    worker waits for the driver's verdict only when this holds, so unjudged epochs cost no round
    trip; the driver applies the same rule to the same report."""
    if decide is None or not decide[0] <= epoch < decide[1]:
        return False
    warmup = decide[2] if len(decide) > 2 else 0
    return not warming_up((metrics or {}).get("step"), warmup)


def warmup_warning(
    scheduler: Scheduler, budget: Budget, steps_per_epoch: float, warmups: tuple[int, int], where: str
) -> str | None:
    """The line to show before launch when some configs can never be judged: a scheduler judges
    a trial only after its warm-up (``wants_decision``), and the last epoch it may stop one after
    is ``max_epochs - 1``; a warm-up that outlasts it makes the scheduler a spectator."""
    if not scheduler.judges or budget.max_epochs - 1 < budget.min_epochs:
        return None
    word = "epoch" if budget.unit == "epochs" else "round"
    first, last = budget.min_epochs, budget.max_epochs - 1
    last_step = last * steps_per_epoch
    lo, hi = warmups
    if hi <= last_step:
        return None
    who = "no trial" if lo > last_step else f"trials with more than {last_step:.0f} warm-up steps"
    return (
        f"scheduler {scheduler.name} judges trials after {word}s {first}-{last} (about "
        f"{first * steps_per_epoch:.0f}-{last_step:.0f} optimizer steps), but train.warmup_steps goes up to "
        f"{hi} ({where}) and no scheduler judges a trial still warming up: {who} can be stopped early. "
        f"Narrow the warm-up range or raise budget.max_epochs."
    )


# --------------------------------------------------------------------------- MO-ASHA


def moasha_due(rungs: Iterable[int], judged_through: int, epoch: int) -> list[int]:
    """The rungs a judged report at ``epoch`` settles: every rung passed since the trial's last
    judged report. Rungs passed during warm-up are settled once it ends (successive halving's
    rule), else a trial whose warm-up outlasts the rungs would never be judged."""
    return [r for r in rungs if judged_through < r <= epoch]


def moasha_stops(
    due: Iterable[int], me: int, mine: Sequence[float], settled_at: Callable[[int], Iterable[tuple[int, Sequence[float]]]]
) -> bool:
    """``moasha``: at each rung settled now, rank every trial settled there (minimisation points:
    the metric at the rung, then the static cost objectives) and stop trial ``me`` unless it is on
    the rung's front or among the best 1/3 (``pareto.mo_asha_continues``). ``settled_at(rung)``
    gives (trial number, point) of the trials settled there; values from warm-up were never
    settled, so they rank no one. Points are ranked in trial-number order. True = stop."""
    if not all(math.isfinite(v) for v in mine):
        return False
    for rung in due:
        points = [(n, tuple(p)) for n, p in settled_at(rung) if n != me and all(math.isfinite(v) for v in p)]
        points = sorted([*points, (me, tuple(mine))], key=lambda np: np[0])
        at = next(i for i, (n, _) in enumerate(points) if n == me)
        if not mo_asha_continues([p for _, p in points], at, REDUCTION_FACTOR):
            return True
    return False
