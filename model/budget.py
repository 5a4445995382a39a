"""A run's length and learning rate: the batch stream, compute budgets, the schedule and the clock.

Why apart from the loop (model/train.py): these decide *how much* a run trains and at what rate,
as pure functions of the recipe, the data and the budget; the search side and ``attntune train``
size runs with them (``schedule_steps``, ``token_budget_recipe``) without touching the loop.

An "epoch" is one pass over the training data unless ``train_cfg.round_tokens`` or ``round_steps``
is set: then it is a *round* of that many target tokens (or optimizer steps) drawn from a continuing
stream of shuffled batches (``BatchStream``), so models with different batch sizes get the same
budget and a search places its rungs in tokens.

A production run may add a compute budget (``RunBudget``, ``attntune train --max-tokens/--time-limit``):
exactly ``max_tokens`` target tokens (the last batch is cut to fit; the schedule's length is the exact
step count of that many tokens), and/or a ``time_limit_s`` after which training stops at the next step
boundary, with a cosine schedule that decays over the time (see ``Clock``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from attntune.model.config import ConfigError, TrainConfig
from attntune.model.data import TaskData, batch_indices


def epoch_batches(data: TaskData, cfg: TrainConfig, epoch: int, per_epoch: int) -> list[list[int]]:
    """Data epoch ``epoch``'s shuffled batches (seeded by the recipe's seed and the epoch), cut to
    ``per_epoch``: the same in epoch mode, in a round's stream and when a resume recounts tokens."""
    seed = cfg.seed * 100_003 + epoch
    return batch_indices(data.train, cfg.batch_size, cfg.batch_unit, shuffle=True, seed=seed)[:per_epoch]


class BatchStream:
    """Training batches epoch after epoch of the data, each data epoch reshuffled with the seed an
    epoch-mode run uses for it; ``position`` (data epoch, next batch) is all a resume needs."""

    def __init__(self, data: TaskData, cfg: TrainConfig, per_epoch: int, position: tuple[int, int] = (1, 0)):
        self.data, self.cfg, self.per_epoch = data, cfg, per_epoch
        self.data_epoch, self.index = position
        self._batches: list[list[int]] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.data_epoch, self.index

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> list[int]:
        if self._batches is None or self.index >= len(self._batches):
            if self._batches is not None:
                self.data_epoch, self.index = self.data_epoch + 1, 0
            self._batches = epoch_batches(self.data, self.cfg, self.data_epoch, self.per_epoch)
        idx = self._batches[self.index]
        self.index += 1
        return idx


