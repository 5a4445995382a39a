"""``attntune ui``: the MLflow UI on the store searches write to, opened at the runs tables.

Why a wrapper around ``mlflow server``: the user should not have to repeat the store URI and the
artifact folder (``./mlartifacts`` beside ``mlflow.db``), the server must bind 127.0.0.1, and MLflow
3's UI lands on a GenAI overview, so the useful addresses (each attntune experiment's runs table,
most recent search first) are printed. The server runs in its own process group so Ctrl-C ends it
cleanly (exit 130) instead of leaving a stray server holding the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.job import TrackingConfig
from attntune.search.records import SEARCH_FILTER, open_store, search_all, sqlite_path
from attntune.search.tracking import check_tracking_uri, runs_address

START_TIMEOUT_S = 120.0


class UIError(ConfigError):
    """The UI cannot be started as asked (no store, port in use, server died)."""


@dataclass(frozen=True)
class SearchExperiment:
    """An experiment holding attntune searches, with its most recent search's start time."""

    experiment_id: str
    name: str
    last_start_ms: int
    n_searches: int


def artifacts_folder(uri: str) -> Path:
    """``mlartifacts`` beside the SQLite file (where searches put artifacts), else ``./mlartifacts``."""
    db = sqlite_path(uri)
    return (db.resolve().parent if db else Path.cwd()) / "mlartifacts"


def check_port(host: str, port: int) -> None:
    """Fail with one line before starting anything when the port is taken."""
    if not 0 < port < 65536:
        raise UIError(f"--port {port}: must be between 1 and 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UIError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another port") from None


def search_experiments(uri: str) -> list[SearchExperiment]:
    """Experiments with attntune search runs, most recent search first."""
    client = open_store(uri)
    exps = {e.experiment_id: e.name for e in client.search_experiments()}
    found: dict[str, SearchExperiment] = {}
    ids = list(exps)
    for i in range(0, len(ids), 100):  # a bounded number of experiment ids per request
        for r in search_all(client, ids[i : i + 100], SEARCH_FILTER):
            eid = r.info.experiment_id
            prev = found.get(eid)
            start = int(r.info.start_time or 0)
            if prev is None:
                found[eid] = SearchExperiment(eid, exps.get(eid, eid), start, 1)
            else:
                found[eid] = SearchExperiment(eid, prev.name, max(prev.last_start_ms, start), prev.n_searches + 1)
    return sorted(found.values(), key=lambda e: (-e.last_start_ms, e.name))


def server_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server`` on the given store, serving the local artifact folder."""
    art = artifacts_folder(uri).as_posix()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        art,
        "--artifacts-destination",
        art,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``/health`` until the server answers; fail early when it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"mlflow server exited with code {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # noqa: S310 - our own server
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise UIError(f"mlflow server did not answer at {url} within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """End the server's whole process group (uvicorn workers included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def print_addresses(base: str, uri: str, out: Any = None) -> list[str]:
    """One runs-table address per attntune experiment, most recent search first."""
    out = out or sys.stdout
    exps = search_experiments(uri)
    if not exps:
        print(f"no attntune searches in {uri} yet; they appear at {base}/#/experiments once a search starts", file=out)
    lines = []
    for e in exps:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_start_ms / 1000)) if e.last_start_ms else "?"
        address = runs_address(base, e.experiment_id)
        plural = "es" if e.n_searches != 1 else ""
        print(f"{e.name}: {address}  ({e.n_searches} search{plural}, last {when})", file=out)
        lines.append(address)
    out.flush()
    return lines


def run_ui(
    port: int = 5000,
    tracking_uri: str | None = None,
    host: str = "127.0.0.1",
    *,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Start the UI, print the runs addresses, wait for Ctrl-C / SIGTERM; returns 130 / 143."""
    uri = TrackingConfig(uri=tracking_uri).resolved_uri()
    if uri.startswith(("http://", "https://")):
        # A tracking server already serves its own UI.
        check_tracking_uri(uri)
        print(f"{uri} is an MLflow server with its own UI; runs tables:")
        print_addresses(uri.rstrip("/"), uri)
        return 0
    db = sqlite_path(uri)
    if uri.startswith("sqlite:") and (db is None or not db.is_file()):
        raise UIError(
            f"tracking uri {uri}: no MLflow store here ({db} does not exist); "
            "run a search first, or pass --tracking-uri"
        )
    check_port(host, port)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown_host}:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # MLflow's job runner (GenAI scorers) starts two more Python processes; browsing runs needs none.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
        server_command(uri, host, port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    got_term = {"flag": False}

    def on_term(signum: int, frame: Any) -> None:
        got_term["flag"] = True
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            wait_until_up(base, proc)
        except UIError:
            stop(proc)
            tail = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()[-3:]
            raise UIError(
                f"mlflow server did not start at {base}" + (f": {' | '.join(tail)}" if tail else "")
            ) from None
        _drain(proc)
        print(f"MLflow UI: {base}  (store {uri}, artifacts {artifacts_folder(uri)}; Ctrl-C to stop)", flush=True)
        print_addresses(base, uri)
        if on_ready:
            on_ready(base)
        code = proc.wait()
        print(f"error: mlflow server exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stop(proc)
        print("stopped the MLflow UI", file=sys.stderr)
        return 143 if got_term["flag"] else 130
    finally:
        signal.signal(signal.SIGTERM, old)
        stop(proc)


def _drain(proc: subprocess.Popen) -> None:
    """Keep reading the server's stderr so a chatty server never blocks on a full pipe."""
    import threading

    def loop() -> None:
        if proc.stderr is None:
            return
        for _ in iter(proc.stderr.readline, b""):
            pass

    threading.Thread(target=loop, name="mlflow-server-stderr", daemon=True).start()
