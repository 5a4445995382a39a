"""The HTML search report: built from MLflow after a real (tiny) search, parsed back and checked
against MLflow and the Optuna study, number for number."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attntune.dashboards.charts import importance_section
from attntune.dashboards.render import build_html
from attntune.search.job import parse_job
from attntune.search.pareto import front_indices
from attntune.search.records import SearchData, TrialRecord
from attntune.spaces.space import Param
from tests.conftest import attntune_cli, sqlite_uri, tiny_job

SECTIONS = ["summary", "history", "curves", "importance", "parallel", "cost", "top-trials"]


@dataclass
class Built:
    """A finished search and what its report holds."""

    root: Path
    uri: str
    result: Any
    html: str
    data: dict[str, Any]
    figures: dict[str, dict[str, Any]]


_CACHE: dict[str, Built] = {}


def parse_report(html: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The embedded numbers and every plotly figure, as the browser would read them."""
    m = re.search(r'<script type="application/json" id="attntune-data">(.*?)</script>', html, re.S)
    assert m, "the report has no attntune-data block"
    figs = {
        target: json.loads(body)
        for target, body in re.findall(
            r'<script type="application/json" class="attntune-figure" data-target="plot-([\w-]+)">(.*?)</script>', html, re.S
        )
    }
    return json.loads(m.group(1)), figs


