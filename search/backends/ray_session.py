"""Starting, joining and stopping the Ray a search runs on (the ``ray`` backend's ``prepare``).

A local Ray binds 127.0.0.1 and is shut down by the search that started it; a cluster
(``--address``) is checked before ``ray.init`` (which would retry for minutes) and left running.
Everything is checked before the study or an MLflow run is created, so an unreachable address or a
cluster without the GPUs the job asks for exits 2 leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from attntune.model.config import ConfigError
from attntune.search.backends.base import BackendOptions
from attntune.search.job import SearchJob

# Ray loggers that would print on the user's terminal about things attntune reports itself.
QUIET_LOGGERS = {
    "ray.tune": logging.CRITICAL,
    "ray.train": logging.ERROR,
    "ray.air": logging.ERROR,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


@dataclass
class RaySession:
    """The Ray this search uses; ``started`` when attntune called ``ray.init`` (so it shuts it down)."""

    started: bool
    address: str | None
    resources: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def quiet_ray_logs() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """A local Ray's servers (GCS, raylet, agents) bind 127.0.0.1, not the machine's address.

    Ray picks a node's address with ``ray_constants.ENABLE_RAY_CLUSTER`` (False means "loopback
    only", Ray's own default on macOS and Windows). The flag is set only while ``ray.init`` runs,
    so a later ``ray.init(address=...)`` in this process still finds its routable address.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without this switch: its default address
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def prepare(job: SearchJob, options: BackendOptions) -> RaySession:
    """Connect to (or start) Ray and check the job's resources fit, before anything is written.

    Called by ``run_search`` before the study and MLflow runs are created, so an unreachable
    ``--address`` or a cluster without the GPUs the job asks for exits 2 leaving nothing behind.
    """
    import ray

    address = options.address or os.environ.get("RAY_ADDRESS") or None
    gpus = options.gpus
    if ray.is_initialized():
        session = RaySession(started=False, address=None)
    else:
        if address and gpus:
            raise ConfigError(
                f"--gpus: only applies to a Ray that attntune starts; the cluster at {address} "
                "assigns its own GPUs (set resources.gpus in the job)"
            )
        term = signal.getsignal(signal.SIGTERM)  # ray.init installs its own SIGTERM handler
        try:
            with quiet_ray_logs():
                if address:
                    _connect(ray, address)
                else:
                    _start_local(ray, gpus)
        finally:
            restore_signals({signal.SIGTERM: term})
        session = RaySession(started=True, address=address)
    try:
        session.resources = {k: float(v) for k, v in ray.cluster_resources().items()}
        _check_resources(job, session)
    except BaseException:
        shutdown(session)
        raise
    return session


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would retry for minutes).

    ``auto`` and ``local`` are Ray's own keywords and are left to it."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT (or auto)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def restore_signals(handlers: dict[Any, Any]) -> None:
    """Put back the handlers ``ray.init`` and Tune replace (only the main thread may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _connect(ray: Any, address: str) -> None:
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--address {address}: cannot connect to the Ray cluster ({first})") from None


def _start_local(ray: Any, gpus: list[str] | None) -> None:
    env = {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    kwargs: dict[str, Any] = {}
    if gpus is not None:
        # Ray hands out the devices it was started with: exactly the ones the user named.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        kwargs["num_gpus"] = len(gpus)
    with scoped_env(env), loopback_node():
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
            **kwargs,
        )


def _check_resources(job: Any, session: RaySession) -> None:
    """A trial that can never be placed would leave Ray Tune waiting forever: refuse it now."""
    have_cpu = session.resources.get("CPU", 0.0)
    have_gpu = session.resources.get("GPU", 0.0)
    problems = []
    if job.resources.cpus > have_cpu:
        problems.append(
            f"resources.cpus: {job.resources.cpus:g} per trial, but the Ray cluster has {have_cpu:g} CPUs"
        )
    if job.resources.gpus > have_gpu:
        problems.append(
            f"resources.gpus: {job.resources.gpus:g} per trial, but the Ray cluster has {have_gpu:g} GPUs"
        )
    if problems:
        raise ConfigError(problems, job.source_path)


def shutdown(session: RaySession | None) -> None:
    """Stop (or disconnect from) Ray only if this search started it."""
    if session is None or not session.started:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
    session.started = False
