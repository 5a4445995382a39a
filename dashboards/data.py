"""Report-only helpers over the search record. MLflow itself is read by ``attntune.search.records``
(``SearchData``, ``TrialRecord``, ``STATES`` live there)."""

from __future__ import annotations

import math
from typing import Any

from attntune.spaces.space import Param


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
