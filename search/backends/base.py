"""The contract every backend keeps, and what the backends share instead of copying.

A backend decides *where* trials run. ``run_search`` calls ``prepare`` before the driver opens the
study (so workers import torch and load the data meanwhile), then ``run`` until the driver says the
search is done, and ``shutdown`` whatever happens. The driver (``search.driver.Driver``) decides
what runs and writes every record; a backend only moves trial specs out and events back in:

- ``driver.next_trial()`` -> ``driver.launched(trial)`` -> the trial spec (``trial_spec``) to a worker;
- the worker's events -> ``driver.on_start``, ``driver.on_report`` (its verdict goes back when the
  scheduler judges that epoch: ``schedulers.wants_decision``), ``driver.on_finish``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attntune.model.config import to_dict
from attntune.search.job import SearchJob
from attntune.search.outcome import RunningTrial

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class BackendOptions:
    """What ``attntune run`` passes a backend besides the job."""

    gpus: list[str] | None = None  # --gpus: the devices to use (None: what the job asks for)
    address: str | None = None  # --address: a Ray cluster


class Driving(Protocol):
    """What a backend may ask of the driver (``search.driver.Driver``)."""

    job: SearchJob
    running: dict[int, RunningTrial]

    def can_launch(self) -> bool: ...
    def done(self) -> bool: ...
    def next_trial(self) -> RunningTrial | None: ...
    def launched(self, rt: RunningTrial) -> None: ...
    def decision_window(self, rt: RunningTrial) -> tuple[int, int, int] | None: ...
    def on_start(self, number: int, info: dict[str, Any], began: float | None = None) -> None: ...
    def on_report(self, number: int, epoch: int, metrics: dict[str, float], decide: bool = True) -> bool: ...
    def verdict(self, number: int, epoch: int, metrics: dict[str, float]) -> bool: ...
    def on_finish(self, number: int, outcome: Any) -> Any: ...


class Backend(Protocol):
    """Where trials run: local worker processes (``optuna``) or Ray Tune (``ray``)."""

    def prepare(self, job: SearchJob, options: BackendOptions) -> Any:
        """Start what trials need (workers, Ray) before the study opens; bad resources exit 2 here."""

    def run(self, driver: Driving, prepared: Any) -> None:
        """Run trials until ``driver.done()``; ``prepared`` is what ``prepare`` returned."""

    def shutdown(self, prepared: Any) -> None:
        """Stop what ``prepare`` started (idempotent)."""


def cpu_threads_per_trial(job: SearchJob) -> int:
    """Torch threads per trial: the job's cpus, never more than this machine shares out."""
    n = max(1, int(job.resources.cpus))
    return min(n, max(1, (os.cpu_count() or 1) // max(1, job.concurrency)))


def checkpoint_dir(job: SearchJob, number: int, *, always: bool = False) -> Path | None:
    """Where trial ``number`` checkpoints its epochs (absolute: Ray actors run in their own
    folders): only when a failed trial may be retried from them, or ``always`` (a scheduler that
    pauses trials resumes them from it)."""
    if job.retries <= 0 and not always:
        return None
    return (job.output / CHECKPOINTS / f"t{number:03d}").resolve()


def trial_spec(driver: Driving, rt: RunningTrial, threads: int | None, *, checkpoints: bool = False,
               decide: bool = True) -> dict[str, Any]:  # fmt: skip
    """What a worker needs to train ``rt`` (``worker.execute_trial``): plain data, picklable."""
    job = driver.job
    ckpt = checkpoint_dir(job, rt.number, always=checkpoints)
    window = driver.decision_window(rt) if decide else None
    return {
        "number": rt.number,
        "decide": list(window) if window else None,  # epochs the scheduler judges (wants_decision)
        "config": to_dict(rt.config),
        "attempt": rt.attempt,
        "threads": threads,
        "checkpoint_dir": str(ckpt) if ckpt else None,
        # Epochs the driver already holds: a retry resumed from a later checkpoint reports the ones
        # in between (checkpointed, but their report was lost with the failed attempt).
        "seen_epoch": rt.seen_epoch,
        "measure_latency": job.uses("latency_ms"),  # latency_ms is an objective or constraint
        "baseline": rt.baseline,  # never stopped early (Ray's schedulers are told by WarmupGate)
    }
