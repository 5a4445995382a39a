"""What runs inside a trial, on either backend: a pure function of the trial spec and a reporter.

No MLflow, no Optuna, no globals beyond a per-process cache of loaded task data (so a persistent
worker does not re-read and re-tokenise the corpus for every trial). torch is imported inside the
functions that train, so a worker process can set ``CUDA_VISIBLE_DEVICES`` before torch loads, and
the driver (which loads task data through ``load_task_cached``) never imports it.

Test-only fault injection (``ATTNTUNE_FAULTS``, ``search.faults``) fires here, in the trial.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from attntune.model.config import TaskConfig, load_dataclass, load_run_config
from attntune.model.data import load_task
from attntune.search.faults import InjectedFault, SimulatedOOM, trial_fault
from attntune.search.outcome import TrialOutcome, TrialState

_TASK_CACHE: dict[str, Any] = {}


def load_task_cached(task_dict: dict[str, Any]) -> Any:
    """Load a task once per process (keyed by its settings)."""
    key = json.dumps(task_dict, sort_keys=True, default=str)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = load_task(load_dataclass(TaskConfig, task_dict))
    return _TASK_CACHE[key]


def warm_up(task_dict: dict[str, Any] | None) -> None:
    """Import what a trial needs and load its data, so the first trial starts warm."""
    import sacrebleu  # noqa: F401 - imported once per worker, outside any trial's clock

    import attntune.model.train  # noqa: F401 - torch: only in worker processes, never the driver

    if task_dict is not None:
        load_task_cached(task_dict)


def failure_kind_of(exc: BaseException) -> str:
    """Classify an exception for the ``failure_kind`` tag."""
    name = type(exc).__name__
    text = str(exc).lower()
    if isinstance(exc, SimulatedOOM) or name in ("OutOfMemoryError", "MemoryError") or "out of memory" in text:
        return "oom"
    if name == "DivergedError" and "loss_ceiling" in text:
        return "diverged"  # the loss stayed above train.loss_ceiling after warmup
    if name == "DivergedError" or "nan" in text and "loss" in text:
        return "nan"
    return "exception"


class _Reporter:
    """Adapts the training loop's reporter protocol to a backend callback."""

    def __init__(self, spec: dict[str, Any], send: Callable[[str, Any], Any], fault: tuple[str, int | None] | None):
        self.spec = spec
        self.send = send
        self.fault = fault
        self.history: list[dict[str, float]] = []
        self.info: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def start(self, info: dict[str, Any]) -> None:
        self.info = {
            **info,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            # seconds since the attempt began (config, data, model built): the driver dates the
            # trial's start from it, so the trial's own set-up counts as the trial's time
            "setup_s": round(time.perf_counter() - self.t0, 4),
        }
        self.send("start", self.info)
        self._replay_checkpointed_epochs(int(info.get("resumed_from_epoch") or 0))

    def _replay_checkpointed_epochs(self, resumed: int) -> None:
        """Training saves an epoch's checkpoint before reporting it, so an attempt that died in
        between leaves an epoch the driver never saw; a retry resumed past it reports it first."""
        seen = int(self.spec.get("seen_epoch") or 0)
        if resumed <= seen or not self.spec.get("checkpoint_dir"):
            return
        from attntune.model.checkpoint import load_train_state  # torch: worker processes only

        state = load_train_state(self.spec["checkpoint_dir"]) or {}
        for epoch, metrics in enumerate(state.get("history", []), start=1):
            if seen < epoch <= resumed:
                self.report(epoch, dict(metrics))

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        if self.fault and self.fault[0] == "nan" and epoch >= (self.fault[1] or 1):
            from attntune.model.train import DivergedError  # torch: worker processes only

            raise DivergedError(f"loss became nan at epoch {epoch} (injected fault)")
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.history.append({"epoch": epoch, **metrics})
        stop = bool(self.send("report", (epoch, metrics)))
        return stop


def execute_trial(spec: dict[str, Any], send: Callable[[str, Any], Any]) -> TrialOutcome:
    """Train one trial. ``send(kind, payload)`` forwards "start"/"report" events to the driver;
    for "report" it returns True when the trial must stop (pruned)."""
    from attntune.model.train import train  # torch: worker processes only

    t0 = time.perf_counter()
    fault = trial_fault(int(spec["number"]), int(spec.get("attempt", 1)))
    reporter = _Reporter(spec, send, fault)
    try:
        if fault and fault[0] == "kill":
            os.kill(os.getpid(), 9)
        if fault and fault[0] == "raise":
            raise InjectedFault(f"injected exception in trial {spec['number']}")
        if fault and fault[0] == "oom":
            raise SimulatedOOM("CUDA out of memory (simulated by ATTNTUNE_FAULTS)")
        run = load_run_config(spec["config"])
        data = load_task_cached(spec["config"]["task"])
        train_cfg = run.train
        if spec.get("threads") and train_cfg.num_threads is None:
            train_cfg = replace(train_cfg, num_threads=int(spec["threads"]))
        result = train(
            run.model,
            train_cfg,
            data,
            reporter,
            checkpoint_dir=spec.get("checkpoint_dir"),
            resume=True,
        )
        epochs = result.epochs_run
        state = TrialState.PRUNED if result.stopped_early else TrialState.COMPLETE
        if spec.get("measure_latency") and state == TrialState.COMPLETE:
            reporter.info["latency_ms"] = measure_latency_ms(result.model, data, train_cfg)
        return TrialOutcome(state, reporter.history, epochs, time.perf_counter() - t0, info=reporter.info)
    except Exception as e:  # noqa: BLE001 - every failure is recorded, the search goes on
        tb = traceback.format_exc(limit=6)
        msg = f"{type(e).__name__}: {e}"
        return TrialOutcome(
            TrialState.FAILED,
            reporter.history,
            len(reporter.history),
            time.perf_counter() - t0,
            failure_kind=failure_kind_of(e),
            failure=msg if len(msg) < 500 else msg[:500],
            info={**reporter.info, "traceback": tb[-2000:]},
        )


def measure_latency_ms(model: Any, data: Any, train_cfg: Any, n: int = 8) -> float:
    """Median milliseconds to translate one validation sentence at batch 1 on the trial's device
    (greedy with the KV cache, as ``attntune translate`` does), after one untimed warm-up."""
    import statistics

    import torch

    from attntune.model.train import autocast_for  # torch: worker processes only
    from attntune.model.transformer import greedy_decode  # torch: worker processes only

    device = next(model.parameters()).device
    pairs = list(data.val[:n]) or list(data.train[:n])
    model.eval()
    times = []
    with torch.no_grad():
        for i, (src, _tgt) in enumerate([pairs[0], *pairs]):
            x = torch.tensor([list(src)], device=device)
            max_len = train_cfg.max_decode_len or 2 * x.shape[1] + 10
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast_for(device, train_cfg.bf16):
                greedy_decode(model, x, data.tgt_tok.bos_id, data.tgt_tok.eos_id, max_len)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 4)
