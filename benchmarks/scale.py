"""Scale: what one more trial costs the driver as a search grows to 1,000 trials, and what the
commands that read a big search cost.

A search of tiny trials (the built-in ``numbers`` task, one optimizer step per trial, TPE, scheduler
none, concurrency 2, no baseline), so nearly all the time is the driver's own. For each hundred
completed trials it prints the wall time per trial and the driver's time per trial by phase
(``search/timing.py``: ``sample`` = Optuna's ask and the space's sampling and the feasibility check,
``mlflow`` = the MLflow writes the driver waits for, ``optuna`` = trial attributes, reports and
tells, ``budget`` = budget checks). Then it times ``attntune results``, ``attntune report`` and
``attntune export`` on the finished search (and the report's size), each through the real CLI.

The plain comparison, printed in the same run: what a user would write by hand, Optuna TPE on a
SQLite storage in one process with one nested MLflow run per trial, running the same trial
function, wall time per trial per hundred.

Targets (issue 16): the driver's time per trial <= 50 ms at trials 900-1,000 and <= 1.2x its time at
trials 100-200; ``results``, ``report`` and ``export`` <= 10 s each at 1,000 trials; the report
under 3 MB.

    python benchmarks/scale.py                       # 1,000 trials on the optuna backend, 300 on ray
    python benchmarks/scale.py --trials 200 --ray-trials 0 --plain-trials 200   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = {"name": "numbers", "n_train": 200, "val_size": 16, "test_size": 16}
MODEL = {"d_model": 16, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 32, "dropout": 0.0}
TRAIN = {"batch_size": 16, "max_steps_per_epoch": 1, "bleu_samples": 0, "warmup_steps": 0}
SPACE = {
    "params": {
        "model.n_heads": [1, 2, 4],
        "model.head_dim": [4, 8],
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    }
}
PHASES = ("sample", "mlflow", "optuna", "budget")


def job_dict(name: str, backend: str, n: int, folder: Path) -> dict[str, Any]:
    return {
        "name": name, "task": TASK, "space": SPACE, "strategy": "tpe", "scheduler": "none",
        "budget": {"n_trials": n, "max_epochs": 1, "min_epochs": 1}, "concurrency": 2, "backend": backend,
        "tracking": f"sqlite:///{(folder / 'mlflow.db').as_posix()}", "output": str(folder / name),
        "model": MODEL, "train": TRAIN, "baseline": "none", "seed": 0,
    }  # fmt: skip


def run_attntune(backend: str, n: int, folder: Path) -> list[dict[str, float]]:
    """The search, in this process; returns the driver's phase totals after each finished trial."""
    from attntune.search.job import parse_job
    from attntune.search.run import run_search

    kept: dict[str, Any] = {}
    raw = job_dict(f"scale-{backend}", backend, n, folder)
    job = parse_job(raw, text=yaml.safe_dump(raw, sort_keys=False))  # the job file export reads back
    run_search(job, quiet=True, report=False, on_open=lambda d: kept.setdefault("driver", d))
    return kept["driver"].clock.history


