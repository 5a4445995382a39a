"""The ``attntune`` command line: its entry point (``main``) and the search commands.

Every command registers on the one ``app`` (``attntune.search.cli_base``, with the help's rendering
and how a run ends); the model commands live in ``cli_model``, ``attntune jobs`` in ``cli_jobs``,
both imported here so that ``main`` knows every command. Each command imports its heavy libraries
(torch, Optuna, Ray, MLflow, pandas) lazily, with the modules that load them (each such import
says ``# lazy``), so ``attntune --help`` is instant. Bad input of any kind ends in one line on stderr
and exit code 2 (see ``main``). Commands are thin wrappers around functions in the other modules.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attntune.model.config import ConfigError, ModelConfig, TrainConfig, fields_unread
from attntune.search import cli_jobs, cli_model  # noqa: F401 - register train, translate (first) and jobs
from attntune.search.cli_base import (
    AddressOpt,
    OutputOpt,
    TrackingOpt,
    UsageError,
    VerboseOpt,
    app,
    fast_exit,
    run_cli,
)
from attntune.search.outcome import FINISHED_STATES, TrialState
from attntune.search.study_store import find_output, reading, study_attrs

# --------------------------------------------------------------------------- search


def _print_gain(console: Any, job: Any, table: Any) -> None:
    """The best trial against the job's baseline, or why the search had none."""
    from attntune.search.results import table_gain  # lazy: pandas

    gain = table_gain(table, job.mode)
    if gain is not None:
        console.print(gain.line(job.metric), soft_wrap=True)
    elif job.baseline_note:
        console.print(f"no baseline trial: {job.baseline_note}", soft_wrap=True)


def _print_best(result: Any) -> None:
    from rich.console import Console

    console = Console()
    job = result.job
    t = result.table
    counts = t["state"].value_counts().to_dict() if len(t) else {}
    prior = counts.get(TrialState.PRIOR, 0)
    console.print(
        f"[bold]{job.name}[/bold]: {len(t) - prior} trials "
        + ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in FINISHED_STATES)
        + (f" (and {prior} from earlier searches, warm_start)" if prior else "")
    )
    if result.best is None:
        from attntune.search.results import feasible  # lazy: pandas

        done = t[t["state"] == TrialState.COMPLETE] if len(t) else t
        if len(done) and "feasible" in done and not feasible(done).any():
            console.print(
                f"{len(done)} trials completed, but none meets the constraints "
                f"({'; '.join(map(str, job.end_constraints))}); nothing to export "
                f"(`attntune export --experiment {job.tracking.experiment or job.name} --trial N` still exports one)"
            )
        else:
            console.print("no trial completed; nothing to export")
        return
    if job.multi_objective and "pareto" in t:
        front = t[t["pareto"].astype(bool)]
        names = [o.name for o in job.objectives]
        console.print(f"Pareto front ({len(front)} trials; objectives {', '.join(f'{o.name} {o.mode}' for o in job.objectives)}):")
        for _, r in front.iterrows():
            vals = "  ".join(f"{n}={float(r[f'objective.{n}']):.4g}" for n in names)
            console.print(f"  trial {int(r['number']):>3}  {vals}")
        console.print(f"results: {result.output / 'results.csv'} (column pareto), {result.output / 'pareto.csv'}")
        console.print(
            f"export: attntune export --experiment {job.tracking.experiment or job.name} --knee --output best.yaml"
            " (or --pick best --max-params N / --max-latency-ms MS)"
        )
        return
    b = result.best
    console.print(f"best: trial {int(b['number'])} {job.metric}={float(b['value']):.4g}")
    _print_gain(console, job, t)
    unread = {f"model.{f}" for f in fields_unread(str(b.get("model.family", "transformer")), str(b.get("model.parameterization", "standard")))}
    keys = [c for c in t.columns if c.startswith(("model.", "train.")) and c not in unread]
    ints = _int_fields()
    for k in keys:
        if k in b and b[k] == b[k] and b[k] is not None:
            v = b[k]
            if k in ints and isinstance(v, float) and v.is_integer():
                v = int(v)  # a column with a missing value (an infeasible trial) reads back as float
            console.print(f"  {k}: {v}")
    console.print(f"results: {result.output / 'results.csv'}")
    console.print(f"export: attntune export --experiment {job.tracking.experiment or job.name} --output best.yaml")


