"""Trial faults: a trial that raises, diverges (NaN), runs out of memory or loses its worker
process is FAILED everywhere and the search goes on to its budget; with ``retries`` it reruns
from its last checkpoint on the same MLflow child run.

Faults are injected with the test-only ``ATTNTUNE_FAULTS`` hook (search/worker.py): the raise,
NaN and out-of-memory faults are raised inside the real training call path, and ``kill`` makes
the worker process SIGKILL itself, so the driver sees a real dead process. Two of each kind in a
24-trial search, two trials at a time.
"""

from __future__ import annotations

import collections
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.search.job import parse_job
from attntune.search.run import run_search
from attntune.search.study_store import load_study
from tests.conftest import fresh_store, tiny_job

N_TRIALS = 24
# Trial number -> the failure kind its fault must be recorded as.
FAULTS = {1: "exception", 6: "exception", 3: "nan", 9: "nan", 4: "oom", 13: "oom", 7: "killed", 18: "killed"}
HOOK = {"exception": "raise", "nan": "nan@2", "oom": "oom", "killed": "kill"}
FAULTS_ENV = ",".join(f"{n}:{HOOK[k]}" for n, k in FAULTS.items())
SENTINEL = f"sentinel-{uuid.uuid4().hex}"


def _search(folder: Path, template: Path, retries: int) -> SimpleNamespace:
    store = fresh_store(template, folder)
    data = tiny_job(
        "faults",
        tracking=store,
        output=str(folder / "out"),
        concurrency=2,
        retries=retries,
        budget={"n_trials": N_TRIALS, "max_epochs": 2, "min_epochs": 1},
        train={"max_steps_per_epoch": 2, "bleu_samples": 0},
    )
    job = parse_job(data, text=yaml.safe_dump(data, sort_keys=False))
    result = run_search(job, quiet=True, report=False)
    client = MlflowClient(store)
    runs = client.search_runs([result.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    return SimpleNamespace(
        result=result,
        store=store,
        client=client,
        runs=runs,
        children={int(r.data.tags["attntune.trial_number"]): r for r in children},
        n_children=len(children),
        study=load_study(folder / "out"),
        folder=folder,
    )


@pytest.fixture(scope="module")
def searches(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[dict[int, SimpleNamespace]]:
    """The same faulty search without and with one retry (the fault hook fires on attempt 1)."""
    saved = {k: os.environ.get(k) for k in ("ATTNTUNE_FAULTS", "ATTNTUNE_TEST_SENTINEL")}
    os.environ["ATTNTUNE_FAULTS"] = FAULTS_ENV
    os.environ["ATTNTUNE_TEST_SENTINEL"] = SENTINEL  # must never reach MLflow
    try:
        yield {r: _search(tmp_path_factory.mktemp(f"retries{r}"), mlflow_template, r) for r in (0, 1)}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_faulty_trials_are_failed_everywhere_and_the_budget_is_reached(searches: dict[int, SimpleNamespace]) -> None:
    s = searches[0]
    t = s.result.table.set_index("number")
    assert len(t) == N_TRIALS
    assert collections.Counter(t["state"]) == {"COMPLETE": 16, "FAILED": 8}
    failed = t[t["state"] == "FAILED"]
    assert failed["failure_kind"].to_dict() == FAULTS
    # Optuna agrees, and nothing is left running.
    states = {tr.number: tr.state for tr in s.study.trials}
    assert collections.Counter(st.name for st in states.values()) == {"COMPLETE": 16, "FAIL": 8}
    assert {n for n, st in states.items() if st == optuna.trial.TrialState.FAIL} == set(FAULTS)
    # MLflow agrees: one child per trial, FAILED with the kind as a tag, none RUNNING.
    assert s.n_children == N_TRIALS and set(s.children) == set(range(N_TRIALS))
    for n, run in s.children.items():
        if n in FAULTS:
            assert run.info.status == "FAILED", (n, run.info.status)
            assert run.data.tags["attntune.state"] == "FAILED"
            assert run.data.tags["failure_kind"] == FAULTS[n]
            assert run.data.tags["failure_reason"]
        else:
            assert run.info.status == "FINISHED" and run.data.tags["attntune.state"] == "COMPLETE"
    assert not [r for r in s.runs if r.info.status == "RUNNING"]
    parent = s.client.get_run(s.result.parent_run_id)
    assert parent.data.metrics["n_failed"] == 8 and parent.data.metrics["n_complete"] == 16


def test_failure_reasons_name_what_happened(searches: dict[int, SimpleNamespace]) -> None:
    t = searches[0].result.table.set_index("number")
    for n, kind in FAULTS.items():
        reason = t.loc[n, "failure"]
        expected = {
            "exception": "InjectedFault: injected exception",
            "nan": "loss became nan at epoch 2",
            "oom": "out of memory",
            "killed": "worker process died (signal SIGKILL)",
        }[kind]
        assert expected in reason, (n, reason)


def test_nan_stops_the_trial_at_once(searches: dict[int, SimpleNamespace]) -> None:
    """The diverged epoch is never logged as a result; the epoch before it is."""
    s = searches[0]
    for n, kind in FAULTS.items():
        if kind != "nan":
            continue
        steps = [m.step for m in s.client.get_metric_history(s.children[n].info.run_id, "val_loss")]
        assert steps == [1], (n, steps)
        assert s.children[n].data.tags["epochs_run"] == "1"


def test_best_and_export_are_never_a_failed_trial(searches: dict[int, SimpleNamespace]) -> None:
    from attntune.search.export import ExportError, export_config

    s = searches[0]
    t = s.result.table
    assert s.result.best is not None and int(s.result.best["number"]) not in FAULTS
    assert s.result.best["value"] == t[t["state"] == "COMPLETE"]["value"].min()
    exported = export_config(
        "faults", tracking_uri=s.store, output=s.folder / "out" / "best.yaml", search_run=s.result.parent_run_id
    )
    assert exported.trial.number not in FAULTS and exported.trial.state == "COMPLETE"
    assert exported.trial.number == int(s.result.best["number"])
    # An export path outside the current folder and the search's folder is refused, unwritten.
    outside = s.folder.parent / f"{s.folder.name}-elsewhere" / "best.yaml"
    with pytest.raises(ExportError, match="must be inside the current folder or the search's output folder"):
        export_config("faults", tracking_uri=s.store, output=outside, search_run=s.result.parent_run_id)
    assert not outside.parent.exists()


def test_retries_rerun_failed_trials_from_their_checkpoint_on_the_same_run(searches: dict[int, SimpleNamespace]) -> None:
    s = searches[1]
    t = s.result.table.set_index("number")
    assert len(t) == N_TRIALS and set(t["state"]) == {"COMPLETE"}
    assert s.n_children == N_TRIALS  # a retry never opens a second run
    attempts = {n: int(r.data.tags["attempts"]) for n, r in s.children.items()}
    assert {n for n, a in attempts.items() if a == 2} == set(FAULTS)
    assert {a for n, a in attempts.items() if n not in FAULTS} == {1}
    assert t["attempts"].to_dict() == attempts
    for n, run in s.children.items():
        assert run.info.status == "FINISHED" and run.data.tags["attntune.state"] == "COMPLETE"
        # One value per epoch: the NaN trials' retry continued from the epoch-1 checkpoint
        # instead of training (and logging) epoch 1 again.
        steps = [m.step for m in s.client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2], (n, steps)
    for n in FAULTS:
        assert "last_failure" in s.children[n].data.tags
        assert (s.folder / "out" / "checkpoints" / f"t{n:03d}").is_dir()


def test_environment_variables_are_never_logged(searches: dict[int, SimpleNamespace]) -> None:
    for s in searches.values():
        for run in s.runs:
            values = [*run.data.params.values(), *run.data.tags.values()]
            assert not [v for v in values if SENTINEL in v], run.info.run_id
            assert "ATTNTUNE_TEST_SENTINEL" not in run.data.params
            assert not [k for k in run.data.params if k in os.environ and k not in ("PATH",)]
