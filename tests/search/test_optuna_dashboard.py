"""A search's `study.db` opens in optuna-dashboard (README, docs/mlflow.md).

A tiny real search through the installed `attntune` entry point (which ends with `os._exit`: the
study's write-ahead log must already be folded into `study.db`), then `optuna-dashboard` on a copy of
`study.db` alone, queried through its JSON API: the study, every trial and its state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from attntune.search.study_store import load_study
from tests.conftest import fresh_store, tiny_job, write_job

NAME = "dash"
N_TRIALS = 3
BIN = Path(sys.executable).parent  # the installed entry points: attntune, optuna-dashboard
# Optuna's state names as optuna-dashboard's API spells them.
API_STATE = {"COMPLETE": "Complete", "PRUNED": "Pruned", "FAIL": "Fail", "RUNNING": "Running", "WAITING": "Waiting"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own local server
        body = resp.read()
        return json.loads(body) if resp.headers.get_content_type() == "application/json" else body.decode()


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            return _get(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(f"optuna-dashboard did not answer {url} within {timeout:.0f} s") from None
            time.sleep(0.3)


def test_a_finished_search_opens_in_optuna_dashboard(tmp_path: Path, mlflow_template: Path) -> None:
    fresh_store(mlflow_template, tmp_path)  # ./mlflow.db
    job = write_job(tmp_path, tiny_job(NAME, budget={"n_trials": N_TRIALS, "max_epochs": 1, "min_epochs": 1}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run = subprocess.run(
        [str(BIN / "attntune"), "run", str(job), "-q", "--no-report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "attntune-runs" / NAME
    expected = {t.number: API_STATE[t.state.name] for t in load_study(out).trials}
    assert len(expected) == N_TRIALS

    # study.db alone holds the whole search: the dashboard reads a copy without -wal/-shm files.
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(out / "study.db", alone / "study.db")
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "optuna-dashboard"), f"sqlite:///{alone / 'study.db'}", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the server and its workers stop together
    )
    base = f"http://127.0.0.1:{port}"
    try:
        studies = _wait_for(f"{base}/api/studies", proc)["study_summaries"]
        assert [s["study_name"] for s in studies] == [NAME]
        assert studies[0]["directions"] == ["minimize"]
        attrs = {a["key"]: a["value"] for a in studies[0]["user_attrs"]}
        assert attrs["metric"] == "val_loss" and attrs["job_name"] == NAME
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}")
        assert detail["name"] == NAME
        assert {t["number"]: t["state"] for t in detail["trials"]} == expected
        assert {p["name"] for t in detail["trials"] for p in t["params"]} >= {"model.n_heads", "train.lr"}
        assert "<html" in _get(f"{base}/dashboard").lower()  # the page itself loads
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