def per_hundred(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """ms per trial in each hundred of completions: wall, and the driver's phases."""
    rows = []
    for lo in range(0, len(history) - 1, 100):
        hi = min(lo + 100, len(history) - 1)
        a, b, k = history[lo], history[hi], hi - lo
        row = {"from": lo, "to": hi, "wall": 1000 * (b["wall"] - a["wall"]) / k}
        row.update({p: 1000 * (b[p] - a[p]) / k for p in PHASES})
        row["driver"] = sum(row[p] for p in PHASES)
        rows.append(row)
    return rows


def run_plain(n: int, folder: Path) -> list[dict[str, float]]:
    """What a user writes by hand: Optuna TPE on SQLite, one nested MLflow run per trial, the same
    trial function (``attntune.model.train``), one process."""
    import mlflow
    import optuna

    from attntune.model.config import load_run_config
    from attntune.model.data import load_task
    from attntune.model.train import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(f"sqlite:///{(folder / 'plain-mlflow.db').as_posix()}")
    mlflow.set_experiment("plain")
    base = {"task": TASK, "model": MODEL, "train": {**TRAIN, "epochs": 1}}
    data = load_task(load_run_config(base).task)
    stamps: list[dict[str, float]] = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        heads = trial.suggest_categorical("n_heads", [1, 2, 4])
        hd = trial.suggest_categorical("head_dim", [4, 8])
        wd = trial.suggest_float("weight_decay", 0.0, 0.1)
        model = {**MODEL, "n_heads": heads, "d_model": heads * hd}
        run = load_run_config({**base, "model": model, "train": {**base["train"], "lr": lr, "weight_decay": wd}})
        with mlflow.start_run(nested=True, run_name=f"t{trial.number}"):
            mlflow.log_params({"lr": lr, "n_heads": heads, "head_dim": hd, "weight_decay": wd})
            result = train(run.model, run.train, data)
            value = result.history[-1]["val_loss"]
            mlflow.log_metric("val_loss", value, step=1)
        stamps.append({"wall": time.perf_counter(), **dict.fromkeys(PHASES, 0.0)})
        return value

    study = optuna.create_study(
        storage=f"sqlite:///{(folder / 'plain.db').as_posix()}", sampler=optuna.samplers.TPESampler(seed=0)
    )
    with mlflow.start_run(run_name="plain search"):
        stamps.append({"wall": time.perf_counter(), **dict.fromkeys(PHASES, 0.0)})
        study.optimize(objective, n_trials=n)
    return stamps


def time_commands(name: str, folder: Path) -> dict[str, float]:
    """Seconds of ``attntune results``, ``report`` and ``export`` on the finished search."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{(folder / 'mlflow.db').as_posix()}"}
    out: dict[str, float] = {}
    cli = [sys.executable, "-c", "from attntune.search.cli import main; main()"]
    for label, args in (
        ("results", ["results", str(folder / name)]),
        ("report", ["report", str(folder / name)]),
        ("export", ["export", "--experiment", name, "--output", str(folder / "best.yaml")]),
    ):
        t0 = time.perf_counter()
        r = subprocess.run([*cli, *args], cwd=folder, env=env, capture_output=True, text=True)
        out[label] = time.perf_counter() - t0
        if r.returncode:
            print(f"{label} failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
    report = folder / name / "report.html"
    out["report_mb"] = report.stat().st_size / 2**20 if report.exists() else float("nan")
    return out


def show(title: str, rows: list[dict[str, float]], phases: bool = True) -> None:
    print(f"\n{title}: ms per completed trial")
    head = f"{'trials':>10} {'wall':>7}" + ("".join(f"{p:>8}" for p in (*PHASES, "driver")) if phases else "")
    print(head)
    for r in rows:
        cells = "".join(f"{r[p]:8.1f}" for p in (*PHASES, "driver")) if phases else ""
        print(f"{r['from']:>4}-{r['to']:<5} {r['wall']:7.1f}{cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="trials on the optuna backend")
    ap.add_argument("--ray-trials", type=int, default=300, help="trials on the ray backend (0: skip)")
    ap.add_argument("--plain-trials", type=int, default=1000, help="trials of the plain Optuna + MLflow loop (0: skip)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    folder = Path(tempfile.mkdtemp(prefix="attntune-scale-"))
    figures: dict[str, Any] = {}
    rows = per_hundred(run_attntune("optuna", args.trials, folder))
    show(f"attntune optuna backend, {args.trials} trials", rows)
    figures["optuna"] = rows
    commands = time_commands("scale-optuna", folder)
    figures["commands"] = commands
    print(
        f"\nat {args.trials} trials: results {commands['results']:.1f} s, report {commands['report']:.1f} s "
        f"({commands['report_mb']:.1f} MB), export {commands['export']:.1f} s  (targets: <= 10 s each, < 3 MB)"
    )
    if args.ray_trials:
        figures["ray"] = per_hundred(run_attntune("ray", args.ray_trials, folder))
        show(f"attntune ray backend, {args.ray_trials} trials", figures["ray"])
    if args.plain_trials:
        figures["plain"] = per_hundred(run_plain(args.plain_trials, folder))
        show(f"plain Optuna TPE + one nested MLflow run per trial, {args.plain_trials} trials", figures["plain"], phases=False)
    if len(rows) >= 2:
        first = next((r for r in rows if r["from"] == 100), rows[0])
        last = rows[-1]
        ratio = last["driver"] / first["driver"] if first["driver"] else float("nan")
        ok = last["driver"] <= 50 and ratio <= 1.2
        print(
            f"\ndriver per trial: {first['driver']:.1f} ms at {first['from']}-{first['to']}, {last['driver']:.1f} ms at "
            f"{last['from']}-{last['to']} (x{ratio:.2f}); target <= 50 ms and <= 1.2x: {'met' if ok else 'MISSED'}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
