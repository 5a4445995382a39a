"""The report page: a view model of one search, rendered by the jinja2 templates in ``templates/``.

``build_html`` is the only entry point. The functions below it turn ``SearchData`` into plain values
(the JSON block's header, top and trial records, plus a few display-only rows) so the templates only
lay them out; numbers are formatted by the filters registered in ``_environment``. Autoescaping is on
for every template, ``None`` prints as an empty string (as a blank table cell should), and JSON goes
into ``<script>`` only through the ``json_script`` filter, which keeps ``</script>`` out of it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import math
import shlex
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from markupsafe import Markup

from attntune.dashboards.charts import (
    STATE_COLORS,
    Section,
    cost_section,
    curves_section,
    fmt_count,
    fmt_value,
    history_section,
    importance_section,
    rung_epochs,
    state_color,
)
from attntune.dashboards.data import parse_param_value
from attntune.dashboards.families import families_section, family_color
from attntune.dashboards.parallel import parallel_section
from attntune.search.outcome import TrialState
from attntune.search.records import STATES, SearchData, TrialRecord

TOP_K = 10
TEMPLATE = "report.html.j2"
OTHER_STATE_COLOR = "#607080"  # a header pill for a state outside STATES (RUNNING, KILLED, ...)
# Parameters every best-config table shows after the searched ones, when the trial logged them.
BEST_CONFIG_KEYS = (
    "model.d_model", "model.n_heads", "model.n_encoder_layers", "model.n_decoder_layers", "model.d_ff",
    "train.lr", "train.batch_size",
)


def build_html(d: SearchData) -> str:
    """The whole report as one HTML string: plotly.js, every figure and the numbers inlined."""
    sections = [
        history_section(d),
        curves_section(d),
        importance_section(d),
        parallel_section(d),
        cost_section(d),
    ]
    families = families_section(d)  # None unless the trials span more than one model.family
    if families is not None:
        sections.append(families)
    header = header_data(d)
    top = top_rows(d)
    payload = report_payload(d, sections, header, top)
    banner, packed = plotly_bundle()
    return _environment().get_template(TEMPLATE).render(
        title=f"attntune report · {d.job_name}",
        plotly_banner=Markup(banner),  # plotly's own licence comment, trusted as the bundle is
        plotly_gz=Markup(packed),  # base85 without '<': nothing in it to escape, so not escaped
        h=header,
        summary=summary_view(d, header),
        nav=nav_links(sections),
        sections={s.id: s for s in sections},
        ranked=ranked_view(d, top),
        failures=failures_view(d),
        data_json=json.dumps(payload, default=_json_default, allow_nan=False, separators=(",", ":")),
        figures=[(s.id, s.figure.to_json()) for s in sections if s.figure is not None],
        footer=footer_view(d),
    )


# Python's base85 alphabet (RFC 1924) with '<' swapped for '.', which it lacks: no '/', '"' or '\\'
# either, so the packed bundle can neither close its <script> nor its JS string. plots.js.j2 decodes it.
B85_FROM, B85_TO = b"<", b"."


@functools.cache
def plotly_bundle() -> tuple[str, str]:
    """(plotly.js's licence comment, the whole bundle gzipped in base85). Packed, the bundle is
    1.8 MB instead of 4.8 MB; the page unpacks it with the browser's own ``DecompressionStream``
    (Chrome and Edge 80+, Firefox 113+, Safari 16.4+), so it still needs no network. Once per process."""
    from plotly.offline import get_plotlyjs  # heavy: loaded only when a report is built

    js = get_plotlyjs()
    banner = js[: js.index("*/") + 2] if js.startswith("/*") and "*/" in js else ""
    packed = base64.b85encode(gzip.compress(js.encode("utf-8"), compresslevel=9, mtime=0))
    return banner, packed.translate(bytes.maketrans(B85_FROM, B85_TO)).decode("ascii")


# --------------------------------------------------------------------------- jinja2 environment


@functools.cache
def _environment() -> jinja2.Environment:
    """One environment per process (templates are compiled once). StrictUndefined makes a
    misspelt variable an error in tests instead of a silently empty cell."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("attntune.dashboards", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_blank_none,
    )
    env.filters.update(
        fmt_value=fmt_value,
        fmt_count=fmt_count,
        fmt_duration=fmt_duration,
        fmt_int=fmt_int,
        state_color=state_color,
        family_color=family_color,
        json_script=json_script,
    )
    return env


