"""Tune small, train big: a muP search at a proxy width exports its best at the target width with
the tuned hyperparameters, and a transfer that cannot hold is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attntune.model.config import ConfigError
from attntune.search.job import parse_job
from tests.conftest import attntune_cli, fresh_store, tiny_job, write_job

MUP = {"parameterization": "mup", "d_model": 16, "n_heads": 2, "d_ff": 32, "dropout": 0.0, "mup_base_d_model": 16}
SPACE = {"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                    "model.mup_output_mult": {"choices": [0.5, 1.0, 2.0]}}}  # fmt: skip


def test_a_search_at_a_proxy_width_exports_the_target_width(tmp_path: Path, mlflow_template: Path) -> None:
    uri = fresh_store(mlflow_template, tmp_path)
    raw = tiny_job("mup", tracking=uri, model=MUP, space=SPACE, baseline="none", transfer={"model.d_model": 64},
                   budget={"n_trials": 3, "max_epochs": 1})  # fmt: skip
    r = attntune_cli("run", str(write_job(tmp_path, raw)), "-q", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = attntune_cli("export", "--experiment", "mup", "--tracking-uri", uri, "--output", "big.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load((tmp_path / "big.yaml").read_text())
    m = doc["model"]
    assert (m["d_model"], m["n_heads"], m["d_ff"]) == (64, 2, 128)  # widened 4x, heads kept, d_ff by the same ratio
    assert m["parameterization"] == "mup" and m["mup_base_d_model"] == 16
    assert m["mup_output_mult"] in (0.5, 1.0, 2.0)  # the tuned multiplier and learning rate carry over
    assert doc["provenance"]["transfer"] == {"proxy_d_model": 16, "target_d_model": 64}
    trained = attntune_cli("train", "big.yaml", "--epochs", "1", "--no-tracking", "--output", "big", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]


@pytest.mark.parametrize(
    ("model", "space", "problem"),
    [
        ({**MUP, "parameterization": "standard"}, SPACE, "transfer: needs model.parameterization: mup"),
        (MUP, {"params": {"model.head_dim": [8, 16]}}, "transfer: the search tunes at one proxy width"),
        (MUP, SPACE, None),
    ],
)
def test_a_transfer_that_cannot_hold_is_refused_at_load(model: dict, space: dict, problem: str | None) -> None:
    raw = tiny_job("t", model=model, space=space, transfer={"model.d_model": 64})
    if problem is None:
        assert parse_job(raw).transfer_width == 64
        return
    with pytest.raises(ConfigError, match=problem):
        parse_job(raw)
