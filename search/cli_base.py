"""What every ``attntune`` command shares: the one ``app`` the commands register on, the options
several commands take, the help's rendering, and how a run of the CLI ends.

Help looks the same under every typer pyproject.toml allows (``PlainCommand``, ``PlainGroup``,
``PlainTyper``). Bad input of any kind ends in one line on stderr and exit code 2
(``run_cli``); ``attntune.search.cli.main`` is the entry point, once every command is registered.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from attntune.model.config import ConfigError


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


class PlainCommand(_PlainHelp, TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class PlainGroup(_PlainHelp, TyperGroup):
    pass


class PlainTyper(typer.Typer):
    """``typer.Typer`` whose commands are ``PlainCommand``s (and, given ``cls=PlainGroup``, groups
    ``PlainGroup``s)."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or PlainCommand, **kwargs)


app = PlainTyper(
    name="attntune",
    help="Hyperparameter search for PyTorch Transformers.",
    cls=PlainGroup,
    no_args_is_help=True,  # `run_cli` turns a bare `attntune` into `attntune --help` first
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


# --------------------------------------------------------------------------- how a run ends


def _bad_input_types() -> tuple[type[BaseException], ...]:
    # A DataError exists only if attntune.model.data was imported: importing it here would load
    # torch (seconds) just to print a job file's error line.
    data = sys.modules.get("attntune.model.data")
    return (ConfigError, UsageError) + ((data.DataError,) if data is not None else ())


def fast_exit(code: object) -> None:
    """End the process with ``code`` (a ``SystemExit`` code) once the exit handlers have run,
    skipping the interpreter's teardown."""
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


def run_cli(argv: list[str] | None) -> None:
    """Run ``app`` on ``argv`` (None: the program's arguments); always ends in ``SystemExit``, bad
    input as one line on stderr and code 2."""
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
