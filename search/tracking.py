"""The one object that writes to MLflow, from the search driver, with explicit run ids.

Why: parallel trials that each open their own MLflow run fight over the active-run state and the
SQLite file ("Run already active", "database is locked"), and every MLflow call pays a fixed cost
(a run lookup, checks and a commit) whatever it carries. Here a single writer thread owns every
MLflow call; a run's metrics, params and tags are coalesced into one ``log_batch`` call per run
within MLflow's limits (1000 metrics, 100 params, 100 tags per call), written before any other call
so the order of writes is kept; a locked database is retried with back-off. Trial code never
touches MLflow.
"""

from __future__ import annotations

import math
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from attntune.model.config import ConfigError

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_LEN = 6000
FLUSH_INTERVAL_S = 0.5

# Tags (docs/conventions.md and docs/mlflow.md).
TAG_KIND = "attntune.kind"  # "search" | "trial" | "train"
TAG_STATE = "attntune.state"
TAG_TRIAL = "attntune.trial_number"
TAG_SEARCH = "attntune.search_run_id"
TAG_JOB = "attntune.job"
TAG_LICENSE = "data.license"
TAG_BASELINE = "attntune.baseline"  # on a baseline trial's run: which repeat (0, 1, ...)
TAG_FAMILY_START = "attntune.family_start"  # on a family start's run: its family (job_sections.family_starts)


