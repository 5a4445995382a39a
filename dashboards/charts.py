"""The report's charts: pure functions from ``SearchData`` to plotly figures plus the data they plot.

Every builder returns a ``Section``: the figure (or ``None`` with a sentence saying why there is
nothing to draw) and a JSON-ready dict of exactly what the figure plots, which the report embeds so
tests (and curious users) can read the numbers without scraping the chart.
Everything is drawn with SVG traces (no WebGL), so a report renders in any browser, GPU or not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attntune.dashboards.data import MAX_HOVER_NAMES, MAX_LINES, line_sample, parse_param_value, sample_note
from attntune.search.outcome import TrialState
from attntune.search.pareto import front_indices
from attntune.search.records import STATES, SearchData, TrialRecord
from attntune.search.schedulers import SCHEDULERS

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
# fANOVA's forest above MAX_LINES complete trials (Optuna's default, 64 trees of depth 64, below):
# its cost grows with the leaves; at 1,000 trials these give the same shares to 0.01 in 1 s instead of 18 s.
SMALL_FOREST = {"n_trees": 32, "max_depth": 8}


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


@functools.cache
def report_template() -> Any:
    """plotly's ``plotly_white`` with the trace defaults of the kinds the report draws (scatter, bar)
    only: every figure carries its template, and the whole one is 7 kB of styles for 3D and maps."""
    import plotly.graph_objects as go
    import plotly.io as pio

    full = pio.templates["plotly_white"]
    return go.layout.Template(layout=full.layout, data={"scatter": full.data.scatter, "bar": full.data.bar})


def drawn_value(v: float | None, digits: int = 6) -> float | None:
    """A value as a chart draws it: ``digits`` significant digits (hover labels show 4); the data
    block keeps the value as MLflow holds it."""
    return v if v is None or not math.isfinite(v) else float(f"{v:.{digits}g}")


def apply_layout(fig: Any, height: int = 420, **kw: Any) -> Any:
    """The report's look: template, font, margins, a horizontal legend above the plot."""
    fig.update_layout(
        template=report_template(),
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
    for t in pts:  # one point per complete trial that improved the best (the line steps there)
        v = t.value(metric)
        if t.state == TrialState.COMPLETE and (best is None or (v < best if mode == "min" else v > best)):
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
    names = len(pts) <= MAX_HOVER_NAMES  # above, hover the trial number alone (a lighter page)
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
                text=[t.run_name for t in group] if names else None,
                customdata=[[t.number] for t in group],
                hovertemplate="trial %{customdata[0]}" + (" · %{text}" if names else "")
                + "<br>" + metric + " %{y:.4g}<br>started %{x}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="trial start time")
    span = (pts[-1].start_time - pts[0].start_time) / 1000
    if span < 10:  # one trial, or a burst: keep whole seconds on the axis, not milliseconds
        mid = (pts[-1].start_time + pts[0].start_time) / 2
        fig.update_xaxes(range=[_ms_to_local(int(mid - 30_000)), _ms_to_local(int(mid + 30_000))])
    fig.update_yaxes(title_text=f"best {metric_axis_title(metric, mode)}")
    sec.figure = apply_layout(fig)
    pruned = any(t.state == TrialState.PRUNED for t in pts)
    sec.caption = f"Each point is a trial's best {metric}, placed at the time the trial started" + (
        "; pruned trials stopped early, so their values are not comparable with complete ones. " if pruned else ". "
    ) + "The line is the best complete trial so far." + _hover_note(len(pts))
    return sec


def _hover_note(n: int) -> str:
    """The caption's note for a scatter plot too big to carry run names in its hover labels."""
    if n <= MAX_HOVER_NAMES:
        return ""
    return f" Above {MAX_HOVER_NAMES} points a point's label names its trial number only (the Top 10 and the data block have run names)."


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


def curve_trials(d: SearchData) -> tuple[list[TrialRecord], list[TrialRecord], int]:
    """(trials that reported the metric, those whose curves the chart draws, how many of these were
    taken as the best): every one up to ``MAX_LINES``, else a sample (``data.line_sample``). Decided
    from the summary metrics alone, so the report reads only the curves it draws."""
    reported = [t for t in d.trials if t.curve or d.metric in t.metrics]
    drawn, n_best = line_sample(reported, d.ranked(), key=_run_id)
    return reported, drawn, n_best


def _run_id(t: TrialRecord) -> str:
    return t.run_id


def curves_to_read(d: SearchData) -> list[TrialRecord]:
    """The trials whose metric histories the report reads (``records.read_search(curves=...)``)."""
    return curve_trials(d)[1]


def curves_section(d: SearchData) -> Section:
    """Metric per epoch for every trial (a sample above ``MAX_LINES``), coloured by state, rung epochs marked."""
    import plotly.graph_objects as go

    sec = Section("curves", "Learning curves")
    metric = d.metric
    rungs = rung_epochs(d)
    reported, drawn, n_best = curve_trials(d)
    with_curve = [t for t in drawn if t.curve]
    sec.data = {
        "metric": metric,
        "rungs": rungs,
        "reported": len(reported),  # trials with a curve; "trials" holds the ones drawn
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
        ys = [drawn_value(v) if math.isfinite(v) else None for _, v in t.curve]
        color = state_color(t.state)
        symbols: Any = "circle"  # one value for every point; a list only where the last one differs
        sizes: Any = 6
        if t.state in (TrialState.PRUNED, TrialState.FAILED) and xs:
            symbols, sizes = ["circle"] * (len(xs) - 1) + ["x"], [6] * (len(xs) - 1) + [11]
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers",
                line=dict(color=color, width=2 if t.state == TrialState.COMPLETE else 1.5),
                marker=dict(color=color, symbol=symbols, size=sizes),
                opacity=1.0 if t.state == TrialState.COMPLETE else 0.8,
                name=f"{t.state.lower()} ({counts[t.state]})",
                legendgroup=t.state,
                showlegend=t.state not in shown,
                meta=[t.run_name],  # once per curve, not once per point
                hovertemplate=f"trial {t.number} · %{{meta[0]}}<br>{d.round_word} %{{x}}: {metric} %{{y:.4g}}<extra>{t.state.lower()}</extra>",
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
    sec.figure = apply_layout(fig)
    sched = d.setting("scheduler", "none")
    if sched == "none":
        sec.caption = f"{metric} after every {unit}. No scheduler: every trial trains its full budget"
    else:
        sec.caption = f"{metric} after every {unit}. Pruned trials end (×) at the {unit} the {sched} scheduler stopped them"
    sec.caption += "; dotted lines mark the rungs where trials are compared." if rungs else "."
    sec.caption += sample_note(len(drawn), len(reported), n_best, metric)
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

        forest = {} if n <= MAX_LINES else SMALL_FOREST  # Optuna's default forest costs ~18 s at 1,000
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0, **forest), "fANOVA"
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
    forest = SMALL_FOREST if name == "fANOVA" and len(d.completed()) > MAX_LINES else None
    sec.data = {"evaluator": name, "n_complete": len(d.completed()), "importances": imp, "forest": forest}
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
    sec.figure = apply_layout(fig, height=max(260, 70 + 46 * len(items)), showlegend=False)
    n = len(d.completed())
    sec.caption = (
        f"{name} importance over {n} complete trials, computed by Optuna on a study rebuilt from the MLflow child runs."
    )
    if name == "fANOVA" and n > MAX_LINES:
        sec.caption += (
            f" Above {MAX_LINES} complete trials its random forest is {SMALL_FOREST['n_trees']} trees of depth "
            f"at most {SMALL_FOREST['max_depth']} (Optuna's default: 64 trees of depth 64), to stay quick."
        )
    return sec


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
    sec.figure = apply_layout(fig, height=450)
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
    sec.caption += _hover_note(len(done))
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
    names = len(trials) <= MAX_HOVER_NAMES  # above, hover the trial number alone (a lighter page)
    fig.add_trace(
        go.Scatter(
            x=[x_of(t) for t in trials], y=[t.value(metric) for t in trials], mode="markers",
            marker=dict(color=STATE_COLORS[TrialState.COMPLETE], size=9, opacity=0.55, line=dict(color="white", width=1)),
            name="complete trial", legendgroup="complete", showlegend=col == 1,
            text=[t.run_name for t in trials] if names else None, customdata=[[t.number] for t in trials],
            hovertemplate="trial %{customdata[0]}" + (" · %{text}" if names else "")
            + "<br>%{x:,.0f} " + unit + "<br>" + metric + " %{y:.4g}<extra></extra>",
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
