"""The report's "by family" view: a search over several ``model.family`` values, compared family by family.

Why a view of its own: a family search asks "is a Transformer even the right model at this budget?",
which neither the history nor the cost chart answers while every family shares one colour. The
section exists only when the trials span more than one family (a run without a ``model.family``
param is a Transformer, ``TrialRecord.family``); its best value per family is ``outcome.best_of``
restricted to that family, so it agrees with ``attntune export --family``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from attntune.dashboards.charts import FONT, Section, metric_axis_title, report_template
from attntune.model.config import FAMILY_FIELDS
from attntune.search.outcome import TrialState, best_of
from attntune.search.records import SearchData, TrialRecord

# Family colours, clear of the state colours (green, orange, red, grey) used everywhere else.
FAMILY_COLORS = {"transformer": "#1f4e9c", "rnn": "#b0489e", "mlp": "#17a2b8"}
OTHER_FAMILY_COLOR = "#607080"
SECTION_ID = "families"


def family_color(family: str) -> str:
    return FAMILY_COLORS.get(family, OTHER_FAMILY_COLOR)


def trial_families(d: SearchData) -> list[str]:
    """The families this search's trials trained (warm-start priors left out), in
    ``FAMILY_FIELDS`` order, then any other name a store holds, sorted."""
    seen = {t.family for t in d.trials if t.state != TrialState.PRIOR}
    return [f for f in FAMILY_FIELDS if f in seen] + sorted(seen - set(FAMILY_FIELDS))


def families_section(d: SearchData) -> Section | None:
    """The "by family" section, or None for a search whose trials are all of one family."""
    families = trial_families(d)
    if len(families) < 2:
        return None
    sec = Section(SECTION_ID, "By model family")
    sec.data = families_data(d, families)
    if not sec.data["points"]:
        sec.message = "No trial completed yet, so there is no family to compare."
        return sec
    sec.figure = _figure(d, sec.data)
    sec.caption = (
        f"Left: the best complete {d.metric} of each family so far, against the time its trials ended. "
        f"Right: every complete trial's {d.metric} against its size, coloured by family. "
        "The table counts each family's trials; its best is the trial `attntune export --family` writes."
    )
    return sec


def families_data(d: SearchData, families: list[str]) -> dict[str, Any]:
    """What the section plots and tabulates (the JSON block's ``sections.families.data``)."""
    mine = {f: [t for t in d.trials if t.family == f and t.state != TrialState.PRIOR] for f in families}
    by_time = all(t.end_time is not None for f in families for t in _ranked_done(d, mine[f]))
    return {
        "metric": d.metric,
        "mode": d.mode,
        "x": "end_time" if by_time else "number",
        "families": families,
        "best_so_far": {f: best_so_far(d, mine[f], by_time) for f in families},
        "table": [_table_row(d, f, mine[f]) for f in families],
        "points": [
            {"number": t.number, "family": t.family, "n_params": t.n_params, "value": t.value(d.metric)}
            for t in d.completed()
            if t.n_params is not None and t.family in mine
        ],
    }


def _ranked_done(d: SearchData, trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials ``best_of`` can pick: COMPLETE, feasible, a finite value."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.feasible and t.value(d.metric) is not None]


def best_so_far(d: SearchData, trials: list[TrialRecord], by_time: bool) -> list[dict[str, Any]]:
    """One point per trial that improved its family's best, in the order trials ended."""
    out: list[dict[str, Any]] = []
    best: float | None = None
    done = _ranked_done(d, trials)
    done.sort(key=lambda t: (t.end_time or 0, t.number) if by_time else (t.number, 0))
    for t in done:
        v = t.value(d.metric)
        if best is None or (v < best if d.mode == "min" else v > best):
            best = v
            out.append({"number": t.number, "end_time": t.end_time, "best": best})
    return out


def _table_row(d: SearchData, family: str, trials: list[TrialRecord]) -> dict[str, Any]:
    best = best_of(trials, d.mode, value=lambda t: t.value(d.metric))
    return {
        "family": family,
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "best": None if best is None else best.value(d.metric),
        "best_trial": None if best is None else best.number,
        "best_run_name": None if best is None else best.run_name,
    }


def _figure(d: SearchData, data: dict[str, Any]) -> Any:
    """Two panels: best-so-far lines per family, and the metric against n_params by family."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by_time = data["x"] == "end_time"
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=["best so far", "quality against size"])
    xs_all = [p["end_time"] if by_time else p["number"] for f in data["families"] for p in data["best_so_far"][f]]
    last = max(xs_all) if xs_all else None
    for f in data["families"]:
        line = data["best_so_far"][f]
        if not line:
            continue
        xs = [p["end_time"] if by_time else p["number"] for p in line] + [last]
        ys = [p["best"] for p in line] + [line[-1]["best"]]
        fig.add_trace(
            go.Scatter(
                x=[_ms_to_iso(x) for x in xs] if by_time else xs, y=ys, mode="lines+markers",
                line=dict(color=family_color(f), width=2.5, shape="hv"),
                marker=dict(color=family_color(f), size=[8] * len(line) + [0]),
                name=f, legendgroup=f, customdata=[[p["number"]] for p in line] + [[line[-1]["number"]]],
                hovertemplate=f"{f}: best %{{y:.4g}} (trial %{{customdata[0]}})<extra></extra>",
            ),
            row=1, col=1,
        )
    for f in data["families"]:
        pts = [p for p in data["points"] if p["family"] == f]
        if pts:
            fig.add_trace(
                go.Scatter(
                    x=[p["n_params"] for p in pts], y=[p["value"] for p in pts], mode="markers",
                    marker=dict(color=family_color(f), size=10, opacity=0.8, line=dict(color="white", width=1)),
                    name=f, legendgroup=f, showlegend=not data["best_so_far"][f],
                    customdata=[[p["number"]] for p in pts],
                    hovertemplate=f"{f} · trial %{{customdata[0]}}<br>%{{x:,.0f}} params<br>{d.metric} %{{y:.4g}}<extra></extra>",
                ),
                row=1, col=2,
            )
    sizes = [p["n_params"] for p in data["points"]]
    log_x = max(sizes) > 8 * max(1, min(sizes))
    fig.update_xaxes(title_text="trial end time" if by_time else "trial number", row=1, col=1)
    fig.update_xaxes(title_text="parameters (n_params)", type="log" if log_x else "linear", tickformat="~s", row=1, col=2)
    fig.update_yaxes(title_text=metric_axis_title(d.metric, d.mode), row=1, col=1)
    return _layout(fig)


def _ms_to_iso(ms: float) -> str:
    """A local time plotly reads as a date axis (the history chart's format)."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _layout(fig: Any) -> Any:
    """The other charts' look (charts.py), with room above for the panel titles and the legend."""
    fig.update_layout(
        template=report_template(), height=450, margin=dict(l=70, r=30, t=80, b=60),
        font=dict(family=FONT, size=13, color="#1f2933"), hoverlabel=dict(font_family=FONT),
        legend=dict(orientation="h", yanchor="bottom", y=1.12, xanchor="left", x=0, title_text=""),
    )  # fmt: skip
    return fig
