"""The replay machinery behind benchmarks/search_efficiency.py, on hand-made curve tables.

Real Optuna samplers and pruners run against the tables; the assertions are about what a benchmark
reader relies on: pruned trials stop early, the epoch budget is counted exactly, the grid must be
complete, and a recorded CSV round-trips.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attntune.spaces.space import parse_space
from benchmarks.replay import COMPLETE, CUT, PRUNED, CurveError, curves_from_rows, load_curves, replay

EPOCHS = 9
GOOD, BAD = 1.0e-3, 1.0e-2


def _rows(curves: dict[float, list[float]]) -> list[dict[str, object]]:
    return [
        {"train.lr": lr, "epoch": e, "val_loss": v}
        for lr, values in curves.items()
        for e, v in enumerate(values, 1)
    ]


def _two_configs():
    """A good config (2.0 -> 1.2) and a bad one (4.0 -> 3.2), nine epochs each."""
    space = parse_space({"params": {"train.lr": {"choices": [GOOD, BAD]}}})
    good = [2.0 - 0.1 * i for i in range(EPOCHS)]
    bad = [4.0 - 0.1 * i for i in range(EPOCHS)]
    return curves_from_rows(space, _rows({GOOD: good, BAD: bad}))


def test_asha_prunes_the_bad_trial_after_the_good_one_and_counts_its_epochs() -> None:
    curves = _two_configs()
    good_first = 0
    for seed in range(6):
        trace = replay("grid", "asha", curves, budget_epochs=100, seed=seed)
        assert [t.values["train.lr"] for t in trace.trials] in ([GOOD, BAD], [BAD, GOOD])
        first, second = trace.trials
        assert first.state == COMPLETE and first.epochs == EPOCHS
        if first.values["train.lr"] == GOOD:
            good_first += 1
            # Successive halving at rung 1: the bad trial is worse than the good one -> stopped.
            assert second.state == PRUNED and second.epochs == 1 and second.value is None
            assert trace.epochs_used == EPOCHS + 1
        else:
            assert second.state == COMPLETE
            assert trace.epochs_used == 2 * EPOCHS
        assert trace.best == pytest.approx(1.2)
        assert trace.epochs_to_reach(1.2) == (EPOCHS if first.values["train.lr"] == GOOD else 2 * EPOCHS)
        assert sum(t.epochs for t in trace.trials) == trace.epochs_used
    assert 0 < good_first < 6, "the grid order should depend on the seed"


def test_epoch_budget_cuts_the_last_trial_and_is_never_exceeded() -> None:
    curves = _two_configs()
    trace = replay("random", "none", curves, budget_epochs=20, seed=3)
    assert [t.state for t in trace.trials] == [COMPLETE, COMPLETE, CUT]
    assert [t.epochs for t in trace.trials] == [EPOCHS, EPOCHS, 2]
    assert [t.epochs_total for t in trace.trials] == [9, 18, 20]
    assert trace.epochs_used == 20
    assert trace.trials[-1].value is None  # a cut trial never counts as a result
    # A value never reached reads as None ("not reached"), not as the budget.
    assert trace.epochs_to_reach(0.5) is None


def test_bohb_preset_and_other_pairs_run_within_budget() -> None:
    space = parse_space(
        {
            "params": {
                "train.lr": {"choices": [1e-4, 1e-3, 1e-2]},
                "model.n_layers": {"type": "int", "low": 1, "high": 3},
            }
        }
    )
    rows = []
    for lr in (1e-4, 1e-3, 1e-2):
        for n in (1, 2, 3):
            start = 3.0 + abs(lr - 1e-3) * 100 + 0.1 * n
            rows += [
                {"train.lr": lr, "model.n_layers": n, "epoch": e, "val_loss": start - 0.1 * e}
                for e in range(1, EPOCHS + 1)
            ]
    curves = curves_from_rows(space, rows)
    for strategy, scheduler in (("bohb", None), ("tpe", "asha"), ("random", "median")):
        trace = replay(strategy, scheduler, curves, budget_epochs=60, seed=0)
        assert trace.epochs_used == 60
        assert all(t.epochs <= EPOCHS for t in trace.trials)
        assert sum(t.epochs for t in trace.trials) == 60
        if strategy == "bohb":  # the preset expands to tpe + hyperband
            assert (trace.strategy, trace.scheduler) == ("tpe", "hyperband")
            assert trace.counts()[PRUNED] > 0


def test_csv_round_trip_and_incomplete_grid_is_rejected(tmp_path: Path) -> None:
    text = (
        "# a comment line\n"
        '# space: {"params": {"train.lr": {"choices": [0.001, 0.01]}}}\n'
        "config,train.lr,epoch,val_loss\n"
        "0,0.001,1,2.0\n0,0.001,2,1.5\n1,0.01,1,3.0\n1,0.01,2,2.5\n"
    )
    path = tmp_path / "curves.csv"
    path.write_text(text, encoding="utf-8")
    curves = load_curves(path)
    assert curves.max_epochs == 2
    assert curves.curve({"train.lr": 1e-3}) == [{"val_loss": 2.0}, {"val_loss": 1.5}]
    assert sorted(curves.final_values()) == [1.5, 2.5]

    path.write_text(text.rsplit("1,0.01,1", 1)[0], encoding="utf-8")  # config 1 has no rows
    with pytest.raises(CurveError, match="curves.csv: 1 of 2 grid points have no curve"):
        load_curves(path)


def test_pruner_is_not_asked_before_the_warmup_has_ended() -> None:
    """As the engine (worker.wants_decision): a trial is judged only once its report's step is past
    train.warmup_steps. 40 warmup steps at 10 steps per epoch: the first judged epoch is 5."""
    space = parse_space({"params": {"train.lr": {"choices": [GOOD, BAD]}}})
    rows = _rows({GOOD: [2.0 - 0.1 * i for i in range(EPOCHS)], BAD: [4.0 - 0.1 * i for i in range(EPOCHS)]})
    for r in rows:
        r["step"] = 10 * int(r["epoch"])
    curves = curves_from_rows(space, rows, {"train": {"warmup_steps": 40}})
    for gate, first_judged in ((True, 5), (False, 1)):
        judged = 0
        for seed in range(6):
            trace = replay("grid", "asha", curves, budget_epochs=100, seed=seed, warmup_gate=gate)
            first, second = trace.trials
            if first.values["train.lr"] == GOOD:
                assert second.state == PRUNED and second.epochs == first_judged
                judged += 1
        assert judged > 0


def test_dedupe_answers_a_repeat_from_the_finished_trial_without_spending_budget() -> None:
    """The driver's repeat rule in the replay (run_trials(dedupe=True), search/repeats.py): a sample
    equal to a COMPLETE or PRUNED trial is told that trial's intermediate values and result, reads no
    epoch, and counts as a trial for the sampler; MAX_CONSECUTIVE_REPEATS in a row end the search."""
    import optuna

    from attntune.search.repeats import MAX_CONSECUTIVE_REPEATS
    from benchmarks.replay import StopRule, Trace, run_trials

    curves = _two_configs()
    budget = 10 * EPOCHS  # room for ten full trials; only two configs exist
    pruned_seen = 0
    for seed in range(6):
        study = optuna.create_study(
            sampler=optuna.samplers.RandomSampler(seed=seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        )
        trace = run_trials(
            study, curves, Trace("random", "asha", seed, budget, "min"), StopRule(), budget_epochs=budget,
            metric="val_loss", min_epochs=1, judges=True, warmup_gate=False, dedupe=True,
        )  # fmt: skip
        trained = [t for t in trace.trials if t.repeat_of is None]
        repeats = [t for t in trace.trials if t.repeat_of is not None]
        assert len(trained) == 2 and {t.values["train.lr"] for t in trained} == {GOOD, BAD}
        # Only repeats were left to propose: the search stopped after MAX_CONSECUTIVE_REPEATS of them.
        assert trace.exhausted and len(repeats) >= MAX_CONSECUTIVE_REPEATS
        assert trace.trials[-MAX_CONSECUTIVE_REPEATS:] == repeats[-MAX_CONSECUTIVE_REPEATS:]
        assert trace.epochs_used == sum(t.epochs for t in trained) < budget  # repeats spent nothing
        assert trace.repeats() == len(repeats)
        by_number = {t.number: t for t in study.trials}
        for r in repeats:
            original = next(t for t in trained if t.number == r.repeat_of)
            assert r.epochs == 0 and r.values == original.values
            assert (r.state, r.value) == (original.state, original.value)
            told, first = by_number[r.number], by_number[original.number]
            assert told.state == first.state and told.intermediate_values == first.intermediate_values
            if original.state == COMPLETE:
                assert told.value == pytest.approx(original.value)
            else:
                pruned_seen += 1
                assert original.state == PRUNED and told.state == optuna.trial.TrialState.PRUNED
        # Without the rule every repeat is trained again, until the budget is spent.
        again = replay("random", "asha", curves, budget_epochs=budget, seed=seed, warmup_gate=False)
        assert again.epochs_used == budget and all(t.repeat_of is None for t in again.trials)
    assert pruned_seen > 0, "some seed should repeat a pruned trial"


def test_warm_start_priors_fit_the_new_space_and_spend_no_budget() -> None:
    """benchmarks/warm_start.py: a prior keeps only the new space's parameters; one that lacks a
    parameter or holds a value the space cannot produce is dropped whole (never clipped); the priors
    seed the study but are not trials of the replayed search and read no epoch."""
    from benchmarks.warm_start import fit, priors

    curves = _two_configs()
    space = curves.space
    assert fit(space, {"train.lr": GOOD, "model.n_heads": 4}) == {"train.lr": GOOD}  # extra dropped
    assert fit(space, {"model.n_heads": 4}) is None  # train.lr missing
    assert fit(space, {"train.lr": 0.5}) is None  # not a choice: dropped, not clipped
    seeded = priors(space, [({"train.lr": GOOD, "model.n_heads": 4}, 1.2), ({"train.lr": 0.5}, 0.1)])
    assert [t.params for t in seeded] == [{"train.lr": GOOD}]
    trace = replay("tpe", "none", curves, budget_epochs=2 * EPOCHS, seed=0, priors=seeded)
    assert trace.epochs_used == 2 * EPOCHS and len(trace.trials) == 2
    assert trace.trials[0].number == 1  # trial 0 is the prior
