"""``attntune run``: validate everything, then drive a search on the chosen backend.

Order matters for bad input: the job file, the output folder, the tracking store and the data are
all checked before the first write, so a mistake exits 2 leaving no experiment, run or folder.
SIGTERM and Ctrl-C end running trials' runs as KILLED, leave the study resumable and exit 143/130.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.job import SearchJob


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
    from attntune.search.tracking import writable_problem

    problem = writable_problem(probe)  # os.access says yes to root, even under /proc
    if problem:
        raise ConfigError(f"output: {path} is not writable ({probe}: {problem})")


def preflight(job: SearchJob) -> None:
    """Everything that can be checked without writing: output folder and tracking store."""
    from attntune.search.tracking import check_tracking_uri

    check_output_writable(job.output)
    check_tracking_uri(job.tracking.resolved_uri())
    task = job.base.task
    if task.name == "tsv" and task.path:
        from attntune.model.data import build_tsv

        build_tsv(task)  # a missing, empty or undecodable file exits 2 before any worker starts
    if job.backend != "optuna":
        # Bad data must exit 2 before Ray starts (the optuna backend overlaps this load with its
        # workers' start-up instead; SearchContext.open loads it, cached, either way).
        from attntune.model.config import to_dict
        from attntune.search.worker import load_task_cached

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
    report: bool = True,
) -> SearchResult:
    from attntune.search.backends import get_backend_module
    from attntune.search.engine import SearchContext
    from attntune.search.progress import Progress
    from attntune.search.results import best_row

    preflight(job)
    if join or storage:
        from attntune.search.submit import check_join, optuna_storage_url

        storage = optuna_storage_url(storage) if storage else None
        if join:
            check_join(job)
    module = get_backend_module(job.backend)
    options: dict[str, Any] = {"gpus": gpus, "address": address}
    # Warm the workers (imports, data) while the driver opens the study and MLflow.
    prepared = module.prepare(job, options) if hasattr(module, "prepare") else None
    ctx = SearchContext(job, resume=resume, join=join, storage=storage)
    try:
        ctx.open()
    except BaseException:
        if prepared is not None and hasattr(module, "shutdown"):
            module.shutdown(prepared)
        raise
    progress = Progress(ctx, quiet=quiet)
    exp_id = ctx.tracker.experiment_id
    _print_runs_address(job, exp_id, quiet)

    old_term = signal.getsignal(signal.SIGTERM)
    old_int = signal.getsignal(signal.SIGINT)

    def on_signal(signum: int, frame: Any) -> None:
        # Mid-record (a trial's start, report or end being written) the signal waits for the
        # record to be whole; SearchContext.recording raises it again right after.
        if ctx.defer_signal(signum):
            return
        if signum == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    if old_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)
    status, code = "FINISHED", 0
    try:
        module.run(ctx, {**options, "progress": progress, "prepared": prepared})
    except BaseException as e:  # noqa: BLE001 - only an interruption is handled here
        # A signal that lands inside a C extension (Ray's CoreWorker.wait) surfaces as a
        # SystemError whose cause is the interruption: look through the chain.
        cause = _interruption(e)
        if cause is None:
            raise
        code = 143 if isinstance(cause, Terminated) else 130
        status = "KILLED"
        ctx.interrupted = "SIGTERM" if code == 143 else "SIGINT"
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    if code:
        ctx.abandon_running()
        try:
            ctx.finish(status)
        finally:
            ctx.close()
        print(
            f"interrupted ({ctx.interrupted}): running trials were ended KILLED; continue with "
            f"`attntune resume {job.output}`",
            file=sys.stderr,
        )
        sys.exit(code)
    table = ctx.finish(status)
    if report:
        _write_report(ctx, quiet)
    warnings = ctx.close()
    for w in warnings[:5]:
        print(f"warning: MLflow write failed: {w}", file=sys.stderr)
    best = best_row(table, job.mode)
    return SearchResult(job, table, ctx.parent_run_id, exp_id, best, job.output)


def _interruption(e: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that ``e`` is or was caused by, if any."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, KeyboardInterrupt | Terminated):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _write_report(ctx: Any, quiet: bool) -> None:
    """The HTML report, when the dashboards package can build one (see attntune.dashboards)."""
    try:
        from attntune.dashboards.report import write_report_for_context
    except ImportError:
        return
    try:
        path = write_report_for_context(ctx)
        if not quiet and path:
            print(f"report: {path}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - a report must never cost the search its results
        print(f"warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)


def runs_address(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the runs table is in the MLflow UI (MLflow 3 otherwise opens a GenAI overview)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else ui
    return f"{base}/#/experiments/{experiment_id}/runs"


def _print_runs_address(job: SearchJob, exp_id: str, quiet: bool) -> None:
    if quiet:
        return
    uri = job.tracking.resolved_uri()
    hint = "" if uri.startswith("http") else " (start it with `attntune ui`)"
    print(f"search {job.name}: MLflow runs at {runs_address(uri, exp_id)}{hint}", file=sys.stderr)
