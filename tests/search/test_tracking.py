"""The tracker coalesces a run's params, tags and metrics into few MLflow calls; what a user reads
back from the store must be complete and in the order it was written."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from attntune.search.tracking import Tracker


def test_a_run_reads_back_whole_past_every_batch_limit(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    tr = Tracker(uri)
    tr.ensure_experiment("limits")
    run = tr.create_run("t000", params={f"p{i}": i for i in range(150)})  # over 100 params per call
    tr.set_tags(run, {f"t{i}": "first" for i in range(120)})  # over 100 tags per call
    tr.set_tags(run, {"t0": "second"})  # a later value of a key wins
    for step in range(5):  # 2,500 values: over 1,000 metrics per call
        tr.log_metrics(run, {f"m{k}": step * 1000 + k for k in range(500)}, step=step)
    tr.end_run(run, "FINISHED")
    assert tr.close() == []

    client = MlflowClient(uri)
    data = client.get_run(run).data
    assert data.params == {f"p{i}": str(i) for i in range(150)}
    assert {k: v for k, v in data.tags.items() if k.startswith("t")} == {"t0": "second", **{f"t{i}": "first" for i in range(1, 120)}}
    history = client.get_metric_history(run, "m499")
    assert [(m.step, m.value) for m in history] == [(s, s * 1000 + 499) for s in range(5)]
    assert len(data.metrics) == 500
    assert client.get_run(run).info.status == "FINISHED"


def test_a_write_the_store_refuses_is_reported_not_raised(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    tr = Tracker(uri)
    tr.ensure_experiment("refused")
    run = tr.create_run("t000", params={"lr": 0.1})
    tr.log_params(run, {"lr": 0.2})  # MLflow params are immutable: a changed value is refused
    tr.flush()
    errors = tr.close()
    assert len(errors) == 1 and "lr" in errors[0]
    assert MlflowClient(uri).get_run(run).data.params == {"lr": "0.1"}
