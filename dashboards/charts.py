"""The report's charts: pure functions from ``SearchData`` to plotly figures plus the data they plot.

Every builder returns a ``Section``: the figure (or ``None`` with a sentence saying why there is
nothing to draw) and a JSON-ready dict of exactly what the figure plots, which the report embeds so
tests (and curious users) can read the numbers without scraping the chart.
Everything is drawn with SVG traces (no WebGL), so a report renders in any browser, GPU or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attntune.dashboards.data import parse_param_value
from attntune.search.outcome import TrialState
from attntune.search.pareto import front_indices
from attntune.search.records import STATES, SearchData, TrialRecord
from attntune.search.schedulers import SCHEDULERS
from attntune.spaces.space import Param

STATE_COLORS = {
    TrialState.COMPLETE: "#2e9e44",
    TrialState.PRUNED: "#f28e2b",
    TrialState.FAILED: "#d64541",
    TrialState.INFEASIBLE: "#9aa0a6",
    TrialState.RUNNING: "#4e79a7",
    TrialState.KILLED: "#8e6fbf",
}
ACCENT = "#1f4e9c"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
MIN_IMPORTANCE_TRIALS = 4
# Parallel coordinates: worst trials light grey-blue, best deep navy.
QUALITY_SCALE = [[0.0, "#d3dae6"], [0.5, "#7d9ccc"], [1.0, "#0b3275"]]


@dataclass
class Section:
    """One report section: a figure or an explanation, and the data behind it."""

    id: str
    title: str
    figure: Any = None
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    caption: str = ""


def state_color(state: str) -> str:
    return STATE_COLORS.get(state, "#607080")


def metric_axis_title(metric: str, mode: str) -> str:
    return f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)"


def _layout(fig: Any, height: int = 420, **kw: Any) -> Any:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=70, r=30, t=40, b=60),
        font=dict(family=FONT, size=13, color="#1f2933"),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, title_text=""),
        hoverlabel=dict(font_family=FONT),
        **kw,
    )
    return fig


def _ms_to_local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def fmt_value(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}"


def fmt_count(n: int | None) -> str:
    """``1234567`` -> ``1.23M``: parameter counts at a glance."""
    if n is None:
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


# --------------------------------------------------------------------------- optimisation history


def history_section(d: SearchData) -> Section:
    """Each trial's final metric at its start time, with the best-so-far line of complete trials."""
    import plotly.graph_objects as go

    sec = Section("history", "Optimisation history")
    metric, mode = d.metric, d.mode
    pts = [t for t in d.trials if t.value(metric) is not None and t.start_time is not None]
    pts.sort(key=lambda t: (t.start_time, t.number))
    best_line: list[dict[str, Any]] = []
    best: float | None = None
    for t in pts:
        if t.state != TrialState.COMPLETE:
            continue
        v = t.value(metric)
        if best is None or (v < best if mode == "min" else v > best):
            best = v
        best_line.append({"number": t.number, "start_time": t.start_time, "best": best})
    sec.data = {
        "metric": metric,
        "mode": mode,
        "trials": [
            {"number": t.number, "state": t.state, "start_time": t.start_time, "value": t.value(metric)} for t in pts
        ],
        "best_so_far": best_line,
    }
    if not pts:
        sec.message = (
            f"No trial reported {metric} yet, so there is no history to draw "
            f"({_counts_sentence(d)})."
        )
        return sec
    fig = go.Figure()
    if best_line:
        xs = [_ms_to_local(b["start_time"]) for b in best_line] + [_ms_to_local(pts[-1].start_time)]
        ys = [b["best"] for b in best_line] + [best_line[-1]["best"]]
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", line=dict(color=ACCENT, width=2.5, shape="hv"), name="best so far",
                hovertemplate="best so far: %{y:.4g}<extra></extra>",
            )
        )
    for state in [*STATES, *sorted({t.state for t in pts} - set(STATES))]:
        group = [t for t in pts if t.state == state]
        if not group:
            continue
        fig.add_trace(
            go.Scatter(
                x=[_ms_to_local(t.start_time) for t in group],
                y=[t.value(metric) for t in group],
                mode="markers",
                name=f"{state.lower()} ({len(group)})",
                marker=dict(color=state_color(state), size=10, line=dict(color="white", width=1.5),
                            symbol="circle" if state == TrialState.COMPLETE else "diamond"),
                text=[t.run_name for t in group],
                customdata=[[t.number] for t in group],
                hovertemplate="trial %{customdata[0]} · %{text}<br>" + metric + " %{y:.4g}<br>started %{x}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="trial start time")
    span = (pts[-1].start_time - pts[0].start_time) / 1000
    if span < 10:  # one trial, or a burst: keep whole seconds on the axis, not milliseconds
        mid = (pts[-1].start_time + pts[0].start_time) / 2
        fig.update_xaxes(range=[_ms_to_local(int(mid - 30_000)), _ms_to_local(int(mid + 30_000))])
    fig.update_yaxes(title_text=f"best {metric_axis_title(metric, mode)}")
    sec.figure = _layout(fig)
    pruned = any(t.state == TrialState.PRUNED for t in pts)
    sec.caption = f"Each point is a trial's best {metric}, placed at the time the trial started" + (
        "; pruned trials stopped early, so their values are not comparable with complete ones. " if pruned else ". "
    ) + "The line is the best complete trial so far."
    return sec


def _counts_sentence(d: SearchData) -> str:
    c = d.counts()
    parts = [f"{n} {s.lower()}" for s, n in c.items() if n]
    return ", ".join(parts) if parts else "no trials"


# --------------------------------------------------------------------------- learning curves


def rung_epochs(d: SearchData) -> list[int]:
    """Epochs where ASHA/Hyperband compare trials (attntune.search.schedulers.sha_rungs)."""
    name = d.setting("scheduler", "none")
    try:
        sched = SCHEDULERS.get(name)
    except Exception:  # noqa: BLE001 - a scheduler this version does not know
        return []
    if not sched.bandit:
        return []

    @dataclass
    class _Budget:
        min_epochs: int
        max_epochs: int

    return list(sched.rungs(_Budget(d.int_setting("min_epochs", 1), d.int_setting("max_epochs", 1))))


def curves_section(d: SearchData) -> Section:
    """Metric per epoch for every trial, coloured by state, rung epochs marked."""
    import plotly.graph_objects as go

    sec = Section("curves", "Learning curves")
    metric = d.metric
    rungs = rung_epochs(d)
    with_curve = [t for t in d.trials if t.curve]
    sec.data = {
        "metric": metric,
        "rungs": rungs,
        "trials": [
            {
                "number": t.number,
                "state": t.state,
                "epochs": [e for e, _ in t.curve],
                "values": [v if math.isfinite(v) else None for _, v in t.curve],
                "stopped_epoch": t.stopped_epoch,
            }
            for t in with_curve
        ],
    }
    if not with_curve:
        sec.message = f"No trial reported {metric} for any epoch, so there are no curves to draw ({_counts_sentence(d)})."
        return sec
    fig = go.Figure()
    shown: set[str] = set()
    counts = {s: sum(1 for t in with_curve if t.state == s) for s in {t.state for t in with_curve}}
    order = {s: i for i, s in enumerate((TrialState.FAILED, TrialState.PRUNED, TrialState.COMPLETE))}  # complete drawn on top
    for t in sorted(with_curve, key=lambda t: (order.get(t.state, -1), t.number)):
        xs = [e for e, _ in t.curve]
        ys = [v if math.isfinite(v) else None for _, v in t.curve]
        color = state_color(t.state)
        symbols = ["circle"] * len(xs)
        sizes = [6] * len(xs)
        if t.state in (TrialState.PRUNED, TrialState.FAILED) and xs:
            symbols[-1], sizes[-1] = "x", 11
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers",
                line=dict(color=color, width=2 if t.state == TrialState.COMPLETE else 1.5),
                marker=dict(color=color, symbol=symbols, size=sizes),
                opacity=1.0 if t.state == TrialState.COMPLETE else 0.8,
                name=f"{t.state.lower()} ({counts[t.state]})",
                legendgroup=t.state,
                showlegend=t.state not in shown,
                text=[t.run_name] * len(xs),
                hovertemplate=f"trial {t.number} · %{{text}}<br>{d.round_word} %{{x}}: {metric} %{{y:.4g}}<extra>{t.state.lower()}</extra>",
            )
        )
        shown.add(t.state)
    for r in rungs:
        fig.add_vline(
            x=r, line=dict(color="#8a94a6", width=1.5, dash="dot"),
            annotation_text=f"rung {r}", annotation_position="top", annotation_font=dict(size=11, color="#5b6577"),
        )
    max_epoch = max([d.int_setting("max_epochs", 1), *(e for t in with_curve for e, _ in t.curve)])
    unit = d.round_word
    fig.update_xaxes(title_text=unit + d.round_note(), dtick=1, range=[0.7, max_epoch + 0.3])
    fig.update_yaxes(title_text=metric_axis_title(metric, d.mode))
    sec.figure = _layout(fig)
    sched = d.setting("scheduler", "none")
    if sched == "none":
        sec.caption = f"{metric} after every {unit}. No scheduler: every trial trains its full budget"
    else:
        sec.caption = f"{metric} after every {unit}. Pruned trials end (×) at the {unit} the {sched} scheduler stopped them"
    sec.caption += "; dotted lines mark the rungs where trials are compared." if rungs else "."
    return sec


