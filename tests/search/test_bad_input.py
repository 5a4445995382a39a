"""Bad input: every mistake exits 2 with one line naming the file/key and the rule, and leaves no trace.

Each case runs the real CLI in a subprocess, in a folder that already holds a migrated MLflow store
(the default ``sqlite:///mlflow.db``): afterwards the folder must hold exactly the same files with the
same bytes (no experiment or run added, no output folder) and no Ray temp folder may exist (Ray's
``RAY_TMPDIR`` points into the case folder). The cases are independent, so they run concurrently.

Tests run as root, where ``chmod`` does not stop writes: the unwritable output folders are a path
under a regular file and a path under ``/proc``.

Usage mistakes (unknown command or option, missing argument), ``--version``, a bare ``attntune``
and every ``--help`` run through the installed ``attntune`` console script, as a person runs it.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, fresh_store, tiny_job

CLI = [sys.executable, "-c", "from attntune.search.cli import main; main()"]
ONE_SPACE = {"params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}


@dataclass
class Case:
    """One bad input: the job (a mapping or raw text), extra files, and what stderr must say."""

    job: dict[str, Any] | str
    needles: tuple[str, ...]
    files: dict[str, bytes] | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None


def _job(**overrides: Any) -> dict[str, Any]:
    overrides.setdefault("budget", {"n_trials": 2, "max_epochs": 1, "min_epochs": 1})
    return tiny_job("bad", **overrides)


def _tsv(path: str, **task: Any) -> dict[str, Any]:
    return {"name": "tsv", "path": path, "val_size": 2, "test_size": 2, **task}


CASES: dict[str, Case] = {
    "malformed-yaml": Case("name: bad\nbudget: {n_trials: [1, 2\n", ("job.yaml: line 3 malformed YAML",)),
    "python-tag-apply": Case(
        "!!python/object/apply:os.system ['touch PWNED']\n", ("job.yaml: line 1 malformed YAML", "safe_load only")
    ),
    "python-tag-object": Case(
        "name: bad\nmodel: !!python/object:attntune.model.config.ModelConfig {d_model: 8}\n",
        ("job.yaml: line 2 malformed YAML", "safe_load only"),
    ),
    "unknown-top-key": Case(_job(colour="blue"), ("job.yaml: colour: unknown key (valid keys:",)),
    "unknown-nested-key": Case(_job(budget={"n_trails": 3}), ("job.yaml: budget.n_trails: unknown key",)),
    "wrong-type": Case(_job(concurrency="two"), ("job.yaml: concurrency: expected an integer, got 'two'",)),
    "wrong-type-nested": Case(
        _job(budget={"n_trials": 2, "max_epochs": "lots"}), ("job.yaml: budget.max_epochs: expected an integer, got 'lots'",)
    ),
    "low-above-high": Case(
        _job(space={"params": {"train.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}}),
        ("job.yaml: space.train.lr: low=0.01 > high=0.001 (low must be <= high)",),
    ),
    "log-range-from-zero": Case(
        _job(space={"params": {"train.lr": {"type": "float", "low": 0, "high": 1e-2, "log": True}}}),
        ("job.yaml: space.train.lr: log scale needs low > 0, got low=0",),
    ),
    "heads-do-not-divide": Case(
        _job(space=ONE_SPACE, model={"d_model": 100, "n_heads": 3}),
        ("job.yaml: model.d_model: 100 is not divisible by n_heads=3",),
    ),
    "n-trials-zero": Case(_job(budget={"n_trials": 0}), ("job.yaml: budget.n_trials: must be > 0, got 0",)),
    "n-trials-negative": Case(_job(budget={"n_trials": -3}), ("job.yaml: budget.n_trials: must be > 0, got -3",)),
    "preset-with-other-scheduler": Case(
        _job(strategy="bohb", scheduler="asha", budget={"n_trials": 2, "max_epochs": 6}),
        ("job.yaml: scheduler: preset 'bohb' is tpe + hyperband; it cannot be combined with scheduler 'asha'",),
    ),
    "bandit-scheduler-without-rungs": Case(
        _job(scheduler="asha", budget={"n_trials": 2, "max_epochs": 2, "min_epochs": 1}),
        ("budget.max_epochs (2) must be >= 3 x budget.min_epochs (1)",),
    ),
    "unknown-strategy": Case(
        _job(strategy="bohbb"),
        ("job.yaml: strategy: 'bohbb' is not a known strategy (valid: random, grid, tpe, gp, cmaes, nsga2, bohb)",),
    ),
    "data-missing": Case(
        _job(task=_tsv("data/nowhere.tsv")), ("error: data/nowhere.tsv: file not found (looked in {folder}/data)",)
    ),
    "data-empty": Case(_job(task=_tsv("empty.tsv")), ("error: empty.tsv: file is empty",), files={"empty.tsv": b"\n \n"}),
    "data-undecodable": Case(
        _job(task=_tsv("latin1.tsv")),
        ("error: latin1.tsv:2: undecodable bytes at column 5 (byte 0xe9); the file must be UTF-8",),
        files={"latin1.tsv": b"one\tun\ncaf\t\xe9t\xe9\n"},
    ),
    # With RAY_ADDRESS pointing nowhere, touching Ray at all would end in a different error.
    "data-missing-ray-backend": Case(
        _job(task=_tsv("nowhere.tsv"), backend="ray"), ("error: nowhere.tsv: file not found",),
        env={"RAY_ADDRESS": "127.0.0.1:{closed_port}"},
    ),
    "output-under-a-file": Case(
        _job(output="somefile/sub"), ("error: output: ", "somefile exists and is not a folder"), files={"somefile": b"x"}
    ),
    "output-under-proc": Case(_job(output="/proc/attntune-test/out"), ("error: output: /proc/attntune-test/out is not writable",)),
    "tracking-closed-port": Case(_job(), ("is unreachable",), args=("--tracking-uri", "http://127.0.0.1:{closed_port}")),
    "tracking-sqlite-under-proc": Case(
        _job(), ("error: tracking uri sqlite:////proc/attntune-test.db: folder /proc is not writable",),
        args=("--tracking-uri", "sqlite:////proc/attntune-test.db"),
    ),
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a hash of its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _env(folder: Path, extra: dict[str, str] | None = None, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["RAY_TMPDIR"] = str(folder / "raytmp")
    env.update({k: v.format(closed_port=port) for k, v in (extra or {}).items()})
    return env


@dataclass
class Ran:
    code: int
    stderr: str
    before: dict[str, str]
    after: dict[str, str]
    folder: Path
    seconds: float


def _prepare(folder: Path, case: Case, template: Path, port: int) -> list[str]:
    fresh_store(template, folder)  # the default store ./mlflow.db already exists
    for name, data in (case.files or {}).items():
        (folder / name).write_bytes(data)
    text = case.job if isinstance(case.job, str) else yaml.safe_dump(case.job, sort_keys=False)
    (folder / "job.yaml").write_text(text, encoding="utf-8")
    args = [a.format(closed_port=port) for a in case.args]
    return [*CLI, "run", "job.yaml", "--no-report", *args]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> dict[str, Ran]:
    """Every case's CLI run, four at a time (each is mostly interpreter start-up)."""
    root = tmp_path_factory.mktemp("bad")
    port = _closed_port()
    pending = list(CASES.items())
    running: list[tuple[str, subprocess.Popen, Path, dict[str, str], float]] = []
    results: dict[str, Ran] = {}
    while pending or running:
        while pending and len(running) < 4:
            name, case = pending.pop(0)
            folder = root / name
            folder.mkdir()
            cmd = _prepare(folder, case, mlflow_template, port)
            before = snapshot(folder)
            env = _env(folder, case.env, port)
            proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running.append((name, proc, folder, before, time.monotonic()))
        name, proc, folder, before, t0 = running.pop(0)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err += "\n(killed after 60 s)"
        results[name] = Ran(proc.returncode, err, before, snapshot(folder), folder, time.monotonic() - t0)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_no_trace(name: str, ran: dict[str, Ran]) -> None:
    r = ran[name]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.code == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in CASES[name].needles:
        assert needle.replace("{folder}", str(r.folder)) in lines[0], lines[0]
    assert r.after == r.before, "the CLI wrote something"  # same store bytes, no output folder
    assert not (r.folder / "raytmp").exists(), "Ray was started"
    assert not (r.folder / "PWNED").exists()


