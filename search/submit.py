"""Scale-out: submit a search as a Ray job or detached on this machine, and manage submitted jobs.

Why two kinds of job behind one command set: ``attntune submit JOB.yaml --address http://HOST:8265``
hands the search to a Ray cluster through Ray's Job Submission API (the driver runs on the
cluster, trials on its nodes), while ``attntune submit JOB.yaml`` starts the same search detached
on this machine. ``attntune jobs list|status|logs|stop`` work on both: with ``--address`` (or
``RAY_ADDRESS``) they ask the cluster, otherwise they read this folder's job registry
(``attntune-runs/.jobs/<id>.json``).

What travels to a cluster: the job file (``working_dir``, with a relative ``task.path`` data file
beside it) and attntune's own code (``py_modules``: the namespace package ``attntune`` rebuilt
from the installed ``attntune.search``/``model``/``spaces``/``dashboards`` folders). Its
dependencies (torch, Optuna, MLflow, Ray) must be installed on the cluster. A submitted search
logs to the tracking server named in the job, never to a file on the submitter's machine.

A local job runs under a small supervisor process (``python -m attntune.search.submit supervise``)
in its own session: it starts ``attntune run``, records its exit code, and turns ``jobs stop``
(SIGTERM) into a SIGTERM for the search, which ends its running trials KILLED.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.job import load_job
from attntune.search.run import preflight
from attntune.search.tracking import is_local_store

PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = (SUCCEEDED, FAILED, STOPPED)
PACKAGES = ("search", "model", "spaces", "dashboards")  # attntune.<name>, see pyproject package-dir
# Ray sends SIGTERM on `jobs stop`, then SIGKILL after this many seconds (its default is 3): the
# driver needs the time to end its running trials' runs KILLED on the tracking server.
STOP_GRACE_S = 60
JOBS_DIR_ENV = "ATTNTUNE_JOBS_DIR"


def _server_uri(job: Any, tracking_uri: str | None) -> str:
    """The tracking URI a submitted job will use: a server, or a one-line ConfigError."""
    uri = tracking_uri or job.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            "tracking.uri: not set; a search submitted to a cluster logs to a tracking server "
            "(set tracking.uri in the job or pass --tracking-uri http://HOST:PORT)"
        )
    if is_local_store(uri):
        raise ConfigError(
            f"tracking.uri: {uri} is a file on this machine; a search submitted to a cluster logs to a "
            "tracking server (set tracking.uri in the job or pass --tracking-uri http://HOST:PORT)"
        )
    return uri


def new_job_id(name: str) -> str:
    """``attntune-<name>-<YYYYmmdd-HHMMSS>-<hex>``: sortable, unique, valid as a Ray submission id."""
    return f"attntune-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- submit


@dataclass
class Submitted:
    job_id: str
    address: str | None  # None: a local job
    log: Path | None = None


def submit(
    job_file: Path,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    output: Path | None = None,
    storage: str | None = None,
    backend: str | None = None,
    gpus: str | None = None,
    report: bool = True,
) -> Submitted:
    """Validate the job, then hand it to a Ray cluster (``address``) or start it detached here."""
    if address:
        backend = backend or "ray"
        if gpus:
            raise ConfigError(f"--gpus: a cluster at {address} assigns its own GPUs (set resources.gpus in the job)")
    job = load_job(job_file, backend=backend, tracking_uri=tracking_uri, output=output)
    args = ["--tracking-uri", tracking_uri] if tracking_uri else []
    if output:
        args += ["--output", str(output)]
    if storage:
        args += ["--storage", storage]
    if backend:
        args += ["--backend", backend]
    if not report:
        args += ["--no-report"]
    if address:
        uri = _server_uri(job, tracking_uri)
        if not tracking_uri:
            args = ["--tracking-uri", uri, *args]
        return _submit_ray(job, Path(job_file), address, args)
    if gpus:
        args += ["--gpus", gpus]
    return _submit_local(job, Path(job_file), args, storage)


def _package_dirs() -> dict[str, Path]:
    """Where this installation's attntune subpackages live (an editable install or site-packages)."""
    import importlib.util

    out = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(f"attntune.{name}")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"attntune.{name}: not importable here, cannot ship it to the cluster")
        out[name] = Path(next(iter(spec.submodule_search_locations)))
    return out