def _blank_none(v: Any) -> Any:
    """``{{ x }}`` of a missing MLflow value prints nothing rather than ``None``."""
    return "" if v is None else v


def json_script(text: str) -> Markup:
    """JSON text made safe inside a <script> element (no '</script>', no '<!--') and marked so that
    autoescaping leaves it alone: the browser reads it back with ``JSON.parse`` unchanged."""
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def fmt_duration(s: float | None) -> str:
    """Wall time at the precision a reader cares about: ``4.2 s``, ``3 min 07 s``, ``2 h 05 min``."""
    if s is None:
        return "–"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_int(v: float | None) -> str:
    """A rate such as tokens/s with thousands separators, ``–`` when it was not logged."""
    return "–" if v is None else f"{v:,.0f}"


# --------------------------------------------------------------------------- the embedded JSON


def report_payload(
    d: SearchData, sections: list[Section], header: dict[str, Any], top: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``attntune-data`` block: what every chart and table shows, for scripts and tests."""
    return {
        "version": 1,
        "generated_at": time.time(),
        "header": header,
        "sections": {
            s.id: {"title": s.title, "plotted": s.figure is not None, "message": s.message, "data": s.data}
            for s in sections
        },
        "top": top,
        "trials": [_trial_json(d, t) for t in d.trials],
    }


def _json_default(o: Any) -> Any:
    """numpy scalars as Python numbers, anything else as its string."""
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _clean(v: Any) -> Any:
    """A non-finite float as None, since the JSON block is written with ``allow_nan=False``."""
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


def _trial_json(d: SearchData, t: TrialRecord) -> dict[str, Any]:
    """One trial as the JSON block lists it, failed and infeasible ones included."""
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
    """The searched parameters; for a run without ``space.yaml``, the first few config keys logged."""
    names = [p.name for p in d.space]
    if names:
        return names
    return sorted({k for t in d.trials for k in t.params if k.startswith(("model.", "train."))})[:6]


def header_data(d: SearchData) -> dict[str, Any]:
    """The summary's numbers (also the JSON block's ``header``): settings, totals and the best trial."""
    trained = [t for t in d.trials if t.state != TrialState.INFEASIBLE]
    wall = d.metrics.get("wall_seconds")
    if wall is None and d.parent_start and d.parent_end:
        wall = (d.parent_end - d.parent_start) / 1000
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
        "counts": d.counts(),
        "best": best_data(d),
        "rungs": rung_epochs(d),
        "baseline": baseline_data(d),
    }


def baseline_data(d: SearchData) -> dict[str, Any] | None:
    """The best trial against the baseline (``SearchData.gain``); None without a baseline."""
    gain = d.gain()
    if gain is None:
        return None
    return {
        "value": gain.baseline,
        "noise": gain.noise,
        "repeats": gain.repeats,
        "gain": gain.gain,
        "beats": gain.beats,
        "line": gain.line(d.metric),
    }


def best_data(d: SearchData) -> dict[str, Any] | None:
    """The best trial and the config keys a reader needs to recognise it (None: nothing completed)."""
    best = d.best()
    if best is None:
        return None
    keys = dict.fromkeys([*searched_names(d), *BEST_CONFIG_KEYS])
    return {
        "number": best.number,
        "run_id": best.run_id,
        "run_name": best.run_name,
        "value": best.value(d.metric),
        "n_params": best.n_params,
        "config": {k: best.params[k] for k in keys if k in best.params},
    }


@dataclass(frozen=True)
class Pill:
    """A coloured count, e.g. ``3 pruned`` in orange."""

    label: str
    count: int
    color: str


def summary_view(d: SearchData, h: dict[str, Any]) -> dict[str, Any]:
    """Display-only pieces of the summary card: setting chips, state pills, the local start time."""
    chips = [
        (k, v)
        for k, v in (("strategy", h["strategy"]), ("scheduler", h["scheduler"]), ("backend", h["backend"]),
                     ("metric", f"{h['metric']} ({h['mode']})"))
        if v
    ]
    counts = h["counts"]
    pills = [Pill(s.lower(), counts.get(s, 0), STATE_COLORS[s]) for s in STATES]
    pills += [Pill(s.lower(), n, OTHER_STATE_COLOR) for s, n in counts.items() if s not in STATES and n]
    started = datetime.fromtimestamp(h["started"] / 1000).strftime("%Y-%m-%d %H:%M") if h["started"] else "–"
    return {"chips": chips, "pills": pills, "started": started}


def nav_links(sections: list[Section]) -> list[tuple[str, str]]:
    """(anchor, title) for the table of contents, in page order."""
    return [("summary", "Summary"), *[(s.id, s.title) for s in sections], ("top-trials", f"Top {TOP_K}")]


def footer_view(d: SearchData) -> dict[str, Any]:
    """Where the numbers came from, and when the page was built (local time)."""
    return {
        "built": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "tracking_uri": d.tracking_uri,
        "experiment": d.experiment_name,
        "parent_run_id": d.parent_run_id,
    }


# --------------------------------------------------------------------------- top-k table


def export_command(experiment: str, number: int) -> str:
    """The shell command that writes a trial's config as a train file (quoted for copy-paste)."""
    return f"attntune export --experiment {shlex.quote(experiment)} --trial {number}"


