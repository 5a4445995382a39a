"""The driver's cost per trial stays flat as a study grows: ~200 trials of a stub trial function
(no processes, no training), the driver's own time per trial compared between the first and the
last 50 (a ratio, not a time, so a slow or busy machine does not fail it)."""

from __future__ import annotations

from pathlib import Path

from attntune.search.driver import Driver
from attntune.search.job import parse_job
from attntune.search.outcome import TrialOutcome
from tests.conftest import fresh_store, tiny_job

N = 200


def test_the_drivers_cost_per_trial_does_not_grow_with_the_study(tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    space = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8, 16],
                        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}  # fmt: skip
    job = parse_job(tiny_job("flat", tracking=uri, space=space, strategy="tpe", baseline="none",
                             budget={"n_trials": N, "max_epochs": 1}, output=str(tmp_path / "out")))  # fmt: skip
    driver = Driver(job)
    driver.open()
    try:
        while (rt := driver.next_trial()) is not None:
            driver.launched(rt)
            driver.on_start(rt.number, {"host": "stub"})
            metrics = {"val_loss": 1.0 + rt.config.train.lr, "step": 1.0}
            driver.on_report(rt.number, 1, metrics)
            driver.on_finish(rt.number, TrialOutcome("COMPLETE", [{"epoch": 1, **metrics}], 1, 0.0))
        driver.finish()
    finally:
        driver.close()
    laps = driver.clock.history
    assert len(laps) >= N - 5  # a few samples may repeat a trained config (answered, not laps)

    def per_trial(a: dict[str, float], b: dict[str, float], k: int) -> float:
        return sum(b[p] - a[p] for p in ("sample", "mlflow", "optuna", "budget")) / k

    first = per_trial(laps[0], laps[50], 50)
    last = per_trial(laps[-51], laps[-1], 50)
    assert last <= 2.0 * first, (first, last)
