"""Bad input: every mistake exits 2 with one line naming the file/key and the rule, and leaves no trace.

Each case runs the real CLI in a subprocess, in a folder that already holds a migrated MLflow store
(the default ``sqlite:///mlflow.db``): afterwards the folder must hold exactly the same files with the
same bytes (no experiment or run added, no output folder) and no Ray temp folder may exist (Ray's
``RAY_TMPDIR`` points into the case folder). The cases are independent, so they run concurrently.

Tests run as root, where ``chmod`` does not stop writes: the unwritable output folders are a path
under a regular file and a path under ``/proc``.
"""

from __future__ import annotations

import ast
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    "data-missing": Case(_job(task=_tsv("nowhere.tsv")), ("error: nowhere.tsv: file not found",)),
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
        assert needle in lines[0], lines[0]
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
