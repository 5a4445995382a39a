"""Multi-objective search (issue 8): quality against size with early stopping, Pareto records,
``export --pick``, and the warm-up rule of the schedulers. The ray backend's run of the same
search is in test_ray_backend.py (it shares that module's Ray session)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.model.config import ConfigError
from attntune.search.export import (
    ExportError,
    PickRule,
    export_config,
    pareto_front,
    pick_from_front,
    pick_trial,
)
from attntune.search.job import load_job, parse_job
from attntune.search.pareto import dominates
from attntune.search.records import TrialRecord, load_search
from attntune.search.run import SearchResult, run_search
from tests.conftest import fresh_store, tiny_job, write_job

MAX_PARAMS = 20_000
# Wide enough that some trials are clearly worse after one epoch (so MO-ASHA stops them) and some
# configs are over MAX_PARAMS (so they are INFEASIBLE, never trained).
MO_SPACE = {
    "params": {
        "model.n_heads": [1, 2, 4],
        "model.head_dim": [4, 8, 16],
        "model.n_layers": {"type": "int", "low": 1, "high": 2},
        "train.lr": {"type": "float", "low": 1e-4, "high": 2e-2, "log": True},
    }
}


def mo_job(tmp_path: Path, template: Path, backend: str, **overrides: Any) -> Any:
    store = fresh_store(template, tmp_path)
    raw = tiny_job(
        f"mo-{backend}",
        backend=backend,
        space=MO_SPACE,
        strategy="nsga2",
        scheduler="moasha",
        objectives={"val_loss": "min", "n_params": "min"},
        constraints=[f"n_params <= {MAX_PARAMS}", "latency_ms <= 1000"],
        budget={"n_trials": 12, "max_epochs": 3, "min_epochs": 1},
        tracking=store,
        output=str(tmp_path / "out"),
        **overrides,
    )
    raw["train"] = {**raw["train"], "warmup_steps": 0}
    return load_job(write_job(tmp_path, raw))  # from a file, as a user runs it (export reads job.yaml)


def check_pareto_search(result: SearchResult, store: str) -> None:
    """What a user relies on from a multi-objective search, on either backend."""
    t = result.table
    trained = t[t["state"].isin(["COMPLETE", "PRUNED"])]
    if "duplicate_of" in t:  # a repeat is answered from its trial, not trained
        trained = trained[trained["duplicate_of"].isna()]
    assert len(t) >= 12 and len(trained) == 12  # infeasible samples and repeats do not use the budget
    assert (trained["n_params"] <= MAX_PARAMS).all()
    infeasible = t[t["state"] == "INFEASIBLE"]
    assert (infeasible["n_params"] > MAX_PARAMS).all()
    assert (t["state"] == "PRUNED").any(), "MO-ASHA stopped no trial"
    assert (t.loc[t["state"] == "PRUNED", "epochs"] < 3).all()

    done = t[t["state"] == "COMPLETE"]
    assert done["latency_ms"].notna().all() and (done["latency_ms"] > 0).all()
    points = {int(r["number"]): (float(r["objective.val_loss"]), float(r["objective.n_params"])) for _, r in done.iterrows()}
    front = sorted(int(n) for n in t.loc[t["pareto"].astype(bool), "number"])
    assert front and set(front) <= set(points)
    for a in front:  # pairwise non-dominated ...
        assert not any(dominates(points[b], points[a]) for b in front if b != a)
    for n in set(points) - set(front):  # ... and everything off the front is dominated by it
        assert any(dominates(points[f], points[n]) or points[f] == points[n] for f in front)

    client = MlflowClient(store)
    runs = client.search_runs([result.experiment_id], max_results=200)
    children = {int(r.data.tags["attntune.trial_number"]): r for r in runs if r.data.tags.get("attntune.kind") == "trial"}
    assert set(children) == set(int(n) for n in t["number"])
    assert {n for n, r in children.items() if r.data.tags.get("pareto") == "true"} == set(front)
    assert all(r.data.tags.get("pareto") in ("true", "false") for r in children.values())
    parent = next(r for r in runs if r.data.tags.get("attntune.kind") == "search")
    assert parent.data.tags["pareto_trials"] == ",".join(map(str, front))
    # The read model computes the same front from MLflow alone.
    assert [t.number for t in load_search(store, result.parent_run_id, curves=False, space=False).front()] == front
    assert "pareto.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_optuna_backend_finds_a_constrained_pareto_front_and_stops_trials_early(
    tmp_path: Path, mlflow_template: Path
) -> None:
    job = mo_job(tmp_path, mlflow_template, "optuna", concurrency=2)
    result = run_search(job, quiet=True, report=False)
    check_pareto_search(result, job.tracking.resolved_uri())

    # export --pick: the knee and a size cap both come from the front, and say so in provenance
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        knee = export_config(job.name, tracking_uri=job.tracking.resolved_uri(), output=Path("knee.yaml"), pick=PickRule(knee=True))
        front = set(int(n) for n in result.table.loc[result.table["pareto"].astype(bool), "number"])
        assert knee.trial.number in front
        doc = yaml.safe_load(Path("knee.yaml").read_text())
        assert doc["provenance"]["pick"] == "knee of the front"
        assert set(doc["provenance"]["pareto_trials"]) == front
        smallest = int(result.table[result.table["pareto"].astype(bool)]["n_params"].min())
        capped = export_config(
            job.name, tracking_uri=job.tracking.resolved_uri(), output=Path("small.yaml"), pick=PickRule(max_params=smallest)
        )
        assert int(capped.trial.params["n_params"]) == smallest
        with pytest.raises(ConfigError, match=f"no Pareto trial has n_params <= {smallest - 1}"):
            export_config(job.name, tracking_uri=job.tracking.resolved_uri(), output=Path("x.yaml"), pick=PickRule(max_params=smallest - 1))
        assert not Path("x.yaml").exists()
    finally:
        os.chdir(cwd)


def _t(number: int, loss: float, params: int, latency: float, state: str = "COMPLETE") -> TrialRecord:
    return TrialRecord(
        number,
        f"r{number}",
        f"t{number:03d}",
        state,
        score=loss,
        params={"n_params": str(params)},
        metrics={"best_val_loss": loss, "n_params": float(params), "latency_ms": latency},
    )


OBJ = [("val_loss", "min"), ("n_params", "min")]
# A hand-made front (loss falls as size grows) with a clear knee at trial 2.
FRONT = [_t(0, 3.0, 1_000, 1.0), _t(1, 2.2, 2_000, 2.0), _t(2, 1.3, 4_000, 3.0), _t(3, 1.25, 20_000, 9.0), _t(4, 1.2, 60_000, 20.0)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (PickRule(knee=True), 2),
        (PickRule(), 4),  # best first objective
        (PickRule(max_params=20_000), 3),
        (PickRule(max_params=3_000), 1),
        (PickRule(max_latency_ms=2.5), 1),
        (PickRule(max_params=10_000, max_latency_ms=1.5), 0),
        (PickRule(max_params=20_000, knee=True), 2),
    ],
)
def test_pick_rules_choose_the_expected_trial_of_a_hand_made_front(rule: PickRule, expected: int) -> None:
    assert pick_from_front(FRONT, OBJ, rule, "s").number == expected


def test_pick_rule_that_nothing_meets_names_the_smallest_value() -> None:
    with pytest.raises(ConfigError, match=r"no Pareto trial has latency_ms <= 0.5 \(the smallest on the front: 1\)"):
        pick_from_front(FRONT, OBJ, PickRule(max_latency_ms=0.5), "s")


def test_the_front_scores_a_trial_by_its_best_epoch_not_its_last() -> None:
    """As the search does: a run logs the last epoch's val_bleu and best_val_bleu; export must
    read the best, or a trial whose BLEU fell at the end looks worse than it was scored."""
    def run(number: int, best: float, last: float, params: int) -> TrialRecord:
        metrics = {"val_bleu": last, "best_val_bleu": best, "n_params": float(params)}
        return TrialRecord(number, f"r{number}", f"t{number:03d}", "COMPLETE", params={"n_params": str(params)},
                           metrics=metrics, score=best)

    obj = [("val_bleu", "max"), ("n_params", "min")]
    big_good, small_fell, big_poor = run(0, 1.4, 0.3, 3392), run(1, 0.23, 0.23, 3008), run(2, 0.49, 0.41, 8192)
    front = pareto_front([big_good, small_fell, big_poor], obj)
    assert [t.number for t in front] == [0, 1]  # trial 2 is dominated by trial 0's best, 1.4
    assert pick_from_front(front, obj, PickRule(max_params=20_000), "s").number == 0


def test_a_trial_that_missed_a_measured_constraint_is_never_picked() -> None:
    import dataclasses

    best_but_slow = dataclasses.replace(FRONT[4], feasible=False)
    trials = [*FRONT[:4], best_but_slow]
    assert pick_trial(trials, "min", None, "val_loss", "s").number == 3  # not 4, the lowest loss
    assert 4 not in [t.number for t in pareto_front(trials, OBJ)]
    assert pick_trial(trials, "min", 4, "val_loss", "s").number == 4  # --trial N still exports it
    with pytest.raises(ExportError, match=r"no COMPLETE trial meets the job's constraints \(all 1 are feasible=false\)"):
        pick_trial([best_but_slow], "min", None, "val_loss", "s")


def test_measured_constraint_nobody_meets_tags_every_run_infeasible(
    tmp_path: Path, mlflow_template: Path, capsys: pytest.CaptureFixture
) -> None:
    """One objective and a latency cap no model can meet: every trial completes, is tagged
    feasible=false with the constraint it missed, is never the best, `attntune run` says why there
    is nothing to export, and export refuses."""
    import pandas as pd

    from attntune.search.cli import main

    store = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job("slow", constraints=["latency_ms <= 0.000001"], tracking=store, output=str(tmp_path / "out"),
                   budget={"n_trials": 2, "max_epochs": 1})  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(["run", str(write_job(tmp_path, raw)), "--no-report", "-q"])
    assert e.value.code in (0, None)
    said = " ".join(capsys.readouterr().out.split())
    assert "2 trials completed, but none meets the constraints (latency_ms <= 1e-06); nothing to export" in said
    t = pd.read_csv(tmp_path / "out" / "results.csv")
    assert (t["state"] == "COMPLETE").all() and len(t) == 2
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("slow").experiment_id], max_results=50)
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    assert len(children) == 2
    for r in children:
        assert r.data.tags["feasible"] == "false"
        assert r.data.tags["infeasible_reason"] == "latency_ms <= 1e-06"
        assert r.data.metrics["latency_ms"] > 0
    with pytest.raises(ConfigError, match="no COMPLETE trial meets the job's constraints"):
        export_config("slow", tracking_uri=store, output=tmp_path / "best.yaml")
    assert not (tmp_path / "best.yaml").exists()


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"strategy": "gp"}, "strategy 'gp' is single-objective; this job has 2 objectives"),
        ({"strategy": "nsga2", "scheduler": "asha"}, "scheduler 'asha' with strategy 'nsga2'"),
        ({"strategy": "bohb", "scheduler": None}, "scheduler 'hyperband' with strategy 'tpe'"),
        ({"objectives": {"val_loss": "min"}, "strategy": "tpe", "scheduler": "moasha"}, "moasha ranks several objectives"),
        ({"objectives": {"n_params": "min", "latency_ms": "min"}}, "at least one must be a metric reported"),
        ({"objectives": {"size": "min", "val_loss": "min"}}, "objectives.size: unknown objective"),
        ({"constraints": ["n_params < 5"]}, "constraints[0]: 'n_params < 5' is not 'NAME <= NUMBER'"),
        ({"metric": "val_loss"}, "metric/mode: a job with objectives takes its metric from them"),
    ],
)
def test_bad_multi_objective_jobs_name_the_rule(changes: dict[str, Any], needle: str) -> None:
    raw = tiny_job("bad", strategy="nsga2", scheduler="moasha", objectives={"val_loss": "min", "n_params": "min"})
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    with pytest.raises(ConfigError) as e:
        parse_job(raw)
    assert needle in str(e.value)


@pytest.mark.parametrize("warmup", [0, 12])
def test_asha_never_judges_a_trial_still_warming_up(tmp_path: Path, mlflow_template: Path, warmup: int) -> None:
    """Same search twice: with no warm-up ASHA stops trials at epoch 1; with a warm-up of two
    epochs' steps (6 steps per epoch) it may not, so every trial trains to the end."""
    store = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job(
        f"warm{warmup}",
        space=MO_SPACE,
        strategy="random",
        scheduler="asha",
        budget={"n_trials": 8, "max_epochs": 3, "min_epochs": 1},
        tracking=store,
        output=str(tmp_path / "out"),
    )
    raw["train"] = {**raw["train"], "warmup_steps": warmup}
    t = run_search(parse_job(raw), quiet=True, report=False).table
    pruned = t[t["state"] == "PRUNED"]
    if warmup == 0:
        assert len(pruned) > 0 and (pruned["epochs"] == 1).all()
    else:
        assert pruned.empty and (t["epochs"] == 3).all()
    assert all(math.isfinite(v) for v in t["best"])


