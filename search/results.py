"""The results table: one row per trial, built from the Optuna study (the source of truth).

Its best row and Pareto column come from ``outcome.best_of`` / ``outcome.pareto_front``, the
definitions export and the report use on the MLflow records, so all three agree.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich import box
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from attntune.model.config import ConfigError, fields_unread
from attntune.search.outcome import Gain, TrialState, baseline_gain, best_of, finite, pareto_front, ranked
from attntune.search.records import best_values, locate_store
from attntune.search.study_store import state_of

BASE_COLUMNS = [
    "number",
    "state",
    "value",
    "best",
    "last",
    "epochs",
    "seconds",
    "n_params",
    "head_dim",
]
VALUE = "value"  # the column of the job's metric (a multi-objective search's first objective)
BLEU = "best_val_bleu"  # the best val_bleu of a trial's epochs (trial user attr ``best_val_bleu``)
FAMILY = "model.family"  # the architecture; a trial without it is a Transformer (ModelConfig's default)


@dataclass(frozen=True)
class _Ranked:
    """What ``outcome.best_of`` / ``pareto_front`` need of a study trial or a table row."""

    number: int
    state: str
    feasible: bool
    value: Any
    key: Any = None  # the table row's index
    baseline: int | None = None  # the baseline's repeat, for a baseline trial


def pareto_numbers(study: Any) -> list[int]:
    """Trial numbers on the Pareto front of a multi-objective study (``outcome.pareto_front``:
    COMPLETE trials that met every measured constraint and that no other such trial dominates; a
    repeat answered from another trial stands for that trial, which is on the front in its place)."""
    modes = ["min" if d.name == "MINIMIZE" else "max" for d in study.directions]
    trials = [
        _Ranked(t.number, state_of(t), bool(t.user_attrs.get("feasible", True)), t.values)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("duplicate_of") is None
    ]
    return sorted(t.number for t in pareto_front(trials, modes, lambda t: t.value))


def results_table(study: Any) -> pd.DataFrame:
    rows = []
    objectives = study.user_attrs.get("objectives") or []
    multi = len(study.directions) > 1
    front = set(pareto_numbers(study)) if multi else set()
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        placement = a.get("placement", a)  # top-level keys in studies written before it existed
        value = t.values[0] if t.values else None
        row = {
            "number": t.number,
            "state": str(state_of(t)),  # a plain string in the table and results.csv
            "value": value,
            "best": a.get("best_value"),
            "last": a.get("last_value"),
            "epochs": a.get("epochs_run", 0),
            "seconds": a.get("seconds"),
            "n_params": a.get("n_params"),
            "head_dim": a.get("head_dim"),
            "attempts": a.get("attempts", 1 if a.get("mlflow_run_id") else 0),
            "failure_kind": a.get("failure_kind") or ("infeasible" if a.get("attntune_state") == TrialState.INFEASIBLE else None),
            "failure": a.get("failure"),
            "run_id": a.get("mlflow_run_id"),
            "host": placement.get("host"),
            "device": placement.get("device"),
            "cuda_visible_devices": placement.get("cuda_visible_devices"),
            "start_time": a.get("start_time"),
            "end_time": a.get("end_time"),
        }
        for k in ("flops", "latency_ms", "feasible", BLEU, "baseline", "family_start", "duplicate_of", "warm_start_from"):
            if k in a:
                row[k] = a[k]
        if multi:
            row["pareto"] = t.number in front
            for (name, _mode), v in zip(objectives, t.values or [], strict=False):
                row[f"objective.{name}"] = v
        config = a.get("config") or {}
        unread = fields_unread(config.get("model.family", "transformer"), config.get("model.parameterization", "standard"))
        row.update({k: v for k, v in config.items() if k.removeprefix("model.") not in unread})  # as the run's params
        for k, v in t.params.items():
            row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=BASE_COLUMNS)
    return df.sort_values("number").reset_index(drop=True)


def summary_metrics(table: pd.DataFrame, metric: str, mode: str) -> dict[str, float]:
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    out: dict[str, float] = {
        "n_complete": counts.get(TrialState.COMPLETE, 0),
        "n_pruned": counts.get(TrialState.PRUNED, 0),
        "n_failed": counts.get(TrialState.FAILED, 0),
        "n_infeasible": counts.get(TrialState.INFEASIBLE, 0),
        "n_trials": len(table) - counts.get(TrialState.PRIOR, 0),  # a warm start's priors are not this search's
    }
    if counts.get(TrialState.PRIOR):
        out["n_prior"] = counts[TrialState.PRIOR]
    best = best_row(table, mode)
    if best is not None:
        out[f"best_{metric}"] = float(best["value"])
        out["best_trial"] = int(best["number"])
    gain = table_gain(table, mode)
    if gain is not None:
        out["baseline_value"] = gain.baseline
        out["gain_over_baseline"] = gain.gain
        if gain.noise is not None:
            out["baseline_noise"] = gain.noise
    return out


def table_gain(table: pd.DataFrame, mode: str) -> Gain | None:
    """The best trial against the baseline (``outcome.baseline_gain``), from the results table."""
    if table.empty or "baseline" not in table:
        return None
    rows = [
        _Ranked(int(n), s, bool(f), v, baseline=None if _missing(b) else int(b))
        for n, s, f, v, b in zip(table["number"], table["state"], feasible(table), table["value"], table["baseline"], strict=True)
    ]
    return baseline_gain(rows, mode, baseline=lambda r: r.baseline)


def feasible(table: pd.DataFrame) -> pd.Series:
    """Per row: met every constraint checked at its end (a trial that missed one is never picked);
    True where the job has none (no ``feasible`` column, or NaN)."""
    if "feasible" not in table:
        return pd.Series(True, index=table.index)
    return table["feasible"].map(lambda f: str(f) != "False")


def best_row(table: pd.DataFrame, mode: str) -> pd.Series | None:
    """The best trial's row (``outcome.best_of``: COMPLETE, feasible, NaN/inf never win, ties go
    to the lower number)."""
    if table.empty:
        return None
    rows = [
        _Ranked(int(n), s, bool(f), v, key)
        for key, n, s, f, v in zip(table.index, table["number"], table["state"], feasible(table), table["value"], strict=True)
    ]
    best = best_of(rows, mode)
    return None if best is None else table.loc[best.key]


# --------------------------------------------------------------------------- `attntune results`
#
# The table a person reads: short column names (``d_model`` for ``model.d_model``), compact numbers,
# a default view that fits 80 columns, trials filtered by state and ranked as ``best_of`` ranks them.

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED, TrialState.INFEASIBLE, TrialState.RUNNING)
# Short names accepted everywhere (--columns, --sort), each for the results-table columns it shows;
# besides these, the metric's name, ``val_bleu``, and the part of a dotted name after its section
# (``d_model``, ``warmup_steps``; ``heads`` for ``n_heads``).
ALIASES: dict[str, tuple[str, ...]] = {
    "trial": ("number",),
    "params": ("n_params",),
    "heads": ("model.n_heads",),
    "layers": ("model.n_encoder_layers", "model.n_decoder_layers"),  # one number, or enc/dec
    "lr": ("train.lr",),
    "family": (FAMILY,),
}
# ``family`` only where the trials span more than one model family (``ResultsView.families``).
DEFAULT_VIEW = ("trial", "state", VALUE, "val_bleu", "family", "d_model", "heads", "layers", "lr", "params", "seconds")
OPTIONAL = ("seconds", "val_bleu", "pareto")  # what the default view leaves out first when it is too wide


@dataclass(frozen=True)
class Column:
    """A column of the view: its header and the results-table columns it shows (``--csv`` writes
    those, under their full names)."""

    name: str
    sources: tuple[str, ...]


@dataclass
class ResultsView:
    """A search's results table as ``attntune results`` shows it."""

    table: pd.DataFrame
    study_name: str
    metric: str  # the name of the ``value`` column
    mode: str  # its direction
    tracking_uri: str | None = None  # where a trial's val_bleu history can be read (older studies)
    _bleu_read: bool = field(default=False, init=False, repr=False)

    @classmethod
    def of(cls, study: Any, folder: Path) -> ResultsView:
        """The view of the study of the search in ``folder`` (read while the study is open)."""
        attrs = study.user_attrs
        objectives = [tuple(o) for o in attrs.get("objectives") or []]
        metric, mode = attrs.get("metric", "val_loss"), attrs.get("mode", "min")
        if len(objectives) > 1:  # the value column holds the first objective
            metric, mode = objectives[0]
        uri = locate_store(attrs.get("tracking_uri"), folder)
        return cls(results_table(study), study.study_name, str(metric), str(mode), uri)

    # ------------------------------------------------------------------ names
    def aliases(self) -> dict[str, tuple[str, ...]]:
        out = dict(ALIASES)
        out["val_bleu"] = (VALUE,) if self.metric == "val_bleu" else (BLEU,)
        for c in self.table.columns:  # a multi-objective search's objectives, unless a column has the name
            if c.startswith("objective.") and c.split(".", 1)[1] not in self.table.columns:
                out[c.split(".", 1)[1]] = (c,)
        out[self.metric] = (VALUE,)
        return out

    def column(self, name: str, option: str = "--columns") -> Column:
        """The column a user's ``name`` means: a short name, the metric's, or a full column name.
        Unknown or ambiguous names are a ConfigError listing close matches."""
        name = name.strip()
        aliases = self.aliases()
        columns = [str(c) for c in self.table.columns]
        if name in aliases:
            sources = aliases[name]
            if sources == (BLEU,):
                self.read_bleu()
            if all(s in self.table.columns for s in sources):
                return Column(name, sources)
        elif name in columns:
            return Column(self.metric if name == VALUE else name, (name,))
        else:
            found = [c for c in columns if "." in c and c.split(".", 1)[1] in (name, f"n_{name}")]
            if len(found) == 1:
                return Column(name, (found[0],))
            if found:
                raise ConfigError(f"{option}: {name!r} is ambiguous (it could be {', '.join(found)})")
        known = sorted({*aliases, *columns, *(c.split(".", 1)[1] for c in columns if "." in c)})
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"names: {', '.join(self.default_names())}, or a results.csv column"
        raise ConfigError(f"{option}: no column {name!r} ({hint})")

    def default_names(self) -> list[str]:
        """The default view's names; a multi-objective search's other objectives follow its first."""
        others = [
            c.split(".", 1)[1] for c in self.table.columns if c.startswith("objective.") and c != f"objective.{self.metric}"
        ]
        names: list[str] = []
        for n in DEFAULT_VIEW:
            if n == VALUE:
                names += [self.metric] + [o for o in others if o not in ("n_params", "val_bleu")]
            elif n != "val_bleu" or self.metric != "val_bleu":
                names.append(n)
        return names

    def families(self) -> list[str]:
        """The model families of the trials (``model.family``), each once."""
        if FAMILY not in self.table:
            return []
        return sorted({str(f) for f in self.table[FAMILY] if not _missing(f)})

    def columns(self, names: str | None) -> list[Column]:
        """The columns ``--columns`` names (comma-separated), or the default view: trial, state,
        the metric, best val_bleu when the trials logged it, the family when there are several,
        d_model, heads, layers, lr, params, seconds (a multi-objective search: its objectives,
        and ``pareto``)."""
        if names:
            wanted = [n.strip() for n in names.split(",") if n.strip()]
            if not wanted:
                raise ConfigError("--columns: give at least one column name")
            return [self.column(n) for n in wanted]
        out = []
        for n in self.default_names() + (["pareto"] if "pareto" in self.table.columns else []):
            try:
                col = self.column(n)
            except ConfigError:
                continue  # not in this table (an empty study; no trial logged val_bleu)
            if col.sources == (BLEU,) and self.table[BLEU].isna().all():
                continue
            if col.sources == (FAMILY,) and len(self.families()) < 2:
                continue
            out.append(col)
        return out

    # ------------------------------------------------------------------ best val_bleu
    def read_bleu(self) -> None:
        """Fill ``best_val_bleu`` for trials whose study record lacks it (searches from before the
        trial attribute) from their MLflow metric history, through ``records`` (one request per
        trial); a store that cannot be read leaves them empty."""
        if self._bleu_read:
            return
        self._bleu_read = True
        t = self.table
        if t.empty or "run_id" not in t:
            return
        if BLEU not in t:
            t[BLEU] = math.nan
        logs = t["train.bleu_samples"].fillna(0).astype(float) > 0 if "train.bleu_samples" in t else True
        todo = t[t[BLEU].isna() & logs & (t["epochs"].fillna(0).astype(float) > 0) & t["run_id"].notna()]
        if todo.empty or not self.tracking_uri:
            return
        try:
            found = best_values(self.tracking_uri, [str(r) for r in todo["run_id"]], "val_bleu", "max")
        except Exception:  # noqa: BLE001 - the store moved or is unreachable: the column stays empty
            return
        for key, run_id in zip(todo.index, todo["run_id"], strict=True):
            if str(run_id) in found:
                t.loc[key, BLEU] = found[str(run_id)]

    # ------------------------------------------------------------------ rows
    def rows(
        self,
        *,
        states: str | None = None,
        top: int | None = None,
        sort: str | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """The trials to show, in order: those in ``states`` (comma-separated, any case), the best
        ``top`` of them by the metric, sorted by ``sort`` (default: the metric, best first, in
        ``outcome.best_of``'s order, so the first row is ``best_row``'s trial). Resolve the
        columns to show first: they may add the ``best_val_bleu`` column to the table."""
        by = self.column(sort, "--sort") if sort else None  # first: it may add the val_bleu column
        t = self.table
        if states is not None:
            t = t[t["state"].isin(parse_states(states))]
        if top is not None:
            if top < 1:
                raise ConfigError(f"--top: must be >= 1, got {top}")
            t = t.loc[metric_order(t, self.mode)[:top]]
        if by is None or by.sources == (VALUE,):
            order = metric_order(t, self.mode)
            return t.loc[order[::-1] if descending else order]
        t = t.sort_values("number", kind="stable")
        how: dict[str, Any] = {"ascending": not descending, "na_position": "last", "kind": "stable"}
        try:
            return t.sort_values(list(by.sources), **how)
        except TypeError:  # a column of mixed types: sort by its text
            return t.sort_values(list(by.sources), key=lambda col: col.astype(str), **how)

    def title(self, shown: int, *, states: str | None = None, top: int | None = None) -> str:
        n = len(self.table)
        notes = []
        if states is not None:
            notes.append("state " + ",".join(s.lower() for s in parse_states(states)))
        if top is not None:
            notes.append(f"top {top} by {self.metric}")
        if not notes:
            return f"{self.study_name} ({n} trials, {self.metric} {self.mode})"
        return f"{self.study_name} ({shown} of {n} trials: {'; '.join(notes)})"

    # ------------------------------------------------------------------ output
    def csv(self, rows: pd.DataFrame, columns: Sequence[Column]) -> str:
        """CSV with the results table's full column names (as results.csv has them)."""
        sources = list(dict.fromkeys(s for c in columns for s in c.sources))
        return rows[sources].to_csv(index=False)

    def render(
        self, rows: pd.DataFrame, columns: Sequence[Column], title: str, width: int, *, fit: bool = False
    ) -> Group:
        """The title line and a rich table of ``rows``. The gap between columns narrows to one
        space to fit ``width``; with ``fit`` (the default view) the columns in ``OPTIONAL`` are
        then left out, in that order, until it fits, and a last line names them. A column that
        still does not fit wraps rather than being cut with an ellipsis."""
        columns = list(columns)
        cells = {c.name: [format_cell(c, r) for _, r in rows.iterrows()] for c in columns}
        widths = {c.name: max([cell_len(c.name)] + [cell_len(v) for v in cells[c.name]]) for c in columns}

        def needed(cols: list[Column], gap: int) -> int:
            return sum(widths[c.name] for c in cols) + gap * (len(cols) - 1)

        hidden = []
        for name in OPTIONAL if fit else ():
            if needed(columns, 1) <= width:
                break
            if any(c.name == name for c in columns):
                columns = [c for c in columns if c.name != name]
                hidden.append(name)
        gaps = {2: (0, 1, 0, 0), 1: (0, 0)}  # (top, right, bottom, left); the box adds one space
        gap = next((g for g in gaps if needed(columns, g) <= width), 1)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=gaps[gap], header_style="bold")
        for c in columns:
            numeric = len(rows) > 0 and all(_numeric(rows[s]) for s in c.sources)
            table.add_column(c.name, justify="right" if numeric else "left", overflow="fold")
        for i in range(len(rows)):
            table.add_row(*[cells[c.name][i] for c in columns])
        parts: list[Any] = [Text(title, style="bold"), table]
        if hidden:
            parts.append(Text(f"not shown at {width} columns: {', '.join(hidden)} (--columns picks any)", style="dim"))
        return Group(*parts)


