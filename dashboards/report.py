"""``attntune report``: one self-contained HTML file per search, built from MLflow alone.

Why MLflow and not the Optuna study: the report must agree with the MLflow UI on every number, and it
must work for any past search on either backend (the Ray backend's study may live elsewhere). The
file embeds plotly.js once (no network needed to view it), every figure's JSON, and one
``<script type="application/json" id="attntune-data">`` block holding the numbers each chart plots.
The same file is logged as the ``report.html`` artifact of the search's parent run.
"""

from __future__ import annotations

import html
import json
import math
import shlex
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from attntune.dashboards.charts import (
    STATE_COLORS,
    Section,
    cost_section,
    curves_section,
    fmt_count,
    fmt_value,
    history_section,
    importance_section,
    parallel_section,
    rung_epochs,
)
from attntune.dashboards.data import (
    STATES,
    SearchData,
    TrialRecord,
    latest_search_run,
    load_search,
    parse_param_value,
)
from attntune.model.config import ConfigError

TOP_K = 10
REPORT_FILE = "report.html"


# --------------------------------------------------------------------------- finding the search


def resolve_search(
    name_or_folder: str, search_run: str | None = None, tracking_uri: str | None = None
) -> tuple[str, str, Path | None]:
    """(tracking URI, parent run id, search output folder or None) for a search folder, job name or
    MLflow experiment name. The Optuna study's user attributes name the run; an experiment name
    falls back to its latest run tagged ``attntune.kind=search``."""
    from attntune.search.job import TrackingConfig
    from attntune.search.results import find_output, load_study

    try:
        folder: Path | None = find_output(name_or_folder)
    except ConfigError:
        folder = None
    if folder is not None:
        from attntune.search.engine import release_storage

        study = load_study(folder)
        attrs = study.user_attrs
        release_storage(study._storage)  # read once; leave no -wal/-shm files behind
        uri = tracking_uri or _locate_store(attrs.get("tracking_uri"), folder) or TrackingConfig().resolved_uri()
        own = attrs.get("mlflow_parent_run_id")
        run_id = search_run or own
        if not run_id:
            raise ConfigError(f"{folder}: the study does not name its MLflow search run (pass --search-run)")
        return uri, run_id, folder if run_id == own else None  # another search's report goes to its folder
    uri = tracking_uri or TrackingConfig().resolved_uri()
    if search_run is None:
        _, search_run = latest_search_run(uri, name_or_folder)
    return uri, search_run, None


def _locate_store(uri: str | None, folder: Path) -> str | None:
    """A relative ``sqlite:///mlflow.db`` was relative to where the search ran; with the default
    output (``./attntune-runs/<name>``) that is two folders above the search folder."""
    if not uri or not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.split(":///", 1)[1])
    if path.is_absolute() or path.exists():
        return uri
    guess = folder.resolve().parent.parent / path
    return f"sqlite:///{guess.as_posix()}" if guess.exists() else uri


