"""Search over model families: a conditional space whose parameters exist only for their family,
refused for strategies that cannot search one, and run on both backends with all three families."""

from __future__ import annotations

from pathlib import Path

import pytest

from attntune.model.config import ConfigError
from attntune.search.job import parse_job
from attntune.search.run import run_search
from tests.conftest import fresh_store, tiny_job

# families-cpu's shape at test sizes: each family's parameters only when that family is sampled.
SPACE = {
    "params": {
        "model.family": ["transformer", "rnn", "mlp"],
        "model.n_heads": {"choices": [1, 2], "when": {"model.family": "transformer"}},
        "model.head_dim": {"choices": [8], "when": {"model.family": "transformer"}},
        "model.d_model": {"choices": [16], "when": {"model.family": ["rnn", "mlp"]}},
        "model.rnn_cell": {"choices": ["gru", "lstm"], "when": {"model.family": "rnn"}},
        "model.token_mixing_dim": {"choices": [8, 16], "when": {"model.family": "mlp"}},
        "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    }
}


@pytest.mark.parametrize("strategy", ["cmaes", "gp", "grid"])
def test_a_family_space_is_refused_for_a_strategy_that_cannot_search_it(strategy: str) -> None:
    with pytest.raises(ConfigError, match=rf"strategy {strategy} cannot search a conditional space \(space\.model\.\w+ exists only when model\.family="):
        parse_job(tiny_job("f", space="families-cpu", strategy=strategy))


def test_the_builtin_family_space_loads_and_holds_the_default_as_its_baseline() -> None:
    job = parse_job({"name": "f", "task": {"name": "reverse"}, "space": "families-cpu", "strategy": "tpe", "budget": {"n_trials": 8}})
    assert job.baseline is not None and job.baseline.values["model.family"] == "transformer"


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_family_search_trains_all_three_families(backend: str, tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    job = parse_job(tiny_job(
        f"fam-{backend}", tracking=uri, space=SPACE, strategy="random", seed=3, backend=backend,
        budget={"n_trials": 6, "max_epochs": 1}, model={"d_ff": 32, "dropout": 0.0}, output=str(tmp_path / "out"),
    ))  # fmt: skip
    result = run_search(job, quiet=True, report=False)
    t = result.table
    done = t[t["state"] == "COMPLETE"]
    assert set(done["model.family"]) == {"transformer", "rnn", "mlp"}, t[["number", "state", "model.family"]]
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs([result.experiment_id], "tags.`attntune.kind` = 'trial'")
    names = {r.data.params["model.family"]: r.info.run_name for r in runs}
    assert names["rnn"].split()[1].startswith("rnn-") and names["mlp"].split()[1] == "mlp"
    assert names["transformer"].split()[1].startswith("d")  # a transformer's name is as before
    # A run lists the settings its family reads, never another family's (they changed nothing).
    for r in runs:
        shown = {k.split(".", 1)[1] for k in r.data.params if k.startswith("model.")}
        family = r.data.params["model.family"]
        others = {"transformer": {"rnn_cell", "token_mixing_dim", "mup_base_d_model"}, "rnn": {"n_heads", "d_ff", "token_mixing_dim"},
                  "mlp": {"n_heads", "rnn_cell", "hidden"}}[family]  # fmt: skip
        assert not shown & others, (family, sorted(shown & others))
        assert {"d_model", "n_encoder_layers", "dropout"} <= shown
