"""Whether a sampled config may be trained at all, and whether the scheduler can act on it,
decided before anything is built.

A config over ``max_params``, one that misses a static constraint (``n_params``, ``flops``), or
one whose memory estimate exceeds a trial's share is INFEASIBLE: recorded, never trained, and it
does not use up one of ``budget.n_trials``. Everything here works from the config and the task's
vocabulary sizes alone (``model.cost``), so the driver never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attntune.model.config import RunConfig
from attntune.model.cost import n_params
from attntune.model.data import steps_per_round
from attntune.search.job import SearchJob
from attntune.search.memory import memory_problem
from attntune.search.objectives import static_values
from attntune.search.schedulers import SCHEDULERS, warmup_warning

MAX_CONSECUTIVE_INFEASIBLE = 200


@dataclass(frozen=True)
class Feasibility:
    """The checks of one search: its job, the task's vocabulary sizes and longest sequence, and
    the memory a trial may use (``search.memory.trial_memory_limit``)."""

    job: SearchJob
    vocab: tuple[int, int]
    max_tokens: int
    memory_limit: tuple[int, str] | None
    on_gpu: bool

    def n_params(self, cfg: RunConfig) -> int:
        return n_params(cfg.model, *self.vocab)

    def statics(self, cfg: RunConfig, count: int) -> dict[str, float]:
        """What is known of a config before it is built: n_params, forward FLOPs per token."""
        return static_values(cfg.model, count, self.vocab, self.max_tokens)

    def problem(self, cfg: RunConfig, count: int) -> str | None:
        """Why ``cfg`` must not be trained, or None."""
        job = self.job
        if job.max_params is not None and count > job.max_params:
            return f"n_params={count} exceeds max_params={int(job.max_params)}"
        if job.launch_constraints:
            values = self.statics(cfg, count)
            for c in job.launch_constraints:
                if c.violation(values[c.name]) > 0:
                    return f"{c.name}={values[c.name]:.4g} violates the constraint {c}"
        return memory_problem(cfg, self.vocab, self.max_tokens, self.memory_limit, cuda=self.on_gpu)


def launch_warnings(job: SearchJob, data: Any) -> list[str]:
    """What the user should know before the search starts: a warm-up range that outlasts the
    epochs a scheduler may judge (``schedulers.warmup_warning``), measured on the task's data."""
    params = {p.name: p for p in job.space.params}
    train = job.base.train
    warm = params.get("train.warmup_steps")
    lo, hi = (min(warm.extremes()), max(warm.extremes())) if warm else (train.warmup_steps, train.warmup_steps)
    batch = params.get("train.batch_size")
    size = int(max(batch.extremes())) if batch else train.batch_size  # the fewest steps per epoch
    steps = steps_per_round(
        data.train, size, train.batch_unit, train.max_steps_per_epoch, train.round_tokens, train.round_steps
    )
    where = f"space {job.space.name}" if warm else "train.warmup_steps"
    line = warmup_warning(SCHEDULERS.get(job.scheduler), job.budget, steps, (int(lo), int(hi)), where)
    return [x for x in (line, costly_sampler(job)) if x]


GP_TRIALS = 200  # beyond this Optuna's GP sampler refits a model whose cost grows with every trial


def costly_sampler(job: SearchJob) -> str | None:
    """A sampler whose own cost per trial grows steeply with the study (Optuna's GP: a Gaussian
    process refit on every trial) asked for more trials than it serves cheaply."""
    if job.strategy != "gp" or job.budget.n_trials <= GP_TRIALS:
        return None
    return (
        f"strategy gp refits a Gaussian process on every trial, so its cost per trial grows with the study "
        f"(minutes per trial by several hundred trials); n_trials={job.budget.n_trials} is past {GP_TRIALS}: "
        "tpe stays cheap at 1,000 trials"
    )

