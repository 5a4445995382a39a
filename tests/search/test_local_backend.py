"""The `optuna` backend (local worker processes): real searches on a generated task."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from attntune.search.job import parse_job
from attntune.search.run import run_search
from attntune.search.study_store import load_study
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job

GRID_SPACE = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8, 16], "train.lr": [3e-3, 1e-2]}}


def _search(tmp_path: Path, template: Path, **overrides):
    name = overrides.pop("name", "s")
    store = fresh_store(template, tmp_path)
    job = parse_job(tiny_job(name, tracking=store, output=str(tmp_path / "out"), **overrides))
    return run_search(job, quiet=True, report=False), store


@pytest.mark.parametrize("strategy", ["random", "grid", "tpe", "gp", "cmaes"])
def test_each_strategy_finishes_its_budget(strategy: str, tmp_path: Path, mlflow_template: Path) -> None:
    extra = {"space": GRID_SPACE} if strategy == "grid" else {}
    result, store = _search(tmp_path, mlflow_template, strategy=strategy, **extra)
    t = result.table
    assert len(t) == 4 and set(t["state"]) == {"COMPLETE"}
    assert (t["epochs"] == 2).all()
    assert t["value"].notna().all()
    assert result.best is not None and result.best["value"] == t["value"].min()
    # The four core hyperparameters vary across trials.
    varied = [c for c in ("model.n_heads", "model.d_model", "train.lr") if t[c].nunique() > 1]
    assert len(varied) >= 2, t[["model.n_heads", "model.d_model", "train.lr"]]
    assert (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("scheduler", ["asha", "hyperband", "median"])
def test_each_scheduler_stops_bad_trials(scheduler: str, tmp_path: Path, mlflow_template: Path) -> None:
    result, _ = _search(
        tmp_path,
        mlflow_template,
        strategy="tpe",
        scheduler=scheduler,
        budget={"n_trials": 8, "max_epochs": 3, "min_epochs": 1},
        space={
            "params": {
                "model.n_heads": [1, 2],
                "model.head_dim": [8, 16],
                "train.lr": {"type": "float", "low": 1e-5, "high": 2e-2, "log": True},
            }
        },
    )
    t = result.table
    assert len(t) == 8
    assert set(t["state"]) <= {"COMPLETE", "PRUNED"}
    pruned = t[t["state"] == "PRUNED"]
    if scheduler in ("asha", "hyperband"):
        assert len(pruned) >= 1, t[["number", "state", "epochs", "value"]]
    assert (pruned["epochs"] < 3).all()
    assert (t[t["state"] == "COMPLETE"]["epochs"] == 3).all()
    study = load_study(tmp_path / "out")
    for tr in study.trials:  # a pruned trial records the epoch it stopped at
        if tr.state == optuna.trial.TrialState.PRUNED:
            assert tr.user_attrs["stopped_epoch"] == max(tr.intermediate_values)


def test_sampled_values_reach_the_trainer(tmp_path: Path, mlflow_template: Path) -> None:
    result, store = _search(
        tmp_path,
        mlflow_template,
        train={"schedule": "constant", "warmup_steps": 2},
        space={
            "params": {
                "model.n_heads": [1, 2, 4],
                "model.head_dim": [8, 16],
                "model.n_encoder_layers": {"type": "int", "low": 1, "high": 2},
                "model.n_decoder_layers": {"type": "int", "low": 1, "high": 2},
                "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            }
        },
    )
    study = load_study(tmp_path / "out")
    client = MlflowClient(store)
    for tr in study.trials:
        built = tr.user_attrs["built"]
        assert built["n_heads"] == tr.params["model.n_heads"]
        assert built["head_dim"] == tr.params["model.head_dim"]
        assert built["n_encoder_layers"] == tr.params["model.n_encoder_layers"]
        assert built["n_decoder_layers"] == tr.params["model.n_decoder_layers"]
        assert built["n_params"] == tr.user_attrs["n_params"]
        lr_hist = client.get_metric_history(tr.user_attrs["mlflow_run_id"], "lr")
        assert lr_hist[-1].value == pytest.approx(tr.params["train.lr"], rel=1e-6)


def test_same_seed_proposes_the_same_configs(tmp_path: Path, mlflow_template: Path) -> None:
    a, _ = _search(tmp_path / "a", mlflow_template, strategy="tpe", budget={"n_trials": 3, "max_epochs": 1})
    b, _ = _search(tmp_path / "b", mlflow_template, strategy="tpe", budget={"n_trials": 3, "max_epochs": 1})
    cols = ["model.n_heads", "model.head_dim", "model.n_layers", "train.lr"]
    assert a.table[cols].to_dict("records") == b.table[cols].to_dict("records")


def test_max_params_configs_are_infeasible_and_never_trained(tmp_path: Path, mlflow_template: Path) -> None:
    result, store = _search(
        tmp_path,
        mlflow_template,
        max_params=9000,
        budget={"n_trials": 3, "max_epochs": 1},
        space={"params": {"model.n_heads": [1, 4], "model.head_dim": [8, 16], "train.lr": [3e-3]}},
    )
    t = result.table
    done = t[t["state"] != "INFEASIBLE"]
    assert (done["n_params"] <= 9000).all()
    trained = done[done["duplicate_of"].isna()] if "duplicate_of" in done else done
    # Every trained config is distinct (a repeat is answered, not trained) and within the budget.
    assert 1 <= len(trained) <= 3 and not trained.duplicated(["model.n_heads", "model.head_dim"]).any()
    infeasible = t[t["state"] == "INFEASIBLE"]
    assert len(infeasible) >= 1 and (infeasible["n_params"] > 9000).all()
    assert (infeasible["epochs"] == 0).all()
    assert infeasible["failure"].str.contains("exceeds max_params=9000").all()
    runs = MlflowClient(store).search_runs(
        [result.experiment_id], "tags.`attntune.state` = 'INFEASIBLE'"
    )
    assert len(runs) == len(infeasible)
    assert all(not r.data.metrics for r in runs)


def test_cli_pins_each_worker_to_one_device_and_shows_results(workdir: Path, mlflow_template: Path) -> None:
    store = fresh_store(mlflow_template, workdir)
    path = write_job(workdir, tiny_job("pin", concurrency=2, tracking=store, budget={"n_trials": 4, "max_epochs": 1}))
    # The driver never builds a model, so it never imports torch (over a second of every run).
    probe = "import atexit, sys; atexit.register(lambda: print('torch in driver:', 'torch' in sys.modules, file=sys.stderr)); "
    proc = subprocess.run(
        [sys.executable, "-c", probe + "from attntune.search.cli import main; main()", "run", str(path), "--gpus", "0,1", "--no-report"],
        cwd=workdir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "best: trial" in proc.stdout and "#/experiments/" in proc.stderr
    assert "torch in driver: False" in proc.stderr, proc.stderr[-2000:]
    # The CLI ends with os._exit, yet study.db alone holds the whole search (its WAL was folded in).
    out = workdir / "attntune-runs" / "pin"
    assert not (out / "study.db-wal").exists() or (out / "study.db-wal").stat().st_size == 0
    alone = workdir / "copy"
    alone.mkdir()
    shutil.copy(out / "study.db", alone / "study.db")
    assert len(load_study(alone).trials) == 4
    study = load_study(out)
    seen = {t.user_attrs["placement"]["cuda_visible_devices"] for t in study.trials}
    assert seen == {"0", "1"}, seen  # each trial saw one id, never "0,1"

    proc = attntune_cli("results", "pin", "--sort", "n_params", "--csv", "--columns", "number,n_params,state", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split(",") for ln in proc.stdout.strip().splitlines()[1:]]
    sizes = [int(r[1]) for r in rows]
    assert len(rows) == 4 and sizes == sorted(sizes)
    bad = attntune_cli("results", "pin", "--sort", "colour", cwd=workdir)
    assert bad.returncode == 2 and "no column 'colour'" in bad.stderr
