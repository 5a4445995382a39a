"""Record real learning curves once, so search strategies can be replayed against them in seconds.

Trains every configuration of a small cartesian grid (the replay space, see ``GRIDS``) for a fixed
number of epochs with ``attntune.model.train.train`` (single-threaded, one process per worker) and
writes one CSV row per (configuration, epoch) under ``benchmarks/data/``. The CSV's ``#`` header lines
carry what a replay (``benchmarks/replay.py``) and a real check search need: the task, the fixed
model/train settings, the space (job-file form) and the data licence.

    python benchmarks/record_curves.py --grid numbers            # built-in task, 64 configs x 8 epochs
    python benchmarks/record_curves.py --grid tatoeba            # Tatoeba zh->en subset, 16 configs x 8 epochs
    python benchmarks/record_curves.py --grid tatoeba-sizes      # Tatoeba zh->en, 96 configs, 6 sizes x 9 epochs
    python benchmarks/record_curves.py --grid tatoeba-sizes-3k   # the same grid on 3,000 pairs, not 6,000

An interrupted recording resumes: configurations already in the output file are kept.
Tatoeba-derived curves carry the data's attribution (CC-BY 2.0 FR, tatoeba.org via manythings.org/anki).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "benchmarks" / "data"
# Stored in the CSV relative to the repository root (never an absolute machine path).
TATOEBA_REL = "../shared/data/tatoeba-cmn-eng/cmn.txt"
TATOEBA_ATTRIBUTION = "Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki"
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s", "seconds")

def tatoeba_task(max_pairs: int, val_size: int) -> dict[str, Any]:
    """The Tatoeba zh->en task section (character tokenizers) of a grid, with its licence."""
    return {
        "name": "tsv",
        "path": TATOEBA_REL,
        "src_col": 1,
        "tgt_col": 0,
        "src_tokenizer": "char",
        "tgt_tokenizer": "char",
        "max_pairs": max_pairs,
        "val_size": val_size,
        "test_size": 50,
        "license": "CC-BY 2.0 FR",
        "attribution": TATOEBA_ATTRIBUTION,
    }


# Each grid: a job-file task section, fixed model/train settings, and a space whose every parameter
# is enumerable, so the recorded table is exactly the space's cartesian product.
GRIDS: dict[str, dict[str, Any]] = {
    "numbers": {
        "file": "curves_numbers.csv",
        "task": {"name": "numbers", "n_train": 2000, "val_size": 150, "test_size": 50},
        "model": {"d_ff": 128, "dropout": 0.0},
        "train": {
            "batch_size": 32,
            "max_steps_per_epoch": 15,
            "bleu_samples": 16,
            "epochs": 8,
            "device": "cpu",
            "num_threads": 1,
        },
        "space": {
            "params": {
                "model.n_heads": {"choices": [2, 4]},
                "model.head_dim": {"choices": [8, 16]},
                "model.n_layers": {"type": "int", "low": 1, "high": 2},
                "train.lr": {"choices": [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]},
                "train.warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 50},
            }
        },
    },
    "tatoeba": {
        "file": "curves_tatoeba.csv",
        "task": tatoeba_task(max_pairs=3000, val_size=150),
        # 16 configs (not 64): a Tatoeba epoch costs ~2x a `numbers` epoch on the shared CPU box.
        "model": {"d_model": 64, "n_heads": 4, "d_ff": 128, "dropout": 0.0},
        "train": {
            "batch_size": 32,
            "max_steps_per_epoch": 15,
            "bleu_samples": 16,
            "epochs": 8,
            "device": "cpu",
            "num_threads": 1,
        },
        "space": {
            "params": {
                "model.n_layers": {"type": "int", "low": 1, "high": 2},
                "train.lr": {"choices": [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]},
                "train.warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 50},
            }
        },
    },
    # Issue 15: a table that can separate strategies on the showcase task. 96 configurations over
    # six model sizes; 9 epochs of 30 steps, so with min_epochs 1 and reduction factor 3 the rungs
    # fall at epochs 1, 3 and 9 and a 50-step warm-up (over by epoch 2) ends before the second.
    "tatoeba-sizes": {
        "file": "curves_tatoeba_sizes.csv",
        "task": tatoeba_task(max_pairs=6000, val_size=200),
        "model": {"n_heads": 4, "d_ff": 256},
        "train": {
            "batch_size": 32,
            "max_steps_per_epoch": 30,
            "bleu_samples": 16,
            "epochs": 9,
            "device": "cpu",
            "num_threads": 1,
        },
        "space": {
            "params": {
                "model.d_model": {"choices": [32, 64, 128]},
                "model.n_layers": {"type": "int", "low": 1, "high": 2},
                "model.dropout": {"choices": [0.0, 0.1]},
                "train.lr": {"choices": [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]},
                "train.warmup_steps": {"type": "int", "low": 0, "high": 50, "step": 50},
            }
        },
    },
}
# Issue 16: the same grid on half the data (a user's search on a subset, warm-starting the full
# one): the related table ``benchmarks/warm_start.py`` replays a real warm start from.
GRIDS["tatoeba-sizes-3k"] = {
    **GRIDS["tatoeba-sizes"],
    "file": "curves_tatoeba_sizes_3k.csv",
    "task": tatoeba_task(max_pairs=3000, val_size=200),
}


def grid_points(space_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of the space's cartesian product, in a fixed order."""
    from attntune.spaces.space import parse_space

    grid = parse_space(space_dict).grid()
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def base_config(spec: dict[str, Any]) -> Any:
    from attntune.model.config import RunConfig, load_dataclass

    task = dict(spec["task"])
    if task.get("path"):
        task["path"] = str((REPO / task["path"]).resolve())
    return load_dataclass(RunConfig, {"task": task, "model": spec["model"], "train": spec["train"]})