# --------------------------------------------------------------------------- importance


def study_from_mlflow(d: SearchData) -> Any:
    """An in-memory Optuna study of the complete trials, rebuilt from MLflow params and values."""
    import optuna
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if d.mode == "min" else "maximize")
    for t in d.completed():
        params, dists = {}, {}
        for p in d.space:
            if p.name not in t.params:
                continue
            v = parse_param_value(p, t.params[p.name])
            if v is None:
                continue
            params[p.name], dists[p.name] = v, p.distribution()
        study.add_trial(create_trial(params=params, distributions=dists, value=t.value(d.metric)))
    return study


def param_importances(d: SearchData) -> tuple[dict[str, float] | None, str, str | None]:
    """(importances, evaluator name, why-not message). fANOVA, or PED-ANOVA without scikit-learn."""
    n = len(d.completed())
    if not d.space:
        return None, "", "The search's space.yaml artifact is missing from MLflow, so the searched parameters are unknown."
    if n < MIN_IMPORTANCE_TRIALS:
        return None, "", (
            f"Parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; "
            f"this search has {n}."
        )
    import optuna

    study = study_from_mlflow(d)
    try:
        import sklearn  # noqa: F401 - optuna's fANOVA fits a random forest

        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    except Exception as e:  # noqa: BLE001 - e.g. every trial the same value
        return None, name, f"Parameter importance could not be computed from {n} complete trials ({type(e).__name__}: {e})."
    imp = {k: float(v) for k, v in imp.items()}
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        return None, name, f"The {n} complete trials do not vary enough to attribute {d.metric} to any parameter."
    return imp, name, None