def _int_fields() -> set[str]:
    """Dotted names of the integer fields of ModelConfig and TrainConfig."""
    import dataclasses

    return {
        f"{prefix}.{f.name}"
        for prefix, cls in (("model", ModelConfig), ("train", TrainConfig))
        for f in dataclasses.fields(cls)
        if str(f.type).split("|")[0].strip() == "int"
    }


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="Search job YAML.")],
    backend: Annotated[str | None, typer.Option("--backend", help="optuna (default) or ray.")] = None,
    address: AddressOpt = None,
    tracking_uri: TrackingOpt = None,
    output: OutputOpt = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Devices to use, e.g. 0,1.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this job's earlier search.")] = False,
    join: Annotated[bool, typer.Option("--join", help="Add workers to a shared study (PostgreSQL).")] = False,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: study.db in the output folder).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines: print only warnings, errors and the final summary.")] = False,
    verbose: VerboseOpt = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
) -> None:
    """Run a search job in the foreground."""
    from attntune.search.job import load_job  # lazy: yaml, spaces, pydantic
    from attntune.search.run import run_search  # lazy: heavy (optuna, pandas)

    if address and not backend:
        backend = "ray"
    job = load_job(job_file, backend=backend, tracking_uri=tracking_uri, output=output)
    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    result = run_search(
        job, resume=resume, join=join, gpus=gpu_ids, address=address, storage=storage, quiet=quiet, verbose=verbose,
        report=not no_report,
    )  # fmt: skip
    _print_best(result)


