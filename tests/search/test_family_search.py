"""Search over model families: a conditional space whose parameters exist only for their family,
refused for strategies that cannot search one, and run on both backends with all three families."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attntune.model.config import ConfigError
from attntune.search.job import parse_job
from attntune.search.run import run_search
from attntune.spaces.space import make_config
from tests.conftest import fresh_store, tiny_job

ROOT = Path(__file__).resolve().parents[2]

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
IN_SPACE = {"d_model": 16, "n_heads": 2, "d_ff": 32, "dropout": 0.0}  # the baseline: a transformer the space holds


@pytest.mark.parametrize("strategy", ["cmaes", "gp", "grid"])
def test_a_family_space_is_refused_for_a_strategy_that_cannot_search_it(strategy: str) -> None:
    with pytest.raises(ConfigError, match=rf"strategy {strategy} cannot search a conditional space \(space\.model\.\w+ exists only when model\.family="):
        parse_job(tiny_job("f", space="families-cpu", strategy=strategy))


def test_the_builtin_family_space_loads_and_holds_the_default_as_its_baseline() -> None:
    job = parse_job({"name": "f", "task": {"name": "reverse"}, "space": "families-cpu", "strategy": "tpe", "budget": {"n_trials": 8}})
    assert job.baseline is not None and job.baseline.values["model.family"] == "transformer"


def test_a_family_search_starts_every_family_from_the_baseline_with_that_familys_defaults() -> None:
    """The Tatoeba example's Transformer over families-cpu: the baseline, then an rnn and an mlp
    start that keep its shared settings (width, depth, lr, warmup) and take their own defaults."""
    example = yaml.safe_load((ROOT / "examples" / "train_tatoeba.yaml").read_text(encoding="utf-8"))
    job = parse_job({"name": "f", "task": {"name": "reverse"}, "space": "families-cpu", "strategy": "tpe",
                     "budget": {"n_trials": 8}, "model": example["model"],
                     "train": {k: v for k, v in example["train"].items() if k != "epochs"}})  # fmt: skip
    b = job.baseline
    assert b is not None and b.values["model.family"] == "transformer" and not b.family_notes
    assert [f for f, _ in b.family_starts] == ["rnn", "mlp"]
    baseline = make_config(job.base, b.values)
    for family, values in b.family_starts:
        cfg = make_config(job.base, values)
        assert cfg.model.family == family and cfg.train == baseline.train  # lr 2e-3, warmup 400, ...
        assert (cfg.model.d_model, cfg.model.n_encoder_layers, cfg.model.dropout) == (128, 1, 0.1)
    rnn = make_config(job.base, dict(b.family_starts)["rnn"]).model
    assert (rnn.rnn_cell, rnn.hidden, rnn.bidirectional, rnn.attention) == ("gru", 128, False, "dot")  # its defaults


def test_a_family_start_outside_the_space_is_left_out_with_the_reason() -> None:
    space = {"params": {**SPACE["params"], "model.d_model": {"choices": [32], "when": {"model.family": ["rnn", "mlp"]}}}}
    job = parse_job(tiny_job("f", space=space, model=IN_SPACE))
    assert job.baseline is not None and job.baseline.family_starts == ()
    assert job.baseline.family_notes == tuple(
        f"no {f} start: model.d_model=16 is outside the space (choices [32])" for f in ("rnn", "mlp")
    )
    assert parse_job(tiny_job("f", space=SPACE, model=IN_SPACE, baseline="none")).baseline is None  # none: no starts


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_family_search_trains_all_three_families(backend: str, tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    job = parse_job(tiny_job(
        f"fam-{backend}", tracking=uri, space=SPACE, strategy="random", seed=3, backend=backend,
        budget={"n_trials": 6, "max_epochs": 1}, model=IN_SPACE, output=str(tmp_path / "out"),
    ))  # fmt: skip
    result = run_search(job, quiet=True, report=False)
    t = result.table
    done = t[t["state"] == "COMPLETE"]
    assert set(done["model.family"]) == {"transformer", "rnn", "mlp"}, t[["number", "state", "model.family"]]
    # results.csv shows a trial's own family's settings only: no rnn_cell on a transformer, no heads on an rnn.
    by = {f: t[t["model.family"] == f] for f in ("transformer", "rnn", "mlp")}
    assert by["transformer"]["model.rnn_cell"].isna().all() and by["rnn"]["model.rnn_cell"].notna().all()
    assert by["rnn"]["model.n_heads"].isna().all() and by["mlp"]["model.hidden"].isna().all()
    # The baseline (a transformer), then one start per other family, before any sampled trial.
    first = t.sort_values("number").head(4)
    assert list(first["model.family"][:3]) == ["transformer", "rnn", "mlp"]
    assert list(first["baseline"].fillna(-1))[:3] == [0, -1, -1] and list(first["family_start"].fillna(""))[:4] == ["", "rnn", "mlp", ""]
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(uri).search_runs([result.experiment_id], "tags.`attntune.kind` = 'trial'")
    starts = {r.data.tags.get("attntune.family_start"): r.info.run_name for r in runs if r.data.tags.get("attntune.family_start")}
    assert set(starts) == {"rnn", "mlp"} and all(name.endswith(" start") for name in starts.values())
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