@dataclass(frozen=True)
class RunBudget:
    """A production run's compute budget, on top of its recipe (``attntune train --max-tokens/--time-limit``).

    ``max_tokens``: train exactly this many target tokens (padding excluded), in rounds of
    ``train.round_tokens`` (``token_budget_recipe`` sets them); the batch that crosses the budget is cut
    to the tokens left, and the learning-rate schedule spans the exact number of steps those tokens take.

    ``time_limit_s``: stop at the first step boundary once the time left is what the last evaluation and
    checkpoint took (so the final ones end about on time); that last, partial epoch is evaluated,
    reported and checkpointed as usual. The clock starts with training (data loading and MLflow logging
    are not counted). A cosine schedule decays by the larger of its step progress and the share of the
    time used after warm-up, so it reaches 0 when the time runs out whichever budget binds; warm-up,
    ``inverse_sqrt`` and ``constant`` are the recipe's. ``open_ended``: the time limit alone bounds the
    run (``train.epochs`` does not); a round recipe (``round_tokens``/``round_steps``) still sets what one
    reported epoch is.
    """

    max_tokens: int | None = None
    time_limit_s: float | None = None
    open_ended: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and self.max_tokens <= 0:
            problems.append(f"max_tokens: must be > 0, got {self.max_tokens}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            problems.append(f"time_limit: must be > 0, got {self.time_limit_s}")
        if self.open_ended and (self.time_limit_s is None or self.max_tokens is not None):
            problems.append("open_ended: only a time limit alone leaves the number of epochs open")
        if problems:
            raise ConfigError(problems)


def token_budget_recipe(cfg: TrainConfig, max_tokens: int, rounds: int | None = None) -> TrainConfig:
    """The recipe of a run of exactly ``max_tokens`` target tokens: reported in rounds of tokens.

    A recipe with ``round_tokens`` (a config exported from a token-budget search) keeps its round size
    unless ``rounds`` is given; otherwise ``rounds`` (default ``train.epochs``) rounds of
    ceil(max_tokens / rounds) tokens. ``epochs`` becomes the number of rounds.
    """
    if max_tokens <= 0:
        raise ConfigError(f"max_tokens: must be > 0, got {max_tokens}")
    if cfg.round_steps is not None:
        raise ConfigError(
            f"train.round_steps: {cfg.round_steps} counts rounds in steps; a token budget needs rounds in "
            "tokens (remove train.round_steps)"
        )
    if cfg.round_tokens is not None and rounds is None:
        size = cfg.round_tokens
    else:
        size = -(-max_tokens // (rounds or cfg.epochs))
    return replace(cfg, round_tokens=size, epochs=-(-max_tokens // size))


def _steps_for_tokens(data: TaskData, cfg: TrainConfig, per_epoch: int, max_tokens: int) -> int:
    """Optimizer steps that train exactly ``max_tokens`` target tokens: the batch stream, walked
    ahead (indices only, no tensors), so the schedule ends on the run's last step."""
    lengths = [len(t) - 1 for _, t in data.train]
    stream = BatchStream(data, cfg, per_epoch)
    steps = tokens = 0
    while tokens < max_tokens:
        tokens += sum(lengths[i] for i in next(stream))
        steps += 1
    return steps


def schedule_steps(cfg: TrainConfig, data: TaskData, budget: RunBudget | None = None) -> int | None:
    """Optimizer steps the learning-rate schedule spans (None: open-ended, sized by the time limit)."""
    n_batches = len(batch_indices(data.train, cfg.batch_size, cfg.batch_unit))
    steps_per_epoch = min(n_batches, cfg.max_steps_per_epoch or n_batches)
    return _total_steps(cfg, data, n_batches, steps_per_epoch, budget)


def _total_steps(
    cfg: TrainConfig, data: TaskData, n_batches: int, steps_per_epoch: int, budget: RunBudget | None = None
) -> int | None:
    """Optimizer steps of the whole run, for the schedule: exact for epochs, ``round_steps`` and a
    token budget; for ``round_tokens`` estimated from the mean target tokens of a batch; None for a
    time limit alone (the clock sizes the schedule then)."""
    if budget is not None and budget.max_tokens is not None:
        return _steps_for_tokens(data, cfg, steps_per_epoch, budget.max_tokens)
    if budget is not None and budget.open_ended:
        return None
    if cfg.round_steps is not None:
        return cfg.round_steps * cfg.epochs
    if cfg.round_tokens is not None:
        per_batch = sum(len(t) - 1 for _, t in data.train) / max(n_batches, 1)
        return max(1, math.ceil(cfg.round_tokens / max(per_batch, 1.0))) * cfg.epochs
    return steps_per_epoch * cfg.epochs


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None, min_progress: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (1-based); ``cfg.lr`` is the peak, reached at warmup's end.

    A cosine schedule's progress is at least ``min_progress`` (the share of a time limit used, see
    ``Clock``); ``total_steps`` None means the time alone sizes it.
    """
    warm = cfg.warmup_steps
    if warm and step <= warm:
        return cfg.lr * step / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(warm, 1) / max(step, 1))
    # cosine: from the peak at the end of warmup down to 0 at the last step
    by_steps = (step - warm) / max(1, total_steps - warm) if total_steps is not None else 0.0
    progress = min(1.0, max(by_steps, min_progress))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class Clock:
    """A run's time limit: when training must stop, and how much of the time a cosine schedule has used.

    Why the schedule follows the clock: a run stopped by time at a high learning rate ends with a
    worse model than the same time spent on a schedule that had decayed; steps per second are not
    known in advance (and differ between machines), elapsed time is. The share is measured from the
    end of warm-up to the stop time and never goes back, so the learning rate only falls.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()
        self.reserve = 0.0  # what the last evaluation + checkpoint took: kept free for the final ones
        self.warm_end: float | None = None
        self.progress = 0.0

    def stop_at(self) -> float:
        return self.start + self.seconds - self.reserve

    def expired(self) -> bool:
        return time.perf_counter() >= self.stop_at()

    def schedule_progress(self, step: int, warmup_steps: int) -> float:
        if step <= warmup_steps:
            return 0.0
        now = time.perf_counter()
        if self.warm_end is None:
            self.warm_end = now
        span = self.stop_at() - self.warm_end
        share = 1.0 if span <= 0 else (now - self.warm_end) / span
        self.progress = max(self.progress, min(1.0, share))
        return self.progress
