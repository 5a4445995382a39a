"""Report-only helpers over the search record. MLflow itself is read by ``attntune.search.records``
(``SearchData``, ``TrialRecord``, ``STATES`` live there)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from attntune.spaces.space import Param

T = TypeVar("T")


def parse_param_value(p: Param, text: str) -> Any:
    """An MLflow param string back to the value the sampler drew (None if it cannot be)."""
    try:
        if p.type == "categorical":
            for c in p.choices:
                if str(c) == text or _num_eq(c, text):
                    return c
            return None
        if p.type == "int":
            v = int(round(float(text)))
        else:
            v = float(text)
    except (TypeError, ValueError):
        return None
    if p.low is not None and p.high is not None:
        v = min(max(v, type(v)(p.low)), type(v)(p.high))  # MLflow params are rounded strings
    return v


def _num_eq(choice: Any, text: str) -> bool:
    if isinstance(choice, bool) or not isinstance(choice, int | float):
        return False
    try:
        return math.isclose(float(choice), float(text), rel_tol=1e-9, abs_tol=1e-12)
    except ValueError:
        return False


# --------------------------------------------------------------------------- thinning a big search's charts

# A chart of one line per trial (learning curves, parallel coordinates) draws every trial up to
# MAX_LINES of them; above that, MAX_LINES lines: the BEST_LINES best trials by the metric and an
# evenly spaced sample (by trial number) of the rest. A browser cannot show more lines apart.
MAX_LINES = 200
BEST_LINES = 100
# Above MAX_LINES points a scatter plot keeps every point but hovers the trial number alone.
MAX_HOVER_NAMES = MAX_LINES


def line_sample(trials: Sequence[T], best_first: Sequence[T], key: Callable[[T], Any]) -> tuple[list[T], int]:
    """The trials a one-line-per-trial chart draws, in ``trials``' order, and how many of them were
    taken as the best: all of them up to ``MAX_LINES`` (none taken as best), else the first
    ``BEST_LINES`` of ``best_first`` that are among ``trials`` and an evenly spaced sample of the
    others (first and last included), ``MAX_LINES`` in all. ``key`` tells trials apart."""
    if len(trials) <= MAX_LINES:
        return list(trials), 0
    index = {key(t): i for i, t in enumerate(trials)}
    best = [index[key(t)] for t in best_first if key(t) in index][:BEST_LINES]
    taken = set(best)
    rest = [i for i in range(len(trials)) if i not in taken]
    k = MAX_LINES - len(best)  # >= MAX_LINES - BEST_LINES, and len(rest) > k
    step = (len(rest) - 1) / (k - 1)
    taken.update(rest[round(j * step)] for j in range(k))
    return [trials[i] for i in sorted(taken)], len(best)


def sample_note(shown: int, total: int, best: int, metric: str) -> str:
    """The caption's sentence for a thinned line chart ('' when every trial is drawn)."""
    if shown >= total:
        return ""
    return (
        f" Above {MAX_LINES} trials the chart draws {shown} of the {total}: the {best} best complete "
        f"trials by {metric} and {shown - best} of the other {total - best}, evenly spaced by trial number."
    )
