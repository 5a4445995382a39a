"""The end of a search: ``results.csv`` (and ``pareto.csv``), the parent run's summary, its end.

Written by the driver once the trials are done (or the search was interrupted). In a study that
several drivers share (``--join``) every driver writes its ``results.csv``, and the last one to
finish writes the summary and ends the parent run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from attntune.search.budget import SearchBudget
from attntune.search.job import SearchJob
from attntune.search.results import results_table, summary_metrics
from attntune.search.runbook import Runbook
from attntune.search.study_store import StudyStore

RESULTS_FILE = "results.csv"
PARETO_FILE = "pareto.csv"


def write_summary(
    store: StudyStore, book: Runbook, job: SearchJob, budget: SearchBudget, status: str, *, last: bool,
    extra: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Write the results table; as the ``last`` driver also the parent's summary metrics,
    artifacts and Pareto tags, and end the parent run with ``status``. Returns the table."""
    table = results_table(store.study)
    out = job.output / RESULTS_FILE
    table.to_csv(out, index=False)
    if not last:
        return table
    used = budget.time_used()
    store.set_attr("time_used_s", used)
    metrics: dict[str, Any] = summary_metrics(table, job.metric, job.mode)
    metrics["wall_seconds"] = used
    metrics.update(extra or {})  # e.g. the driver's time per phase (timing.PhaseClock)
    artifacts = [out]
    if job.multi_objective:
        front = _front(table)
        runs = {int(r.number): r.run_id for r in table.itertuples() if isinstance(r.run_id, str) and r.run_id}
        book.pareto(runs, front)
        store.set_attr("pareto_trials", front)
        metrics["n_pareto"] = len(front)
        artifacts.append(_write_pareto(job, table, front))
    best = metrics.get("best_trial")
    book.summary(metrics, int(best) if best is not None else None, artifacts)
    book.end_parent(status)
    return table


def _front(table: pd.DataFrame) -> list[int]:
    if "pareto" not in table:
        return []
    return [int(n) for n in table.loc[table["pareto"].astype(bool), "number"]]


def _write_pareto(job: SearchJob, table: pd.DataFrame, front: list[int]) -> Any:
    cols = ["number", *[c for c in table.columns if c.startswith("objective.")], "n_params", "run_id"]
    out = job.output / PARETO_FILE
    table[table["number"].isin(front)][[c for c in cols if c in table]].to_csv(out, index=False)
    return out
