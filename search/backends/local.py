"""The ``optuna`` backend: persistent local worker processes driven by one driver process.

Why this shape: the driver alone talks to the Optuna storage and MLflow, so nothing fights over
SQLite; workers are started once (torch imported once, task data cached) and receive trials over a
pipe, so a trial costs a few milliseconds of dispatch instead of a process start. Each worker is
pinned to its own device slot with ``CUDA_VISIBLE_DEVICES`` set before torch is imported.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from attntune.search.engine import FAILED, SearchContext, TrialPlan, cpu_threads_per_trial
from attntune.search.worker import TrialOutcome


def _die_with_parent() -> None:
    """Linux: the worker gets SIGKILL when the driver dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort off Linux
        pass


def worker_main(conn: Connection, env: dict[str, str], index: int) -> None:
    """Worker process: receive trial specs, train, send events; exit on None or a closed pipe."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and ends us
    os.environ.update(env)
    from attntune.search.worker import execute_trial

    conn.send(("ready", -1, {"pid": os.getpid(), "worker": index}))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        number = spec["number"]

        def send(kind: str, payload: Any, number: int = number) -> Any:
            conn.send((kind, number, payload))
            if kind == "report":
                return conn.recv()
            return None

        try:
            outcome = execute_trial(spec, send)
        except (EOFError, OSError, BrokenPipeError):
            return
        conn.send(("done", number, outcome))


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    process: Any = None
    conn: Connection | None = None
    ready: bool = False
    plan: TrialPlan | None = None
    started: float = field(default_factory=time.time)

    def spawn(self, ctx: Any) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, self.env, self.index), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.ready = False
        self.plan = None

    def stop(self) -> None:
        try:
            if self.conn is not None:
                self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        if self.process is not None:
            self.process.join(timeout=2)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=2)


def device_slots(concurrency: int, gpus_per_trial: float, gpu_ids: list[str] | None) -> list[dict[str, str]]:
    """One environment per worker: which devices it may see.

    Without GPUs every worker sees none (``CUDA_VISIBLE_DEVICES`` left alone). With GPUs, worker i
    gets ``k`` whole devices (gpus >= 1) or one device shared by ``floor(1/gpus)`` workers.
    """
    if not gpu_ids:
        return [{} for _ in range(concurrency)]
    envs = []
    if gpus_per_trial >= 1:
        k = int(gpus_per_trial)
        for i in range(concurrency):
            start = (i * k) % len(gpu_ids)
            ids = [gpu_ids[(start + j) % len(gpu_ids)] for j in range(k)]
            envs.append({"CUDA_VISIBLE_DEVICES": ",".join(ids)})
    else:
        for i in range(concurrency):
            envs.append({"CUDA_VISIBLE_DEVICES": gpu_ids[i % len(gpu_ids)]})
    return envs


def max_concurrency(concurrency: int, gpus_per_trial: float, gpu_ids: list[str] | None) -> int:
    """Never over-commit a device: a GPU holds at most floor(1/gpus) trials."""
    if not gpu_ids or gpus_per_trial <= 0:
        return concurrency
    if gpus_per_trial >= 1:
        return min(concurrency, max(1, len(gpu_ids) // int(gpus_per_trial)))
    return min(concurrency, len(gpu_ids) * int(1 / gpus_per_trial + 1e-9))


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x for x in env.split(",") if x.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def run(ctx: SearchContext, options: dict[str, Any]) -> None:
    """Drive the search to its budget with ``concurrency`` local worker processes."""
    job = ctx.job
    progress = options.get("progress")
    gpu_ids: list[str] | None = options.get("gpus")
    if gpu_ids is None and job.resources.gpus > 0:
        gpu_ids = visible_gpus()
    gpus_per_trial = job.resources.gpus if job.resources.gpus > 0 else (1.0 if gpu_ids else 0.0)
    n_workers = max_concurrency(job.concurrency, gpus_per_trial, gpu_ids)
    threads = cpu_threads_per_trial(job)
    envs = device_slots(n_workers, gpus_per_trial, gpu_ids)
    base_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    mpctx = mp.get_context("spawn")
    workers = [Worker(i, {**base_env, **env}) for i, env in enumerate(envs)]
    for w in workers:
        w.spawn(mpctx)
    try:
        while True:
            # Hand trials to idle workers.
            for w in workers:
                if w.ready and w.plan is None and ctx.can_launch():
                    plan = ctx.next_trial()
                    if plan is None:
                        break
                    w.plan = plan
                    if progress:
                        progress.trial_started(plan)
                    w.conn.send(plan.spec(threads, ctx.checkpoint_dir(plan)))
            if ctx.done():
                break
            conns = {w.conn: w for w in workers if w.conn is not None}
            for conn in wait(list(conns), timeout=1.0):
                w = conns[conn]
                try:
                    kind, number, payload = conn.recv()
                except (EOFError, OSError):
                    _worker_died(ctx, w, progress)
                    w.spawn(mpctx)
                    continue
                if kind == "ready":
                    w.ready = True
                elif kind == "start":
                    ctx.on_start(number, {**payload, "worker": w.index})
                elif kind == "report":
                    epoch, metrics = payload
                    stop = ctx.on_report(number, epoch, metrics)
                    conn.send(stop)
                    if progress:
                        progress.trial_epoch(number, epoch, metrics)
                elif kind == "done":
                    w.plan = None
                    _finish(ctx, number, payload, progress)
            if progress:
                progress.tick()
    finally:
        for w in workers:
            w.stop()


def _finish(ctx: SearchContext, number: int, outcome: TrialOutcome, progress: Any) -> None:
    if outcome.state == FAILED and ctx.retry(number, outcome) is not None:
        if progress:
            progress.trial_retry(number, outcome)
        return
    state = ctx.on_finish(number, outcome)
    if progress:
        progress.trial_finished(number, state, outcome)


def _worker_died(ctx: SearchContext, w: Worker, progress: Any) -> None:
    """A worker process vanished (killed, host OOM): its trial is FAILED, the search goes on."""
    plan, w.plan = w.plan, None
    if w.process is not None:
        w.process.join(timeout=5)
    code = w.process.exitcode if w.process is not None else None
    if plan is None or plan.number not in ctx.running:
        return
    sig = -code if code is not None and code < 0 else None
    reason = f"worker process died (signal {signal.Signals(sig).name})" if sig else f"worker process exited with code {code}"
    outcome = TrialOutcome(
        FAILED,
        list(plan.history),
        len(plan.history),
        time.time() - plan.started,
        failure_kind="killed",
        failure=reason,
        info=plan.info,
    )
    _finish(ctx, plan.number, outcome, progress)
