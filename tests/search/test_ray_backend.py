"""The `ray` backend: real Ray Tune searches on a generated task, one Ray session for the module.

Ray is started once here (as a user's notebook or cluster would) and every search must leave it
running: the backend only stops a Ray it started itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient

from attntune.model.config import ConfigError
from attntune.search.job import parse_job
from attntune.search.run import SearchResult, run_search
from attntune.search.study_store import load_study
from tests.conftest import fresh_store, tiny_job

GRID_SPACE = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8, 16], "train.lr": [3e-3, 1e-2]}}
# A wide learning-rate range: some trials are clearly worse after one epoch, so schedulers stop them.
WIDE_LR_SPACE = {
    "params": {
        "model.n_heads": [1, 2],
        "model.head_dim": [8, 16],
        "train.lr": {"type": "float", "low": 1e-5, "high": 2e-2, "log": True},
    }
}


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One local Ray for the module (2 CPUs, no GPUs whatever the machine has)."""
    from attntune.search.backends.ray_session import loopback_node

    started = not ray.is_initialized()
    if started:
        with loopback_node():
            ray.init(
                num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
    yield
    if started:
        ray.shutdown()


def _search(tmp_path: Path, template: Path, backend: str = "ray", **overrides) -> tuple[SearchResult, str]:
    name = overrides.pop("name", "r")
    overrides.setdefault("concurrency", 2)
    store = fresh_store(template, tmp_path)
    job = parse_job(
        tiny_job(name, backend=backend, tracking=store, output=str(tmp_path / "out"), **overrides)
    )
    result = run_search(job, quiet=True, report=False)
    assert ray.is_initialized(), "the backend shut down a Ray it did not start"
    return result, store


def _children(store: str, experiment_id: str) -> list:
    runs = MlflowClient(store).search_runs([experiment_id], max_results=100)
    return [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]


def test_search_completes_with_the_same_records_as_the_optuna_backend(
    tmp_path: Path, mlflow_template: Path
) -> None:
    result, store = _search(tmp_path / "ray", mlflow_template)
    t = result.table
    assert len(t) == 4 and set(t["state"]) == {"COMPLETE"}
    assert (t["epochs"] == 2).all() and t["value"].notna().all()
    assert (t["seconds"] > 0).all()  # in-trial training seconds, for the overhead benchmark
    assert t["host"].notna().all()
    assert (tmp_path / "ray" / "out" / "results.csv").exists()
    assert (tmp_path / "ray" / "out" / "ray" / "r").is_dir()  # Ray Tune's own folder, under --output

    client = MlflowClient(store)
    runs = client.search_runs([result.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("attntune.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert all(r.info.status != "RUNNING" for r in runs)
    assert parents[0].info.status == "FINISHED" and parents[0].data.params["backend"] == "ray"
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags["attntune.state"] == "COMPLETE" and r.info.status == "FINISHED"
        assert r.data.tags["node_id"] == ray.get_runtime_context().get_node_id()
        history = client.get_metric_history(r.info.run_id, "val_loss")
        assert [m.step for m in history] == [1, 2]
    study = load_study(tmp_path / "ray" / "out")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))

    # The same job on the optuna backend: same samples, same columns, same MLflow schema.
    local, local_store = _search(tmp_path / "local", mlflow_template, backend="optuna")
    cols = ["model.n_heads", "model.head_dim", "model.n_layers", "train.lr"]
    assert local.table[cols].to_dict("records") == t[cols].to_dict("records")
    assert list(local.table.columns) == list(t.columns)
    assert local.table["state"].tolist() == t["state"].tolist()
    ray_child, local_child = children[0], _children(local_store, local.experiment_id)[0]
    assert set(ray_child.data.params) == set(local_child.data.params)
    assert set(ray_child.data.metrics) == set(local_child.data.metrics)
    backend_only = {"node_id", "gpu_ids", "worker", "attntune.backend"}
    assert set(ray_child.data.tags) - backend_only == set(local_child.data.tags) - backend_only


def _asha_search(tmp_path: Path, template: Path, max_epochs: int, **extra) -> tuple[SearchResult, str]:
    """Six TPE trials under Ray's ASHA over a wide learning-rate range (some clearly worse)."""
    budget = {"n_trials": 6, "max_epochs": max_epochs, "min_epochs": 1}
    return _search(tmp_path, template, strategy="tpe", scheduler="asha", budget=budget, space=WIDE_LR_SPACE, **extra)


def test_asha_prunes_bad_trials_early(tmp_path: Path, mlflow_template: Path) -> None:
    result, store = _asha_search(tmp_path, mlflow_template, 3)
    t = result.table
    assert len(t) == 6 and set(t["state"]) <= {"COMPLETE", "PRUNED"}
    pruned = t[t["state"] == "PRUNED"]
    assert len(pruned) >= 1, t[["number", "state", "epochs", "value"]]
    assert (pruned["epochs"] < 3).all()
    assert (t[t["state"] == "COMPLETE"]["epochs"] == 3).all()
    study = load_study(tmp_path / "out")
    client = MlflowClient(store)
    for tr in study.trials:
        if tr.state == optuna.trial.TrialState.PRUNED:
            # Optuna still holds every epoch's value; MLflow says where the scheduler stopped it.
            assert tr.user_attrs["stopped_epoch"] == max(tr.intermediate_values)
            run = client.get_run(tr.user_attrs["mlflow_run_id"])
            assert run.data.tags["stopped_epoch"] == str(tr.user_attrs["stopped_epoch"])
            assert (
                len(client.get_metric_history(run.info.run_id, "val_loss")) == tr.user_attrs["stopped_epoch"]
            )


def test_ray_schedulers_never_judge_a_trial_still_warming_up(tmp_path: Path, mlflow_template: Path) -> None:
    """Warm-up of 6 steps, 6 steps per epoch: Ray's ASHA (rungs at epochs 1 and 3) is shown no
    result before epoch 2 (``WarmupGate``), so no trial stops at epoch 1; it settles rung 1 at epoch
    2 and still stops the clearly worse trials. A measured constraint (latency_ms, sent after the
    last epoch) still reaches every completed trial, although ASHA stops trials at max_epochs."""
    result, store = _asha_search(
        tmp_path, mlflow_template, 4, train={"warmup_steps": 6}, constraints=["latency_ms <= 100000"]
    )
    t = result.table
    pruned = t[t["state"] == "PRUNED"]
    assert len(pruned) >= 1, t[["number", "state", "epochs", "value"]]
    assert (pruned["epochs"] >= 2).all() and (pruned["epochs"] < 4).all()
    done = t[t["state"] == "COMPLETE"]
    assert len(done) >= 1 and (done["epochs"] == 4).all()
    assert done["latency_ms"].notna().all() and (done["latency_ms"] > 0).all()
    runs = {r.info.run_id: r for r in _children(store, result.experiment_id)}
    assert all(runs[rid].data.tags.get("feasible") == "true" for rid in done["run_id"])


def test_failed_trials_are_recorded_and_the_search_goes_on(
    tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTNTUNE_FAULTS", "1:raise,2:kill")  # sent to the actors with each trial
    # Grid strategy here too (every strategy runs on Ray somewhere in this module).
    result, store = _search(
        tmp_path, mlflow_template, strategy="grid", space=GRID_SPACE, budget={"n_trials": 3}
    )
    t = result.table.set_index("number")
    assert len(t) == 3  # the budget is reached despite the failures
    assert t.loc[0, "state"] == "COMPLETE"
    assert t.loc[1, "state"] == "FAILED" and t.loc[1, "failure_kind"] == "exception"
    assert "injected exception in trial 1" in t.loc[1, "failure"]
    assert t.loc[2, "state"] == "FAILED" and t.loc[2, "failure_kind"] == "killed"  # its Ray actor died
    assert not t.duplicated(["model.n_heads", "model.head_dim", "train.lr"]).any()  # grid: each point once
    runs = {int(r.data.tags["attntune.trial_number"]): r for r in _children(store, result.experiment_id)}
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["failure_kind"] == "exception"
    assert runs[2].info.status == "FAILED" and runs[2].data.tags["failure_kind"] == "killed"
    assert not load_study(tmp_path / "out").get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.parametrize(
    ("strategy", "scheduler", "cpus"),
    # Two CPUs per trial on a 2-CPU Ray: one trial runs while the other waits, so the median rule
    # pauses each trial after every epoch to let the waiting one run.
    [("gp", "median", 2), ("cmaes", "hyperband", 1)],
)
def test_pausing_schedulers_resume_trials_where_they_stopped(
    strategy: str, scheduler: str, cpus: int, tmp_path: Path, mlflow_template: Path
) -> None:
    """Hyperband and the median rule PAUSE trials on Ray; a resumed trial continues from its own
    checkpoint, so every epoch is trained and recorded exactly once."""
    result, store = _search(
        tmp_path,
        mlflow_template,
        strategy=strategy,
        scheduler=scheduler,
        budget={"n_trials": 3, "max_epochs": 3, "min_epochs": 1},
        space=WIDE_LR_SPACE,
        resources={"cpus": cpus},
    )
    t = result.table
    assert len(t) == 3 and set(t["state"]) <= {"COMPLETE", "PRUNED"}
    assert (t[t["state"] == "COMPLETE"]["epochs"] == 3).all()
    assert (t[t["state"] == "PRUNED"]["epochs"] < 3).all()
    assert result.best is not None and (t["seconds"] > 0).all()
    client = MlflowClient(store)
    for _, row in t.iterrows():
        steps = [m.step for m in client.get_metric_history(row["run_id"], "val_loss")]
        assert steps == list(range(1, int(row["epochs"]) + 1)), (row["number"], steps)
        assert (tmp_path / "out" / "checkpoints" / f"t{int(row['number']):03d}").is_dir()


def test_resources_the_cluster_lacks_exit_before_anything_is_written(
    tmp_path: Path, mlflow_template: Path
) -> None:
    store = fresh_store(mlflow_template, tmp_path)
    job = parse_job(
        tiny_job("big", backend="ray", tracking=store, output=str(tmp_path / "out"), resources={"gpus": 1})
    )
    with pytest.raises(ConfigError, match=r"resources.gpus: 1 per trial, but the Ray cluster has 0 GPUs"):
        run_search(job, quiet=True, report=False)
    assert not (tmp_path / "out").exists()
    assert MlflowClient(store).get_experiment_by_name("big") is None
    assert ray.is_initialized()


def test_an_address_where_no_ray_listens_is_refused_at_once() -> None:
    """``ray.init(address=...)`` would retry for minutes; the backend checks the port first."""
    import socket

    from attntune.search.backends.ray_session import check_address

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"--address 127.0.0.1:{port}: no Ray cluster answers there"):
        check_address(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        check_address("not-an-address")
    check_address("auto")  # Ray's own keyword: left to ray.init


def test_multi_objective_search_stops_trials_and_keeps_a_constrained_front(tmp_path: Path, mlflow_template: Path) -> None:
    """The optuna-backend test of test_multiobjective.py, on Ray: MO-ASHA decides in the driver."""
    from tests.search.test_multiobjective import check_pareto_search, mo_job

    job = mo_job(tmp_path, mlflow_template, "ray", concurrency=2)
    result = run_search(job, quiet=True, report=False)
    assert ray.is_initialized()
    check_pareto_search(result, job.tracking.resolved_uri())