def stage_runtime_env(job: Any, job_file: Path, job_id: str, folder: Path) -> dict[str, Any]:
    """Build the Ray runtime env in ``folder``: the job file (and a relative data file) as the
    working dir, attntune's code as one ``py_modules`` entry named ``attntune``."""
    work = folder / "work"
    work.mkdir(parents=True)
    (work / "job.yaml").write_text(job.source_text or job_file.read_text(encoding="utf-8"), encoding="utf-8")
    # A unique file makes a unique working dir on the cluster: the search writes its output
    # folder there, and Ray shares one extracted working dir between jobs with equal content.
    (work / ".attntune-submission").write_text(job_id + "\n", encoding="utf-8")
    data = job.base.task.path
    if data and not Path(data).is_absolute() and ".." not in Path(data).parts and Path(data).is_file():
        target = work / data
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data, target)
    pkg = folder / "pkg" / "attntune"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for name, src in _package_dirs().items():
        shutil.copytree(src, pkg / name, ignore=ignore)
    return {
        "working_dir": str(work),
        "py_modules": [str(pkg)],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
        },
    }


def ray_client(address: str | None) -> Any:
    """A JobSubmissionClient for the dashboard at ``address`` (default ``RAY_ADDRESS``)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - ray[default] is a dependency
        raise ConfigError(f"--address: Ray's job submission needs ray[default] ({e})") from None
    _enable_ray_token_auth()
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection refused, bad address, no dashboard
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"--address {address or os.environ.get('RAY_ADDRESS', '')}: cannot reach the Ray dashboard ({first})") from None


def _enable_ray_token_auth() -> None:
    """Send Ray's auth token when one is on this machine (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``)
    and ``RAY_AUTH_MODE`` is unset, as ``ray start`` does: clusters started next to a token
    require it. ``RAY_AUTH_MODE=disabled`` or ``token`` is respected as set."""
    import logging

    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - older or newer Ray without token auth
        return
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception:  # noqa: BLE001 - best effort; the dashboard's answer says what is missing
        pass
    finally:
        log.setLevel(level)


def _submit_ray(job: Any, job_file: Path, address: str, args: list[str]) -> Submitted:
    client = ray_client(address)
    job_id = new_job_id(job.name)
    entrypoint = shlex.join(["python", "-m", "attntune.search.cli", "run", "job.yaml", *args])
    import logging

    # No "Uploading package ..." lines: attntune prints the job id and how to follow it.
    quiet = [logging.getLogger(n) for n in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="attntune-submit-") as tmp:
            runtime_env = stage_runtime_env(job, job_file, job_id, Path(tmp))
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"attntune.job": job.name, "attntune.tracking_uri": job.tracking.resolved_uri()},
            )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return Submitted(job_id, address)


# --------------------------------------------------------------------------- local jobs


def jobs_dir() -> Path:
    return Path(os.environ.get(JOBS_DIR_ENV) or Path("attntune-runs") / ".jobs")


def _record_path(job_id: str) -> Path:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ConfigError(f"job id {job_id!r}: not a job id")
    return jobs_dir() / f"{job_id}.json"


def _write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def read_record(job_id: str) -> dict[str, Any] | None:
    path = _record_path(job_id)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _submit_local(job: Any, job_file: Path, args: list[str], storage: str | None) -> Submitted:
    preflight(job)  # output writable, tracking store reachable, data loads: exit 2 before anything
    if not storage and (job.output / "study.db").exists():
        raise ConfigError(
            f"{job.output}: a search named {job.name!r} already exists there; "
            f"continue it with `attntune resume {job.output}` or choose another --output"
        )
    job_id = new_job_id(job.name)
    registry = jobs_dir()
    registry.mkdir(parents=True, exist_ok=True)
    job.output.mkdir(parents=True, exist_ok=True)
    log = (job.output / f"{job_id}.log").resolve()
    command = [sys.executable, "-m", "attntune.search.cli", "run", str(job_file.resolve()), *args]
    record = {
        "id": job_id,
        "job": job.name,
        "command": command,
        "cwd": os.getcwd(),
        "log": str(log),
        "output": str(job.output.resolve()),
        "tracking_uri": job.tracking.resolved_uri(),
        "submitted": time.time(),
    }
    path = registry / f"{job_id}.json"
    _write_record(path, record)
    with open(log, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "attntune.search.submit", "supervise", str(path.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this terminal and its Ctrl-C
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return Submitted(job_id, None, log)


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or None
    when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int | None, start: str | None) -> bool:
    return bool(pid) and _proc_start(int(pid)) is not None and _proc_start(int(pid)) == start


def supervise(record_path: str) -> int:
    """Run the search of a local job and record how it ended (the only writer after submit)."""
    path = Path(record_path)
    record = json.loads(path.read_text(encoding="utf-8"))
    record["supervisor_pid"] = os.getpid()
    record["supervisor_start"] = _proc_start(os.getpid())
    stopping = {"requested": False}
    child: subprocess.Popen | None = None

    def on_term(signum: int, frame: Any) -> None:
        stopping["requested"] = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"attntune: job {record['id']}: {shlex.join(record['command'])}", flush=True)
    child = subprocess.Popen(record["command"], cwd=record["cwd"], stdin=subprocess.DEVNULL)
    record["pid"] = child.pid
    record["started"] = time.time()
    _write_record(path, record)
    if stopping["requested"]:  # SIGTERM arrived before the child existed
        child.send_signal(signal.SIGTERM)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    record["returncode"] = code
    record["ended"] = time.time()
    record["stopped"] = stopping["requested"]
    status = local_status(record)
    _write_record(path, record)
    print(f"attntune: job {record['id']} ended: exit code {code}, {status}", flush=True)
    return 0


def local_status(record: dict[str, Any]) -> str:
    """RUNNING/SUCCEEDED/FAILED/STOPPED (PENDING before the supervisor started) from a record."""
    code = record.get("returncode")
    if code is not None:
        if record.get("stopped"):
            return STOPPED
        return SUCCEEDED if code == 0 else FAILED
    pid = record.get("supervisor_pid")
    if pid is None:
        return PENDING if time.time() - float(record.get("submitted", 0)) < 60 else FAILED
    return RUNNING if _alive(pid, record.get("supervisor_start")) else FAILED


def local_records() -> list[dict[str, Any]]:
    folder = jobs_dir()
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("submitted", 0))


def stop_local(job_id: str, wait: float = 120.0) -> str:
    """SIGTERM the job's supervisor (which forwards it to the search); wait for the end."""
    record = _require_local(job_id)
    deadline = time.time() + wait
    while local_status(record) == PENDING and time.time() < deadline:
        time.sleep(0.2)
        record = _require_local(job_id)
    if local_status(record) != RUNNING:
        return local_status(record)
    os.kill(int(record["supervisor_pid"]), signal.SIGTERM)
    while time.time() < deadline:
        record = _require_local(job_id)
        status = local_status(record)
        if status in TERMINAL:
            return status
        time.sleep(0.3)
    return local_status(_require_local(job_id))


