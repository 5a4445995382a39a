"""``attntune jobs``: the searches ``attntune submit`` started, listed, inspected, followed and
stopped (docs/scale-out.md). Each subcommand imports ``attntune.search.submit`` (Ray) lazily.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from attntune.search.cli_base import PlainGroup, PlainTyper, app

JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray dashboard of the cluster, e.g. http://HOST:8265 (default: RAY_ADDRESS; without either, local jobs).",
    ),
]


jobs_app = PlainTyper(
    help="List, inspect, follow and stop submitted searches (`attntune submit`).",
    cls=PlainGroup,
    no_args_is_help=False,  # `attntune jobs` alone is a usage error naming the subcommands (see `cli_base._usage_line`)
    add_completion=False,
)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(address: JobsAddressOpt = None) -> None:
    """Submitted jobs: the cluster's (--address / RAY_ADDRESS) and this folder's local ones."""
    from rich.console import Console
    from rich.table import Table

    from attntune.search.submit import format_time, job_rows  # lazy: heavy (ray)

    rows = job_rows(address)
    table = Table(title=f"{len(rows)} jobs")
    for c in ("id", "status", "job", "started", "ended", "where"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["id"], r["status"], r["job"], format_time(r["start"]), format_time(r["end"]), r["where"])
    Console(width=200).print(table)


@jobs_app.command("status")
def jobs_status(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `attntune submit`.")],
    address: JobsAddressOpt = None,
) -> None:
    """Print a job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    from attntune.search.submit import job_status  # lazy: heavy (ray)

    status, message = job_status(job_id, address)
    print(status)
    if message and status == "FAILED":
        print(message.strip().splitlines()[-1], file=sys.stderr)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `attntune submit`.")],
    address: JobsAddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's output (the search's progress lines and errors)."""
    from attntune.search.submit import job_logs  # lazy: heavy (ray)

    job_logs(job_id, address, follow)


@jobs_app.command("stop")
def jobs_stop(
    job_id: Annotated[str, typer.Argument(help="Job id printed by `attntune submit`.")],
    address: JobsAddressOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the stop is sent.")] = False,
) -> None:
    """Stop a job with SIGTERM: its running trials end KILLED; `attntune resume` continues it."""
    from attntune.search.submit import job_stop  # lazy: heavy (ray)

    print(job_stop(job_id, address, wait=not no_wait))