def test_moasha_settles_the_rungs_a_trial_passed_while_warming_up(tmp_path: Path, mlflow_template: Path) -> None:
    """Rungs at epochs 1 and 3; warm-up (6 steps, 6 steps per epoch) ends with epoch 1. Rung 1 was
    passed unjudged, so each trial is settled there at epoch 2 with its epoch-2 value (a rung-only
    rule would wait for epoch 3), and at rung 3 with its epoch-3 value; the study keeps the values
    it settled them with, and no trial is stopped while warming up."""
    from attntune.search.study_store import load_study

    store = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job(
        "mo-warm",
        space=MO_SPACE,
        strategy="random",
        scheduler="moasha",
        objectives={"val_loss": "min", "n_params": "min"},
        budget={"n_trials": 10, "max_epochs": 4, "min_epochs": 1},
        concurrency=2,
        tracking=store,
        output=str(tmp_path / "out"),
    )
    raw["train"] = {**raw["train"], "warmup_steps": 6}
    t = run_search(parse_job(raw), quiet=True, report=False).table
    pruned = t[t["state"] == "PRUNED"]
    assert len(pruned) > 0, "MO-ASHA stopped no trial once warm-up had ended"
    assert (pruned["epochs"] >= 2).all() and (pruned["epochs"] == 2).any()
    for trial in load_study(tmp_path / "out").trials:
        values = trial.intermediate_values
        if 2 in values:
            expected = {"1": values[2], **({"3": values[3]} if 3 in values else {})}
            assert trial.user_attrs["rungs"] == expected, trial.number
