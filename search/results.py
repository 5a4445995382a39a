"""The results table: one row per trial, built from the Optuna study (the source of truth).

Its best row and Pareto column come from ``outcome.best_of`` / ``outcome.pareto_front``, the
definitions export and the report use on the MLflow records, so all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from attntune.search.outcome import TrialState, best_of, pareto_front
from attntune.search.study_store import state_of

BASE_COLUMNS = [
    "number",
    "state",
    "value",
    "best",
    "last",
    "epochs",
    "seconds",
    "n_params",
    "head_dim",
]


@dataclass(frozen=True)
class _Ranked:
    """What ``outcome.best_of`` / ``pareto_front`` need of a study trial or a table row."""

    number: int
    state: str
    feasible: bool
    value: Any
    key: Any = None  # the table row's index


def pareto_numbers(study: Any) -> list[int]:
    """Trial numbers on the Pareto front of a multi-objective study (``outcome.pareto_front``:
    COMPLETE trials that met every measured constraint and that no other such trial dominates)."""
    modes = ["min" if d.name == "MINIMIZE" else "max" for d in study.directions]
    trials = [
        _Ranked(t.number, state_of(t), bool(t.user_attrs.get("feasible", True)), t.values)
        for t in study.get_trials(deepcopy=False)
    ]
    return sorted(t.number for t in pareto_front(trials, modes, lambda t: t.value))


def results_table(study: Any) -> pd.DataFrame:
    rows = []
    objectives = study.user_attrs.get("objectives") or []
    multi = len(study.directions) > 1
    front = set(pareto_numbers(study)) if multi else set()
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        value = t.values[0] if t.values else None
        row = {
            "number": t.number,
            "state": str(state_of(t)),  # a plain string in the table and results.csv
            "value": value,
            "best": a.get("best_value"),
            "last": a.get("last_value"),
            "epochs": a.get("epochs_run", 0),
            "seconds": a.get("seconds"),
            "n_params": a.get("n_params"),
            "head_dim": a.get("head_dim"),
            "attempts": a.get("attempts", 1 if a.get("mlflow_run_id") else 0),
            "failure_kind": a.get("failure_kind") or ("infeasible" if a.get("attntune_state") == TrialState.INFEASIBLE else None),
            "failure": a.get("failure"),
            "run_id": a.get("mlflow_run_id"),
            "host": a.get("host"),
            "device": a.get("device"),
            "cuda_visible_devices": a.get("cuda_visible_devices"),
            "start_time": a.get("start_time"),
            "end_time": a.get("end_time"),
        }
        for k in ("flops", "latency_ms", "feasible"):
            if k in a:
                row[k] = a[k]
        if multi:
            row["pareto"] = t.number in front
            for (name, _mode), v in zip(objectives, t.values or [], strict=False):
                row[f"objective.{name}"] = v
        for k, v in (a.get("config") or {}).items():
            row[k] = v
        for k, v in t.params.items():
            row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=BASE_COLUMNS)
    return df.sort_values("number").reset_index(drop=True)


def summary_metrics(table: pd.DataFrame, metric: str, mode: str) -> dict[str, float]:
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    out: dict[str, float] = {
        "n_complete": counts.get(TrialState.COMPLETE, 0),
        "n_pruned": counts.get(TrialState.PRUNED, 0),
        "n_failed": counts.get(TrialState.FAILED, 0),
        "n_infeasible": counts.get(TrialState.INFEASIBLE, 0),
        "n_trials": len(table),
    }
    best = best_row(table, mode)
    if best is not None:
        out[f"best_{metric}"] = float(best["value"])
        out["best_trial"] = int(best["number"])
    return out


def feasible(table: pd.DataFrame) -> pd.Series:
    """Per row: met every constraint checked at its end (a trial that missed one is never picked);
    True where the job has none (no ``feasible`` column, or NaN)."""
    if "feasible" not in table:
        return pd.Series(True, index=table.index)
    return table["feasible"].map(lambda f: str(f) != "False")


def best_row(table: pd.DataFrame, mode: str) -> pd.Series | None:
    """The best trial's row (``outcome.best_of``: COMPLETE, feasible, NaN/inf never win, ties go
    to the lower number)."""
    if table.empty:
        return None
    rows = [
        _Ranked(int(n), s, bool(f), v, key)
        for key, n, s, f, v in zip(table.index, table["number"], table["state"], feasible(table), table["value"], strict=True)
    ]
    best = best_of(rows, mode)
    return None if best is None else table.loc[best.key]