@app.command()
def resume(
    name_or_folder: Annotated[str, typer.Argument(help="Job name or the search's output folder.")],
    tracking_uri: TrackingOpt = None,
    address: AddressOpt = None,
    more_trials: Annotated[
        int | None, typer.Option("--more-trials", help="Extend the search by this many trials (also a finished one).")
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option("--time-limit", help="Give the search this much more time, e.g. 90s, 10m, 2h (also a finished one)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines: print only warnings, errors and the final summary.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Continue an interrupted search (completed trials are kept, running ones rerun), or extend a
    finished one with --more-trials / --time-limit on the same study and MLflow parent run. A
    finished search without them is left as it is."""
    from attntune.search.job import parse_duration, parse_job  # lazy: yaml, spaces, pydantic
    from attntune.search.run import run_search  # lazy: heavy (optuna, pandas)
    from attntune.search.yaml_io import parse_yaml_text  # lazy: yaml

    try:
        more_time = parse_duration(time_limit)
    except ValueError as e:
        raise UsageError(f"--time-limit: {e}") from None
    folder = find_output(name_or_folder)
    attrs = study_attrs(folder)  # read and released: the search opens its own
    text = attrs.get("job_yaml")
    if text is None:
        raise UsageError(f"{folder}: the study does not hold its job file")
    data = parse_yaml_text(text, f"{folder}/study.db")
    job = parse_job(
        data,
        text=text,
        source=f"{folder}/study.db",
        backend=attrs.get("backend"),
        tracking_uri=tracking_uri or attrs.get("tracking_uri"),
        output=folder,
    )
    result = run_search(
        job, resume=True, address=address, quiet=quiet, verbose=verbose, more_trials=more_trials, more_time=more_time
    )
    _print_best(result)


@app.command()
def results(
    name_or_folder: Annotated[str, typer.Argument(help="Job name or the search's output folder.")],
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            help="Column to sort by: a short name (lr, d_model, heads, params, ...), the metric's name, or a "
            "results.csv column (default: the metric, best trial first).",
        ),
    ] = None,
    descending: Annotated[bool, typer.Option("--desc", help="Reverse the order.")] = False,
    columns: Annotated[
        str | None,
        typer.Option(
            "--columns",
            help="Comma-separated columns to show, short (d_model, lr, val_bleu) or full (model.d_ff) names "
            "(default: trial, state, the metric, val_bleu, family when there are several, d_model, heads, "
            "layers, lr, params, seconds).",
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Only the best N trials by the metric (best first, as export ranks them)."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help="Only trials in these states, comma-separated: complete, pruned, failed, infeasible, running."
        ),
    ] = None,
    csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV with full column names (as in results.csv) instead of a table.")
    ] = False,
) -> None:
    """Show a search's results table."""
    from rich.console import Console

    from attntune.search.results import ResultsView, table_gain  # lazy: pandas

    folder = find_output(name_or_folder)
    with reading(folder) as study:  # read once; leaves no -wal/-shm files behind
        view = ResultsView.of(study, folder)
    cols = view.columns(columns)  # before the rows: val_bleu may be read from MLflow into the table
    rows = view.rows(states=state, top=top, sort=sort, descending=descending)
    if csv:
        sys.stdout.write(view.csv(rows, cols))
        return
    console = Console()
    console.print(view.render(rows, cols, view.title(len(rows), states=state, top=top), console.width, fit=not columns))
    gain = table_gain(view.table, view.mode)
    if gain is not None:
        console.print(gain.line(view.metric), soft_wrap=True)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    name_or_folder: Annotated[
        str, typer.Argument(help="Job name, the search's output folder, or an MLflow experiment name.")
    ],
    search_run: Annotated[
        str | None, typer.Option("--search-run", help="MLflow run id of the search (default: the latest).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Report file (default: report.html in the search folder).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write a search's self-contained HTML report from MLflow and log it to the search run."""
    from attntune.dashboards.report import report_command  # lazy: heavy (plotly, mlflow)

    path = report_command(name_or_folder, search_run=search_run, output=output, tracking_uri=tracking_uri)
    print(f"report: {path}")


# --------------------------------------------------------------------------- MLflow UI / export


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", help="Port for the MLflow UI.")] = 5000,
    tracking_uri: TrackingOpt = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default: this machine only).")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the searches' store and print each search experiment's runs table."""
    from attntune.search.ui import run_ui  # lazy: heavy (mlflow)

    code = run_ui(port=port, tracking_uri=tracking_uri, host=host)
    sys.exit(code)


@app.command()
def export(
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment (the job name).")],
    search_run: Annotated[
        str | None, typer.Option("--search-run", help="MLflow run id of the search (default: the latest).")
    ] = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Export this trial number instead of the best.")] = None,
    pick: Annotated[
        str | None,
        typer.Option("--pick", help="Multi-objective search: choose from the Pareto front; 'knee', or 'best' with caps."),
    ] = None,
    max_params: Annotated[float | None, typer.Option("--max-params", help="With --pick: at most this many parameters.")] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option("--max-latency-ms", help="With --pick: at most this latency (ms per sentence).")
    ] = None,
    knee: Annotated[bool, typer.Option("--knee", help="Same as --pick knee.")] = False,
    family: Annotated[
        str | None,
        typer.Option(
            "--family",
            help="Export the best trial of this model family (transformer, rnn or mlp) instead of the best overall.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Config file (default: best.yaml in the search's output folder).")
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write the best (or a chosen) trial of a search as a config `attntune train` takes."""
    from attntune.search.export import PickRule, export_config, print_export  # lazy: heavy (mlflow)

    rule = None
    if pick is not None or knee or max_params is not None or max_latency_ms is not None:
        if pick not in (None, "knee", "best"):
            raise ConfigError(f"--pick: {pick!r} is not a rule (valid: knee, best)")
        rule = PickRule(max_params=max_params, max_latency_ms=max_latency_ms, knee=knee or pick == "knee")
    print_export(
        export_config(
            experiment, search_run=search_run, trial=trial, output=output, tracking_uri=tracking_uri, pick=rule,
            family=family,
        )
    )


# --------------------------------------------------------------------------- submit (docs/scale-out.md)


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="Search job YAML.")],
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray dashboard, e.g. http://HOST:8265; without it the search runs detached here."),
    ] = None,
    tracking_uri: TrackingOpt = None,
    output: OutputOpt = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL, e.g. postgresql://...")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="optuna or ray (default: ray with --address).")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Local jobs: devices to use, e.g. 0,1.")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
) -> None:
    """Submit a search as a Ray job (--address) or start it detached here; prints the job id."""
    from attntune.search.submit import submit as submit_search  # lazy: heavy (ray)

    done = submit_search(
        job_file,
        address=address,
        tracking_uri=tracking_uri,
        output=output,
        storage=storage,
        backend=backend,
        gpus=gpus,
        report=not no_report,
    )
    print(done.job_id)
    where = f" --address {address}" if address else ""
    extra = f"; log: {done.log}" if done.log else ""
    print(f"submitted; follow it with `attntune jobs logs {done.job_id}{where} --follow`{extra}", file=sys.stderr)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input becomes one line on stderr and exit code 2.

    As the ``attntune`` program (no ``argv``) it ends with ``os._exit`` once its exit handlers have
    run: the interpreter's teardown of torch, MLflow's SQLAlchemy engines and Optuna takes ~2 s and
    writes nothing (every store is closed by then). Called with ``argv`` (tests, notebooks) it
    raises SystemExit as usual."""
    if argv is not None:
        run_cli(argv)
        return
    try:
        run_cli(None)
    except SystemExit as e:
        fast_exit(e.code)


if __name__ == "__main__":  # pragma: no cover
    main()
