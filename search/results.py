"""The results table: one row per trial, built from the Optuna study (the source of truth)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from attntune.model.config import ConfigError

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


def state_of(trial: Any) -> str:
    """Map an Optuna trial to attntune's states (docs/mlflow.md has the table)."""
    attr = trial.user_attrs.get("attntune_state")
    name = trial.state.name
    if attr == "INFEASIBLE":
        return "INFEASIBLE"
    if name == "COMPLETE":
        return "COMPLETE"
    if name == "PRUNED":
        return "PRUNED"
    if name == "FAIL":
        return "FAILED"
    return name  # RUNNING / WAITING


def pareto_numbers(study: Any) -> list[int]:
    """Trial numbers on the Pareto front of a multi-objective study: COMPLETE trials that met
    every measured constraint and that no other such trial dominates (search.pareto)."""
    from attntune.search.pareto import front_indices

    modes = ["min" if d.name == "MINIMIZE" else "max" for d in study.directions]
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if state_of(t) == "COMPLETE" and t.values is not None and t.user_attrs.get("feasible", True)
    ]
    return sorted(done[i].number for i in front_indices([t.values for t in done], modes))


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
            "state": state_of(t),
            "value": value,
            "best": a.get("best_value"),
            "last": a.get("last_value"),
            "epochs": a.get("epochs_run", 0),
            "seconds": a.get("seconds"),
            "n_params": a.get("n_params"),
            "head_dim": a.get("head_dim"),
            "attempts": a.get("attempts", 1 if a.get("mlflow_run_id") else 0),
            "failure_kind": a.get("failure_kind") or ("infeasible" if a.get("attntune_state") == "INFEASIBLE" else None),
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
        "n_complete": counts.get("COMPLETE", 0),
        "n_pruned": counts.get("PRUNED", 0),
        "n_failed": counts.get("FAILED", 0),
        "n_infeasible": counts.get("INFEASIBLE", 0),
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
    """The best COMPLETE trial; NaN or infinite values never win."""
    if table.empty:
        return None
    ok = table["value"].map(lambda v: v is not None and math.isfinite(float(v))) & feasible(table)
    done = table[(table["state"] == "COMPLETE") & ok]
    if done.empty:
        return None
    idx = done["value"].astype(float).idxmin() if mode == "min" else done["value"].astype(float).idxmax()
    return done.loc[idx]


def find_output(name_or_folder: str, root: str | Path = "attntune-runs") -> Path:
    """A search's output folder from its path or job name."""
    p = Path(name_or_folder)
    if (p / "study.db").exists():
        return p
    q = Path(root) / name_or_folder
    if (q / "study.db").exists():
        return q
    raise ConfigError(f"{name_or_folder}: no search found (looked for {p / 'study.db'} and {q / 'study.db'})")


def load_study(folder: Path) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(folder / 'study.db').resolve().as_posix()}"
    names = optuna.get_all_study_names(storage)
    if not names:
        raise ConfigError(f"{folder}: the study storage holds no search")
    return optuna.load_study(study_name=names[0], storage=storage)
