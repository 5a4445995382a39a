"""What a Ray Tune trial runs: ``execute_trial`` (the same pure trial function as the local
backend) with its reports forwarded to ``ray.tune.report``.

Why a separate module: Ray pickles the trainable by reference, so workers import this module and
nothing else of the driver's: the trial function (``worker``), which itself loads torch and the
training code inside the trial, once per (reused) actor.

How a trial talks back to the driver (``ray_backend.TrialEvents`` reads these results):

- every epoch: ``tune.report({**metrics, "epoch": e, "training_iteration": e, ...})`` with the
  metrics as reported (``METRICS_KEY``) and the in-trial seconds so far (``SECONDS_KEY``); the
  first report also carries the worker's start info (host, pid, device, node id) under
  ``START_KEY``. The job's metric is always present (NaN when an epoch produced none) because
  Ray's schedulers require it; ``training_iteration`` is the epoch, so schedulers count epochs
  even for a trial that resumed from its checkpoint after a pause;
- the scheduler stops a trial by making ``tune.report`` end the training thread, so a pruned trial
  simply stops reporting;
- a failed trial (exception, NaN loss, out of memory) sends one last result with the failure under
  ``FAILURE_KEY`` and returns normally, so its actor is reused (raising would make Ray replace
  the actor, a process start per failure). Only a dying actor surfaces as a Ray trial error.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

from attntune.search.outcome import TrialState
from attntune.search.worker import execute_trial, warm_up

SECONDS_KEY = "attntune_seconds"
METRICS_KEY = "attntune_metrics"
START_KEY = "attntune_start"
FAILURE_KEY = "attntune_failure"
FINAL_KEY = "attntune_final"  # measured after training (latency_ms), sent as one last result
# Driver environment variables a trial needs (the fault-injection hook); sent with each trial spec
# because a reused actor, or one on another node, does not share the driver's environment.
FORWARDED_ENV = ("ATTNTUNE_FAULTS",)


def _apply_env(env: dict[str, str]) -> None:
    for key in FORWARDED_ENV:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, str | int | float | bool)}


def _mark_resumed_run(spec: dict[str, Any], ray_trial_id: str) -> None:
    """Ray resumes a paused trial by running this function again, and training then resumes from
    the trial's checkpoint. Every checkpointed epoch of this Ray trial was already reported (a
    pause happens at a report), so the epochs ``execute_trial`` replays for a *retry* (whose
    last report may have been lost) must not be sent again. The Ray trial id, written beside the
    checkpoint folder on the first run, tells a resumed run from a retry (a new Ray trial)."""
    ckpt = spec.get("checkpoint_dir")
    if not ckpt:
        return
    mark = Path(f"{ckpt}.ray-trial")
    with contextlib.suppress(OSError):
        if mark.exists() and mark.read_text(encoding="utf-8") == ray_trial_id:
            spec["seen_epoch"] = 1 << 30
            return
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(ray_trial_id, encoding="utf-8")


def train_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable. ``config`` is the trial spec (``backends.base.trial_spec``) plus
    ``metric`` and ``env``."""
    import ray  # Ray's runtime: in its actors only (this module is imported by the driver too)
    from ray import tune

    spec = dict(config)
    metric = spec.pop("metric")
    _apply_env(spec.pop("env", None) or {})
    _mark_resumed_run(spec, tune.get_context().get_trial_id())
    # Imports and data loading happen once per actor, outside the trial's clock (as the local
    # backend's workers do before their first trial); a bad task fails inside execute_trial.
    with contextlib.suppress(Exception):
        warm_up(spec["config"].get("task"))
    t0 = time.perf_counter()
    start: dict[str, Any] = {}
    last_epoch = 0
    last_metric = math.nan

    def send(kind: str, payload: Any) -> bool:
        nonlocal last_epoch, last_metric
        if kind == "start":
            start.update(payload)
            with contextlib.suppress(Exception):
                start["node_id"] = ray.get_runtime_context().get_node_id()
            with contextlib.suppress(Exception):  # the GPUs Ray assigned (CUDA_VISIBLE_DEVICES follows)
                start["gpu_ids"] = ",".join(str(g) for g in ray.get_gpu_ids())
            return False
        if kind != "report":
            return False
        epoch, metrics = payload
        result: dict[str, Any] = {
            **metrics,
            "epoch": int(epoch),
            "training_iteration": int(epoch),
            METRICS_KEY: dict(metrics),
            SECONDS_KEY: time.perf_counter() - t0,
        }
        if metric not in result:
            result[metric] = math.nan
        if last_epoch == 0:
            result[START_KEY] = _plain(start)
        last_epoch = int(epoch)
        last_metric = result[metric]
        # Blocks until the driver has seen the result; ends this thread if the scheduler stops us.
        tune.report(result)
        return False  # Ray's scheduler decides; the training loop never stops itself

    outcome = execute_trial(spec, send)
    if outcome.state == TrialState.FAILED:
        failure = {
            "failure_kind": outcome.failure_kind or "exception",
            "failure": outcome.failure or "trial failed",
            "seconds": outcome.seconds,
            "epochs_run": outcome.epochs_run,
            "reported": last_epoch > 0,  # this run of the trainable reported epochs (seconds overlap)
            "info": _plain({**start, **outcome.info}),
        }
        tune.report(
            {
                metric: math.nan,
                "epoch": last_epoch,
                "training_iteration": last_epoch,
                SECONDS_KEY: outcome.seconds,
                FAILURE_KEY: failure,
            }
        )
    elif "latency_ms" in outcome.info:
        tune.report(
            {
                metric: last_metric,
                "epoch": last_epoch,
                "training_iteration": last_epoch,
                SECONDS_KEY: outcome.seconds,
                FINAL_KEY: {"latency_ms": float(outcome.info["latency_ms"])},
            }
        )