# ---------------------------------------------------------------------------------- workers

_DATA: Any = None
_BASE: Any = None


def _init_worker(spec: dict[str, Any]) -> None:
    global _DATA, _BASE
    import torch

    from attntune.model.data import load_task

    torch.set_num_threads(1)
    _BASE = base_config(spec)
    _DATA = load_task(_BASE.task)


class _Clock:
    """Reporter: keeps each epoch's metrics and wall seconds (training plus evaluation)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.info: dict[str, Any] = {}
        self.t = time.perf_counter()

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self.t = time.perf_counter()

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        now = time.perf_counter()
        self.rows.append({"epoch": epoch, **metrics, "seconds": round(now - self.t, 3)})
        self.t = now
        return False


def _train_one(job: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any], int, list[dict[str, float]]]:
    from attntune.model.train import train
    from attntune.spaces.space import make_config

    cid, values = job
    cfg = make_config(_BASE, values)
    clock = _Clock()
    result = train(cfg.model, cfg.train, _DATA, clock)
    return cid, values, result.n_params, clock.rows


# ---------------------------------------------------------------------------------- CSV


def header_lines(name: str, spec: dict[str, Any], n_points: int) -> list[str]:
    lines = [
        f"attntune learning curves '{name}': {n_points} configurations x {spec['train']['epochs']} epochs, "
        "one row per (config, epoch); recorded by benchmarks/record_curves.py",
        "task: " + json.dumps(spec["task"]),
        "model: " + json.dumps(spec["model"]),
        "train: " + json.dumps(spec["train"]),
        "space: " + json.dumps(spec["space"]),
    ]
    if spec["task"].get("attribution"):
        lines.append(
            "license: derived from "
            + spec["task"]["attribution"]
            + "; these curves carry the same licence and attribution"
        )
    return ["# " + ln for ln in lines]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def read_done(path: Path) -> dict[int, list[dict[str, str]]]:
    """Rows already recorded, by config id (only configs with every epoch)."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    by_id: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_id.setdefault(int(r["config"]), []).append(r)
    return by_id


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), required=True)
    p.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    p.add_argument(
        "--output", type=Path, default=None, help="CSV file (default benchmarks/data/curves_<grid>.csv)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="record only the first N configurations (smoke test)"
    )
    args = p.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = GRIDS[args.grid]
    out = args.output or DATA_DIR / spec["file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    points = grid_points(spec["space"])
    names = list(points[0])
    epochs = spec["train"]["epochs"]
    partial = out.with_suffix(".partial.csv")
    previous = read_done(partial if partial.exists() else out)
    done = {cid: rows for cid, rows in previous.items() if len(rows) == epochs}
    todo = [(i, v) for i, v in enumerate(points) if i not in done][: args.limit]
    print(
        f"{args.grid}: {len(points)} configs, {len(done)} already recorded, {len(todo)} to train", flush=True
    )

    fields = ["config", *names, "n_params", "epoch", *METRICS]
    t0 = time.perf_counter()
    # Partial progress goes to a side file so an interrupted run resumes; the final file is sorted.
    with partial.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for rows in done.values():
            w.writerows({k: r[k] for k in fields} for r in rows)
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, initializer=_init_worker, initargs=(spec,)) as pool:
            for k, (cid, values, n_params, rows) in enumerate(pool.imap_unordered(_train_one, todo), 1):
                for r in rows:
                    w.writerow(
                        {
                            "config": cid,
                            **values,
                            "n_params": n_params,
                            "epoch": r["epoch"],
                            **{m: _fmt(r.get(m)) for m in METRICS},
                        }
                    )
                f.flush()
                last = rows[-1]
                print(
                    f"[{k}/{len(todo)} {time.perf_counter() - t0:6.0f}s] config {cid} {values} "
                    f"val_loss {last['val_loss']:.3f} ({sum(r['seconds'] for r in rows):.1f}s)",
                    flush=True,
                )
    with partial.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: (int(r["config"]), int(r["epoch"])))
    with out.open("w", encoding="utf-8", newline="") as f:
        f.write("\n".join(header_lines(args.grid, spec, len(points))) + "\n")
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    partial.unlink()
    n_configs = len({r["config"] for r in rows})
    print(
        f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}: {n_configs} configs, "
        f"{len(rows)} rows in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
