"""``attntune run``: validate everything, then drive a search on the chosen backend.

Order matters for bad input: the job file, the output folder, the tracking store and the data are
all checked before the first write, so a mistake exits 2 leaving no experiment, run or folder.
SIGTERM and Ctrl-C end running trials' runs as KILLED, leave the study resumable and exit 143/130.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from attntune.dashboards.report import REPORT_FILE, write_report
from attntune.model.config import ConfigError, to_dict
from attntune.model.data import build_tsv
from attntune.search.backends import get_backend
from attntune.search.backends.base import BackendOptions
from attntune.search.budget import extend, with_override
from attntune.search.driver import Driver
from attntune.search.job import SearchJob
from attntune.search.outcome import TrialState
from attntune.search.progress import Progress
from attntune.search.recovery import ATTR_PARENT, all_finished
from attntune.search.results import best_row, results_table
from attntune.search.study_store import optuna_storage_url, reading, storage_url, study_exists
from attntune.search.tracking import check_tracking_uri, is_local_store, runs_address, writable_problem
from attntune.search.warm_start import check_sources
from attntune.search.worker import load_task_cached


class Terminated(BaseException):
    """SIGTERM, raised in the driver's main thread."""


@dataclass
class SearchResult:
    job: SearchJob
    table: Any
    parent_run_id: str
    experiment_id: str
    best: Any
    output: Path


def check_output_writable(path: Path) -> None:
    """The output folder (or its nearest existing parent) must be writable; nothing is created."""
    p = path.resolve()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"output: {probe} exists and is not a folder")
    problem = writable_problem(probe)  # os.access says yes to root, even under /proc
    if problem:
        raise ConfigError(f"output: {path} is not writable ({probe}: {problem})")


def check_join(job: SearchJob) -> None:
    """``--join`` shares a study across machines, so its runs must go to a tracking server."""
    uri = job.tracking.resolved_uri()
    if is_local_store(uri):
        raise ConfigError(
            f"--join: tracking uri {uri} is a file on this machine; drivers that share a study log to one "
            "tracking server (--tracking-uri http://HOST:PORT, see docs/scale-out.md)"
        )


def preflight(job: SearchJob) -> None:
    """Everything that can be checked without writing: output folder and tracking store."""
    check_output_writable(job.output)
    check_tracking_uri(job.tracking.resolved_uri())
    task = job.base.task
    if task.name == "tsv" and task.path:
        build_tsv(task)  # a missing, empty or undecodable file exits 2 before any worker starts
    if job.warm_start is not None and not study_exists(storage_url(job.output), job.name):
        check_sources(job)  # an earlier search that is missing or optimised another metric exits 2 here
    if job.backend != "optuna":
        # Bad data must exit 2 before Ray starts (the optuna backend overlaps this load with its
        # workers' start-up instead; Driver.open loads it, cached, either way).
        load_task_cached(to_dict(job.base.task))


