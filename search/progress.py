"""Live progress for a running search: one line per finished trial plus a status line."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console


def _fmt_s(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """Counts by state, best so far, elapsed and estimated time left."""

    def __init__(self, ctx: Any, console: Console | None = None, quiet: bool = False):
        self.ctx = ctx
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.t0 = time.time()
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAILED": 0}
        self.best: tuple[float, int] | None = None
        self.finished_seconds: list[float] = []
        self._last_tick = 0.0

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, soft_wrap=True)

    def status(self) -> str:
        job = self.ctx.job
        done = sum(self.counts.values())
        total = self.ctx.n_trials_target()
        running = len(self.ctx.running)
        elapsed = time.time() - self.t0
        left = ""
        if done:
            remaining = max(0, total - done)
            per = elapsed / done
            left = f", ~{_fmt_s(remaining * per / 1)} left" if remaining else ""
        best = f", best {job.metric} {self.best[0]:.4g} (t{self.best[1]:03d})" if self.best else ""
        return (
            f"{done}/{total} done, {running} running, {self.counts['PRUNED']} pruned, "
            f"{self.counts['FAILED']} failed{best}; {_fmt_s(elapsed)} elapsed{left}"
        )

    def trial_started(self, plan: Any) -> None:
        from attntune.search.engine import run_name

        self._print(f"[dim]start  {run_name(plan.number, plan.config)}  ({plan.n_params:,} params)[/dim]")

    def trial_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def trial_retry(self, number: int, outcome: Any) -> None:
        self._print(f"[yellow]retry  t{number:03d} after {outcome.failure_kind}: {outcome.failure}[/yellow]")

    def trial_finished(self, number: int, state: str, outcome: Any) -> None:
        from attntune.search.engine import trial_value

        self.counts[state] = self.counts.get(state, 0) + 1
        job = self.ctx.job
        best, last = trial_value(outcome.history, job.metric, job.mode)
        missed = self.ctx.missed_constraints.get(number)  # a measured constraint: never the best
        if state == "COMPLETE" and best is not None and math.isfinite(best) and missed is None:
            if self.best is None or (best < self.best[0] if job.mode == "min" else best > self.best[0]):
                self.best = (best, number)
        colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAILED": "red"}.get(state, "white")
        value = f"{job.metric}={best:.4g}" if best is not None else (outcome.failure or "")
        if missed is not None:
            value += f" [red]infeasible: misses {missed}[/red]"
        self._print(
            f"[{colour}]{state:<9}[/{colour}] t{number:03d} {value} ({outcome.epochs_run} {'ep' if job.budget.unit == 'epochs' else 'rd'}, "
            f"{outcome.seconds:.1f}s) | {self.status()}"
        )

    def tick(self) -> None:
        pass