def _require_local(job_id: str) -> dict[str, Any]:
    record = read_record(job_id)
    if record is None:
        raise ConfigError(f"job {job_id}: no such job in {jobs_dir()} (and no --address given)")
    return record


def follow_file(path: Path, done: Any, out: Any = None, poll: float = 0.5) -> None:
    """Print ``path`` and what is appended to it until ``done()`` is true and nothing is left."""
    out = out or sys.stdout
    pos = 0
    while True:
        finished = done()
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()
        if finished and not chunk:
            return
        if not chunk:
            time.sleep(poll)


# --------------------------------------------------------------------------- jobs commands


def _use_ray(job_id: str | None, address: str | None) -> bool:
    """Ray when ``--address`` is given; else a local job when the registry has it; else RAY_ADDRESS."""
    if address:
        return True
    if job_id is not None and read_record(job_id) is not None:
        return False
    return bool(os.environ.get("RAY_ADDRESS"))


def _ray_call(fn: Any, job_id: str) -> Any:
    try:
        return fn()
    except RuntimeError as e:
        text = str(e)
        if "does not exist" in text or "404" in text:
            raise ConfigError(f"job {job_id}: no such job on the cluster") from None
        raise


def job_rows(address: str | None) -> list[dict[str, Any]]:
    """One row per job: id, status, job name, start and end (seconds since the epoch)."""
    rows = []
    if address or os.environ.get("RAY_ADDRESS"):
        for d in ray_client(address).list_jobs():
            if not d.submission_id:
                continue
            rows.append(
                {
                    "id": d.submission_id,
                    "status": str(getattr(d.status, "value", d.status)),
                    "job": (d.metadata or {}).get("attntune.job", ""),
                    "start": (d.start_time or 0) / 1000 or None,
                    "end": (d.end_time or 0) / 1000 or None,
                    "where": "cluster",
                }
            )
    if not address:
        for r in local_records():
            rows.append(
                {
                    "id": r["id"],
                    "status": local_status(r),
                    "job": r.get("job", ""),
                    "start": r.get("started") or r.get("submitted"),
                    "end": r.get("ended"),
                    "where": "local",
                }
            )
    return sorted(rows, key=lambda r: r["start"] or 0)


