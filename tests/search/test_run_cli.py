"""What a person sees while a search runs, and what `attntune resume` does to a finished search,
through the installed command line (real processes, real MLflow and Optuna stores)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from attntune.search.outcome import TrialState
from attntune.search.progress import Progress
from attntune.search.study_store import load_study
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job


def _parent(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`attntune.kind` = 'search'")
    assert len(runs) == 1
    return client, runs[0]


def test_resume_of_a_finished_search_changes_nothing_and_more_trials_extend_it(
    tmp_path: Path, mlflow_template: Path
) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    job = write_job(tmp_path, tiny_job("fin", tracking=uri, budget={"n_trials": 2, "max_epochs": 1}))
    first = attntune_cli("run", str(job), "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "attntune-runs" / "fin"
    client, parent = _parent(uri, "fin")
    report_mtime = (out / "report.html").stat().st_mtime_ns
    db_before = (out / "study.db").read_bytes()

    again = attntune_cli("resume", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is finished" in again.stderr and "--more-trials" in again.stderr
    _, same = _parent(uri, "fin")
    assert same.info.end_time == parent.info.end_time and same.info.status == "FINISHED"
    assert len(client.get_metric_history(parent.info.run_id, "wall_seconds")) == 1  # no second summary
    assert (out / "report.html").stat().st_mtime_ns == report_mtime
    assert (out / "study.db").read_bytes() == db_before

    more = attntune_cli("resume", str(out), "--more-trials", "2", "-q", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    _, extended = _parent(uri, "fin")  # the same parent run, extended
    assert extended.info.run_id == parent.info.run_id and extended.info.status == "FINISHED"
    assert extended.data.tags["attntune.extended"] == "n_trials=4"
    assert extended.data.metrics["n_trials"] == 4
    study = load_study(out)
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4

    spent = attntune_cli("resume", str(out), "--time-limit", "1m", cwd=tmp_path)
    assert spent.returncode == 2 and "--more-trials" in spent.stderr and "Traceback" not in spent.stderr


def test_progress_shows_skipped_configs_epochs_and_a_scheduler_that_cannot_act(tmp_path: Path, mlflow_template: Path) -> None:
    """--verbose off a terminal: one line per epoch; a sample over max_params is shown as
    skipped; a warm-up longer than the epochs ASHA may judge is warned about before launch."""
    uri = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job(
        "prog", tracking=uri, scheduler="asha", budget={"n_trials": 2, "max_epochs": 3, "min_epochs": 1},
        max_params=6000, train={"warmup_steps": 50},
    )  # fmt: skip
    r = attntune_cli("run", str(write_job(tmp_path, raw)), "--verbose", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"warning: scheduler asha judges trials after epochs 1-2 \(about 6-12 optimizer steps\), "
                     r"but train\.warmup_steps goes up to 50 \(train\.warmup_steps\).*no trial can be stopped early", r.stderr)  # fmt: skip
    assert re.search(r"skip   t\d{3} infeasible, never trained: n_params=\d+ exceeds max_params=6000", r.stderr)
    assert re.search(r"ep     t\d{3} 1/3 val_loss=\d", r.stderr) and re.search(r"ep     t\d{3} 3/3 val_loss=\d", r.stderr)


def test_a_terminal_shows_running_trials_live(tmp_path: Path, mlflow_template: Path) -> None:
    """On a terminal the running trials' epochs appear while they train (a live panel)."""
    uri = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job("live", tracking=uri, budget={"n_trials": 1, "max_epochs": 3}, train={"max_steps_per_epoch": 20})
    job = write_job(tmp_path, raw)
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    cmd = [sys.executable, "-c", "from attntune.search.cli import main; main()", "run", str(job), "--no-report"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert proc.returncode == 0, text[-2000:]
    assert re.search(r"t000 d\d+ h\d .*ep 1/3", text), text[-3000:]  # seen while the trial trained


def _progress(done_seconds: list[float], target: int, time_left: float | None, concurrency: int = 2) -> Progress:
    job = SimpleNamespace(metric="val_loss", mode="min", concurrency=concurrency, budget=SimpleNamespace(unit="epochs"))
    budget = SimpleNamespace(target=lambda: target, time_left=lambda: time_left)
    p = Progress(SimpleNamespace(job=job, budget=budget, running={}), quiet=True)
    p.counts[TrialState.COMPLETE] = len(done_seconds)
    p.seconds = list(done_seconds)
    return p


def test_the_time_left_never_exceeds_the_time_limit() -> None:
    """A 30-minute search of 60 trials whose first trial took 270 s: not "~4:28:31 left"."""
    assert _progress([270.0], 60, time_left=1500.0).time_left() == (1500.0, True)
    assert _progress([270.0], 60, time_left=None).time_left() == (59 * 270.0 / 2, False)
    assert _progress([10.0, 20.0], 4, time_left=1500.0).time_left() == (15.0, False)
    assert "(time limit)" in _progress([270.0], 60, time_left=1500.0).status()