def run_search(
    job: SearchJob,
    *,
    resume: bool = False,
    join: bool = False,
    gpus: list[str] | None = None,
    address: str | None = None,
    storage: str | None = None,
    quiet: bool = False,
    verbose: bool = False,
    report: bool = True,
    more_trials: int | None = None,
    more_time: float | None = None,
    on_open: Callable[[Driver], None] | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search to its budget on the job's backend; with ``report``
    write the HTML report and log it to the search's parent run.

    A resumed search that had finished changes nothing (it says so and returns its results)
    unless ``more_trials`` or ``more_time`` extend it, on the same study and parent run.
    ``on_open(driver)`` is called once the study is open, before the first trial (notebooks and
    benchmarks keep the driver to read its ``clock``, or set their own ``observer``)."""
    preflight(job)
    if join:
        check_join(job)
    storage = optuna_storage_url(storage) if storage else None
    extension = None
    if more_trials is not None or more_time is not None:
        if not resume:
            raise ConfigError("--more-trials/--time-limit: they extend an earlier search; use them with resume")
    if resume:
        past = past_search(job, storage)
        job = with_override(job, past.attrs)
        if past.finished and more_trials is None and more_time is None:
            return _finished(job, past)
        if more_trials is not None or more_time is not None:
            extension = extend(job, past.counted, past.time_used, more_trials, more_time)
            job = replace(job, budget=replace(job.budget, **extension))
    backend = get_backend(job.backend)
    # Warm the workers (imports, data) while the driver opens the study and MLflow.
    prepared = backend.prepare(job, BackendOptions(gpus=gpus, address=address))
    try:
        driver = Driver(job, resume=resume, join=join, storage=storage, extension=extension)
        driver.open()
        driver.observer = Progress(driver, quiet=quiet, verbose=verbose)
        _print_runs_address(job, driver.tracker.experiment_id, quiet)
        for line in driver.warnings:
            print(f"warning: {line}", file=sys.stderr)
        for line in [] if quiet else driver.notes:
            print(f"note: {line}", file=sys.stderr)
        if on_open is not None:
            on_open(driver)
        status, code = _drive(driver, backend, prepared)
    finally:
        backend.shutdown(prepared)
    if code:
        driver.abandon_running()
        try:
            driver.finish(status)
        finally:
            driver.close()
        print(
            f"interrupted ({driver.interrupted}): running trials were ended KILLED; continue with "
            f"`attntune resume {job.output}`",
            file=sys.stderr,
        )
        sys.exit(code)
    table = driver.finish(status)
    warnings = driver.close()
    if driver.exhausted and not quiet:
        print(f"note: {driver.exhausted}", file=sys.stderr)
    if report:
        _write_report(job, driver, quiet)
    for w in warnings[:5]:
        print(f"warning: MLflow write failed: {w}", file=sys.stderr)
    return SearchResult(job, table, driver.parent_run_id, driver.tracker.experiment_id, best_row(table, job.mode), job.output)


@dataclass(frozen=True)
class PastSearch:
    """What a resume needs to know of the search it continues, read before anything opens."""

    attrs: dict[str, Any]
    table: Any  # the results table
    counted: int  # trials that used budget
    time_used: float  # seconds, over every session so far
    finished: bool  # every driver finished and no trial is left RUNNING


def past_search(job: SearchJob, storage: str | None) -> PastSearch:
    """The study of ``job``'s earlier search, read and released (``study_store.reading``)."""
    if not study_exists(storage or storage_url(job.output), job.name):
        raise ConfigError(f"{job.name}: no search to resume in {job.output} (run it first)")
    with reading(job.output, url=storage, name=job.name if storage else None) as study:
        attrs = dict(study.user_attrs)
        table = results_table(study)
    states = table["state"].tolist() if len(table) else []
    counted = sum(1 for s in states if s != TrialState.INFEASIBLE)
    return PastSearch(
        attrs, table, counted, float(attrs.get("time_used_s", 0.0)),
        finished=all_finished(attrs) and TrialState.RUNNING not in states,
    )  # fmt: skip


def _finished(job: SearchJob, past: PastSearch) -> SearchResult:
    """``resume`` of a finished search: say so, change nothing, show its results."""
    print(
        f"search {job.name} is finished ({past.counted} trials, {past.time_used:.0f} s); nothing to resume. "
        f"To search on: attntune resume {job.output} --more-trials N (and/or --time-limit 10m)",
        file=sys.stderr,
    )
    exp = str(past.attrs.get("experiment_id") or "")
    return SearchResult(job, past.table, str(past.attrs.get(ATTR_PARENT)), exp, best_row(past.table, job.mode), job.output)


def _drive(driver: Driver, backend: Any, prepared: Any) -> tuple[str, int]:
    """Run the backend under SIGTERM/SIGINT handlers: ("FINISHED", 0), or ("KILLED", 143/130)
    when interrupted. A signal arriving mid-record waits for the record to be whole."""
    old_term = signal.getsignal(signal.SIGTERM)
    old_int = signal.getsignal(signal.SIGINT)

    def on_signal(signum: int, frame: Any) -> None:
        if driver.defer_signal(signum):  # Driver.recording raises it again right after the record
            return
        if signum == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    if old_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)
    try:
        backend.run(driver, prepared)
    except BaseException as e:  # noqa: BLE001 - only an interruption is handled here
        # A signal that lands inside a C extension (Ray's CoreWorker.wait) surfaces as a
        # SystemError whose cause is the interruption: look through the chain.
        cause = _interruption(e)
        if cause is None:
            raise
        code = 143 if isinstance(cause, Terminated) else 130
        driver.interrupted = "SIGTERM" if code == 143 else "SIGINT"
        return "KILLED", code
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    return "FINISHED", 0


def _interruption(e: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that ``e`` is or was caused by, if any."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, KeyboardInterrupt | Terminated):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _write_report(job: SearchJob, driver: Driver, quiet: bool) -> None:
    """The HTML report (``attntune report``), from MLflow once every write is in."""
    try:
        path = write_report(driver.tracker.uri, driver.parent_run_id, job.output / REPORT_FILE)
        if not quiet:
            print(f"report: {path}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - a report must never cost the search its results
        print(f"warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)


def _print_runs_address(job: SearchJob, exp_id: str, quiet: bool) -> None:
    if quiet:
        return
    uri = job.tracking.resolved_uri()
    hint = "" if uri.startswith("http") else " (start it with `attntune ui`)"
    print(f"search {job.name}: MLflow runs at {runs_address(uri, exp_id)}{hint}", file=sys.stderr)
