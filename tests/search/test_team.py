"""Team tracking: an MLflow server on PostgreSQL, and several drivers sharing one Optuna study.

Real services only: PostgreSQL at 127.0.0.1:5432 (trust auth; a fresh database per module for
MLflow and per test for Optuna, dropped afterwards) and ``mlflow server`` started here on a free
loopback port. The helpers are reused by ``test_submit_cluster.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from attntune.model.config import ConfigError
from attntune.search.driver import Driver
from attntune.search.job import parse_job
from attntune.search.outcome import TrialOutcome
from tests.conftest import attntune_cli, tiny_job, write_job

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


_GIVEN: set[int] = set()  # ports free_port handed out in this process


def free_port() -> int:
    """A free port on 127.0.0.1, never one handed out before in this process: two draws can
    return the same just-closed port, and a cluster given it twice (Ray's agents) refuses to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database; yields its SQLAlchemy URL, drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the group this test started (by its id), SIGKILL what is left after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a PostgreSQL backend store, proxied artifacts, bound to 127.0.0.1
    (one worker, no job runner: the team setup of docs/scale-out.md, sized for a test)."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until ``url`` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.time() < deadline, f"{url} did not come up"
        time.sleep(0.3)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    proc, uri = start_mlflow_server(backend_uri, artifacts, log)
    try:
        wait_http(uri + "/health", proc, log)
        yield uri
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("team-mlflow")
    with pg_database("attntune_mlflow") as db, mlflow_server(db, folder / "artifacts", folder / "server.log") as uri:
        yield uri


@pytest.fixture
def study_db() -> Iterator[str]:
    with pg_database("attntune_optuna") as db:
        yield db


def test_join_needs_a_tracking_server(workdir: Path) -> None:
    job = write_job(workdir, tiny_job("j"))
    r = attntune_cli("run", str(job), "--join", "--tracking-uri", f"sqlite:///{workdir / 'm.db'}", cwd=workdir, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --join:") and "tracking server" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["job.yaml"]  # nothing written


def test_a_joined_driver_shares_budget_and_parent_but_not_running_trials(
    tmp_path: Path, server: str, study_db: str
) -> None:
    """Two drivers in one process stand for two machines (each registers its host and pid)."""
    raw = tiny_job("share", tracking=server, budget={"n_trials": 3, "max_epochs": 1, "min_epochs": 1})
    first = Driver(parse_job({**raw, "output": str(tmp_path / "a")}), storage=study_db)
    first.open()
    plan_a = first.next_trial()
    assert plan_a is not None and first.budget.counted() == 1

    joined = Driver(parse_job({**raw, "output": str(tmp_path / "b")}), join=True, storage=study_db)
    joined.open()
    assert joined.parent_run_id == first.parent_run_id
    assert joined.pending == []  # the first driver's RUNNING trial is not "left by a dead driver"
    assert joined.budget.counted() == 1  # ... but it uses the shared budget
    plan_b = joined.next_trial()
    assert plan_b is not None and plan_b.number != plan_a.number
    assert first.budget.counted() == 2

    def done(ctx: Driver, plan) -> None:
        ctx.on_finish(plan.number, TrialOutcome("COMPLETE", [{"epoch": 1, "val_loss": 1.0 + plan.number}], 1, 0.1))

    done(joined, plan_b)
    joined.finish()
    joined.close()
    client = MlflowClient(server)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "RUNNING"  # the first driver is still running: the parent stays open

    done(first, plan_a)
    plan_c = first.next_trial()
    done(first, plan_c)
    assert not first.can_launch() and joined.budget.counted() == 3  # the budget is spent, for both
    first.finish()
    first.close()
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials"] == 3 and parent.data.metrics["n_complete"] == 3

    other = parse_job({**raw, "output": str(tmp_path / "c"), "metric": "val_accuracy"})
    with pytest.raises(ConfigError, match="metric"):
        Driver(other, join=True, storage=study_db).open()


def test_two_drivers_finish_the_budget_with_no_trial_done_twice(
    workdir: Path, server: str, study_db: str
) -> None:
    """`attntune run` creates the study and the parent run; `attntune run --join` on "another
    machine" adds its workers; together they run exactly n_trials distinct trials."""
    n = 6
    # Trials of a few seconds, so the first driver cannot spend the budget before the second starts.
    raw = tiny_job(
        "team",
        tracking=server,
        budget={"n_trials": n, "max_epochs": 2, "min_epochs": 1},
        task={"n_train": 2000},
        train={"batch_size": 32, "max_steps_per_epoch": 60},
    )
    job = write_job(workdir, raw)
    base = [sys.executable, "-c", "from attntune.search.cli import main; main()", "run", str(job), "--storage", study_db, "-q"]
    env = {**os.environ, "ATTNTUNE_KEEP_WORKERS": "0"}
    first = subprocess.Popen([*base, "--output", "a"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while True:  # the second machine joins once the study and its parent run exist
        names = []
        with contextlib.suppress(Exception):
            names = optuna.get_all_study_names(study_db)
        if "team" in names and "mlflow_parent_run_id" in optuna.load_study(study_name="team", storage=study_db).user_attrs:
            break
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    second = subprocess.Popen([*base, "--output", "b", "--join"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0, outs[0][1][-3000:]
    assert second.returncode == 0, outs[1][1][-3000:]

    study = optuna.load_study(study_name="team", storage=study_db)
    trials = [t for t in study.trials if t.user_attrs.get("attntune_state") != "INFEASIBLE"]
    assert len(trials) == n and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.number for t in trials}) == n
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # distinct configs

    client = MlflowClient(server)
    exp = client.get_experiment_by_name("team")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("attntune.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == n
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == n
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["attntune.driver"] for r in children}) == 2  # both drivers trained trials
    assert parent.info.end_time >= max(r.info.end_time for r in children)