class TrackingError(ConfigError):
    """The tracking store cannot be used (unreachable server, unwritable SQLite folder)."""


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any MLflow call, when the store cannot be reached (within ``timeout_s``)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = uri.split(":///", 1)[-1] if ":///" in uri else ""
        if path in ("", ":memory:"):
            return
        db = Path(path).expanduser().resolve()
        folder = db.parent
        if not folder.exists():
            raise TrackingError(f"tracking uri {uri}: folder {folder} does not exist")
        if not db.exists() and writable_problem(folder):
            raise TrackingError(f"tracking uri {uri}: folder {folder} is not writable ({writable_problem(folder)})")
        if db.exists() and not os.access(db, os.W_OK):
            raise TrackingError(f"tracking uri {uri}: {db} is not writable")
        return
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s

        def status(path: str) -> int:
            left = max(0.5, deadline - time.monotonic())
            try:
                with urllib.request.urlopen(uri.rstrip("/") + path, timeout=left) as resp:  # noqa: S310 - user's own server
                    return int(resp.status)
            except urllib.error.HTTPError as e:
                return int(e.code)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                raise TrackingError(f"tracking server {uri} is unreachable ({reason})") from None

        code = status("/health")
        # Anything can answer /health with 404 (a proxy, another web app): only an MLflow server
        # also answers its REST API. Without this MLflow's own retries take minutes to give up.
        if code == 404:
            code = status("/api/2.0/mlflow/experiments/search?max_results=1")
            if code == 404:
                raise TrackingError(
                    f"tracking server {uri} is not an MLflow tracking server (HTTP 404 at /health and at its REST API)"
                )
        if code >= 500:
            raise TrackingError(f"tracking server {uri} answered HTTP {code}")
        return
    if scheme in ("postgresql", "postgres", "mysql", "mssql"):
        host, port = parsed.hostname or "localhost", parsed.port or {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError as e:
            raise TrackingError(f"tracking database {host}:{port} is unreachable ({e})") from None
        return
    if scheme in ("", "file"):
        return
    if scheme == "databricks":
        return
    raise TrackingError(f"tracking uri {uri}: unsupported scheme {parsed.scheme!r}")


def writable_problem(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (None if it can). A real probe (a folder made and
    removed at once), not ``os.access``: root passes every access check, yet cannot create files
    under ``/proc`` or on a read-only mount."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".attntune-probe-", dir=folder))
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def is_local_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file", "sqlite")


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """``./mlartifacts/<experiment>`` beside a SQLite store (MLflow's server default folder)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.split(":///", 1)[1]
    if path in ("", ":memory:"):
        return None
    return str((Path(path).expanduser().resolve().parent / "mlartifacts" / experiment).as_posix())


def _is_locked(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}"
    return "database is locked" in text or "database table is locked" in text or isinstance(e, sqlite3.OperationalError) and "locked" in text


class _Pending:
    """What one run's next ``log_batch`` carries."""

    def __init__(self) -> None:
        self.metrics: list[tuple[str, float, int, int]] = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def add(self, kind: str, items: Any) -> None:
        if kind == "metrics":
            self.metrics.extend(items)
        else:
            getattr(self, kind).update(items)

    def changes_a_param(self, kind: str, items: Any) -> bool:
        return kind == "params" and any(self.params.get(k, v) != v for k, v in items.items())

    @property
    def size(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)


class Tracker:
    """Buffered, single-writer MLflow access with explicit run ids (thread-safe)."""

    def __init__(self, uri: str, *, check: bool = True):
        if check:
            check_tracking_uri(uri)
        self.uri = uri
        self._q: queue.Queue[tuple[str, Any, Future | None]] = queue.Queue()
        self._buffer: dict[str, _Pending] = {}  # per run: what the next log_batch carries
        self._errors: list[str] = []
        self._client = None
        self._thread = threading.Thread(target=self._loop, name="attntune-tracker", daemon=True)
        self._closed = False
        self._thread.start()
        self.experiment_id: str | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _retry(self, fn: Callable[[], Any]) -> Any:
        delay = 0.05
        deadline = time.monotonic() + 120
        while True:
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - only "locked" is retried
                if not _is_locked(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _loop(self) -> None:
        while True:
            try:
                op, arg, fut = self._q.get(timeout=FLUSH_INTERVAL_S)
            except queue.Empty:
                self._flush_safe()
                continue
            if op == "buffer":
                run_id, kind, items = arg
                if self._buffer.get(run_id, _Pending()).changes_a_param(kind, items):
                    self._flush_safe()  # MLflow judges a changed param (refused: params are immutable)
                self._buffer.setdefault(run_id, _Pending()).add(kind, items)
                if sum(p.size for p in self._buffer.values()) >= MAX_METRICS_PER_BATCH:
                    self._flush_safe()
                continue
            self._flush_safe()
            if op == "stop":
                if fut:
                    fut.set_result(None)
                return
            try:
                result = self._retry(arg)
                if fut:
                    fut.set_result(result)
            except Exception as e:  # noqa: BLE001 - surfaced to the caller or kept as a warning
                if fut:
                    fut.set_exception(e)
                else:
                    self._errors.append(f"{type(e).__name__}: {e}")

    def _flush_safe(self) -> None:
        try:
            self._flush()
        except Exception as e:  # noqa: BLE001
            self._errors.append(f"log_batch failed: {type(e).__name__}: {e}")

    def _flush(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        while self._buffer:
            run_id, p = self._buffer.popitem()
            metrics = [Metric(k, v, ts, step) for (k, v, ts, step) in p.metrics]
            params = [Param(k, v) for k, v in p.params.items()]
            tags = [RunTag(k, v) for k, v in p.tags.items()]
            # Each call within MLflow's limits: 800 metrics + 100 params + 100 tags = 1000 values.
            per_call = MAX_METRICS_PER_BATCH - MAX_PARAMS_PER_BATCH - MAX_TAGS_PER_BATCH
            calls = max(-(-len(metrics) // per_call), -(-len(params) // MAX_PARAMS_PER_BATCH), -(-len(tags) // MAX_TAGS_PER_BATCH))
            for k in range(calls):
                batch = {
                    "metrics": metrics[k * per_call : (k + 1) * per_call],
                    "params": params[k * MAX_PARAMS_PER_BATCH : (k + 1) * MAX_PARAMS_PER_BATCH],
                    "tags": tags[k * MAX_TAGS_PER_BATCH : (k + 1) * MAX_TAGS_PER_BATCH],
                }
                self._retry(lambda rid=run_id, b=batch: self.client.log_batch(rid, **b))

    def _submit(self, fn: Callable[[], Any], wait: bool = False) -> Any:
        if self._closed:
            raise RuntimeError("tracker is closed")
        fut: Future | None = Future() if wait else None
        self._q.put(("call", fn, fut))
        return fut.result() if fut else None

    def call(self, fn: Callable[[Any], Any], wait: bool = True) -> Any:
        """Run ``fn(client)`` on the writer thread (ordered after everything queued before)."""
        return self._submit(lambda: fn(self.client), wait=wait)

    def flush(self) -> None:
        """Block until everything queued so far is written."""
        self._submit(lambda: None, wait=True)

    def close(self) -> list[str]:
        """Write everything, stop the writer; returns warnings about writes that failed."""
        if not self._closed:
            fut: Future = Future()
            self._q.put(("stop", None, fut))
            fut.result()
            self._closed = True
        return list(self._errors)

    @property
    def errors(self) -> list[str]:
        return list(self._errors)

    # ------------------------------------------------------------------ experiments and runs
    def ensure_experiment(self, name: str, wait: bool = True) -> str | Future:
        """The experiment's id (created if needed). ``wait=False`` returns a Future: a new SQLite
        store runs MLflow's migrations (seconds), which can overlap other start-up work."""

        def fn(c: Any) -> str:
            exp = c.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    c.restore_experiment(exp.experiment_id)
                return exp.experiment_id
            try:
                return c.create_experiment(name, artifact_location=default_artifact_location(self.uri, name))
            except Exception:  # another search created it meanwhile (several started at once)
                exp = c.get_experiment_by_name(name)
                if exp is None:
                    raise
                return exp.experiment_id

        def remember(c: Any) -> str:
            self.experiment_id = fn(c)
            return self.experiment_id

        if not wait:
            fut: Future = Future()
            self._q.put(("call", lambda: remember(self.client), fut))
            return fut
        return self.call(remember)

    def create_run(
        self,
        run_name: str,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        experiment_id: str | None = None,
    ) -> str:
        exp = experiment_id or self.experiment_id
        if exp is None:
            raise RuntimeError("ensure_experiment() first")
        all_tags = {"mlflow.runName": run_name, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})

        def fn(c: Any) -> str:
            run = c.create_run(exp, run_name=run_name, tags=all_tags)
            return run.info.run_id

        run_id = self.call(fn)
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any], wait: bool = False) -> None:
        """Queue params; they go out with the run's next batch (``wait``: before returning)."""
        self._buffered(run_id, "params", {str(k): _param_str(v) for k, v in params.items()}, wait)

    def set_tags(self, run_id: str, tags: Mapping[str, Any], wait: bool = False) -> None:
        """Queue tags (a later value of a key wins); they go out with the run's next batch."""
        self._buffered(run_id, "tags", {str(k): str(v) for k, v in tags.items()}, wait)

    def _buffered(self, run_id: str, kind: str, items: Any, wait: bool) -> None:
        if self._closed:
            raise RuntimeError("tracker is closed")
        if items:
            self._q.put(("buffer", (run_id, kind, items), None))
        if wait:
            self.flush()

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None) -> None:
        """Queue metrics (coalesced into log_batch calls); non-numeric values are dropped."""
        ts = timestamp_ms or int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                items.append((str(k), float(v), ts, int(step)))  # NaN and inf as they are (MLflow takes them)
            except (TypeError, ValueError):
                continue
        if items:
            self._q.put(("buffer", (run_id, "metrics", items), None))

    def end_run(self, run_id: str, status: str = "FINISHED", wait: bool = False) -> None:
        end = int(time.time() * 1000)
        self.call(lambda c: c.set_terminated(run_id, status=status, end_time=end), wait=wait)

    def reopen_run(self, run_id: str) -> None:
        self.call(lambda c: c.update_run(run_id, status="RUNNING"))

    def log_text(self, run_id: str, text: str, artifact_file: str, wait: bool = False) -> None:
        self.call(lambda c: c.log_text(run_id, text, artifact_file), wait=wait)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None, wait: bool = False) -> None:
        self.call(lambda c: c.log_artifact(run_id, str(path), artifact_path), wait=wait)

    def log_dict(self, run_id: str, data: Any, artifact_file: str, wait: bool = False) -> None:
        self.call(lambda c: c.log_dict(run_id, data, artifact_file), wait=wait)


def _param_str(v: Any) -> str:
    if isinstance(v, float):
        s = repr(v) if not math.isfinite(v) else f"{v:.6g}" if abs(v) < 1e-3 or abs(v) >= 1e6 else repr(round(v, 10))
    else:
        s = str(v)
    return s[:MAX_PARAM_LEN]


def runs_address(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the runs table is in the MLflow UI (MLflow 3 otherwise opens a GenAI overview)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else ui
    return f"{base}/#/experiments/{experiment_id}/runs"