def parse_states(states: str) -> list[str]:
    """``complete,pruned`` (any case) as TrialState values; a name that is not a state is a
    ConfigError listing the valid ones."""
    valid = {s.value.lower(): s.value for s in STATES}
    names = [s.strip().lower() for s in states.split(",") if s.strip()]
    bad = [s for s in names if s not in valid]
    if bad or not names:
        what = f"{bad[0]!r} is not a trial state" if bad else "give at least one state"
        raise ConfigError(f"--state: {what} (valid: {', '.join(valid)})")
    return [valid[s] for s in names]


def metric_order(table: pd.DataFrame, mode: str) -> list[Any]:
    """Row labels, best first: the trials ``outcome.ranked`` ranks (COMPLETE, feasible, finite;
    ties to the lower number: ``best_row`` is the first), then the others by their value or best
    epoch seen (a pruned trial's), then those without one, by number."""
    if table.empty:
        return []
    rows = [
        _Ranked(int(n), s, bool(f), v, key)
        for key, n, s, f, v in zip(table.index, table["number"], table["state"], feasible(table), table["value"], strict=True)
    ]
    first = [r.key for r in ranked(rows, mode)]
    taken = set(first)
    sign = 1.0 if mode == "min" else -1.0
    best_seen = table["best"] if "best" in table else pd.Series(None, index=table.index)

    def key(r: _Ranked) -> tuple[int, float, int]:
        v = finite(r.value)
        v = finite(best_seen[r.key]) if v is None else v
        return (1, 0.0, r.number) if v is None else (0, sign * v, r.number)

    return first + [r.key for r in sorted((r for r in rows if r.key not in taken), key=key)]


