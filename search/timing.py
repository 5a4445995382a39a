"""Where the driver's time goes, per phase: sampling, MLflow writes, Optuna writes, budget checks.

The driver wraps each phase of its trial loop in ``clock(phase)``; the totals go to the search's
parent run as ``driver_<phase>_s`` metrics, and ``benchmarks/scale.py`` reads ``history`` (the totals
after each finished trial) to show how the cost per trial grows with the study.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

PHASES = ("sample", "mlflow", "optuna", "budget")


class PhaseClock:
    """Seconds spent in each phase, and the totals after each finished trial."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.history: list[dict[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] += time.perf_counter() - t0

    def lap(self) -> None:
        """A trial finished: remember the totals so far, and when (``wall``, perf_counter)."""
        self.history.append({**self.totals, "wall": time.perf_counter()})

    def metrics(self) -> dict[str, float]:
        return {f"driver_{k}_s": round(v, 3) for k, v in self.totals.items()}