def importance_section(d: SearchData) -> Section:
    import plotly.graph_objects as go

    sec = Section("importance", "Hyperparameter importance")
    imp, name, msg = param_importances(d)
    sec.data = {"evaluator": name, "n_complete": len(d.completed()), "importances": imp}
    if imp is None:
        sec.message = msg
        return sec
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
            marker=dict(color=ACCENT), text=[f"{v:.0%}" for _, v in items], textposition="outside",
            hovertemplate="%{y}: %{x:.1%}<extra></extra>", cliponaxis=False,
        )
    )
    fig.update_xaxes(title_text=f"share of {d.metric} variance explained ({name})", tickformat=".0%",
                     range=[0, max(v for _, v in items) * 1.18 or 1])
    fig.update_yaxes(title_text="", automargin=True)
    sec.figure = _layout(fig, height=max(260, 70 + 46 * len(items)), showlegend=False)
    sec.caption = (
        f"{name} importance over {len(d.completed())} complete trials, computed by Optuna on a study "
        "rebuilt from the MLflow child runs."
    )
    return sec


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
    sec.data = {
        "metric": metric,
        "params": [p.name for p, _ in dims],
        "trials": [
            {"number": t.number, "value": t.value(metric), **{p.name: vals[i] for p, vals in dims}}
            for i, t in enumerate(done)
        ],
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
    for i in sorted(range(len(done)), key=lambda i: q[i]):  # best drawn last (on top)
        t = done[i]
        hover = "<br>".join(
            [f"trial {t.number} · {t.run_name}", f"{metric} {values[i]:.4g}"]
            + [f"{p.name} {_fmt_param(vals[i])}" for p, vals in dims]
        )
        fig.add_trace(
            go.Scatter(
                x=xs, y=[ax["y"][i] for ax in axes], mode="lines+markers",
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
    _layout(fig, height=440, showlegend=False)
    fig.update_layout(margin=dict(l=50, r=20, t=30, b=20))
    sec.figure = fig
    sec.caption = (
        f"One line per complete trial across the searched ranges; darker lines are better {metric}. "
        "Log-scale parameters (such as the learning rate) use log axes."
    )
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


# --------------------------------------------------------------------------- cost view


def cost_section(d: SearchData) -> Section:
    """Metric against model size (and throughput where logged), Pareto fronts highlighted."""
    from plotly.subplots import make_subplots

    sec = Section("cost", "Quality against cost")
    metric, mode = d.metric, d.mode
    done = [t for t in d.completed() if t.n_params is not None]
    size_front = [done[i].number for i in front_indices([(t.n_params, t.value(metric)) for t in done], ["min", mode])]
    # A multi-objective search's own front (its objectives, measured constraints met) wins.
    searched = d.tags.get("pareto_trials")
    if searched is not None:
        size_front = [int(n) for n in searched.split(",") if n.strip()]
    fast = [t for t in done if _finite(t.metrics.get("tokens_per_s"))]
    speed_front = [fast[i].number for i in front_indices([(t.metrics["tokens_per_s"], t.value(metric)) for t in fast], ["max", mode])]
    max_params = d.params.get("max_params")
    sec.data = {
        "metric": metric,
        "points": [
            {"number": t.number, "n_params": t.n_params, "value": t.value(metric), "tokens_per_s": t.metrics.get("tokens_per_s")}
            for t in done
        ],
        "pareto_size": size_front,
        "pareto_speed": speed_front,
        "max_params": float(max_params) if max_params not in (None, "None", "") else None,
        "objectives": d.params.get("objectives") or None,
        "infeasible": [t.number for t in done if t.tags.get("feasible") == "false"],
    }
    if not done:
        sec.message = f"No complete trial yet, so there is no quality-against-cost trade-off to show ({_counts_sentence(d)})."
        return sec
    cols = 2 if fast else 1
    fig = make_subplots(
        rows=1, cols=cols, horizontal_spacing=0.1,
        subplot_titles=["model size"] + (["training throughput"] if fast else []),
    )
    _cost_panel(fig, 1, done, size_front, lambda t: t.n_params, metric, "size")
    sizes = [t.n_params for t in done]
    log_x = max(sizes) > 8 * max(1, min(sizes))
    fig.update_xaxes(title_text="parameters (n_params)", row=1, col=1, type="log" if log_x else "linear",
                     range=_padded(sizes, log_x), tickformat="~s")
    if fast:
        _cost_panel(fig, 2, fast, speed_front, lambda t: t.metrics["tokens_per_s"], metric, "speed")
        fig.update_xaxes(title_text="tokens/s (last epoch)", row=1, col=2,
                         range=_padded([t.metrics["tokens_per_s"] for t in fast], False), tickformat="~s")
    fig.update_yaxes(title_text=metric_axis_title(metric, mode), row=1, col=1)
    sec.figure = _layout(fig, height=450)
    fig.update_layout(margin=dict(t=80), legend=dict(y=1.12))
    sec.caption = (
        "Complete trials only. Highlighted: the Pareto front, trials that no other trial beats on both "
        f"{metric} and size" + (" (or on both metric and throughput)." if fast else ".")
    )
    if searched is not None:
        sec.caption += (
            f" This search had objectives {d.params.get('objectives', '').replace(',', ', ')}: the size panel "
            "highlights its Pareto front (trials that missed a measured constraint are never on it); "
            "`attntune export --knee` or `--pick best --max-params N` exports one of them."
        )
    return sec


def _padded(xs: list[float], log: bool) -> list[float]:
    """An x range with 8% air on both sides (and a sensible one when every x is equal)."""
    lo, hi = min(xs), max(xs)
    if log:
        a, b = math.log10(lo), math.log10(hi)
        pad = (b - a) * 0.08 or 0.1
        return [a - pad, b + pad]
    pad = (hi - lo) * 0.08 or abs(lo) * 0.1 or 1.0
    return [lo - pad, hi + pad]


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def _cost_panel(fig: Any, col: int, trials: list[TrialRecord], front: list[int], x_of: Any, metric: str, kind: str) -> None:
    import plotly.graph_objects as go

    on = [t for t in trials if t.number in front]
    on.sort(key=lambda t: front.index(t.number))
    unit = "params" if kind == "size" else "tokens/s"
    fig.add_trace(
        go.Scatter(
            x=[x_of(t) for t in trials], y=[t.value(metric) for t in trials], mode="markers",
            marker=dict(color=STATE_COLORS[TrialState.COMPLETE], size=9, opacity=0.55, line=dict(color="white", width=1)),
            name="complete trial", legendgroup="complete", showlegend=col == 1,
            text=[t.run_name for t in trials], customdata=[[t.number] for t in trials],
            hovertemplate="trial %{customdata[0]} · %{text}<br>%{x:,.0f} " + unit + "<br>" + metric + " %{y:.4g}<extra></extra>",
        ),
        row=1, col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=[x_of(t) for t in on], y=[t.value(metric) for t in on], mode="lines+markers",
            line=dict(color=ACCENT, width=2, shape="hv"),
            marker=dict(color=ACCENT, size=12, symbol="star", line=dict(color="white", width=1)),
            name="Pareto front", legendgroup="front", showlegend=col == 1,
            text=[t.run_name for t in on], customdata=[[t.number] for t in on],
            hovertemplate="Pareto: trial %{customdata[0]} · %{text}<br>%{x:,.0f} " + unit + "<br>" + metric + " %{y:.4g}<extra></extra>",
        ),
        row=1, col=col,
    )