# --------------------------------------------------------------------------- unreachable tracking servers


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers (a hung or firewalled host)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(s.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    stop.set()
    t.join()
    for c in accepted:
        c.close()
    s.close()


@pytest.mark.parametrize("kind", ["silent", "blackhole"])
def test_unreachable_tracking_server_fails_within_10_s(
    kind: str, silent_server: str, tmp_path: Path, mlflow_template: Path
) -> None:
    """10.255.255.1 is unroutable (a connect that hangs); where a network proxy answers for it
    instead, the answer is not an MLflow server's and is refused just as fast."""
    uri = silent_server if kind == "silent" else "http://10.255.255.1:5000"
    cmd = _prepare(tmp_path, Case(_job(), ()), mlflow_template, 0) + ["--tracking-uri", uri]
    before = snapshot(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: tracking server {uri}"), proc.stderr
    assert "unreachable" in lines[0] or "not an MLflow tracking server" in lines[0], lines[0]
    assert seconds < 10, f"took {seconds:.1f} s"
    assert snapshot(tmp_path) == before
    print(f"{kind}: exit 2 after {seconds:.2f} s: {lines[0]}")


# --------------------------------------------------------------------------- safe defaults in the code


def _package_files() -> list[Path]:
    return [p for d in ("search", "model", "spaces", "dashboards") for p in sorted((REPO / d).rglob("*.py"))]


def test_no_eval_exec_unsafe_yaml_or_pickle_loads_in_the_package() -> None:
    """A static guard: these calls would let a job, config, checkpoint or model file run code."""
    bad = []
    for path in _package_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in ("eval", "exec") and owner in ("", "builtins"):
                bad.append(f"{where}: {name}()")
            if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
                bad.append(f"{where}: yaml.{name}()")
            if owner in ("pickle", "cloudpickle", "dill") and name in ("load", "loads"):
                bad.append(f"{where}: {owner}.{name}()")
            if owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    bad.append(f"{where}: torch.load() without weights_only=True")
    assert not bad, bad


def test_cli_servers_bind_loopback_by_default() -> None:
    """``attntune ui`` (the one server the CLI starts) defaults to 127.0.0.1 (test_ui_browser
    checks the listening socket itself)."""
    import inspect

    from attntune.search import cli

    default = inspect.signature(cli.ui).parameters["host"].default
    assert default == "127.0.0.1"


# --------------------------------------------------------------------------- the command line itself

ATTNTUNE = Path(sys.executable).parent / "attntune"  # the installed console script


def _attntune(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run(
        [str(ATTNTUNE), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def _concurrently(calls: dict[str, tuple[str, ...]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Each CLI call is mostly interpreter start-up: run them four at a time."""
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(_attntune, *args, cwd=cwd, stdin="a sentence\n") for name, args in calls.items()}
        return {name: f.result() for name, f in futures.items()}


# args, and what the one line must say ({cwd}: the folder the command ran in)
USAGE: dict[str, tuple[tuple[str, ...], str]] = {
    "no-such-command": (("frobnicate",), "error: attntune: no such command 'frobnicate' (commands: train, "),
    "no-such-option-before-command": (("--frobnicate",), "error: attntune: no such option: --frobnicate"),
    "run-without-job-file": (("run",), "error: attntune run: missing argument 'JOB_FILE'; see attntune run --help"),
    "results-misspelt-option": (("results", "demo", "--sortt", "x"), "error: attntune results: no such option: --sortt"),
    "export-positional-name": (("export", "demo"), "error: attntune export: "),
    "train-unknown-flag": (("train", "x.yaml", "--no-such-flag"), "no such option: --no-such-flag"),
    "translate-without-text": (("translate", "--checkpoint", "C"), "error: "),  # the sentences come on stdin
    "flag-with-a-value": (("run", "x.yaml", "--resume=yes"), "error: option '--resume' does not take a value"),
    "jobs-without-subcommand": (("jobs",), "error: attntune jobs: missing command (commands: list, status, logs, stop)"),
    "jobs-no-such-subcommand": (("jobs", "frobnicate"), "error: attntune jobs: no such command 'frobnicate'"),
    "job-file-not-found": (("run", "jobs/nope.yaml"), "error: jobs/nope.yaml: file not found (looked in {cwd}/jobs)"),
    "train-config-not-found": (("train", "nope.yaml"), "error: nope.yaml: file not found (looked in {cwd})"),
}


@pytest.fixture(scope="module")
def usage_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    cwd = tmp_path_factory.mktemp("usage")
    return cwd, _concurrently({name: args for name, (args, _) in USAGE.items()}, cwd)


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_mistakes_exit_2_with_one_line(name: str, usage_runs: tuple[Path, dict[str, subprocess.CompletedProcess]]) -> None:
    cwd, runs = usage_runs
    r = runs[name]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and "Usage:" not in r.stderr
    assert USAGE[name][1].replace("{cwd}", str(cwd)) in lines[0], lines[0]
    assert r.stdout == ""
    assert sorted(p.name for p in cwd.iterdir()) == [], "a usage mistake wrote something"


def test_version_and_bare_attntune(tmp_path: Path) -> None:
    from importlib.metadata import version

    runs = _concurrently({"version": ("--version",), "bare": (), "help": ("--help",)}, tmp_path)
    assert (runs["version"].returncode, runs["version"].stdout, runs["version"].stderr) == (
        0, f"attntune {version('attntune')}\n", ""
    )  # fmt: skip
    # A bare `attntune` is `attntune --help`: the help on stdout, exit 0 (docs/conventions.md).
    bare = runs["bare"]
    assert (bare.returncode, bare.stderr) == (0, ""), bare.stderr
    assert bare.stdout == runs["help"].stdout
    assert "Usage: attntune [OPTIONS] COMMAND [ARGS]..." in bare.stdout
    for command in ("run", "resume", "results", "report", "ui", "export", "train", "translate", "submit", "jobs"):
        assert re.search(rf"^\W*{command}\s", bare.stdout, re.M), command


def _commands() -> dict[tuple[str, ...], Any]:
    """Every command and group of the app (by its words after ``attntune``), from typer's click tree."""
    import typer.main

    from attntune.search.cli import app

    out: dict[tuple[str, ...], Any] = {}

    def walk(path: tuple[str, ...], cmd: Any) -> None:
        out[path] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk((*path, name), sub)

    walk((), typer.main.get_command(app))
    return out


def _undocumented(text: str, cmd: Any) -> list[str]:
    """The parameters of ``cmd`` whose row in the help ``text`` has no description, or no row."""
    names = {}
    for p in cmd.params:
        shown = p.opts if p.param_type_name == "option" else [p.metavar or p.name]
        names[p.name] = set(shown) | set(p.secondary_opts)
    names["help"] = {"--help"}
    rows = [[c for c in re.split(r"\s{2,}", ln.strip().strip("│").strip()) if c] for ln in text.splitlines()]
    bad = []
    for name, shown in names.items():
        row = next((r for r in rows if shown & {c.strip("* ") for c in r}), None)
        if row is None:
            bad.append(f"{name} (not listed)")
            continue
        rest = [re.sub(r"\[(default: [^\]]*|required)\]", "", c).strip("* ") for c in row if c.strip("* ") not in shown]
        rest = [c for c in rest if c and not re.fullmatch(r"-\w|<[^>]*>(\.\.\.)?|[A-Z_]+(\.\.\.)?", c)]
        if not rest:
            bad.append(name)
    return bad


def test_every_help_reads_cleanly(tmp_path: Path) -> None:
    """``--help`` of the app and of every command and subcommand: exit 0, no ``<bool>`` after a
    flag, no ``{arg}`` placeholder, and every option and argument with its description."""
    commands = _commands()
    assert {("run",), ("translate",), ("jobs",), ("jobs", "logs")} <= set(commands)
    runs = _concurrently({" ".join(path): (*path, "--help") for path in commands}, tmp_path)
    problems = []
    for path, cmd in commands.items():
        r = runs[" ".join(path)]
        where = " ".join(("attntune", *path, "--help"))
        if r.returncode != 0 or r.stderr:
            problems.append(f"{where}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            continue
        if "<bool>" in r.stdout:
            problems.append(f"{where}: <bool>")
        placeholder = re.search(r".*\{\w+\}.*", r.stdout)
        if placeholder:
            problems.append(f"{where}: placeholder in {placeholder[0].strip()!r}")
        problems += [f"{where}: {name} has no description" for name in _undocumented(r.stdout, cmd)]
        for p in cmd.params:  # the source too: help= on every option and argument
            if not getattr(p, "help", None):
                problems.append(f"{where}: {p.name} has no help=")
    assert problems == []


def test_mlflow_first_run_logs_no_info_lines(tmp_path: Path) -> None:
    """A new store's first run: MLflow (driver and workers) creates its tables, and alembic
    migrates them, without an ``INFO`` line on the user's terminal."""
    job = tiny_job("fresh", budget={"n_trials": 1, "max_epochs": 1, "min_epochs": 1})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_LOGGING")}  # as a user has it
    (tmp_path / "fresh").mkdir()
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    r = _attntune("run", "job.yaml", "--tracking-uri", uri, "--no-report", "--quiet", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fresh" / "mlflow.db").is_file()  # the store was created by this run
    noisy = [ln for ln in r.stderr.splitlines() if re.search(r"\bINFO\b", ln)]
    assert noisy == [], r.stderr


def test_ctrl_c_in_a_command_exits_130(tmp_path: Path) -> None:
    """typer turns a KeyboardInterrupt into its own exit code; the CLI still says so and exits 130
    (a search has its own handler: test_resume)."""
    import signal

    code = (
        "import sys, time\n"
        "from attntune.search import cli\n"
        "@cli.app.command('sleepy')\n"
        "def sleepy() -> None:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "cli.main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "sleepy"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (130, "interrupted\n")
