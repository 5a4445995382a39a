"""Live progress for a running search: one line per trial event plus a status summary."""

from __future__ import annotations

import time

from rich.console import Console

from attntune.search.driver import Driver, Observer
from attntune.search.outcome import RunningTrial, Settled, TrialOutcome, TrialState, better
from attntune.search.runbook import run_name

COLOURS = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow", TrialState.FAILED: "red"}


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress(Observer):
    """Counts by state, best so far, elapsed and estimated time left (driver events)."""

    def __init__(self, driver: Driver, console: Console | None = None, quiet: bool = False):
        self.driver = driver
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.t0 = time.time()
        self.counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAILED: 0}
        self.best: tuple[float, int] | None = None

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, soft_wrap=True)

    def status(self) -> str:
        job = self.driver.job
        done = sum(self.counts.values())
        total = self.driver.budget.target()
        elapsed = time.time() - self.t0
        left = ""
        if done and total > done:
            left = f", ~{fmt_seconds((total - done) * elapsed / done)} left"
        best = f", best {job.metric} {self.best[0]:.4g} (t{self.best[1]:03d})" if self.best else ""
        return (
            f"{done}/{total} done, {len(self.driver.running)} running, {self.counts[TrialState.PRUNED]} pruned, "
            f"{self.counts[TrialState.FAILED]} failed{best}; {fmt_seconds(elapsed)} elapsed{left}"
        )

    def trial_started(self, trial: RunningTrial) -> None:
        self._print(f"[dim]start  {run_name(trial.number, trial.config)}  ({trial.n_params:,} params)[/dim]")

    def trial_retry(self, number: int, outcome: TrialOutcome) -> None:
        self._print(f"[yellow]retry  t{number:03d} after {outcome.failure_kind}: {outcome.failure}[/yellow]")

    def trial_finished(self, number: int, settled: Settled, outcome: TrialOutcome) -> None:
        state = settled.state
        self.counts[state] = self.counts.get(state, 0) + 1
        job = self.driver.job
        best = settled.best
        if state == TrialState.COMPLETE and best is not None and settled.missed is None:
            if self.best is None or better(best, self.best[0], job.mode):
                self.best = (best, number)
        colour = COLOURS.get(state, "white")
        value = f"{job.metric}={best:.4g}" if best is not None else (outcome.failure or "")
        if settled.missed is not None:  # a measured constraint missed: never the best
            value += f" [red]infeasible: misses {settled.missed}[/red]"
        unit = "ep" if job.budget.unit == "epochs" else "rd"
        self._print(
            f"[{colour}]{state.value:<9}[/{colour}] t{number:03d} {value} ({settled.epochs_run} {unit}, "
            f"{outcome.seconds:.1f}s) | {self.status()}"
        )

