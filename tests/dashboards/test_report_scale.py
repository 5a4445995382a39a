"""A big search's report: every trial's numbers kept, the one-line-per-trial charts thinned to what a
browser can show, the page under a size bound (issue 16: under 3 MB at 1,000 trials)."""

from __future__ import annotations

import math
import random
from typing import Any

from attntune.dashboards.charts import curve_trials
from attntune.dashboards.data import BEST_LINES, MAX_LINES, line_sample
from attntune.dashboards.render import build_html
from attntune.search.records import SearchData, TrialRecord, load_search
from attntune.spaces.space import Param
from tests.dashboards.test_report import main_search, parse_report

SPACE = [
    Param("train.lr", "float", 1e-4, 1e-2, log=True),
    Param("model.n_heads", "categorical", choices=(1, 2, 4)),
    Param("model.head_dim", "categorical", choices=(8, 16)),
    Param("train.weight_decay", "float", 0.0, 0.1),
]


def big_search(n: int, epochs: int, seed: int = 0) -> SearchData:
    """A hand-made ASHA search of ``n`` trials over ``epochs`` epochs: mostly complete, a quarter
    pruned at a rung, a few failed or infeasible; each trial with params, a curve and its summary."""
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        lr, heads, hd, wd = 10 ** rng.uniform(-4, -2), rng.choice((1, 2, 4)), rng.choice((8, 16)), rng.uniform(0, 0.1)
        state = rng.choices(["COMPLETE", "PRUNED", "FAILED", "INFEASIBLE"], [70, 24, 3, 3])[0]
        stop = {"COMPLETE": epochs, "PRUNED": rng.choice((1, 3)), "FAILED": 2, "INFEASIBLE": 0}[state]
        floor = 1.5 + abs(math.log10(lr) + 3) + rng.gauss(0, 0.1)
        curve = [(e, floor + 3.0 / e + rng.gauss(0, 0.02)) for e in range(1, stop + 1)]
        params = {"train.lr": f"{lr:.6g}", "model.n_heads": str(heads), "model.head_dim": str(hd),
                  "train.weight_decay": f"{wd:.6g}", "n_params": str(1000 * heads * hd)}  # fmt: skip
        metrics = {"val_loss": curve[-1][1], "best_val_loss": min(v for _, v in curve)} if curve else {}
        if state == "COMPLETE":
            metrics["tokens_per_s"] = rng.uniform(1e4, 5e4)
        tags = {"epochs_run": str(stop), **({"stopped_epoch": str(stop)} if state == "PRUNED" else {})}
        if state in ("FAILED", "INFEASIBLE"):
            tags["failure_reason"] = "RuntimeError: out of memory" if state == "FAILED" else "n_params over max_params"
        name = f"t{i:03d} d{heads * hd} h{heads} L2 lr{lr:.0e}"
        trials.append(TrialRecord(i, f"{i:032x}", name, state, 1_700_000_000_000 + 5000 * i,
                                  1_700_000_000_000 + 5000 * i + 4000, params, metrics, tags, curve))  # fmt: skip
    settings = {"metric": "val_loss", "mode": "min", "job_name": "big", "scheduler": "asha", "strategy": "tpe",
                "backend": "optuna", "n_trials": str(n), "max_epochs": str(epochs), "min_epochs": "1"}  # fmt: skip
    return SearchData("sqlite://", "1", "big", "p" * 32, "search big", "FINISHED", 1_700_000_000_000,
                      1_700_000_000_000 + 5000 * n, settings, {"wall_seconds": 5.0 * n}, {}, trials, SPACE)  # fmt: skip


def test_line_sample_keeps_the_best_and_spaces_the_rest_evenly() -> None:
    few = list(range(MAX_LINES))
    assert line_sample(few, few[::-1], key=str) == (few, 0)
    many = list(range(1000))
    best_first = [999 - 2 * i for i in range(300)]  # odd numbers from the top
    drawn, n_best = line_sample(many, best_first, key=str)
    assert len(drawn) == MAX_LINES and n_best == BEST_LINES and drawn == sorted(drawn)
    top = set(best_first[:BEST_LINES])
    assert top <= set(drawn)
    others = [x for x in many if x not in top]
    sampled = [others.index(x) for x in drawn if x not in top]  # positions among the others
    assert sampled[0] == 0 and sampled[-1] == len(others) - 1  # the first and last of them
    gaps = {b - a for a, b in zip(sampled, sampled[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_a_big_search_report_is_thinned_and_stays_small() -> None:
    """400 trials of 10 epochs: every trial in the data block, history and cost points; 200 curves and
    parallel-coordinate lines (the 100 best and an even sample), each chart's caption saying so."""
    d = big_search(400, 10)
    html = build_html(d)
    assert len(html.encode("utf-8")) < 2_600_000
    data, figures = parse_report(html)
    n_reported = sum(1 for t in d.trials if t.curve)
    complete = [t for t in d.trials if t.state == "COMPLETE"]
    best = {t.number for t in d.ranked()[:BEST_LINES]}
    assert [t["number"] for t in data["trials"]] == list(range(400))
    curves = data["sections"]["curves"]["data"]
    assert curves["reported"] == n_reported and len(curves["trials"]) == MAX_LINES
    assert best <= {c["number"] for c in curves["trials"]}
    assert len([tr for tr in figures["curves"]["data"] if tr.get("legendgroup")]) == MAX_LINES
    assert f"the chart draws {MAX_LINES} of the {n_reported}: the {BEST_LINES} best complete trials by val_loss" in html
    par = data["sections"]["parallel"]["data"]
    assert len(par["trials"]) == len(complete) and len(par["drawn"]) == MAX_LINES and best <= set(par["drawn"])
    assert f"the chart draws {MAX_LINES} of the {len(complete)}" in html
    assert len(data["sections"]["history"]["data"]["trials"]) == n_reported
    assert sum(len(tr["y"]) for tr in figures["history"]["data"] if tr["mode"] == "markers") == n_reported
    assert len(data["sections"]["cost"]["data"]["points"]) == len(complete)
    assert "label names its trial number only" in html
    assert data["sections"]["importance"]["data"]["forest"] == {"n_trees": 32, "max_depth": 8}
    assert "its random forest is 32 trees of depth at most 8" in html


def test_a_small_search_draws_every_curve_without_a_sampling_note() -> None:
    d = big_search(60, 4)
    html = build_html(d)
    data, figures = parse_report(html)
    assert len(data["sections"]["curves"]["data"]["trials"]) == sum(1 for t in d.trials if t.curve)
    assert "the chart draws" not in html and "label names its trial number only" not in html
    assert data["sections"]["importance"]["data"]["forest"] is None


def test_the_report_reads_only_the_curves_it_draws(tmp_path_factory: Any) -> None:
    """``read_search(curves=pick)`` reads the histories of the picked trials alone."""
    built = main_search(tmp_path_factory.getbasetemp())
    full = load_search(built.uri, built.result.parent_run_id)
    some = load_search(built.uri, built.result.parent_run_id, curves=lambda d: d.trials[:2])
    assert [t.curve for t in some.trials[:2]] == [t.curve for t in full.trials[:2]]
    assert all(not t.curve for t in some.trials[2:]) and any(t.curve for t in full.trials[2:])
    assert curve_trials(full)[1] == [t for t in full.trials if t.curve]  # a small search draws them all
