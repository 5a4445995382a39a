"""Live progress for a running search, on stderr.

One line per trial event (start, skipped as infeasible, retried, finished, with a status summary),
so a log (CI, ``attntune jobs logs``) reads well. On a terminal, a live panel under those lines
shows every running trial's epoch, latest metric and time, so a person sees work moving inside
long trials; elsewhere ``--verbose`` prints one line per epoch instead.

The time left is estimated from the finished trials' mean duration and the concurrency, and never
exceeds what ``budget.time_limit`` leaves.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from attntune.search.driver import Driver, Observer
from attntune.search.outcome import RunningTrial, Settled, TrialOutcome, TrialState, better
from attntune.search.runbook import run_name

COLOURS = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow", TrialState.FAILED: "red"}


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class _Running:
    """What the panel shows of one running trial."""

    name: str
    started: float = field(default_factory=time.time)
    epoch: int = 0
    value: float | None = None


class Progress(Observer):
    """Counts by state, best so far, elapsed and estimated time left (driver events)."""

    def __init__(self, driver: Driver, console: Console | None = None, quiet: bool = False, verbose: bool = False):
        self.driver = driver
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet, self.verbose = quiet, verbose
        self.t0 = time.time()
        self.counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAILED: 0}
        self.best: tuple[float, int] | None = None
        self.seconds: list[float] = []  # finished trials' durations
        self.rows: dict[int, _Running] = {}
        self.lock = threading.Lock()  # the panel is redrawn from rich's refresh thread
        self.live: Live | None = None
        if not quiet and self.console.is_terminal:
            self.live = Live(get_renderable=self._panel, console=self.console, refresh_per_second=2, transient=True)
            self.live.start()

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, soft_wrap=True)

    @property
    def unit(self) -> str:
        return "ep" if self.driver.job.budget.unit == "epochs" else "rd"

    # ------------------------------------------------------------------ the status summary
    def time_left(self) -> tuple[float, bool] | None:
        """(seconds, capped by the time limit) left, or None before any estimate exists."""
        done = sum(self.counts.values())
        remaining = max(0, self.driver.budget.target() - done)
        by_trials = None
        if self.seconds and remaining:
            mean = sum(self.seconds) / len(self.seconds)
            by_trials = remaining * mean / max(1, self.driver.job.concurrency)
        limit = self.driver.budget.time_left()
        if limit is not None and (by_trials is None or limit < by_trials):
            return max(0.0, limit), True
        return (by_trials, False) if by_trials is not None else None

    def status(self) -> str:
        job = self.driver.job
        done = sum(self.counts.values())
        left = ""
        est = self.time_left()
        if est is not None and (est[0] > 0 or est[1]):
            left = f", ~{fmt_seconds(est[0])} left" + (" (time limit)" if est[1] else "")
        best = f", best {job.metric} {self.best[0]:.4g} (t{self.best[1]:03d})" if self.best else ""
        return (
            f"{done}/{self.driver.budget.target()} done, {len(self.driver.running)} running, "
            f"{self.counts[TrialState.PRUNED]} pruned, {self.counts[TrialState.FAILED]} failed{best}; "
            f"{fmt_seconds(time.time() - self.t0)} elapsed{left}"
        )

    def _panel(self) -> Group:
        """The live panel: one row per running trial, then the status summary."""
        job = self.driver.job
        table = Table(box=None, show_header=False, pad_edge=False)
        with self.lock:
            rows = [r for _, r in sorted(self.rows.items())]
        for r in rows:
            value = f"{job.metric} {r.value:.4g}" if r.value is not None else ""
            table.add_row(
                Text(r.name, style="cyan"), f"{self.unit} {r.epoch}/{job.budget.max_epochs}", value,
                fmt_seconds(time.time() - r.started),
            )  # fmt: skip
        return Group(table, Text(self.status(), style="dim"))

    # ------------------------------------------------------------------ driver events
    def trial_started(self, trial: RunningTrial) -> None:
        with self.lock:
            self.rows[trial.number] = _Running(run_name(trial.number, trial.config))
        self._print(f"[dim]start  {run_name(trial.number, trial.config)}  ({trial.n_params:,} params)[/dim]")

    def trial_epoch(self, trial: RunningTrial, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.driver.job.metric)
        with self.lock:
            row = self.rows.setdefault(trial.number, _Running(run_name(trial.number, trial.config)))
            row.epoch, row.value = max(row.epoch, epoch), value
        if self.live is not None:
            self.live.refresh()  # an epoch is news: show it now, not at the next tick
        elif self.verbose:
            shown = f"{self.driver.job.metric}={value:.4g}" if value is not None else ""
            self._print(
                f"[dim]{self.unit:<5}  t{trial.number:03d} {epoch}/{self.driver.job.budget.max_epochs} {shown} "
                f"({time.time() - row.started:.1f}s)[/dim]"
            )

    def trial_infeasible(self, number: int, reason: str) -> None:
        self._print(f"[dim]skip   t{number:03d} infeasible, never trained: {reason}[/dim]")

    def trial_repeated(self, number: int, of: int, state: TrialState) -> None:
        self._print(f"[dim]same   t{number:03d} repeats t{of:03d}: answered from it ({state.value}), not trained[/dim]")

    def trial_retry(self, number: int, outcome: TrialOutcome) -> None:
        self._print(f"[yellow]retry  t{number:03d} after {outcome.failure_kind}: {outcome.failure}[/yellow]")

    def trial_finished(self, number: int, settled: Settled, outcome: TrialOutcome) -> None:
        state = settled.state
        with self.lock:
            self.rows.pop(number, None)
        self.counts[state] = self.counts.get(state, 0) + 1
        self.seconds.append(outcome.seconds)
        job = self.driver.job
        best = settled.best
        if state == TrialState.COMPLETE and best is not None and settled.missed is None:
            if self.best is None or better(best, self.best[0], job.mode):
                self.best = (best, number)
        colour = COLOURS.get(state, "white")
        value = f"{job.metric}={best:.4g}" if best is not None else (outcome.failure or "")
        if settled.missed is not None:  # a measured constraint missed: never the best
            value += f" [red]infeasible: misses {settled.missed}[/red]"
        self._print(
            f"[{colour}]{state.value:<9}[/{colour}] t{number:03d} {value} ({settled.epochs_run} {self.unit}, "
            f"{outcome.seconds:.1f}s) | {self.status()}"
        )

    def search_ended(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