def top_rows(d: SearchData, k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` best complete trials (the JSON block's ``top``), params as MLflow stores them."""
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


@dataclass(frozen=True)
class ParamColumn:
    """A parameter's column header, ``model.n_heads`` split as ``model.`` (small) over ``n_heads``
    so that wide tables still fit; ``prefix`` is '' for a name without a dot."""

    name: str
    prefix: str
    leaf: str


@dataclass(frozen=True)
class ParamCell:
    """A parameter as MLflow stores it (the tooltip) and as shown (log-scale ones as ``3.00e-04``)."""

    raw: str | None
    shown: str | None


def ranked_view(d: SearchData, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The top table's columns and cells; the rows themselves are ``top_rows``' dicts."""
    names = list(rows[0]["params"]) if rows else []
    log_params = {p.name: p for p in d.space if p.log}
    columns = []
    for n in names:
        prefix, dot, leaf = n.rpartition(".")
        columns.append(ParamColumn(n, prefix + dot, leaf))
    return {
        "top_k": TOP_K,
        "metric": d.metric,
        "better": "lower" if d.mode == "min" else "higher",
        "rounds": d.round_word + "s",
        "columns": columns,
        "rows": [(r, [_param_cell(log_params.get(n), r["params"].get(n)) for n in names]) for r in rows],
        "empty_message": f"No trial completed, so there is nothing to rank or export yet ({state_summary(d)}).",
    }


def _param_cell(log_param: Any, raw: str | None) -> ParamCell:
    """MLflow rounds a log-scale value to a long decimal string; three significant digits read better."""
    if log_param is None or raw is None:
        return ParamCell(raw, raw)
    v = parse_param_value(log_param, raw)
    return ParamCell(raw, f"{v:.2e}" if isinstance(v, float) else raw)


def state_summary(d: SearchData) -> str:
    """``2 failed, 1 infeasible``: why the top table is empty."""
    return ", ".join(f"{n} {s.lower()}" for s, n in d.counts().items() if n) or "no trials"


@dataclass(frozen=True)
class FailureRow:
    """A trial that failed or was never trained, with the reason its run was tagged with."""

    number: int
    state: str
    kind: str
    reason: str


def failures_view(d: SearchData) -> dict[str, Any] | None:
    """The first ``TOP_K`` failed or infeasible trials, so a bad search explains itself (None: none)."""
    bad = [t for t in d.trials if t.state in (TrialState.FAILED, TrialState.INFEASIBLE)]
    if not bad:
        return None
    rows = [
        FailureRow(t.number, t.state, t.tags.get("failure_kind", ""), t.tags.get("failure_reason", ""))
        for t in bad[:TOP_K]
    ]
    return {"rows": rows, "more": max(0, len(bad) - TOP_K)}
