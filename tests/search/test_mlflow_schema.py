"""What a search leaves in MLflow (docs/mlflow.md): one parent, one child per trial, full records.

One real search (optuna backend, ASHA so trials get pruned, one injected failure) is read back
through MLflow's own client and checked against the schema and against the Optuna study.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.model.config import ModelConfig
from attntune.search.job import parse_job
from attntune.search.run import run_search
from attntune.search.study_store import load_study
from tests.conftest import fresh_store, tiny_job

N_TRIALS = 5
MAX_EPOCHS = 3
FAILING_TRIAL = 2
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s")
RUN_NAME = re.compile(r"^t\d{3} d\d+ h\d+ L\d+(/\d+)? lr\d+e-?\d+$")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("schema")
    uri = fresh_store(mlflow_template, folder)
    spec = tiny_job(
        "schema",
        scheduler="asha",
        budget={"n_trials": N_TRIALS, "max_epochs": MAX_EPOCHS, "min_epochs": 1},
        tracking=uri,
        output=str(folder / "out"),
    )
    job = parse_job(spec, text=yaml.safe_dump(spec, sort_keys=False), source="job.yaml")
    with pytest.MonkeyPatch.context() as mp:  # set before run_search starts its workers
        mp.setenv("ATTNTUNE_FAULTS", f"{FAILING_TRIAL}:raise")
        result = run_search(job, quiet=True, report=False)
    client = MlflowClient(uri)
    runs = client.search_runs([result.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("attntune.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return SimpleNamespace(
        result=result, job=job, client=client, runs=runs, parents=parents, children=children, study=load_study(folder / "out")
    )


def _by_number(search: SimpleNamespace) -> dict[int, object]:
    return {int(r.data.tags["attntune.trial_number"]): r for r in search.children}


def test_one_parent_and_one_child_per_trial(search: SimpleNamespace) -> None:
    assert len(search.parents) == 1
    parent = search.parents[0]
    assert parent.info.run_id == search.result.parent_run_id
    assert parent.info.run_name == "search schema"
    assert len(search.children) == N_TRIALS
    assert len(search.runs) == N_TRIALS + 1
    assert sorted(_by_number(search)) == list(range(N_TRIALS))
    for r in search.children:
        tags = r.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["attntune.kind"] == "trial"
        assert tags["attntune.search_run_id"] == parent.info.run_id
        assert tags["attntune.job"] == "schema"
        assert RUN_NAME.match(r.info.run_name), r.info.run_name
        assert r.info.run_name.startswith(f"t{int(tags['attntune.trial_number']):03d} ")
    # The study (source of truth) points at the same runs.
    assert search.study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    ids = {t.number: t.user_attrs["mlflow_run_id"] for t in search.study.trials}
    assert ids == {n: r.info.run_id for n, r in _by_number(search).items()}


def test_children_carry_their_config_and_derived_params(search: SimpleNamespace) -> None:
    from attntune.model.data import load_task
    from attntune.model.transformer import n_params

    data = load_task(search.job.base.task)
    for r in search.children:
        p = r.data.params
        for key in ("model.d_model", "model.n_heads", "model.n_encoder_layers", "train.lr", "n_params", "head_dim"):
            assert key in p, (r.info.run_name, key)
        d_model, n_heads = int(p["model.d_model"]), int(p["model.n_heads"])
        assert int(p["head_dim"]) * n_heads == d_model
        cfg = ModelConfig(
            d_model=d_model,
            n_heads=n_heads,
            n_encoder_layers=int(p["model.n_encoder_layers"]),
            n_decoder_layers=int(p["model.n_decoder_layers"]),
            d_ff=int(p["model.d_ff"]),
            dropout=float(p["model.dropout"]),
            tie_embeddings=p["model.tie_embeddings"] == "True",
            norm_first=p["model.norm_first"] == "True",
            max_len=int(p["model.max_len"]),
        )
        assert int(p["n_params"]) == n_params(cfg, data.src_vocab_size, data.tgt_vocab_size)
        assert 1e-3 <= float(p["train.lr"]) <= 1e-2
        assert int(p["train.epochs"]) == MAX_EPOCHS


def test_states_statuses_and_metric_histories(search: SimpleNamespace) -> None:
    client = search.client
    states = {}
    for number, r in _by_number(search).items():
        tags, status = r.data.tags, r.info.status
        state = tags["attntune.state"]
        states[number] = state
        hist = {m: client.get_metric_history(r.info.run_id, m) for m in METRICS}
        lengths = {m: len(h) for m, h in hist.items()}
        if state == "COMPLETE":
            assert status == "FINISHED"
            assert set(lengths.values()) == {MAX_EPOCHS}, lengths
            assert int(tags["epochs_run"]) == MAX_EPOCHS
            assert "stopped_epoch" not in tags
        elif state == "PRUNED":
            assert status == "FINISHED"
            stopped = int(tags["stopped_epoch"])
            assert 1 <= stopped < MAX_EPOCHS
            assert set(lengths.values()) == {stopped}, lengths
            assert int(tags["epochs_run"]) == stopped
        elif state == "FAILED":
            assert status == "FAILED"
            assert number == FAILING_TRIAL
            assert "injected" in tags["failure_reason"]
            assert tags["failure_kind"] == "exception"
            assert set(lengths.values()) == {0}
        else:
            pytest.fail(f"trial {number}: unexpected state {state}")
        for m, h in hist.items():  # step = epoch, 1-based, in order
            assert [x.step for x in sorted(h, key=lambda x: x.step)] == list(range(1, len(h) + 1)), m
        if state in ("COMPLETE", "PRUNED"):
            best = r.data.metrics["best_val_loss"]
            assert best == min(x.value for x in hist["val_loss"])
            for k in ("host", "device", "attempts"):
                assert tags.get(k), (number, k)
    assert states[FAILING_TRIAL] == "FAILED"
    assert "PRUNED" in states.values(), states  # ASHA stopped at least one trial at its first rung
    assert list(states.values()).count("COMPLETE") >= 1


def test_optuna_states_match_mlflow(search: SimpleNamespace) -> None:
    expected = {"COMPLETE": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED, "FAILED": optuna.trial.TrialState.FAIL}
    by_number = _by_number(search)
    for t in search.study.trials:
        assert t.state == expected[by_number[t.number].data.tags["attntune.state"]]


def test_no_run_is_left_running(search: SimpleNamespace) -> None:
    assert [r.info.run_name for r in search.runs if r.info.status == "RUNNING"] == []
    assert search.parents[0].info.status == "FINISHED"
    assert all(r.info.end_time for r in search.runs)


def test_parent_summary_counts_match_children(search: SimpleNamespace) -> None:
    parent = search.parents[0]
    m, p = parent.data.metrics, parent.data.params
    states = [r.data.tags["attntune.state"] for r in search.children]
    assert m["n_trials"] == len(search.children)
    for state in ("COMPLETE", "PRUNED", "FAILED", "INFEASIBLE"):
        assert m[f"n_{state.lower()}"] == states.count(state), state
    complete = [r for r in search.children if r.data.tags["attntune.state"] == "COMPLETE"]
    best = min(complete, key=lambda r: r.data.metrics["best_val_loss"])
    assert math.isclose(m["best_val_loss"], best.data.metrics["best_val_loss"])
    assert int(m["best_trial"]) == int(best.data.tags["attntune.trial_number"])
    assert (p["metric"], p["mode"], p["max_epochs"], p["scheduler"]) == ("val_loss", "min", str(MAX_EPOCHS), "asha")
    assert parent.data.tags["data.fingerprint"]
    # Summary metrics are logged at step 0.
    assert [x.step for x in search.client.get_metric_history(parent.info.run_id, "n_trials")] == [0]
    files = {a.path for a in search.client.list_artifacts(parent.info.run_id)}
    assert {"job.yaml", "space.yaml", "results.csv"} <= files