def report_command(
    name_or_folder: str,
    *,
    search_run: str | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """What ``attntune report`` does: resolve, build from MLflow, write, log to the parent run."""
    uri, run_id, folder = resolve_search(name_or_folder, search_run, tracking_uri)
    data = load_search(uri, run_id)  # raises before anything is written
    if output is not None:
        path = output / REPORT_FILE if output.is_dir() else output
    elif folder is not None:
        path = folder / REPORT_FILE
    else:  # an experiment name: the search's own output folder when it is here, else the default one
        tagged = Path(data.tags.get("attntune.output", "") or "-")
        path = (tagged if tagged.is_dir() else Path("attntune-runs") / data.job_name) / REPORT_FILE
    write_html(data, path)
    log_report(uri, run_id, path)
    return path


def write_report(tracking_uri: str, parent_run_id: str, output: Path, log: bool = True) -> Path:
    """Build the report of one search run from MLflow, write it, and (by default) log it."""
    data = load_search(tracking_uri, parent_run_id)
    write_html(data, output)
    if log:
        log_report(tracking_uri, parent_run_id, output)
    return output


def write_report_for_context(ctx: Any) -> Path:
    """Called by ``run_search`` at the end of every search (the parent run is already ended)."""
    ctx.tracker.flush()  # MLflow must hold every metric and tag before we read it back
    path = Path(ctx.job.output) / REPORT_FILE
    data = load_search(ctx.tracker.uri, ctx.parent_run_id)
    write_html(data, path)
    ctx.tracker.log_artifact(ctx.parent_run_id, path, wait=True)
    return path


def write_html(data: SearchData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(build_html(data), encoding="utf-8")
    tmp.replace(path)


def log_report(uri: str, run_id: str, path: Path) -> None:
    """Log ``path`` as the parent run's ``report.html`` artifact, whatever the file is called."""
    from attntune.dashboards.data import _client

    client = _client(uri)
    if path.name == REPORT_FILE:
        client.log_artifact(run_id, str(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / REPORT_FILE
        shutil.copyfile(path, copy)
        client.log_artifact(run_id, str(copy))


# --------------------------------------------------------------------------- the page


def build_html(d: SearchData) -> str:
    """The whole report as one HTML string."""
    from plotly.offline import get_plotlyjs

    sections = [
        history_section(d),
        curves_section(d),
        importance_section(d),
        parallel_section(d),
        cost_section(d),
    ]
    header = header_data(d)
    top = top_rows(d)
    payload = {
        "version": 1,
        "generated_at": time.time(),
        "header": header,
        "sections": {s.id: {"title": s.title, "plotted": s.figure is not None, "message": s.message, "data": s.data} for s in sections},
        "top": top,
        "trials": [_trial_json(d, t) for t in d.trials],
    }
    figures = [(s.id, s.figure.to_json()) for s in sections if s.figure is not None]
    body = [
        _header_html(d, header),
        _nav_html(sections),
        '<main>',
        *[_section_html(s) for s in sections[:2]],
        '<div class="grid2">',
        *[_section_html(s) for s in sections[2:4]],
        "</div>",
        _section_html(sections[4]),
        _top_html(d, top),
        "</main>",
        _footer_html(d),
    ]
    figure_scripts = "\n".join(
        f'<script type="application/json" class="attntune-figure" data-target="plot-{sid}">{_json_script(fj)}</script>'
        for sid, fj in figures
    )
    title = f"attntune report · {d.job_name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
{chr(10).join(body)}
<script type="application/json" id="attntune-data">{_json_script(json.dumps(payload, default=_json_default, allow_nan=False))}</script>
{figure_scripts}
<script type="text/javascript">{RENDER_JS}</script>
</body>
</html>
"""


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _json_script(text: str) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no '<!--')."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean(v: Any) -> Any:
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


def _trial_json(d: SearchData, t: TrialRecord) -> dict[str, Any]:
    return {
        "number": t.number,
        "run_id": t.run_id,
        "run_name": t.run_name,
        "state": t.state,
        "value": t.value(d.metric),
        "epochs_run": t.epochs_run,
        "n_params": t.n_params,
        "start_time": t.start_time,
        "end_time": t.end_time,
        "failure_reason": t.tags.get("failure_reason"),
    }


# --------------------------------------------------------------------------- header


def searched_names(d: SearchData) -> list[str]:
    names = [p.name for p in d.space]
    if names:
        return names
    return sorted({k for t in d.trials for k in t.params if k.startswith(("model.", "train."))})[:6]


def header_data(d: SearchData) -> dict[str, Any]:
    counts = d.counts()
    trained = [t for t in d.trials if t.state != "INFEASIBLE"]
    best = d.best()
    wall = d.metrics.get("wall_seconds")
    if wall is None and d.parent_start and d.parent_end:
        wall = (d.parent_end - d.parent_start) / 1000
    config: dict[str, str] = {}
    if best is not None:
        keys = searched_names(d) + [
            "model.d_model", "model.n_heads", "model.n_encoder_layers", "model.n_decoder_layers", "model.d_ff",
            "train.lr", "train.batch_size",
        ]
        for k in dict.fromkeys(keys):
            if k in best.params:
                config[k] = best.params[k]
    return {
        "job": d.job_name,
        "experiment": d.experiment_name,
        "experiment_id": d.experiment_id,
        "parent_run_id": d.parent_run_id,
        "status": d.parent_status,
        "strategy": d.setting("strategy"),
        "scheduler": d.setting("scheduler"),
        "backend": d.setting("backend"),
        "metric": d.metric,
        "mode": d.mode,
        "n_trials_budget": d.int_setting("n_trials"),
        "trials_run": len(trained),
        "n_trials_total": len(d.trials),
        "epochs_trained": sum(t.epochs_run for t in d.trials),
        "max_epochs": d.int_setting("max_epochs"),
        "round_word": d.round_word,  # epochs, or rounds of a token/step budget
        "round_note": d.round_note(),
        "wall_seconds": _clean(wall),
        "started": d.parent_start,
        "counts": counts,
        "best": None if best is None else {
            "number": best.number,
            "run_id": best.run_id,
            "run_name": best.run_name,
            "value": best.value(d.metric),
            "n_params": best.n_params,
            "config": config,
        },
        "rungs": rung_epochs(d),
    }


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _header_html(d: SearchData, h: dict[str, Any]) -> str:
    chips = "".join(
        f'<span class="chip"><span class="k">{k}</span> {_e(v)}</span>'
        for k, v in (("strategy", h["strategy"]), ("scheduler", h["scheduler"]), ("backend", h["backend"]),
                     ("metric", f"{h['metric']} ({h['mode']})"))
        if v
    )
    counts = "".join(
        f'<span class="pill" style="--c:{STATE_COLORS[s]}"><b>{h["counts"].get(s, 0)}</b> {s.lower()}</span>'
        for s in STATES
    )
    extra = [s for s in h["counts"] if s not in STATES and h["counts"][s]]
    counts += "".join(f'<span class="pill" style="--c:#607080"><b>{h["counts"][s]}</b> {_e(s.lower())}</span>' for s in extra)
    best = h["best"]
    if best is None:
        best_html = (
            '<div class="best none"><div class="label">Best trial</div>'
            '<div class="big">none</div><p>No trial completed, so there is no best configuration yet.</p></div>'
        )
    else:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in best["config"].items())
        best_html = (
            f'<div class="best"><div class="label">Best {_e(h["metric"])}</div>'
            f'<div class="big" title="{_e(best["value"])}">{fmt_value(best["value"], 6)}</div>'
            f'<div class="sub">trial {best["number"]} · <code>{_e(best["run_name"])}</code> · '
            f'{fmt_count(best["n_params"])} params</div>'
            f'<table class="config">{rows}</table></div>'
        )
    started = datetime.fromtimestamp(h["started"] / 1000).strftime("%Y-%m-%d %H:%M") if h["started"] else "–"
    kpis = [
        ("Trials run", f'{h["trials_run"]} <small>/ {h["n_trials_budget"]}</small>', "trained trials against the budget's n_trials"),
        (f'{h["round_word"].capitalize()}s trained', f'{h["epochs_trained"]}', f'at most {h["max_epochs"]} per trial{h["round_note"]}'),
        ("Wall time", fmt_duration(h["wall_seconds"]), f"started {started}"),
    ]
    kpi_html = "".join(
        f'<div class="kpi"><div class="label">{k}</div><div class="big">{v}</div><div class="sub">{_e(s)}</div></div>'
        for k, v, s in kpis
    )
    return f"""<header class="card hero" id="summary">
  <div class="hero-top">
    <div>
      <div class="eyebrow">attntune search report</div>
      <h1>{_e(h["job"])}</h1>
      <div class="chips">{chips}</div>
    </div>
    <div class="runref">MLflow experiment <b>{_e(h["experiment"])}</b><br>search run <code>{_e(h["parent_run_id"])}</code><br>status {_e(h["status"])}</div>
  </div>
  <div class="hero-body">
    <div class="kpis">{kpi_html}<div class="kpi states"><div class="label">Trials by state</div><div class="pills">{counts}</div></div></div>
    {best_html}
  </div>
</header>"""


def _nav_html(sections: list[Section]) -> str:
    links = [("summary", "Summary")] + [(s.id, s.title) for s in sections] + [("top-trials", f"Top {TOP_K}")]
    return '<nav class="toc">' + "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in links) + "</nav>"


def _section_html(s: Section) -> str:
    inner = (
        f'<div class="plot" id="plot-{s.id}"></div>'
        if s.figure is not None
        else f'<div class="empty" id="empty-{s.id}"><span class="icon">∅</span><p>{_e(s.message)}</p></div>'
    )
    caption = f'<p class="caption">{_e(s.caption)}</p>' if s.caption and s.figure is not None else ""
    return f'<section class="card" id="{s.id}"><h2>{_e(s.title)}</h2>{caption}{inner}</section>'


# --------------------------------------------------------------------------- top-k table


def export_command(experiment: str, number: int) -> str:
    return f"attntune export --experiment {shlex.quote(experiment)} --trial {number}"


def top_rows(d: SearchData, k: int = TOP_K) -> list[dict[str, Any]]:
    names = searched_names(d)
    rows = []
    for rank, t in enumerate(d.ranked()[:k], start=1):
        rows.append({
            "rank": rank,
            "number": t.number,
            "run_id": t.run_id,
            "run_name": t.run_name,
            "value": t.value(d.metric),
            "epochs_run": t.epochs_run,
            "n_params": t.n_params,
            "tokens_per_s": _clean(t.metrics.get("tokens_per_s")),
            "params": {n: t.params.get(n) for n in names},
            "command": export_command(d.experiment_name, t.number),
        })
    return rows


def _top_html(d: SearchData, rows: list[dict[str, Any]]) -> str:
    return _ranked_html(d, rows) + _failures_html(d)


def _failures_html(d: SearchData) -> str:
    """Why trials failed or were never trained (the first few), so a bad search explains itself."""
    bad = [t for t in d.trials if t.state in ("FAILED", "INFEASIBLE")]
    if not bad:
        return ""
    rows = "".join(
        f'<tr><td>{t.number}</td><td><span class="pill" style="--c:{STATE_COLORS.get(t.state, "#607080")}">'
        f'{_e(t.state.lower())}</span></td><td>{_e(t.tags.get("failure_kind", ""))}</td>'
        f'<td class="reason">{_e(t.tags.get("failure_reason", ""))}</td></tr>'
        for t in bad[:TOP_K]
    )
    more = f'<p class="caption">and {len(bad) - TOP_K} more.</p>' if len(bad) > TOP_K else ""
    return (
        f'<section class="card" id="failures"><h2>Trials that did not finish</h2>'
        f'<div class="table-wrap"><table class="top"><thead><tr><th>trial</th><th>state</th><th>kind</th>'
        f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table></div>{more}</section>"
    )


def _ranked_html(d: SearchData, rows: list[dict[str, Any]]) -> str:
    head = f'<section class="card" id="top-trials"><h2>Top {TOP_K} trials</h2>'
    if not rows:
        return head + (
            f'<div class="empty" id="empty-top-trials"><span class="icon">∅</span><p>No trial completed, so there is '
            f"nothing to rank or export yet ({_e(_state_summary(d))}).</p></div></section>"
        )
    names = list(rows[0]["params"])
    log_names = {p.name for p in d.space if p.log}
    spec = {p.name: p for p in d.space}
    th = "".join(f"<th>{_e(n)}</th>" for n in ["#", "trial", d.metric, d.round_word + "s", "n_params"])
    th += "".join(_dotted_th(n) for n in names)
    th += "<th>tokens/s</th><th>export</th>"
    body = []
    for r in rows:
        cells = [
            f'<td class="num">{r["rank"]}</td>',
            f'<td class="trial"><b>{r["number"]}</b><br><span class="muted">{_e(r["run_name"])}</span></td>',
            f'<td class="num strong" title="{_e(r["value"])}">{fmt_value(r["value"], 6)}</td>',
            f'<td class="num">{r["epochs_run"]}</td>',
            f'<td class="num" title="{_e(r["n_params"])}">{fmt_count(r["n_params"])}</td>',
        ]
        for n in names:
            raw = r["params"].get(n)
            shown = raw
            if n in log_names and raw is not None and n in spec:
                v = parse_param_value(spec[n], raw)
                shown = f"{v:.2e}" if isinstance(v, float) else raw
            cells.append(f'<td class="num" title="{_e(raw)}">{_e(shown)}</td>')
        tps = r["tokens_per_s"]
        cells.append(f'<td class="num" title="{_e(tps)}">{"–" if tps is None else f"{tps:,.0f}"}</td>')
        cells.append(f'<td><code class="cmd">{_e(r["command"])}</code></td>')
        body.append(f'<tr class="{"best-row" if r["rank"] == 1 else ""}">{"".join(cells)}</tr>')
    return (
        head
        + f'<p class="caption">Complete trials ranked by {_e(d.metric)} ({"lower" if d.mode == "min" else "higher"} is better). '
        "Each command writes the trial's config as a train file.</p>"
        + f'<div class="table-wrap"><table class="top"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div></section>'
    )


def _dotted_th(name: str) -> str:
    """``model.n_heads`` as a two-line header (section prefix small), so wide tables still fit."""
    prefix, dot, rest = name.rpartition(".")
    if not dot:
        return f"<th>{_e(name)}</th>"
    return f'<th class="num" title="{_e(name)}"><span class="pre">{_e(prefix)}.</span><br>{_e(rest)}</th>'


def _state_summary(d: SearchData) -> str:
    c = d.counts()
    return ", ".join(f"{n} {s.lower()}" for s, n in c.items() if n) or "no trials"


def _footer_html(d: SearchData) -> str:
    now = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<footer>Built {now} from MLflow ({_e(d.tracking_uri)}), experiment {_e(d.experiment_name)}, '
        f"search run <code>{_e(d.parent_run_id)}</code>. Every number here is read from MLflow, so the MLflow UI "
        "shows the same values. Times are local to the machine that built the report.</footer>"
    )


RENDER_JS = """
(function () {
  var config = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  var nodes = document.querySelectorAll('script.attntune-figure');
  for (var i = 0; i < nodes.length; i++) {
    var fig = JSON.parse(nodes[i].textContent);
    Plotly.newPlot(nodes[i].getAttribute('data-target'), fig.data, fig.layout, config);
  }
})();
"""

CSS = """
:root { --bg:#f3f5f9; --card:#fff; --ink:#1f2933; --muted:#66758a; --line:#e3e8ef; --accent:#1f4e9c; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif; }
main, header.hero, nav.toc, footer { max-width:1280px; margin-left:auto; margin-right:auto; }
.card { background:var(--card); border:1px solid var(--line); border-radius:14px;
  box-shadow:0 1px 2px rgba(16,24,40,.04),0 4px 14px rgba(16,24,40,.05); padding:20px 24px; margin:16px auto; }
header.hero { margin-top:24px; border-top:4px solid var(--accent); }
.hero-top { display:flex; justify-content:space-between; gap:24px; flex-wrap:wrap; align-items:flex-start; }
.eyebrow { text-transform:uppercase; letter-spacing:.08em; font-size:11px; color:var(--muted); font-weight:600; }
h1 { margin:2px 0 10px; font-size:28px; letter-spacing:-.01em; }
h2 { margin:0 0 4px; font-size:18px; }
.chips { display:flex; gap:8px; flex-wrap:wrap; }
.chip { background:#eef2f8; border-radius:999px; padding:3px 11px; font-size:13px; }
.chip .k { color:var(--muted); }
.runref { color:var(--muted); font-size:12.5px; text-align:right; line-height:1.7; }
.hero-body { display:grid; grid-template-columns: minmax(0,1.25fr) minmax(0,1fr); gap:20px; margin-top:18px; }
.kpis { display:grid; grid-template-columns:repeat(3,minmax(0,1fr)); gap:12px; align-content:start; }
.kpi { background:#f8fafc; border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.kpi.states { grid-column:1 / -1; }
.label { font-size:12px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.05em; }
.big { font-size:26px; font-weight:650; line-height:1.25; margin-top:2px; font-variant-numeric:tabular-nums; }
.big small { font-size:15px; color:var(--muted); font-weight:500; }
.sub { color:var(--muted); font-size:12.5px; }
.pills { display:flex; gap:8px; flex-wrap:wrap; margin-top:6px; }
.pill { border:1px solid var(--c); color:var(--c); background:color-mix(in srgb, var(--c) 9%, white);
  border-radius:999px; padding:2px 12px; font-size:13px; }
.pill b { font-size:15px; }
.best { background:linear-gradient(180deg,#f1f8f3,#fff); border:1px solid #cfe8d6; border-radius:10px; padding:12px 16px; }
.best .big { color:#1d7a33; font-size:32px; }
.best.none { background:#fafafa; border-color:var(--line); }
.best.none .big { color:var(--muted); }
table.config { border-collapse:collapse; margin-top:8px; font-size:13px; }
table.config th { text-align:left; color:var(--muted); font-weight:500; padding:2px 12px 2px 0; white-space:nowrap; }
table.config td { font-variant-numeric:tabular-nums; padding:2px 0; }
nav.toc { display:flex; gap:6px; flex-wrap:wrap; padding:0 4px; }
nav.toc a { color:var(--accent); text-decoration:none; font-size:13px; padding:4px 10px; border-radius:8px; background:#e7edf7; }
nav.toc a:hover { background:#d6e1f3; }
.caption { color:var(--muted); margin:0 0 8px; font-size:13px; }
.plot { width:100%; min-height:260px; }
.grid2 { display:grid; grid-template-columns:minmax(0,1fr) minmax(0,1.35fr); gap:16px; margin:0 auto; }
.grid2 > .card { margin:0; }
.empty { display:flex; gap:14px; align-items:center; background:#f8fafc; border:1px dashed #c9d3e0; border-radius:10px;
  padding:22px 20px; color:#3c4a5c; margin-top:8px; }
.empty .icon { font-size:26px; color:#9aa6b8; }
.empty p { margin:0; }
.table-wrap { overflow-x:auto; }
table.top { border-collapse:collapse; width:100%; font-size:13px; }
table.top th { text-align:left; font-size:12px; color:var(--muted); font-weight:600; border-bottom:2px solid var(--line);
  padding:6px 8px; white-space:nowrap; vertical-align:bottom; }
table.top th.num { text-align:right; }
table.top th .pre { font-weight:400; font-size:11px; }
table.top td { border-bottom:1px solid var(--line); padding:6px 8px; white-space:nowrap; }
table.top td.trial { line-height:1.3; }
table.top td.trial .muted { font-size:11.5px; }
table.top td.reason { white-space:normal; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
table.top tr.best-row td { background:#f1f8f3; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.strong { font-weight:650; }
.muted { color:var(--muted); }
code { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
code.cmd { background:#f1f4f9; border:1px solid var(--line); border-radius:6px; padding:2px 7px; user-select:all; }
footer { color:var(--muted); font-size:12px; padding:8px 6px 32px; }
@media (max-width: 900px) { .hero-body, .grid2 { grid-template-columns:1fr; } .kpis { grid-template-columns:1fr 1fr; } }
"""
