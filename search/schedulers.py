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


SCHEDULERS.register("none", Scheduler("none", _none_pruner, _none_ray, description="train every trial to max_epochs"))
SCHEDULERS.register(
    "asha",
    Scheduler("asha", _asha_pruner, _asha_ray, sha_rungs, bandit=True, description="asynchronous successive halving"),
)
SCHEDULERS.register(
    "hyperband",
    Scheduler("hyperband", _hyperband_pruner, _hyperband_ray, sha_rungs, bandit=True, description="Hyperband brackets of successive halving"),
)
SCHEDULERS.register(
    "median",
    Scheduler("median", _median_pruner, _median_ray, description="stop below the median of earlier trials at the same epoch"),
)
