"""MLflow writes of a search: attntune's Tracker vs naive per-value ``mlflow.log_metric``.

Both write the same records into their own fresh SQLite store (migrated before timing): one parent
run, ``--trials`` nested child runs with a few params, ``--epochs`` x 6 metrics per child with
step = epoch, every run ended. The Tracker does it through one writer thread with ``log_batch``
(up to 1000 metrics per call) and explicit run ids; the naive way is how it is usually written
(``mlflow.start_run(nested=True)`` per trial, ``mlflow.log_metric`` per value). The timed span
ends when everything is in the store (``Tracker.close()`` returns after the last write). Each
store is then counted to check both hold every value. Prints both times and the ratio
naive / tracker (target: >= 5).

    python benchmarks/tracking.py                      # 200 trials x 50 epochs x 6 metrics
    python benchmarks/tracking.py --trials 20 --epochs 10
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

METRICS = ("train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s")


def _values(trial: int, epoch: int) -> dict[str, float]:
    """Plausible, distinct per-epoch values (no randomness: both sides log the same numbers)."""
    x = epoch + trial / 1000
    return {
        "train_loss": 3.0 / math.sqrt(x),
        "val_loss": 3.2 / math.sqrt(x),
        "val_accuracy": 1 - 1 / (1 + x),
        "val_bleu": 40 * (1 - 1 / (1 + x)),
        "lr": 1e-3 / math.sqrt(x),
        "tokens_per_s": 10_000 + trial + epoch,
    }


def _params(trial: int) -> dict[str, object]:
    return {"model.d_model": 64 * (1 + trial % 4), "model.n_heads": 2 ** (trial % 3), "train.lr": 1e-3 * (1 + trial % 7)}


def fresh_store(folder: Path, name: str) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(folder / name).as_posix()}"
    MlflowClient(uri).search_experiments()  # schema migrations happen here, outside the timing
    return uri


def count_values(uri: str) -> int:
    with sqlite3.connect(uri[len("sqlite:///") :]) as db:
        return int(db.execute("select count(*) from metrics").fetchone()[0])


def with_tracker(uri: str, trials: int, epochs: int) -> float:
    from attntune.search.tracking import TAG_KIND, Tracker

    t0 = time.perf_counter()
    tr = Tracker(uri)
    tr.ensure_experiment("bench-tracker")
    parent = tr.create_run("search bench", tags={TAG_KIND: "search"})
    for t in range(trials):
        run_id = tr.create_run(f"t{t:03d}", parent_run_id=parent, tags={TAG_KIND: "trial"}, params=_params(t))
        for epoch in range(1, epochs + 1):
            tr.log_metrics(run_id, _values(t, epoch), step=epoch)
        tr.end_run(run_id)
    tr.end_run(parent)
    errors = tr.close()
    if errors:
        raise SystemExit(f"tracker errors: {errors[:3]}")
    return time.perf_counter() - t0


def naive(uri: str, trials: int, epochs: int) -> float:
    import mlflow

    t0 = time.perf_counter()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-naive")
    with mlflow.start_run(run_name="search bench"):
        for t in range(trials):
            with mlflow.start_run(run_name=f"t{t:03d}", nested=True):
                mlflow.log_params(_params(t))
                for epoch in range(1, epochs + 1):
                    for k, v in _values(t, epoch).items():
                        mlflow.log_metric(k, v, step=epoch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    expected = args.trials * args.epochs * len(METRICS)
    with tempfile.TemporaryDirectory(prefix="attntune-bench-") as tmp:
        folder = Path(tmp)
        uri_tracker = fresh_store(folder, "tracker.db")
        uri_naive = fresh_store(folder, "naive.db")
        print(f"{args.trials} trials x {args.epochs} epochs x {len(METRICS)} metrics = {expected:,} values per side")
        t_tracker = with_tracker(uri_tracker, args.trials, args.epochs)
        print(f"tracker (log_batch, one writer): {t_tracker:8.2f} s  {expected / t_tracker:10,.0f} values/s", flush=True)
        t_naive = naive(uri_naive, args.trials, args.epochs)
        print(f"naive (mlflow.log_metric):       {t_naive:8.2f} s  {expected / t_naive:10,.0f} values/s", flush=True)
        n_tracker, n_naive = count_values(uri_tracker), count_values(uri_naive)
        print(f"values in the stores: tracker {n_tracker:,}, naive {n_naive:,} (expected {expected:,} each)")
        if n_tracker != expected or n_naive != expected:
            raise SystemExit("a store is missing values; the timings are not comparable")
        print(f"ratio naive / tracker: {t_naive / t_tracker:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
