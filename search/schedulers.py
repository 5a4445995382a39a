"""Schedulers (when to stop a trial): Optuna pruners and Ray Tune schedulers behind one registry.

A scheduler judges trials on their per-epoch reports. ``budget.min_epochs`` is the grace period
(first rung); ``budget.max_epochs`` the full budget. Bandit schedulers use reduction factor 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attntune.search.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
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
    # Decided by the search driver (SearchContext.driver_verdict) on both backends rather than
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
