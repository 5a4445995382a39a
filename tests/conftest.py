"""Shared fixtures: tiny real searches on a generated task, the CLI as a subprocess."""

from __future__ import annotations

import os
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
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


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
        "train": {"batch_size": 64, "warmup_steps": 5, "bleu_samples": 8, "max_steps_per_epoch": 8},
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