def job_status(job_id: str, address: str | None) -> tuple[str, str]:
    """(status, message)."""
    if _use_ray(job_id, address):
        client = ray_client(address)
        info = _ray_call(lambda: client.get_job_info(job_id), job_id)
        return str(getattr(info.status, "value", info.status)), info.message or ""
    record = _require_local(job_id)
    status = local_status(record)
    msg = f"exit code {record['returncode']}" if record.get("returncode") is not None else f"log: {record['log']}"
    return status, msg


def job_logs(job_id: str, address: str | None, follow: bool) -> None:
    if _use_ray(job_id, address):
        client = ray_client(address)
        if not follow:
            sys.stdout.write(_ray_call(lambda: client.get_job_logs(job_id), job_id))
            return
        import asyncio

        _ray_call(lambda: client.get_job_status(job_id), job_id)

        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                sys.stdout.write(lines)
                sys.stdout.flush()

        asyncio.run(tail())
        return
    record = _require_local(job_id)
    log = Path(record["log"])
    if not follow:
        sys.stdout.write(log.read_text(encoding="utf-8", errors="replace") if log.exists() else "")
        return
    follow_file(log, lambda: local_status(_require_local(job_id)) in TERMINAL)


def job_stop(job_id: str, address: str | None, wait: bool = True, timeout: float = 180.0) -> str:
    """Stop a job (SIGTERM to the search; its running trials end KILLED); returns the status."""
    if _use_ray(job_id, address):
        client = ray_client(address)
        _ray_call(lambda: client.stop_job(job_id), job_id)
        deadline = time.time() + timeout
        status = str(client.get_job_status(job_id).value)
        while wait and status not in TERMINAL and time.time() < deadline:
            time.sleep(0.5)
            status = str(client.get_job_status(job_id).value)
        return status
    return stop_local(job_id, wait=timeout if wait else 0.0)


def format_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    print("usage: python -m attntune.search.submit supervise RECORD.json", file=sys.stderr)
    sys.exit(2)
