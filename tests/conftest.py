"""Shared fixtures: tiny real searches on a generated task, the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TATOEBA = REPO.parent / "shared" / "data" / "tatoeba-cmn-eng" / "cmn.txt"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A suite started as a background job (`cmd &` without job control) inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: the commands the Ctrl-C tests start would never see it.
# A handled signal is reset to the default at exec, so the children get Python's usual Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# In-process searches reuse warm local workers (no torch import per search).
os.environ.setdefault("ATTNTUNE_KEEP_WORKERS", "1")


def tiny_job(name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A search job that trains tiny models on the generated `reverse` task in ~1 s per epoch."""
    job: dict[str, Any] = {
        "name": name,
        "task": {"name": "reverse", "n_train": 400, "val_size": 64, "test_size": 16, "max_seq_len": 8, "n_symbols": 10},
        "space": {
            "params": {
                "model.n_heads": {"choices": [1, 2, 4]},
                "model.head_dim": {"choices": [8, 16]},
                "model.n_layers": {"type": "int", "low": 1, "high": 2},
                "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            }
        },
        "strategy": "random",
        "scheduler": "none",
        "budget": {"n_trials": 4, "max_epochs": 2, "min_epochs": 1},
        "concurrency": 1,
        "seed": 0,
        "model": {"d_ff": 64, "dropout": 0.0},
        "train": {"batch_size": 64, "warmup_steps": 5, "bleu_samples": 8, "max_steps_per_epoch": 6},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(job.get(k), dict) and k != "space":
            job[k] = {**job[k], **v}
        else:
            job[k] = v
    return job


def write_job(folder: Path, job: dict[str, Any], filename: str = "job.yaml") -> Path:
    path = folder / filename
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def attntune_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess:
    """Run the installed CLI in a subprocess (a real process: exit codes, signals, stderr)."""
    cmd = [sys.executable, "-c", "from attntune.search.cli import main; main()", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current folder so default stores (./mlflow.db, ./attntune-runs) land in tmp."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').as_posix()}"


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, freshly migrated MLflow SQLite store, made once per session: a new store runs
    MLflow's schema migrations (seconds), so each test gets a copy of this one instead."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(sqlite_uri(folder)).search_experiments()
    return folder / "mlflow.db"


def fresh_store(template: Path, folder: Path) -> str:
    """Copy the migrated template store into ``folder``; returns its tracking URI."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return sqlite_uri(folder)


@pytest.fixture
def store(mlflow_template: Path, tmp_path: Path) -> str:
    """A fresh real MLflow store (SQLite) in this test's tmp folder."""
    return fresh_store(mlflow_template, tmp_path)

