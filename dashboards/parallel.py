"""The report's parallel-coordinates chart: the searched parameters against the metric, one line per
complete trial.

Drawn with plain scatter traces rather than plotly's ``parcoords`` (which needs WebGL), one axis per
parameter mapped to [0, 1], so log-scale parameters get log axes and categorical ones their choices.
Above ``MAX_LINES`` complete trials it draws a sample (``data.line_sample``): the best trials and an
evenly spaced sample of the rest, and its caption says so.
"""

from __future__ import annotations

import math
from typing import Any

from attntune.dashboards.charts import Section, apply_layout
from attntune.dashboards.data import line_sample, parse_param_value, sample_note
from attntune.search.records import SearchData
from attntune.spaces.space import Param

# Worst trials light grey-blue, best deep navy.
QUALITY_SCALE = [[0.0, "#d3dae6"], [0.5, "#7d9ccc"], [1.0, "#0b3275"]]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k ticks inside [lo, hi] (at least the two ends)."""
    out = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    if len(out) > 6:
        out = [v for v in out if f"{v:.0e}".startswith("1")]
    return out or [lo, hi]


def _axis(p: Param | None, values: list[Any], label: str) -> dict[str, Any]:
    """Map one dimension's values to [0, 1] plus its tick positions and labels."""
    if p is not None and p.type == "categorical":
        choices = list(p.choices)
        n = len(choices)
        pos = {repr(c): (i / (n - 1) if n > 1 else 0.5) for i, c in enumerate(choices)}
        return {
            "label": label, "log": False,
            "y": [pos.get(repr(v), 0.5) for v in values],
            "ticks": [(pos[repr(c)], str(c)) for c in choices],
        }
    nums = [float(v) for v in values]
    if p is not None and p.low is not None and p.high is not None:
        lo, hi = float(p.low), float(p.high)
    else:
        lo, hi = min(nums), max(nums)
    log = bool(p is not None and p.log and lo > 0)
    f = math.log10 if log else (lambda x: x)
    a, b = f(lo), f(hi)

    def norm(x: float) -> float:
        return 0.5 if b == a else (f(x) - a) / (b - a)

    if log:
        ticks = [(norm(v), f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")) for v in _log_ticks(lo, hi)]
    elif p is not None and p.type == "int" and hi - lo <= 8:
        ticks = [(norm(v), str(v)) for v in range(int(lo), int(hi) + 1, int(p.step or 1))]
    else:
        ticks = [(norm(v), f"{v:.3g}") for v in ([lo] if b == a else [lo, (lo + hi) / 2, hi])]
    return {"label": label, "log": log, "y": [norm(x) for x in nums], "ticks": ticks}


def parallel_section(d: SearchData) -> Section:
    """Parallel coordinates of the searched parameters against the metric (complete trials)."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    sec = Section("parallel", "Parameters against the metric")
    done = d.completed()
    metric, mode = d.metric, d.mode
    dims: list[tuple[Param, list[Any]]] = []
    for p in d.space:
        vals = [parse_param_value(p, t.params[p.name]) if p.name in t.params else None for t in done]
        if done and all(v is not None for v in vals):
            dims.append((p, vals))
    drawn, n_best = line_sample(done, d.ranked(), key=lambda t: t.run_id)
    sec.data = {
        "metric": metric,
        "params": [p.name for p, _ in dims],
        "trials": [
            {"number": t.number, "value": t.value(metric), **{p.name: vals[i] for p, vals in dims}}
            for i, t in enumerate(done)
        ],
        "drawn": [t.number for t in drawn],  # every complete trial, or a sample above MAX_LINES
    }
    if len(done) < 2 or not dims:
        why = (
            "no searched parameter is known" if not dims and done
            else f"{len(done)} complete trial{'' if len(done) == 1 else 's'}"
        )
        sec.message = f"Parallel coordinates need at least 2 complete trials with their parameters; this search has {why}."
        return sec
    values = [t.value(metric) for t in done]
    axes = [_axis(p, vals, p.name) for p, vals in dims]
    vmin, vmax = min(values), max(values)
    axes.append(_axis(None, values, metric))
    # quality: 1 for the best trial, 0 for the worst
    q = [0.5 if vmax == vmin else ((vmax - v) if mode == "min" else (v - vmin)) / (vmax - vmin) for v in values]
    colors = sample_colorscale(QUALITY_SCALE, q)
    fig = go.Figure()
    xs = list(range(len(axes)))
    shown = {t.run_id for t in drawn}  # colours and axes still span every complete trial
    for i in sorted((i for i, t in enumerate(done) if t.run_id in shown), key=lambda i: q[i]):  # best on top
        t = done[i]
        hover = "<br>".join(
            [f"trial {t.number} · {t.run_name}", f"{metric} {values[i]:.4g}"]
            + [f"{p.name} {_fmt_param(vals[i])}" for p, vals in dims]
        )
        fig.add_trace(
            go.Scatter(
                x=xs, y=[round(ax["y"][i], 4) for ax in axes], mode="lines+markers",  # axes are 0..1
                line=dict(color=colors[i], width=2.5), marker=dict(color=colors[i], size=7),
                hovertemplate=hover + "<extra></extra>", showlegend=False,
            )
        )
    # colour bar: an invisible trace carries the scale, in metric units
    fig.add_trace(
        go.Scatter(
            x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
            marker=dict(
                colorscale=QUALITY_SCALE, reversescale=mode == "min", cmin=vmin, cmax=vmax if vmax > vmin else vmin + 1,
                color=[vmin], showscale=True,
                colorbar=dict(title=dict(text=metric, side="right"), thickness=14, len=0.9),
            ),
        )
    )
    _draw_axes(fig, axes)
    fig.update_xaxes(visible=False, range=[-0.45, len(axes) - 0.8])
    fig.update_yaxes(visible=False, range=[-0.06, 1.16])
    apply_layout(fig, height=440, showlegend=False)
    fig.update_layout(margin=dict(l=50, r=20, t=30, b=20))
    sec.figure = fig
    sec.caption = (
        f"One line per complete trial across the searched ranges; darker lines are better {metric}. "
        "Log-scale parameters (such as the learning rate) use log axes."
    ) + sample_note(len(drawn), len(done), n_best, metric)
    return sec


def _draw_axes(fig: Any, axes: list[dict[str, Any]]) -> None:
    """Each parallel axis: a vertical line, its dotted name (the prefix small), its ticks."""
    for x, ax in enumerate(axes):
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, line=dict(color="#3b4252", width=1.5), layer="below")
        prefix, dot, rest = ax["label"].rpartition(".")
        label = (f"<span style='font-size:10px;color:#66758a'>{prefix}.</span><br>" if dot else "<br>") + f"<b>{rest}</b>"
        if ax["log"]:
            label += " <span style='font-size:10px;color:#66758a'>log</span>"
        fig.add_annotation(x=x, y=1.0, yshift=26, text=label, showarrow=False, font=dict(size=12))
        for y, label in ax["ticks"]:
            fig.add_annotation(x=x, y=y, text=label, showarrow=False, xanchor="right", xshift=-6,
                               font=dict(size=11, color="#5b6577"))


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
