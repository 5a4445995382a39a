"""The ``attntune`` command line.

Each command imports its heavy libraries (torch, Optuna, Ray, MLflow, pandas) lazily, with the
modules that load them (each such import says ``# lazy``), so ``attntune --help`` is instant. Bad
input of any kind ends in one line on stderr and exit code 2 (see ``main``).
Commands are added here as thin wrappers around functions in the other modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from attntune.model.config import ConfigError, ModelConfig, TrainConfig
from attntune.search.outcome import FINISHED_STATES, TrialState
from attntune.search.study_store import find_output, reading, study_attrs


class _PlainHelp:
    """The same ``--help`` under every typer that pyproject.toml allows: a flag shows no type
    (typer 0.29's rich help prints ``<bool>`` after every flag, ``--help`` included) and an
    argument reads ``JOB_FILE`` in the usage line, the help panel and its error messages
    (typer >= 0.27 writes ``{job_file}``); a docstring's paragraph wrapped over several source lines
    reads as one paragraph (rich help keeps single line breaks). Uses only click's public
    Command/Parameter API."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = "\n\n".join(" ".join(p.split()) for p in self.help.strip().split("\n\n"))
        for param in self.params:
            _plain(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        return _plain(option) if option is not None else None


def _plain(param: Any) -> Any:
    if param.param_type_name == "argument" and param.metavar is None:
        param.metavar = param.name.upper()
    elif getattr(param, "is_flag", False) and not getattr(param, "count", False):
        param.metavar = ""  # the help's type column stays empty
    return param


class _Command(_PlainHelp, TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class _Group(_PlainHelp, TyperGroup):
    pass


class _Typer(typer.Typer):
    """``typer.Typer`` whose commands are ``_Command``s (and, given ``cls=_Group``, groups ``_Group``s)."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or _Command, **kwargs)


app = _Typer(
    name="attntune",
    help="Hyperparameter search for PyTorch Transformers.",
    cls=_Group,
    no_args_is_help=True,  # `main` turns a bare `attntune` into `attntune --help` first
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutputOpt = Annotated[Path | None, typer.Option("--output", help="Output folder (or file).")]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address.")]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="One line per trial epoch (a terminal shows running trials live anyway)."),
]


class UsageError(Exception):
    """Bad input from the user that is not a config file problem (exit 2)."""


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"attntune {version('attntune')}")
        raise typer.Exit()


@app.callback()
def _app(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print attntune's version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Hyperparameter search for PyTorch Transformers."""


# --------------------------------------------------------------------------- train / translate


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML with task, model and train sections.")],
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Override train.epochs (with --max-tokens: the number of rounds reported)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            help="Train exactly this many target tokens, reported in rounds (train.round_tokens, else "
            "train.epochs equal rounds); the cosine schedule spans exactly the steps they take.",
        ),
    ] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time-limit",
            help="Stop at a step boundary when this time (90s, 8m, 2h) runs out, then evaluate and save. "
            "Alone it replaces train.epochs (with --epochs or --max-tokens: whichever ends first); a cosine "
            "schedule decays over the time so it reaches 0 as training stops.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Output folder (default: attntune-runs/train-<config name>, or -2, -3... when taken); "
            "a folder that holds a run already is refused.",
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
    register_as: Annotated[
        str | None, typer.Option("--register-as", help="Register the trained model under this name.")
    ] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
) -> None:
    """Train one model from a config file (the schema `attntune export` writes)."""
    from attntune.search.train_cmd import run_train  # lazy: heavy (torch)

    run_train(
        config,
        epochs=epochs,
        output=output,
        tracking_uri=tracking_uri,
        register_as=register_as,
        track=not no_tracking,
        max_tokens=max_tokens,
        time_limit=time_limit,
    )


@app.command()
def translate(
    text: Annotated[list[str] | None, typer.Argument(help="Sentences to translate (or use --input).")] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            "--checkpoint",
            help="Checkpoint folder written by `train`, or an MLflow address: runs:/RUN_ID/checkpoint, "
            "runs:/RUN_ID/model, models:/NAME/VERSION.",
        ),
    ] = ...,
    input_file: Annotated[
        str | None,
        typer.Option("--input", "-i", help="File of source sentences, one a line ('-': stdin)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the translations to this file (default: stdout).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="text: one translation a line; tsv: source<TAB>translation.")
    ] = "text",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Sentences decoded together (greedy: length-sorted, padded; beam search: sentences of "
            "one length). Batching changes no translation.",
        ),
    ] = 64,
    beam_size: Annotated[int, typer.Option("--beam-size", help="Beam width (1: greedy decoding).")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto (a GPU when there is one), cpu or cuda.")] = "auto",
    tracking_uri: TrackingOpt = None,
) -> None:
    """Translate sentences with a trained checkpoint: from the command line, a file or stdin."""
    from attntune.search.train_cmd import run_translate  # lazy: heavy (torch)

    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device: {device!r} is not a device (valid: auto, cpu, cuda)")
    run_translate(
        checkpoint,
        text,
        beam_size=beam_size,
        input_path=input_file,
        output=output,
        fmt=fmt,
        batch_size=batch_size,
        tracking_uri=tracking_uri,
        device=device,
    )


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
    keys = [c for c in t.columns if c.startswith(("model.", "train."))]
    ints = _int_fields()
    for k in keys:
        if k in b and b[k] == b[k] and b[k] is not None:
            v = b[k]
            if k in ints and isinstance(v, float) and v.is_integer():
                v = int(v)  # a column with a missing value (an infeasible trial) reads back as float
            console.print(f"  {k}: {v}")
    console.print(f"results: {result.output / 'results.csv'}")
    console.print(f"export: attntune export --experiment {job.tracking.experiment or job.name} --output best.yaml")


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
    from attntune.search.job import parse_duration, parse_job, parse_yaml_text  # lazy: yaml, spaces, pydantic
    from attntune.search.run import run_search  # lazy: heavy (optuna, pandas)

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


