"""`attntune results` as a person meets it: through the installed entry point, on one real search.

One small search (ASHA, so some trials are pruned; one injected failure) on a generated task, then:
the default view fits 80, 100 and 120 columns with nothing cut short and the metric named in its
header; `--top`, `--state`, short column names, `--sort`, `--csv` with full names; bad names and
states are one line and exit 2; the order agrees with `best_row` (outcome.best_of).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.model.config import ConfigError
from attntune.search.job import parse_job
from attntune.search.results import ResultsView, best_row, format_value, metric_order
from attntune.search.run import run_search
from tests.conftest import fresh_store, tiny_job

NAME = "res"
N_TRIALS = 6
FAILING_TRIAL = 2
DEFAULT_HEADER = ["trial", "state", "val_loss", "val_bleu", "d_model", "heads", "layers", "lr", "params", "seconds"]
ATTNTUNE = Path(sys.executable).parent / "attntune"  # the installed entry point


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("results")
    # An absolute URI: MLflow caches stores by URI, so a relative one would leak into later tests.
    uri = fresh_store(mlflow_template, folder)
    spec = tiny_job(NAME, scheduler="asha", budget={"n_trials": N_TRIALS, "max_epochs": 3, "min_epochs": 1}, tracking=uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("ATTNTUNE_FAULTS", f"{FAILING_TRIAL}:raise")  # before run_search starts its workers
        job = parse_job(spec, text=yaml.safe_dump(spec, sort_keys=False), source="job.yaml")
        result = run_search(job, quiet=True, report=False)
    table = result.table
    assert set(table["state"]) >= {"COMPLETE", "PRUNED", "FAILED"}, table[["number", "state", "value"]]
    return SimpleNamespace(folder=folder, result=result, table=table, uri=uri)


def results(search: SimpleNamespace, *args: str, width: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["COLUMNS"] = str(width)
    return subprocess.run(
        [str(ATTNTUNE), "results", NAME, *args], cwd=search.folder, env=env, capture_output=True, text=True, timeout=120
    )


def csv_rows(proc: subprocess.CompletedProcess) -> list[dict[str, str]]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, ln.split(","), strict=True)) for ln in lines[1:]]


def table_lines(out: str) -> tuple[list[str], list[str]]:
    """(header cells, data lines) of a printed table."""
    lines = out.rstrip("\n").splitlines()
    rule = next(i for i, ln in enumerate(lines) if set(ln.strip()) == {"─"})
    return lines[rule - 1].split(), [ln for ln in lines[rule + 1 :] if ln.strip()]


def best_first(table: pd.DataFrame) -> list[int]:
    done = table[table["state"] == "COMPLETE"]
    return [int(n) for n in done.sort_values(["value", "number"])["number"]]


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_default_view_fits_the_terminal(search: SimpleNamespace, width: int) -> None:
    proc = results(search, width=width)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    assert all(len(ln) <= width for ln in proc.stdout.splitlines()), proc.stdout
    header, rows = table_lines(proc.stdout)
    assert header == DEFAULT_HEADER, proc.stdout  # the metric by name, never "value"
    assert len(rows) == N_TRIALS
    assert int(rows[0].split()[0]) == int(search.result.best["number"])  # best first
    for line in rows:  # compact numbers: 9.5e-3 lr, 15.9k params, 0.07s
        assert re.search(r" \d(\.\d)?e-\d+ ", line), line
        assert re.search(r" \d+(\.\d)?[kM]? ", line), line
        assert re.search(r" \d+(\.\d+)?s$", line), line
    assert f"{NAME} ({N_TRIALS} trials, val_loss min)" in proc.stdout


def test_top_n_is_the_best_n_in_best_of_order(search: SimpleNamespace) -> None:
    rows = csv_rows(results(search, "--top", "2", "--csv", "--columns", "trial,val_loss,state"))
    assert [int(r["number"]) for r in rows] == best_first(search.table)[:2]
    assert int(rows[0]["number"]) == int(best_row(search.table, "min")["number"])
    assert {r["state"] for r in rows} == {"COMPLETE"}
    proc = results(search, "--top", "2")
    assert proc.returncode == 0, proc.stderr
    assert len(table_lines(proc.stdout)[1]) == 2 and "top 2 by val_loss" in proc.stdout


def test_state_filter(search: SimpleNamespace) -> None:
    pruned = sorted(int(n) for n in search.table.loc[search.table["state"] == "PRUNED", "number"])
    rows = csv_rows(results(search, "--state", "pruned", "--csv", "--columns", "trial,state"))
    assert sorted(int(r["number"]) for r in rows) == pruned and {r["state"] for r in rows} == {"PRUNED"}
    rows = csv_rows(results(search, "--state", "Complete,PRUNED", "--csv", "--columns", "trial"))
    assert len(rows) == N_TRIALS - 1  # all but the failed one
    proc = results(search, "--state", "pruned")
    assert proc.returncode == 0 and len(table_lines(proc.stdout)[1]) == len(pruned)


def test_short_column_names_and_val_bleu(search: SimpleNamespace) -> None:
    proc = results(search, "--columns", "d_model,lr,val_bleu")
    assert proc.returncode == 0, proc.stderr
    header, lines = table_lines(proc.stdout)
    assert header == ["d_model", "lr", "val_bleu"] and len(lines) == N_TRIALS
    # --csv keeps the full names; val_bleu is the best epoch's, as MLflow recorded every epoch.
    rows = csv_rows(results(search, "--columns", "trial,d_model,lr,val_bleu", "--csv"))
    assert list(rows[0]) == ["number", "model.d_model", "train.lr", "best_val_bleu"]
    client = MlflowClient(search.uri)
    table = search.table.set_index("number")
    seen = 0
    for r in rows:
        n = int(r["number"])
        assert int(r["model.d_model"]) == table.loc[n, "model.d_model"]
        assert math.isclose(float(r["train.lr"]), table.loc[n, "train.lr"], rel_tol=1e-9)
        history = [m.value for m in client.get_metric_history(table.loc[n, "run_id"], "val_bleu")]
        if history:
            assert math.isclose(float(r["best_val_bleu"]), max(history), rel_tol=1e-9)
            seen += 1
        else:
            assert r["best_val_bleu"] == ""
    assert seen >= N_TRIALS - 1


def test_sort_takes_short_names_and_the_metric(search: SimpleNamespace) -> None:
    rows = csv_rows(results(search, "--sort", "lr", "--csv", "--columns", "trial,lr"))
    lrs = [float(r["train.lr"]) for r in rows]
    assert lrs == sorted(lrs)
    rows = csv_rows(results(search, "--sort", "params", "--desc", "--csv", "--columns", "params"))
    sizes = [int(float(r["n_params"])) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    rows = csv_rows(results(search, "--sort", "val_loss", "--csv", "--columns", "trial"))
    assert [int(r["number"]) for r in rows][: len(best_first(search.table))] == best_first(search.table)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--state", "done"], "error: --state: 'done' is not a trial state (valid: complete, pruned, failed, infeasible, running)"),
        (["--columns", "d_model,lrr"], "error: --columns: no column 'lrr' (did you mean lr"),
        (["--sort", "d_modle"], "error: --sort: no column 'd_modle' (did you mean d_model"),
    ],
)
def test_a_bad_state_or_name_is_one_line_and_exit_2(search: SimpleNamespace, args: list[str], needle: str) -> None:
    proc = results(search, *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(needle), proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- the view's parts


def _view(**columns: list) -> ResultsView:
    return ResultsView(pd.DataFrame(columns), "s", "val_loss", "min")


def test_an_ambiguous_short_name_lists_the_candidates() -> None:
    view = _view(number=[0], state=["COMPLETE"], value=[1.0], **{"model.x": [1], "train.x": [2]})
    with pytest.raises(ConfigError, match=r"--columns: 'x' is ambiguous \(it could be model.x, train.x\)"):
        view.column("x")
    assert view.column("model.x").sources == ("model.x",)


def test_the_metric_order_starts_with_best_row() -> None:
    nan = math.nan
    t = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4, 5],
            "state": ["PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "FAILED", "COMPLETE"],
            "value": [nan, 2.0, nan, 1.5, nan, 1.5],
            "best": [0.5, 2.0, nan, 1.5, nan, 1.5],
            "feasible": [True, True, True, True, True, False],
        }
    )
    order = [int(t.loc[k, "number"]) for k in metric_order(t, "min")]
    assert order[0] == int(best_row(t, "min")["number"]) == 3  # the infeasible tie never wins
    assert order == [3, 1, 0, 5, 2, 4]  # then by value or best epoch seen, then those without one
    assert [int(t.loc[k, "number"]) for k in metric_order(t, "max")][0] == int(best_row(t, "max")["number"]) == 1


def test_a_wide_default_view_leaves_out_optional_columns_and_says_so() -> None:
    from rich.console import Console

    view = _view(
        number=[0, 1], state=["COMPLETE", "INFEASIBLE"], value=[1.25, None], seconds=[12.5, 0.0], n_params=[15872, 9e7],
        pareto=[True, False], **{"objective.val_loss": [1.25, None], "objective.latency_ms": [2.5, None],
                                 "model.d_model": [64, 512], "model.n_heads": [4, 8], "model.n_encoder_layers": [2, 6],
                                 "model.n_decoder_layers": [1, 6], "train.lr": [3e-4, 1e-3]},
    )  # fmt: skip
    cols = view.columns(None)
    assert [c.name for c in cols] == [
        "trial", "state", "val_loss", "latency_ms", "d_model", "heads", "layers", "lr", "params", "seconds", "pareto"
    ]  # fmt: skip
    for width, hidden in ((100, None), (80, "seconds")):
        console = Console(width=width, record=True)
        console.print(view.render(view.rows(), cols, view.title(2), width, fit=True))
        text = console.export_text()
        assert "…" not in text and all(len(ln) <= width for ln in text.splitlines()), text
        assert (f"not shown at {width} columns: {hidden}" in text) if hidden else "not shown" not in text, text
        assert " 2/1 " in text and "90.0M" in text and "*" in text


def test_compact_numbers() -> None:
    assert [format_value("n_params", v) for v in (850, 15872, 1_234_567, 123_456_789)] == ["850", "15.9k", "1.2M", "123M"]
    assert [format_value("train.lr", v) for v in (0.003, 0.009519, 1e-4)] == ["3e-3", "9.5e-3", "1e-4"]
    assert [format_value("seconds", v) for v in (0.073, 12.34, 1234.5)] == ["0.07s", "12.3s", "1234s"]
    assert [format_value("model.d_model", v) for v in (256.0, math.nan, None)] == ["256", "", ""]
    assert format_value("value", 2.36552) == "2.366"


def test_a_family_search_shows_the_family_and_heads_only_for_the_transformer() -> None:
    """Trials of several model families: a `family` column, still within 100 columns with nothing
    left out; an rnn or mlp row has no heads (its n_heads is an unused default). One family: no column."""
    from rich.console import Console

    def view(families: list[str]) -> ResultsView:
        return _view(
            number=[0, 1, 2], state=["COMPLETE", "COMPLETE", "INFEASIBLE"], value=[1.25, 2.5, None],
            best_val_bleu=[12.5, 3.25, None], seconds=[12.5, 3.5, 0.0], n_params=[15872, 9300, 120_000_000],
            **{"model.family": families, "model.d_model": [64, 48, 512], "model.n_heads": [4, 4, 4],
               "model.n_encoder_layers": [2, 1, 6], "model.n_decoder_layers": [1, 1, 6], "train.lr": [3e-4, 1e-3, 2e-3]},
        )  # fmt: skip

    many = view(["transformer", "rnn", "mlp"])
    cols = many.columns(None)
    assert [c.name for c in cols] == [
        "trial", "state", "val_loss", "val_bleu", "family", "d_model", "heads", "layers", "lr", "params", "seconds"
    ]  # fmt: skip
    console = Console(width=100, record=True)
    console.print(many.render(many.rows(), cols, many.title(3), 100, fit=True))
    text = console.export_text()
    assert "…" not in text and "not shown" not in text and all(len(ln) <= 100 for ln in text.splitlines()), text
    header, lines = table_lines(text)
    assert header[4:7] == ["family", "d_model", "heads"], text
    cells = {ln.split()[0]: ln.split() for ln in lines}
    assert cells["0"][4:7] == ["transformer", "64", "4"]  # a transformer shows its heads
    assert cells["1"][4:7] == ["rnn", "48", "1"], text  # rnn: no heads, so layers follows d_model
    assert cells["2"][2:5] == ["mlp", "512", "6"], text  # (no value, no val_bleu either)
    assert [c.name for c in view(["transformer"] * 3).columns(None)] == DEFAULT_HEADER
    assert many.column("family").sources == ("model.family",)
