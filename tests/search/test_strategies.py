"""Contract over every registered strategy: its sampler is built and samples quietly."""

from __future__ import annotations

import warnings

import optuna
import pytest

from attntune.search.strategies import STRATEGIES, SamplerContext
from attntune.spaces.space import parse_space

SPACE = {"params": {"model.n_heads": [1, 2, 4], "model.head_dim": [8, 16], "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
GRID = {"params": {"model.n_heads": [1, 2], "model.head_dim": [8, 16], "train.lr": [1e-3, 1e-2]}}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_samples_without_printing_warnings(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A user's terminal gets no Optuna notices (experimental arguments, deprecated flags, log lines
    about independent sampling) from the samplers attntune chose, over a few asked and told
    trials, single- or multi-objective, at the WARNING level the search runs Optuna at."""
    strategy = STRATEGIES.get(name)
    space = parse_space(GRID if name == "grid" else SPACE)
    n_obj = 1 if strategy.single_objective else 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.enable_propagation()  # Optuna's log lines reach caplog
    caplog.set_level("WARNING", logger="optuna")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = strategy.make_sampler(SamplerContext(space, seed=0, n_trials=8, concurrency=2, n_objectives=n_obj))
        study = optuna.create_study(sampler=sampler, directions=["minimize"] * n_obj)
        for i in range(6):
            trial = study.ask()
            values = space.sample(trial)
            assert set(values) == set(space.names())  # every strategy proposes a full config
            study.tell(trial, [float(i % 3) + 0.1 * i] * n_obj if n_obj > 1 else float(i % 3) + 0.1 * i)
    optuna.logging.disable_propagation()
    assert [str(w.message) for w in caught] == []
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("optuna")]
    assert [m for m in logged if "independently" in m or "experimental" in m or "deprecated" in m] == []
