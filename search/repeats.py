"""Never train the same config twice: a sample that repeats a trained trial is answered from it.

Samplers propose configs they have already seen, often on small categorical spaces (TPE and NSGA-II
on a grid of choices). When a sample's config (every ``model.*`` and ``train.*`` value, the training
seed and the epochs included) equals a trial this driver has seen finish COMPLETE or PRUNED, the
driver answers it from that trial: Optuna is told the same intermediate values and the same result,
the child run is tagged ``duplicate_of=<trial>``, and nothing is trained. The repeat is a trial for
the sampler, but it uses no training budget (``budget.n_trials`` counts trained trials).

A repeat of a trial still running waits for it (it is *parked*, no worker is given to it) and is
answered when that trial ends; if that trial fails, the repeat is trained after all. A repeat of a
FAILED trial is trained (the failure may not repeat). After ``attntune resume`` the finished trials
of the study are known again; a driver that joined a shared study knows the trials it saw. When the
sampler proposes only repeats, ``MAX_CONSECUTIVE_REPEATS`` in a row, the space is taken as
exhausted and the search stops sampling (a grid's last points, a tiny categorical space).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from attntune.model.config import ModelConfig, RunConfig, TrainConfig, to_dict
from attntune.search.outcome import TrialState

ATTR_DUPLICATE = "duplicate_of"
# Attributes a repeat takes from the trial it repeats (its result, not its timing).
COPIED = (
    "epochs_run", "best_value", "last_value", "attntune_state", "stopped_epoch", "feasible",
    "constraint_violations", "objective_values", "latency_ms", "best_val_bleu", "failure", "failure_kind",
)  # fmt: skip
MAX_CONSECUTIVE_REPEATS = 30  # a sampler that only repeats itself has (about) exhausted the space


def config_key(cfg: RunConfig) -> str:
    """What makes two trials the same training: every model and train setting (the seed and the
    epochs included). The task is the search's, the same for every trial."""
    return json.dumps({"model": to_dict(cfg.model), "train": to_dict(cfg.train)}, sort_keys=True, default=str)


def key_of_attrs(config: dict[str, Any] | None) -> str | None:
    """``config_key`` of a trial from its ``config`` user attr (dotted ``model.*``/``train.*``);
    fields the attr lacks (a study from before they existed) take their defaults, as then."""
    if not config:
        return None
    model = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("model.")}
    train = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("train.")}
    model = {**to_dict(ModelConfig()), **model}
    train = {**to_dict(TrainConfig()), **train}
    return json.dumps({"model": model, "train": train}, sort_keys=True, default=str)


@dataclass
class Parked:
    """A repeat of a trial still running, waiting for its answer (RUNNING in Optuna, no run yet)."""

    trial: Any  # optuna.trial.Trial
    trial_id: int
    values: dict[str, Any]
    config: RunConfig
    n_params: int


@dataclass
class Repeats:
    """The trials a sample may repeat, by ``config_key``."""

    done: dict[str, int] = field(default_factory=dict)  # a COMPLETE or PRUNED trial's number
    running: dict[str, int] = field(default_factory=dict)
    parked: dict[int, list[Parked]] = field(default_factory=dict)  # by the running trial they repeat
    streak: int = 0  # repeats in a row: the sampler may have exhausted the space

    def learn(self, trials: list[Any]) -> None:
        """The finished trials of a study (a resumed or joined search)."""
        for t in trials:
            key = key_of_attrs(t.user_attrs.get("config"))
            state = t.user_attrs.get("attntune_state")
            if key is not None and state in (TrialState.COMPLETE, TrialState.PRUNED) and t.state.is_finished():
                self.done.setdefault(key, t.number)

    def started(self, number: int, cfg: RunConfig) -> None:
        self.running.setdefault(config_key(cfg), number)

    def ended(self, number: int, cfg: RunConfig, state: TrialState) -> list[Parked]:
        """Trial ``number`` ended; returns the repeats parked on it (to answer, or to train)."""
        key = config_key(cfg)
        if self.running.get(key) == number:
            del self.running[key]
        if state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.done.setdefault(key, number)
        return self.parked.pop(number, [])

    def original(self, cfg: RunConfig) -> tuple[int, bool] | None:
        """(trial number, finished) of the trial ``cfg`` repeats, or None."""
        key = config_key(cfg)
        if key in self.done:
            return self.done[key], True
        if key in self.running:
            return self.running[key], False
        return None

    def park(self, number: int, parked: Parked) -> None:
        self.parked.setdefault(number, []).append(parked)

    def all_parked(self) -> list[Parked]:
        return [p for group in self.parked.values() for p in group]
