"""Eight searches at once (eight `attntune run` processes) into ONE SQLite MLflow store, all in the
same experiment: no run and no metric is lost and nobody sees "database is locked".

SQLite allows one writer at a time; each driver's single tracker thread retries a locked database
with back-off (search/tracking.py), and creating the shared experiment is race-safe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from attntune.search.study_store import load_study
from tests.conftest import fresh_store, tiny_job, write_job

N_SEARCHES = 8
EPOCH_METRICS = {"train_loss", "val_loss", "val_accuracy", "lr", "tokens_per_s"}


def test_eight_searches_share_one_sqlite_store(tmp_path: Path, mlflow_template: Path) -> None:
    store = fresh_store(mlflow_template, tmp_path / "store")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ATTNTUNE_FAULTS")}
    procs = []
    for i in range(N_SEARCHES):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        job = tiny_job(
            f"s{i}",
            tracking={"uri": store, "experiment": "shared"},
            budget={"n_trials": 2, "max_epochs": 1, "min_epochs": 1},
            train={"max_steps_per_epoch": 2, "bleu_samples": 0},
            seed=i,
        )
        write_job(folder, job)
        cmd = [sys.executable, "-c", "from attntune.search.cli import main; main()", "run", "job.yaml", "--no-report", "-q"]
        procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=600)[1] for p in procs]
    for i, (p, err) in enumerate(zip(procs, errors, strict=True)):
        assert p.returncode == 0, f"search s{i}: {err}"
        assert "locked" not in err.lower() and "warning" not in err.lower(), f"search s{i}: {err}"

    client = MlflowClient(store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == ["shared"]
    runs = client.search_runs([experiments[0].experiment_id], max_results=1000)
    parents = {r.data.tags["attntune.job"]: r for r in runs if r.data.tags.get("attntune.kind") == "search"}
    children = {r.info.run_id: r for r in runs if r.data.tags.get("attntune.kind") == "trial"}
    assert sorted(parents) == [f"s{i}" for i in range(N_SEARCHES)]
    assert len(children) == 2 * N_SEARCHES
    assert all(r.info.status == "FINISHED" for r in runs)
    for i in range(N_SEARCHES):
        parent = parents[f"s{i}"]
        assert parent.data.metrics["n_complete"] == 2
        study = load_study(tmp_path / f"s{i}" / "attntune-runs" / f"s{i}")
        for t in study.trials:
            run = children[t.user_attrs["mlflow_run_id"]]
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert EPOCH_METRICS <= set(run.data.metrics), set(run.data.metrics)
            assert run.data.metrics["val_loss"] == t.value
            assert len(run.data.params) >= 20