def run_tiny_search(root: Path, name: str, faults: str, exact_budget: dict[str, Any] | None = None, **overrides: Any) -> Built:
    """A real search (optuna backend, MLflow in SQLite under ``root``) whose run_search writes
    ``root/name/report.html``."""
    from attntune.search.run import run_search

    root.mkdir(parents=True, exist_ok=True)
    uri = sqlite_uri(root)
    raw = tiny_job(name, **overrides)
    if exact_budget is not None:  # instead of merging into tiny_job's epoch budget
        raw["budget"] = exact_budget
    job = parse_job(raw, tracking_uri=uri, output=root / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNTUNE_FAULTS", faults)
        result = run_search(job, quiet=True)
    html = (root / name / "report.html").read_text(encoding="utf-8")
    data, figs = parse_report(html)
    return Built(root, uri, result, html, data, figs)


def main_search(base: Path) -> Built:
    """Six ASHA trials over three epochs, trial 3 failing; shared with the browser test module."""
    if "main" not in _CACHE:
        _CACHE["main"] = run_tiny_search(
            base / "dash-main", "rep-main", "3:raise",
            scheduler="asha", budget={"n_trials": 6, "max_epochs": 3, "min_epochs": 1},
        )
    return _CACHE["main"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return main_search(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(built: Built) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=built.uri)


def children(client: Any, built: Built) -> list[Any]:
    parent = built.result.parent_run_id
    runs = client.search_runs([built.result.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return sorted(runs, key=lambda r: int(r.data.tags["attntune.trial_number"]))


# --------------------------------------------------------------------------- the main report


def test_report_is_self_contained_and_logged_to_the_parent_run(built: Built, client: Any) -> None:
    html = built.html
    assert html.count("* plotly.js v") == 1  # exactly one embedded copy
    assert not re.search(r"<script[^>]+src=", html), "no external scripts"
    assert not re.search(r"<link[^>]+href=\"https?:", html), "no external stylesheets"
    for sid in SECTIONS:
        assert re.search(rf'id="{sid}"[^>]*>.*?<h[12]>', html, re.S), f"section {sid} missing"
    names = [a.path for a in client.list_artifacts(built.result.parent_run_id)]
    assert "report.html" in names
    logged = Path(client.download_artifacts(built.result.parent_run_id, "report.html", str(built.root / "dl")))
    assert parse_report(logged.read_text(encoding="utf-8"))[0]["header"] == built.data["header"]


def test_header_agrees_with_mlflow_and_the_study(built: Built, client: Any) -> None:
    h = built.data["header"]
    parent = client.get_run(built.result.parent_run_id)
    m = parent.data.metrics
    assert (h["job"], h["strategy"], h["scheduler"], h["backend"]) == ("rep-main", "random", "asha", "optuna")
    assert h["counts"] == {
        "COMPLETE": m["n_complete"], "PRUNED": m["n_pruned"], "FAILED": m["n_failed"], "INFEASIBLE": m["n_infeasible"]
    }
    assert h["counts"]["FAILED"] == 1 and sum(h["counts"].values()) == 6
    assert (h["trials_run"], h["n_trials_budget"]) == (6, 6)
    assert h["wall_seconds"] == m["wall_seconds"]
    runs = children(client, built)
    assert h["epochs_trained"] == sum(int(r.data.tags["epochs_run"]) for r in runs)
    best = built.result.best
    assert h["best"]["number"] == int(m["best_trial"]) == int(best["number"])
    assert h["best"]["value"] == m["best_val_loss"]
    assert math.isclose(h["best"]["value"], float(best["value"]), rel_tol=1e-12)
    best_run = next(r for r in runs if int(r.data.tags["attntune.trial_number"]) == h["best"]["number"])
    assert h["best"]["config"]["train.lr"] == best_run.data.params["train.lr"]
    assert f"{h['best']['value']:.6g}" in built.html  # shown as MLflow holds it


def test_history_plots_every_trial_with_a_value(built: Built, client: Any) -> None:
    runs = children(client, built)
    table = built.result.table
    sec = built.data["sections"]["history"]
    with_value = {int(r.data.tags["attntune.trial_number"]): r.data.metrics["best_val_loss"] for r in runs if "best_val_loss" in r.data.metrics}
    assert {t["number"]: t["value"] for t in sec["data"]["trials"]} == with_value
    # the study (Optuna's source of truth) holds the same values for complete trials
    for _, row in table[table["state"] == "COMPLETE"].iterrows():
        assert with_value[int(row["number"])] == pytest.approx(float(row["value"]), rel=1e-12)
    fig = built.figures["history"]
    marker_points = sum(len(tr["y"]) for tr in fig["data"] if tr["mode"] == "markers")
    assert marker_points == len(with_value) == 5  # the failed trial reported nothing
    line = next(tr for tr in fig["data"] if tr["name"] == "best so far")
    assert min(line["y"]) == built.data["header"]["best"]["value"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "trial start time"


def test_learning_curves_end_where_trials_stopped_and_mark_rungs(built: Built, client: Any) -> None:
    runs = {int(r.data.tags["attntune.trial_number"]): r for r in children(client, built)}
    sec = built.data["sections"]["curves"]
    curves = {t["number"]: t for t in sec["data"]["trials"]}
    assert set(curves) == {n for n, r in runs.items() if "val_loss" in r.data.metrics}
    for n, c in curves.items():
        hist = client.get_metric_history(runs[n].info.run_id, "val_loss")
        assert c["values"] == [m.value for m in sorted(hist, key=lambda m: m.step)]
        if c["state"] == "PRUNED":
            assert c["epochs"][-1] == int(runs[n].data.tags["stopped_epoch"]) < 3
        if c["state"] == "COMPLETE":
            assert c["epochs"] == [1, 2, 3]
    assert sec["data"]["rungs"] == [1]
    fig = built.figures["curves"]
    assert [s["x0"] for s in fig["layout"]["shapes"]] == [1]
    traces = [tr for tr in fig["data"] if tr.get("legendgroup")]
    assert len(traces) == len(curves)
    colours = {tr["legendgroup"]: tr["line"]["color"] for tr in traces}
    assert colours["COMPLETE"] == "#2e9e44"
    if "PRUNED" in colours:
        assert colours["PRUNED"] == "#f28e2b"


def test_importance_parallel_cost_and_top_table(built: Built) -> None:
    h = built.data["header"]
    n_complete = h["counts"]["COMPLETE"]
    imp = built.data["sections"]["importance"]
    if n_complete >= 4:
        assert set(imp["data"]["importances"]) <= {"model.n_heads", "model.head_dim", "model.n_layers", "train.lr"}
        assert "importance" in built.figures
    else:
        assert imp["message"].startswith("Parameter importance needs at least 4 complete trials")
        assert imp["message"] in built.html and "importance" not in built.figures
    par = built.data["sections"]["parallel"]
    assert len(par["data"]["trials"]) == n_complete
    assert par["data"]["params"] == ["model.n_heads", "model.head_dim", "model.n_layers", "train.lr"]
    lr_label = [a["text"] for a in built.figures["parallel"]["layout"]["annotations"] if "lr" in a["text"]]
    assert lr_label and "log" in lr_label[0]  # the learning rate axis is log-scaled
    cost = built.data["sections"]["cost"]["data"]
    assert len(cost["points"]) == n_complete
    pts = [(p["n_params"], p["value"]) for p in cost["points"]]
    assert cost["pareto_size"] == [cost["points"][i]["number"] for i in front_indices(pts, ["min", "min"])]
    front_trace = next(tr for tr in built.figures["cost"]["data"] if tr["name"] == "Pareto front")
    assert len(front_trace["x"]) == len(cost["pareto_size"]) >= 1
    top = built.data["top"]
    assert len(top) == min(10, n_complete)
    assert [r["value"] for r in top] == sorted(r["value"] for r in top)
    assert top[0]["number"] == h["best"]["number"]
    for r in top:
        assert r["command"] == f"attntune export --experiment rep-main --trial {r['number']}"
        assert r["command"] in built.html


def test_cli_report_by_experiment_name_and_bad_input(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from attntune.search.cli import main

    monkeypatch.chdir(tmp_path)  # no search folder here: the name is an MLflow experiment
    out = tmp_path / "again.html"
    with pytest.raises(SystemExit) as exit_:
        main(["report", "rep-main", "--tracking-uri", built.uri, "--output", str(out)])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"report: {out}"
    data, _ = parse_report(out.read_text(encoding="utf-8"))
    assert data["header"]["parent_run_id"] == built.result.parent_run_id
    assert data["header"]["counts"] == built.data["header"]["counts"]
    missing = tmp_path / "nowhere.db"  # a real process for the exit code and the one stderr line
    bad = attntune_cli("report", "no-such-search", "--tracking-uri", f"sqlite:///{missing}", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert not missing.exists() and not (tmp_path / "attntune-runs").exists()


def test_report_command_by_folder_rewrites_the_search_report(built: Built, client: Any) -> None:
    from attntune.dashboards.report import report_command
    from attntune.model.config import ConfigError

    folder = built.root / "rep-main"
    before = (folder / "report.html").stat().st_mtime_ns
    path = report_command(str(folder))  # the study's user attrs name the store and the run
    assert path == folder / "report.html" and path.stat().st_mtime_ns > before
    assert parse_report(path.read_text(encoding="utf-8"))[0]["header"]["counts"] == built.data["header"]["counts"]
    with pytest.raises(ConfigError, match="not found"):
        report_command(str(folder), search_run="0" * 32)


# --------------------------------------------------------------------------- edge cases


@pytest.fixture(scope="module")
def edge(built: Built) -> dict[str, Built]:
    """A search whose trials all fail and a one-trial search (the main search's MLflow store, so no
    second database is created; each job is its own experiment)."""
    root = built.root
    failed = run_tiny_search(root, "rep-failed", "0:raise,1:raise", budget={"n_trials": 2, "max_epochs": 1})
    # a token budget: two rounds of 2,000 training tokens stand in for epochs
    single = run_tiny_search(root, "rep-single", "", exact_budget={"n_trials": 1, "max_tokens": 4000, "min_tokens": 2000})
    return {"failed": failed, "single": single}


def test_only_failed_trials_still_give_a_readable_report(edge: dict[str, Built]) -> None:
    b = edge["failed"]
    h = b.data["header"]
    assert h["counts"]["FAILED"] == 2 and h["best"] is None
    assert "No trial completed, so there is no best configuration yet." in b.html
    assert b.figures == {}  # nothing to plot, and no empty chart either
    for sid in ("history", "curves", "importance", "parallel", "cost"):
        sec = b.data["sections"][sid]
        assert not sec["plotted"] and sec["message"], sid
        assert f'id="empty-{sid}"' in b.html
    assert "No trial reported val_loss yet" in b.data["sections"]["history"]["message"]
    assert "2 failed" in b.data["sections"]["history"]["message"]
    assert 'id="empty-top-trials"' in b.html and b.data["top"] == []
    assert "InjectedFault: injected exception in trial 1" in b.html  # the failures explain themselves


def test_a_single_trial_report(edge: dict[str, Built]) -> None:
    b = edge["single"]
    assert b.data["header"]["counts"]["COMPLETE"] == 1
    assert b.data["header"]["rungs"] == []
    assert set(b.figures) == {"history", "curves", "cost"}
    assert b.data["sections"]["importance"]["message"] == (
        "Parameter importance needs at least 4 complete trials; this search has 1."
    )
    assert "at least 2 complete trials" in b.data["sections"]["parallel"]["message"]
    assert b.data["sections"]["cost"]["data"]["pareto_size"] == [0]
    assert [r["number"] for r in b.data["top"]] == [0]
    assert not b.figures["curves"]["layout"].get("shapes")  # scheduler none: no rungs
    # a token budget counts rounds, and the report says so instead of "epochs"
    assert b.data["header"]["max_epochs"] == 2 and b.data["header"]["round_word"] == "round"
    assert "Rounds trained" in b.html and "one round = 2,000 tokens" in b.html
    assert b.figures["curves"]["layout"]["xaxis"]["title"]["text"] == "round (one round = 2,000 tokens)"
    assert "Epochs trained" in edge["failed"].html  # an epoch budget still says epochs


# --------------------------------------------------------------------------- pure functions


def test_importance_is_computed_from_mlflow_strings() -> None:
    """A study rebuilt from MLflow's param strings: the metric follows lr, not n_heads."""
    space = [
        Param("train.lr", "float", 1e-4, 1e-2, log=True),
        Param("model.n_heads", "categorical", choices=(1, 2, 4)),
    ]
    trials = []
    for i in range(12):
        lr = 1e-4 * 10 ** (2 * i / 11)
        params = {"train.lr": f"{lr:.6g}", "model.n_heads": str([1, 2, 4][i % 3]), "n_params": "1000"}
        trials.append(
            TrialRecord(i, f"r{i}", f"t{i:03d}", "COMPLETE", 1000 * i, 1000 * i + 1, params,
                        {"best_val_loss": 1.0 + 3.0 * abs(math.log10(lr) + 3.0)}, {"epochs_run": "2"})
        )
    d = SearchData("sqlite://", "1", "hand", "p", "search hand", "FINISHED", 0, 1,
                   {"metric": "val_loss", "mode": "min"}, {}, {}, trials, space)
    sec = importance_section(d)
    imp = sec.data["importances"]
    assert sec.figure is not None and set(imp) == {"train.lr", "model.n_heads"}
    assert imp["train.lr"] > 0.8 > imp["model.n_heads"]


def test_names_and_params_are_escaped_never_live_markup() -> None:
    """A job name, run name, param or failure reason holding markup shows as text, and JSON in the
    page's <script> blocks cannot close them early."""
    evil = "<script>alert(1)</script>"
    space = [Param("model.act", "categorical", choices=(evil, "relu"))]
    trials = [
        TrialRecord(i, f"r{i}", f"t{i:03d} {evil}", "COMPLETE", 1000 * i, 1000 * i + 1,
                    {"model.act": evil, "n_params": "1000"}, {"best_val_loss": 1.0 + i}, {"epochs_run": "1"},
                    [(1, 1.0 + i)])
        for i in range(2)
    ]
    trials.append(TrialRecord(2, "r2", "t002", "FAILED", 3000, 3001, {}, {}, {"failure_reason": f"boom {evil}"}))
    d = SearchData("sqlite://", "1", f"exp {evil}", "p", "search", "FINISHED", 0, 1,
                   {"metric": "val_loss", "mode": "min", "job_name": f"job {evil}"}, {}, {}, trials, space)
    html = build_html(d)
    assert evil not in html and "alert(1)</script>" not in html
    shown = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<h1>job {shown}</h1>" in html
    assert f'<span class="muted">t000 {shown}</span>' in html
    assert f'<td class="num" title="{shown}">{shown}</td>' in html
    assert f'<td class="reason">boom {shown}</td>' in html
    data, figures = parse_report(html)
    assert html.count("<script") == html.count("</script>") == 3 + len(figures)  # plotly, data, figures, draw
    assert data["header"]["job"] == f"job {evil}" and data["trials"][0]["run_name"] == f"t000 {evil}"
    assert data["top"][0]["params"] == {"model.act": evil}


def _family_search(rows: list[tuple[int, str | None, str, float | None, int]]) -> SearchData:
    """A hand-made search: (number, model.family param or None, state, best_val_loss, n_params) per
    trial, each ending a second after the one before."""
    trials = [
        TrialRecord(n, f"r{n}", f"t{n:03d}", state, 1000 * n, 1000 * n + 500,
                    {"n_params": str(size), **({"model.family": fam} if fam else {})},
                    {"best_val_loss": v} if v is not None else {}, {"epochs_run": "1"})
        for n, fam, state, v, size in rows
    ]  # fmt: skip
    return SearchData("sqlite://", "1", "fam", "p", "search fam", "FINISHED", 0, 1,
                      {"metric": "val_loss", "mode": "min"}, {}, {}, trials, [])  # fmt: skip


def test_a_search_over_families_compares_them() -> None:
    """Three families: best-so-far per family over time, quality against size by family, and the
    per-family table; a run without a model.family param is a Transformer; a pruned trial's low
    value is never a family's best. One family: no such section."""
    d = _family_search([
        (0, None, "COMPLETE", 3.0, 6000), (1, "rnn", "COMPLETE", 2.5, 4800), (2, "mlp", "COMPLETE", 2.9, 5000),
        (3, "transformer", "COMPLETE", 2.2, 9000), (4, "rnn", "PRUNED", 1.0, 4800), (5, "mlp", "FAILED", None, 5000),
        (6, "rnn", "COMPLETE", 2.4, 7000), (7, "mlp", "COMPLETE", 3.1, 5200),
    ])  # fmt: skip
    html = build_html(d)
    data, figures = parse_report(html)
    assert re.search(r'<section class="card" id="families">\s*<h2>By model family</h2>', html)
    assert '<a href="#families">By model family</a>' in html and "families" in figures
    fam = data["sections"]["families"]
    assert fam["plotted"] and fam["data"]["families"] == ["transformer", "rnn", "mlp"]
    table = {r["family"]: r for r in fam["data"]["table"]}
    assert {f: (r["trials"], r["complete"], r["best"], r["best_trial"]) for f, r in table.items()} == {
        "transformer": (2, 2, 2.2, 3), "rnn": (3, 2, 2.4, 6), "mlp": (3, 2, 2.9, 2),
    }  # fmt: skip
    best = fam["data"]["best_so_far"]
    assert fam["data"]["x"] == "end_time"
    assert [(p["number"], p["best"], p["end_time"]) for p in best["transformer"]] == [(0, 3.0, 500), (3, 2.2, 3500)]
    assert [(p["number"], p["best"]) for p in best["rnn"]] == [(1, 2.5), (6, 2.4)]
    assert [(p["number"], p["best"]) for p in best["mlp"]] == [(2, 2.9)]  # 7 (3.1) is no better
    points = {p["number"]: (p["family"], p["n_params"], p["value"]) for p in fam["data"]["points"]}
    assert points == {0: ("transformer", 6000, 3.0), 1: ("rnn", 4800, 2.5), 2: ("mlp", 5000, 2.9),
                      3: ("transformer", 9000, 2.2), 6: ("rnn", 7000, 2.4), 7: ("mlp", 5200, 3.1)}  # fmt: skip
    traces = figures["families"]["data"]
    assert {t["name"] for t in traces} == {"transformer", "rnn", "mlp"}
    scatter = {t["name"]: t["y"] for t in traces if t["mode"] == "markers"}
    assert scatter == {"transformer": [3.0, 2.2], "rnn": [2.5, 2.4], "mlp": [2.9, 3.1]}
    assert re.search(r"<b>6</b> <span class=\"muted\">t006</span>", html)
    one = _family_search([(0, None, "COMPLETE", 3.0, 6000), (1, "transformer", "COMPLETE", 2.5, 4800)])
    html = build_html(one)
    data, figures = parse_report(html)
    assert 'id="families"' not in html and "#families" not in html
    assert "families" not in data["sections"] and "families" not in figures
