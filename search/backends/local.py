"""The ``optuna`` backend: persistent local worker processes driven by one driver process.

Why this shape: the driver alone talks to the Optuna storage and MLflow, so nothing fights over
SQLite; workers are started once (torch imported once, task data cached) and receive trials over a
pipe, so a trial costs a few milliseconds of dispatch instead of a process start. Each worker is
pinned to its own device slot with ``CUDA_VISIBLE_DEVICES`` set before torch is imported.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from attntune.model.config import to_dict
from attntune.search.backends.base import BackendOptions, Driving, cpu_threads_per_trial, trial_spec
from attntune.search.faults import FAULTS_ENV
from attntune.search.job import SearchJob
from attntune.search.outcome import RunningTrial, failed
from attntune.search.schedulers import wants_decision


@dataclass
class Worker:
    index: int
    env: dict[str, str]
    process: Any = None
    conn: Connection | None = None
    ready: bool = False
    plan: RunningTrial | None = None
    started: float = field(default_factory=time.time)

    task: dict[str, Any] | None = None

    def spawn(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "attntune.search.backends.local_worker", str(child.fileno()), str(self.index)],
            pass_fds=[child.fileno()],
            env=env,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(self.task)
        self.ready = False
        self.plan = None

    def stop(self) -> None:
        try:
            if self.conn is not None:
                self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.conn is not None:
            self.conn.close()
            self.conn = None


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


@dataclass
class Pool:
    workers: list[Worker]
    threads: int
    key: tuple = ()


KEEP_WORKERS_ENV = "ATTNTUNE_KEEP_WORKERS"
MAX_WARM_POOLS = 2
_WARM: dict[tuple, Pool] = {}


def prepare(job: SearchJob, options: BackendOptions) -> Pool:
    """Start the workers early: they import torch and load the data while the driver opens the
    study and MLflow (called by run_search before Driver.open).

    With ``ATTNTUNE_KEEP_WORKERS=1`` idle workers outlive a search and serve the next one in the
    same Python process (notebooks, test suites): no second torch import per search.
    """
    gpu_ids = options.gpus
    if gpu_ids is None and job.resources.gpus > 0:
        gpu_ids = visible_gpus()
    gpus_per_trial = job.resources.gpus if job.resources.gpus > 0 else (1.0 if gpu_ids else 0.0)
    n_workers = max_concurrency(job.concurrency, gpus_per_trial, gpu_ids)
    threads = cpu_threads_per_trial(job)
    envs = device_slots(n_workers, gpus_per_trial, gpu_ids)
    base_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    key = (threads, tuple(tuple(sorted(e.items())) for e in envs), os.environ.get(FAULTS_ENV, ""))
    warm = _WARM.pop(key, None)
    if warm is not None and all(w.conn is not None and w.process.poll() is None for w in warm.workers):
        return warm
    if warm is not None:
        _stop(warm)
    task = to_dict(job.base.task)
    workers = [Worker(i, {**base_env, **env}, task=task) for i, env in enumerate(envs)]
    for w in workers:
        w.spawn()
    pool = Pool(workers, threads, key)
    return pool


def _stop(pool: Pool) -> None:
    for w in pool.workers:
        w.stop()


def shutdown(pool: Pool) -> None:
    """Stop the workers, or keep idle ones warm for the next search (ATTNTUNE_KEEP_WORKERS=1)."""
    keep = os.environ.get(KEEP_WORKERS_ENV) == "1"
    if keep and all(w.plan is None and w.conn is not None for w in pool.workers):
        old = _WARM.pop(pool.key, None)
        if old is not None and old is not pool:
            _stop(old)
        _WARM[pool.key] = pool
        while len(_WARM) > MAX_WARM_POOLS:  # oldest first: dicts keep insertion order
            _stop(_WARM.pop(next(iter(_WARM))))
        return
    _stop(pool)


@atexit.register
def _stop_warm() -> None:
    for pool in _WARM.values():
        _stop(pool)
    _WARM.clear()


def run(driver: Driving, pool: Pool) -> None:
    """Drive the search to its budget with the pool's local worker processes.

    With two or more workers the driver keeps one trial planned ahead (asked, its child run
    created) while all workers train, and hands it over the moment a worker reports done, before
    recording the finished trial: a worker then waits milliseconds between trials instead of the
    time the driver's Optuna and MLflow writes take. The planned trial is RUNNING in the study like
    the others (a sampler treats it as one more trial in flight); at one worker nothing is planned
    ahead, so a sequential search sees every result before its next proposal.
    """
    workers, threads = pool.workers, pool.threads
    plan_ahead = len(workers) > 1
    ahead: RunningTrial | None = None

    def dispatch(w: Worker, rt: RunningTrial) -> None:
        w.plan = rt
        driver.launched(rt)
        w.conn.send(trial_spec(driver, rt, threads))

    while True:
        # Hand trials to idle workers: the one planned ahead first.
        for w in workers:
            if w.ready and w.plan is None:
                if ahead is not None:
                    rt, ahead = ahead, None
                else:
                    rt = driver.next_trial() if driver.can_launch() else None
                if rt is None:
                    break
                dispatch(w, rt)
        if plan_ahead and ahead is None and all(w.plan is not None for w in workers) and driver.can_launch():
            ahead = driver.next_trial()
        if driver.done():
            break
        conns = {w.conn: w for w in workers if w.conn is not None}
        for conn in wait(list(conns), timeout=1.0):
            w = conns[conn]
            try:
                kind, number, payload = conn.recv()
            except (EOFError, OSError):
                _worker_died(driver, w)
                w.spawn()
                continue
            if kind == "ready":
                w.ready = True
            elif kind == "start":
                began = time.time() - float(payload.get("setup_s") or 0.0)
                driver.on_start(number, {**payload, "worker": w.index}, began=began)
            elif kind == "report":
                epoch, metrics = payload
                decide = wants_decision(driver.decision_window(driver.running[number]), epoch, metrics)
                stop = driver.on_report(number, epoch, metrics, decide=decide)
                if decide:
                    conn.send(stop)
            elif kind == "done":
                w.plan = None
                if ahead is not None:  # the worker starts before the driver records this trial
                    dispatch(w, ahead)
                    ahead = None
                driver.on_finish(number, payload)


def _worker_died(driver: Driving, w: Worker) -> None:
    """A worker process vanished (killed, host OOM): its trial is FAILED, the search goes on."""
    rt, w.plan = w.plan, None
    if w.conn is not None:
        w.conn.close()
        w.conn = None
    code = None
    if w.process is not None:
        try:
            code = w.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.process.kill()
            code = w.process.wait(timeout=5)
    if rt is None or rt.number not in driver.running:
        return
    sig = -code if code is not None and code < 0 else None
    reason = f"worker process died (signal {signal.Signals(sig).name})" if sig else f"worker process exited with code {code}"
    driver.on_finish(rt.number, failed(rt.history, time.time() - rt.started, "killed", reason, rt.info))


class LocalBackend:
    """The ``optuna`` backend (``backends.base.Backend``)."""

    prepare = staticmethod(prepare)
    run = staticmethod(run)
    shutdown = staticmethod(shutdown)
