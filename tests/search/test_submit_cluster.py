"""`attntune submit` and `attntune jobs`: a real two-node Ray cluster on loopback and detached local jobs.

The module starts one Ray cluster (a head and a second node, one CPU each, each its own raylet)
with `ray start --block`, so teardown stops exactly the processes this module started, and one
MLflow server on PostgreSQL. Searches are submitted through Ray's Job Submission API; their
results must land on the server, never in the submitter's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from attntune.search.cli import main
from attntune.search.submit import local_status, read_record
from tests.conftest import attntune_cli, fresh_store, sqlite_uri, tiny_job, write_job
from tests.search.test_team import free_port, pg_database, start_mlflow_server, stop_process_group, wait_http

VENV_BIN = str(Path(sys.executable).parent)


@dataclass
class Cluster:
    dashboard: str  # http://127.0.0.1:PORT, what `--address` takes
    tracking: str  # the MLflow server
    env: dict[str, str]  # for CLI subprocesses


def _ray_env() -> dict[str, str]:
    # The cluster's Python is this venv's (`python` in the job's entrypoint); no token auth on
    # this loopback test cluster, whatever ~/.ray holds.
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "disabled"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def _alive_nodes(dashboard: str) -> int:
    with urllib.request.urlopen(f"{dashboard}/nodes?view=summary", timeout=5) as r:
        data = json.load(r)
    return sum(1 for n in data["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE")


def _kill_leftovers(marker: str) -> None:
    """Ray workers outlive a raylet for a moment; kill the ones whose command line names this
    cluster's own temp folder (so never anyone else's Ray)."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid_dir.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    temp = Path(f"/tmp/attntune-ray-{os.getpid()}-{free_port()}")  # short: Ray's socket paths
    env = _ray_env()
    port, dash_port = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash_port}"
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(pg_database("attntune_cluster"))
        server, tracking = start_mlflow_server(db, folder / "artifacts", folder / "mlflow.log")
        stack.callback(stop_process_group, server)
        head_log = folder / "head.log"
        ray = str(Path(VENV_BIN) / "ray")
        common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", "80000000", "--disable-usage-stats"]

        def own_ports() -> list[str]:
            """Each node's agents on free ports: Ray's fixed defaults (52365 ...) would collide
            between the two nodes on one host, or with any other Ray on the machine."""
            out = []
            for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port", "--ray-client-server-port"):
                out += [flag, str(free_port())]
            return out

        with open(head_log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [ray, "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dash_port), "--include-dashboard", "true", "--temp-dir", str(temp), *common, *own_ports()],
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
            )

        def stop_ray() -> None:
            # The cluster is thrown away: no graceful drain (a `ray start --block` takes ~15 s).
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
            _kill_leftovers(str(temp))
            import shutil

            shutil.rmtree(temp, ignore_errors=True)
            shutil.rmtree(f"{temp}-n2", ignore_errors=True)

        stack.callback(stop_ray)
        wait_http(f"{dashboard}/api/version", procs[0], head_log)
        with open(folder / "node2.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    # Its own temp folder: two raylets on one host must not share the folder
                    # where runtime envs are unpacked (each would delete the other's).
                    [ray, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", f"{temp}-n2", *common, *own_ports()],
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
            )
        deadline = time.time() + 240
        while _alive_nodes(dashboard) < 2:
            assert procs[1].poll() is None, (folder / "node2.log").read_text(errors="replace")[-3000:]
            assert time.time() < deadline, "the second Ray node did not join"
            time.sleep(0.5)
        wait_http(tracking + "/health", server, folder / "mlflow.log")
        yield Cluster(dashboard, tracking, env)


def _client(cluster: Cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard)


def _wait_status(cluster: Cluster, job_id: str, want: set[str], timeout: float = 400) -> str:
    client = _client(cluster)
    deadline = time.time() + timeout
    while True:
        status = client.get_job_status(job_id).value
        if status in want:
            return status
        if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
            pytest.fail(f"job {job_id} ended {status}:\n{client.get_job_logs(job_id)[-4000:]}")
        assert time.time() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(1.0)


def _cli(cluster: Cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return attntune_cli(*args, cwd=cwd, env=cluster.env, timeout=400)


def _runs(tracking: str, name: str) -> tuple[list, list]:
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=200)
    return (
        [r for r in runs if r.data.tags.get("attntune.kind") == "search"],
        [r for r in runs if r.data.tags.get("attntune.kind") == "trial"],
    )


def _in_process(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the CLI in this process (no interpreter start): its stdout, after exit code 0."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out.out


def test_submitted_searches_run_on_both_nodes_log_to_the_server_and_stop(
    cluster: Cluster, workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two searches submitted back to back (their drivers start together; the second's trials wait
    for the cluster's two CPUs): the first runs to SUCCEEDED with one trial on each node, the second
    is stopped while training and its running trials end KILLED."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the in-process CLI calls, as the cluster
    short = write_job(
        workdir,
        tiny_job("cluster", backend="ray", concurrency=2, tracking=cluster.tracking, budget={"n_trials": 2, "max_epochs": 1, "min_epochs": 1}),
        "short.yaml",
    )
    long = write_job(
        workdir,
        tiny_job("cluster-stop", backend="ray", concurrency=2, tracking=cluster.tracking, budget={"n_trials": 2, "max_epochs": 200, "min_epochs": 1}),
        "long.yaml",
    )
    ids = []
    for job, extra in ((short, ["--no-report"]), (long, [])):
        r = _cli(cluster, "submit", str(job), "--address", cluster.dashboard, *extra, cwd=workdir)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip().splitlines()[-1])
    done_id, stop_id = ids
    assert done_id.startswith("attntune-cluster-") and stop_id.startswith("attntune-cluster-stop-")
    _wait_status(cluster, done_id, {"SUCCEEDED"})

    status = _cli(cluster, "jobs", "status", done_id, "--address", cluster.dashboard, cwd=workdir)
    assert status.returncode == 0 and status.stdout.strip() == "SUCCEEDED"
    assert _in_process(capsys, "jobs", "logs", done_id, "--address", cluster.dashboard).count("COMPLETE  t") == 2
    listed = _in_process(capsys, "jobs", "list", "--address", cluster.dashboard)
    assert done_id in listed and stop_id in listed and "SUCCEEDED" in listed

    parents, children = _runs(cluster.tracking, "cluster")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.data.tags["attntune.state"] for c in children} == {"COMPLETE"}
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert len({c.data.tags["node_id"] for c in children}) == 2  # one CPU per node: both nodes ran a trial
    assert "results.csv" in {a.path for a in MlflowClient(cluster.tracking).list_artifacts(parents[0].info.run_id)}

    deadline = time.time() + 300
    while True:  # until a trial of the long search has reported an epoch: it is really training
        _, children = _runs(cluster.tracking, "cluster-stop")
        running = [c for c in children if c.info.status == "RUNNING" and c.data.metrics]
        if running:
            break
        assert time.time() < deadline, _client(cluster).get_job_logs(stop_id)[-4000:]
        time.sleep(1.0)
    stop = _cli(cluster, "jobs", "stop", stop_id, "--address", cluster.dashboard, cwd=workdir)
    assert stop.returncode == 0 and stop.stdout.strip() == "STOPPED", stop.stderr
    parents, children = _runs(cluster.tracking, "cluster-stop")
    assert parents[0].info.status == "KILLED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    killed = [c for c in children if c.info.status == "KILLED"]
    assert {c.info.run_id for c in running} <= {c.info.run_id for c in killed}
    assert all(c.data.tags["attntune.state"] == "KILLED" for c in killed)
    assert sorted(p.name for p in workdir.iterdir()) == ["long.yaml", "short.yaml"]  # nothing else on this disk


def test_submit_to_a_cluster_refuses_a_local_tracking_store(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Checked before the cluster is contacted (the address here has nothing listening)."""
    address = f"http://127.0.0.1:{free_port()}"
    for tracking in (None, sqlite_uri(workdir), f"file://{workdir}/mlruns"):
        job = write_job(workdir, tiny_job("local-store", tracking=tracking) if tracking else tiny_job("local-store"))
        with pytest.raises(SystemExit) as e:
            main(["submit", str(job), "--address", address])
        assert e.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: tracking.uri:") and "tracking server" in err[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["job.yaml"]


def test_local_submit_runs_detached_and_jobs_commands_follow_it(
    workdir: Path, mlflow_template: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two detached searches at once (each its own store), one followed to the end, one stopped."""
    short = write_job(
        workdir,
        tiny_job("detached", budget={"n_trials": 2, "max_epochs": 1, "min_epochs": 1}, tracking=fresh_store(mlflow_template, workdir / "a")),
        "short.yaml",
    )
    long_store = fresh_store(mlflow_template, workdir / "b")
    long = write_job(
        workdir,
        tiny_job("detached-stop", budget={"n_trials": 1, "max_epochs": 200, "min_epochs": 1}, tracking=long_store),
        "long.yaml",
    )
    ids = []
    for job in (short, long):
        r = attntune_cli("submit", str(job), cwd=workdir, timeout=120)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    done_id, stop_id = ids
    assert (workdir / "attntune-runs" / ".jobs" / f"{done_id}.json").exists()

    follow = attntune_cli("jobs", "logs", done_id, "--follow", cwd=workdir, timeout=400)
    assert follow.returncode == 0 and follow.stdout.count("COMPLETE  t") == 2 and "SUCCEEDED" in follow.stdout
    assert attntune_cli("jobs", "status", done_id, cwd=workdir).stdout.strip() == "SUCCEEDED"

    client = MlflowClient(long_store)
    deadline = time.time() + 300
    while True:  # until a trial of the long search has reported an epoch
        exp = client.get_experiment_by_name("detached-stop")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        running = [r for r in runs if r.data.tags.get("attntune.kind") == "trial" and r.info.status == "RUNNING" and r.data.metrics]
        if running:
            break
        assert local_status(read_record(stop_id)) == "RUNNING"  # what `jobs status` prints, in-process
        assert time.time() < deadline
        time.sleep(1.0)
    listed = _in_process(capsys, "jobs", "list")
    assert done_id in listed and stop_id in listed and "RUNNING" in listed
    stop = attntune_cli("jobs", "stop", stop_id, cwd=workdir, timeout=200)
    assert stop.returncode == 0 and stop.stdout.strip() == "STOPPED", stop.stderr
    run = client.get_run(running[0].info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["attntune.state"] == "KILLED"
    assert "SIGTERM" in (workdir / "attntune-runs" / "detached-stop" / f"{stop_id}.log").read_text()
    with pytest.raises(SystemExit) as e:
        main(["jobs", "status", "attntune-nope"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: job attntune-nope")
