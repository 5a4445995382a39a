"""What runs inside a trial, on either backend: a pure function of the trial spec and a reporter.

No MLflow, no Optuna, no globals beyond a per-process cache of loaded task data (so a persistent
worker does not re-read and re-tokenise the corpus for every trial). Heavy imports happen inside
functions so a worker process can set ``CUDA_VISIBLE_DEVICES`` before torch is imported.

Fault injection (tests only): ``ATTNTUNE_FAULTS`` = ``"3:raise,5:nan@2,7:oom,9:kill"`` makes trial
3 raise, trial 5 report a NaN loss at epoch 2, trial 7 raise a simulated out-of-memory error and
trial 9 kill its own worker process. Each fault fires on the first attempt only, so a retry can
succeed. Documented in docs/RELIABILITY.md.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAULTS_ENV = "ATTNTUNE_FAULTS"

_TASK_CACHE: dict[str, Any] = {}


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook."""


class SimulatedOOM(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` in fault-injection tests."""


@dataclass
class TrialOutcome:
    """What a trial hands back to the driver."""

    state: str  # COMPLETE | PRUNED | FAILED
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    seconds: float = 0.0
    failure_kind: str | None = None
    failure: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def parse_faults(text: str | None) -> dict[int, tuple[str, int | None]]:
    """``"3:raise,5:nan@2"`` -> {3: ("raise", None), 5: ("nan", 2)}."""
    out: dict[int, tuple[str, int | None]] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        number, _, kind = part.partition(":")
        kind, _, at = kind.partition("@")
        out[int(number)] = (kind.strip(), int(at) if at else None)
    return out


def wants_decision(decide: Sequence[int] | None, epoch: int, metrics: Mapping[str, float] | None = None) -> bool:
    """Whether the scheduler may stop a trial after this report: ``decide`` = [first, end,
    warmup_steps]: epochs first <= epoch < end are judged, and never while the learning-rate
    warmup runs (the report's ``step`` <= warmup_steps: a trial still warming up is not yet
    comparable). None: the scheduler never stops trials. The worker waits for the driver's
    verdict only when this holds, so unjudged epochs cost no round trip; the driver applies the
    same rule to the same report."""
    if decide is None or not decide[0] <= epoch < decide[1]:
        return False
    warmup = decide[2] if len(decide) > 2 else 0
    step = (metrics or {}).get("step")
    return step is None or float(step) > warmup


def load_task_cached(task_dict: dict[str, Any]) -> Any:
    """Load a task once per process (keyed by its settings)."""
    import json

    from attntune.model.config import TaskConfig, load_dataclass
    from attntune.model.data import load_task

    key = json.dumps(task_dict, sort_keys=True, default=str)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = load_task(load_dataclass(TaskConfig, task_dict))
    return _TASK_CACHE[key]


def warm_up(task_dict: dict[str, Any] | None) -> None:
    """Import what a trial needs and load its data, so the first trial starts warm."""
    import sacrebleu  # noqa: F401

    import attntune.model.train  # noqa: F401

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
        from attntune.model.checkpoint import load_train_state

        state = load_train_state(self.spec["checkpoint_dir"]) or {}
        for epoch, metrics in enumerate(state.get("history", []), start=1):
            if seen < epoch <= resumed:
                self.report(epoch, dict(metrics))

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        if self.fault and self.fault[0] == "nan" and epoch >= (self.fault[1] or 1):
            from attntune.model.train import DivergedError

            raise DivergedError(f"loss became nan at epoch {epoch} (injected fault)")
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.history.append({"epoch": epoch, **metrics})
        stop = bool(self.send("report", (epoch, metrics)))
        return stop


def execute_trial(spec: dict[str, Any], send: Callable[[str, Any], Any]) -> TrialOutcome:
    """Train one trial. ``send(kind, payload)`` forwards "start"/"report" events to the driver;
    for "report" it returns True when the trial must stop (pruned)."""
    from attntune.model.config import load_run_config
    from attntune.model.train import train

    t0 = time.perf_counter()
    fault = parse_faults(os.environ.get(FAULTS_ENV)).get(int(spec["number"])) if spec.get("attempt", 1) == 1 else None
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
            from dataclasses import replace

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
        state = "PRUNED" if result.stopped_early else "COMPLETE"
        if spec.get("measure_latency") and state == "COMPLETE":
            reporter.info["latency_ms"] = measure_latency_ms(result.model, data, train_cfg)
        return TrialOutcome(state, reporter.history, epochs, time.perf_counter() - t0, info=reporter.info)
    except Exception as e:  # noqa: BLE001 - every failure is recorded, the search goes on
        tb = traceback.format_exc(limit=6)
        msg = f"{type(e).__name__}: {e}"
        return TrialOutcome(
            "FAILED",
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

    from attntune.model.train import _autocast
    from attntune.model.transformer import greedy_decode

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
            with _autocast(device, train_cfg.bf16):
                greedy_decode(model, x, data.tgt_tok.bos_id, data.tgt_tok.eos_id, max_len)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 4)


def is_finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