# --------------------------------------------------------------------------- compact numbers


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _numeric(series: pd.Series) -> bool:
    values = [v for v in series if not _missing(v)]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def format_cell(column: Column, row: pd.Series) -> str:
    """One cell: each source compactly; a multi-column cell (``layers``) shows one value when they
    agree, else ``a/b``. Heads are the Transformer's: another family's row leaves them empty."""
    family = row.get(FAMILY)
    if column.sources == ("model.n_heads",) and not _missing(family) and family != "transformer":
        return ""
    parts = [format_value(s, row[s]) for s in column.sources]
    return parts[0] if len(set(parts)) == 1 else "/".join(parts)


def format_value(column: str, v: Any) -> str:
    """``1.2M`` parameters, ``3e-3`` learning rates, ``12.3s``, four significant digits elsewhere."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # numpy scalars
    if _missing(v):
        return ""
    if column == "pareto":
        return "*" if v is True else ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if column == "seconds":
        return f"{v:.2f}s" if abs(v) < 1 else f"{v:.1f}s" if abs(v) < 100 else f"{v:.0f}s"
    if column in ("n_params", "flops"):
        return si(v)
    if column == "train.lr":
        return sci(v, 2)
    if isinstance(v, int) or (v.is_integer() and (column in ("number", "epochs", "attempts") or "." in column)):
        return str(int(v))
    if not math.isfinite(v):
        return str(v)
    if v != 0 and abs(v) < 1e-3:
        return sci(v, 3)
    return f"{v:.4g}"


def si(v: float) -> str:
    """850, 15.9k, 1.2M, 3.4G."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div * 0.9995:
            return f"{v / div:.1f}{unit}" if abs(v) < div * 99.95 else f"{v / div:.0f}{unit}"
    return f"{v:.0f}"


def sci(v: float, digits: int) -> str:
    """Scientific notation without zeros that say nothing: ``3e-3``, ``9.5e-3``."""
    mantissa, exp = f"{v:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"