# --------------------------------------------------------------------------- submit / jobs (docs/scale-out.md)

JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray dashboard of the cluster, e.g. http://HOST:8265 (default: RAY_ADDRESS; without either, local jobs).",
    ),
]


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


jobs_app = _Typer(
    help="List, inspect, follow and stop submitted searches (`attntune submit`).",
    cls=_Group,
    no_args_is_help=False,  # `attntune jobs` alone is a usage error naming the subcommands (see `_usage_line`)
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


# --------------------------------------------------------------------------- entry point


def _int_fields() -> set[str]:
    """Dotted names of the integer fields of ModelConfig and TrainConfig."""
    import dataclasses

    return {
        f"{prefix}.{f.name}"
        for prefix, cls in (("model", ModelConfig), ("train", TrainConfig))
        for f in dataclasses.fields(cls)
        if str(f.type).split("|")[0].strip() == "int"
    }


def _bad_input_types() -> tuple[type[BaseException], ...]:
    # A DataError exists only if attntune.model.data was imported: importing it here would load
    # torch (seconds) just to print a job file's error line.
    data = sys.modules.get("attntune.model.data")
    return (ConfigError, UsageError) + ((data.DataError,) if data is not None else ())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; bad input becomes one line on stderr and exit code 2.

    As the ``attntune`` program (no ``argv``) it ends with ``os._exit`` once its exit handlers have
    run: the interpreter's teardown of torch, MLflow's SQLAlchemy engines and Optuna takes ~2 s and
    writes nothing (every store is closed by then). Called with ``argv`` (tests, notebooks) it
    raises SystemExit as usual."""
    if argv is not None:
        _main(argv)
        return
    try:
        _main(None)
    except SystemExit as e:
        _fast_exit(e.code)


def _fast_exit(code: object) -> None:
    import atexit

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message")
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # logging, Ray, warm worker pools: whatever registered to run at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the exit status
            pass
    os._exit(status)


def _main(argv: list[str] | None) -> None:
    # MLflow sets its loggers' level from this variable when it is imported (overriding any level
    # set before), in this process and in every worker started from it: without it a new store's
    # first run prints "INFO ... Creating initial MLflow database tables" on the user's terminal.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]  # a bare `attntune` prints the help on stdout and exits 0
    try:
        code = app(args=args, prog_name="attntune", standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # noqa: BLE001 - classify, then re-raise the unexpected
        exits, usage, aborts = _typer_exceptions()
        if isinstance(e, exits):
            code = e.exit_code
        elif isinstance(e, aborts):  # Ctrl-C or end of input at a prompt
            code = 130
        elif isinstance(e, usage + _bad_input_types()):
            print(f"error: {_usage_line(e) if isinstance(e, usage) else _bad_input_line(e)}", file=sys.stderr)
            sys.exit(2)
        else:
            raise
    if code == 130:  # typer turns a KeyboardInterrupt into exit code 130
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _typer_exceptions() -> tuple[tuple[type[BaseException], ...], ...]:
    """(exit, usage error, abort) classes, as the installed typer raises them.

    typer >= 0.26 raises its own bundled copy of click's exceptions (``typer._click.exceptions``),
    which are not click's classes; an older typer (or code that uses click itself) raises click's.
    ``typer._click`` is a third-party private module, so it is only looked up here, never imported:
    a module that is not loaded cannot have raised anything."""
    exits: list[type[BaseException]] = [typer.Exit]
    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        module = sys.modules.get(name)
        for found, attr in ((exits, "Exit"), (usage, "ClickException"), (aborts, "Abort")):
            cls = getattr(module, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(exits), tuple(usage), tuple(aborts)


def _usage_line(e: Any) -> str:
    """One line for a usage error: the command, click's message (its lists spread over lines are
    joined) and, where a command was missing or unknown, the commands there are."""
    message = " ".join(e.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(e, "ctx", None)
    if ctx is None:
        return message
    command = ctx.command
    if hasattr(command, "list_commands") and getattr(e, "option_name", None) is None:
        message += f" (commands: {', '.join(command.list_commands(ctx))})"
    return f"{ctx.command_path}: {message}; see {ctx.command_path} --help"


def _bad_input_line(e: BaseException) -> str:
    line = getattr(e, "line", None)
    return line() if callable(line) else str(e)


if __name__ == "__main__":  # pragma: no cover
    main()
