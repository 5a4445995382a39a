"""Helpers shared by the Tatoeba benchmarks that drive the real ``attntune`` CLI.

Used by ``tatoeba_payoff.py`` (does the search pay off?) and ``families.py`` (is a Transformer the
right model at this budget?): the task (``examples/train_tatoeba.yaml``), running the CLI with its
output kept in a log, the held-out check of a task section, training one config and seed with
``attntune train`` (kept on record for ``--reuse``), and held-out BLEU of a checkpoint.

Held-out BLEU: greedy translations of the task's test split (``TaskData.test_text``), sacrebleu corpus
BLEU (13a tokenisation, lower-cased), as ``tatoeba_baseline.py`` does. Why that split is held out is
explained in ``tatoeba_payoff.py``'s docstring.

Data: Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki. Every file written from it here
(records of held-out BLEU) carries that attribution.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from sacrebleu.metrics import BLEU

from attntune.model.checkpoint import load_checkpoint, translate
from attntune.model.config import TaskConfig, load_dataclass
from attntune.model.data import TaskData

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "train_tatoeba.yaml"
ATTRIBUTION = "Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki"
THREADS = 2  # a production run's threads (one run at a time)


class Settings(Protocol):
    """What these helpers read of a benchmark's settings (each script's own ``Settings`` dataclass)."""

    @property
    def out(self) -> Path: ...  # the benchmark's folder: runs/, logs/ and records go under it

    @property
    def reuse(self) -> bool: ...  # continue an earlier benchmark there

    @property
    def tracking_uri(self) -> str: ...

    @property
    def max_pairs(self) -> int | None: ...  # task.max_pairs for everything (None: all pairs)


# --------------------------------------------------------------------------- files and the CLI


def attntune_cli() -> str:
    beside = Path(sys.executable).parent / "attntune"
    found = str(beside) if beside.exists() else shutil.which("attntune")
    if not found:
        raise SystemExit("error: the attntune CLI is not installed next to this Python nor on PATH")
    return found


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_cli(args: list[str], cwd: Path, log: Path) -> float:
    """Run ``attntune ARGS`` in ``cwd``, its output indented here and kept in ``log``; the wall seconds.

    A non-zero exit stops the benchmark (``--reuse`` continues it once the cause is fixed).
    """
    print(f"$ attntune {shlex.join(args)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with (
        log.open("w", encoding="utf-8") as f,
        subprocess.Popen(
            [attntune_cli(), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            print(f"    {line.rstrip()}", flush=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: attntune {args[0]} exited with {proc.returncode} (log: {log})")
    return wall


def train_options() -> set[str]:
    """The option names ``attntune train --help`` lists (the production budget needs some of them)."""
    env = {**os.environ, "COLUMNS": "200"}
    text = subprocess.run([attntune_cli(), "train", "--help"], capture_output=True, text=True, env=env).stdout
    return set(re.findall(r"--[a-z][a-z-]+", text))


# --------------------------------------------------------------------------- configs


def resolve_data_path(path: str) -> str:
    """The default's relative data path, made absolute (the CLI runs in the output folder)."""
    p = Path(path)
    for candidate in (p, Path.cwd() / p, ROOT / p, DEFAULT_CONFIG.parent / p):
        if candidate.exists():
            return str(candidate.resolve())
    raise SystemExit(f"error: {DEFAULT_CONFIG}: task.path {path}: not found (get the Tatoeba data first)")


def default_doc(s: Settings) -> dict[str, Any]:
    """``examples/train_tatoeba.yaml`` with an absolute data path (and ``max_pairs`` if asked)."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["task"]["path"] = resolve_data_path(doc["task"]["path"])
    if s.max_pairs is not None:
        doc["task"]["max_pairs"] = s.max_pairs
    return doc


def same_task(expected: dict[str, Any], doc: dict[str, Any], what: str) -> None:
    """Assert that ``doc``'s task section is the default's, so its test split is the held-out set."""
    want = load_dataclass(TaskConfig, expected, "task")
    got = load_dataclass(TaskConfig, doc.get("task") or {}, "task")
    if got != want:  # not `assert`: this check must survive python -O
        raise SystemExit(
            f"error: {what}: its task section differs from the default's, so its test split is not held out"
        )


# --------------------------------------------------------------------------- runs and held-out BLEU


def trial_states(results_csv: Path) -> dict[str, Any]:
    """A search's trials by state (its ``results.csv``) and their training seconds."""
    with results_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    states = Counter(r["state"] for r in rows)
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    return {"n": len(rows), "states": dict(sorted(states.items())), "trial_seconds": sum(seconds)}


@dataclass
class Run:
    """One production run (``attntune train`` of one config and seed) and its figures."""

    config: str
    seed: int
    folder: Path
    wall_s: float = 0.0
    train_s: float = 0.0
    val_loss: float = float("nan")
    epochs: int = 0
    bleu: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def train_run(s: Settings, name: str, seed: int, config: Path, extra_args: list[str]) -> Run:
    """``attntune train`` of one config and seed (unless finished before); its training figures."""
    folder = s.out / "runs" / f"{name}-seed{seed}"
    record = folder / "run.json"
    args = ["train", str(config), "--output", str(folder), "--tracking-uri", s.tracking_uri, *extra_args]
    recipe = {"args": args, "config": config.read_text(encoding="utf-8")}
    done = read_json(record) if s.reuse else None
    if done is not None and done.get("recipe") != recipe:
        print(f"train {name} seed {seed}: its config or options changed since {record}: training again")
        done = None
    if done is None:
        shutil.rmtree(folder, ignore_errors=True)
        done = {
            "wall_s": run_cli(args, s.out, s.out / "logs" / f"train-{name}-seed{seed}.log"),
            "recipe": recipe,
        }
        write_json(record, done)
    else:
        print(f"train {name} seed {seed}: reused ({record})")
    with (folder / "metrics.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return Run(
        name,
        seed,
        folder,
        wall_s=done["wall_s"],
        train_s=sum(float(r["seconds"]) for r in rows),
        val_loss=float(rows[-1]["val_loss"]),
        epochs=len(rows),
    )


def heldout_bleu(run: Run, data: TaskData, expected_task: dict[str, Any]) -> None:
    """Greedy translations of the held-out pairs by ``run``'s checkpoint; corpus BLEU (cached per run)."""
    record = run.folder / "heldout.json"
    done = read_json(record)
    if done is None:
        model, run_config, src_tok, tgt_tok = load_checkpoint(run.folder)
        same_task(expected_task, run_config, f"checkpoint {run.folder}")
        sources, refs = [s for s, _ in data.test_text], [t for _, t in data.test_text]
        t0 = time.perf_counter()
        with torch.inference_mode():
            hyps = translate(model, src_tok, tgt_tok, sources, batch_size=64)
        metric = BLEU(lowercase=True, tokenize="13a")
        score = metric.corpus_score(hyps, [refs])
        done = {
            "bleu": score.score,
            "signature": str(metric.get_signature()),
            "n_pairs": len(refs),
            "decode_s": time.perf_counter() - t0,
            "examples": list(zip(sources, hyps, refs, strict=True))[:3],
            "data_attribution": ATTRIBUTION,
        }
        write_json(record, done)
    run.bleu = done["bleu"]
    run.extra = done


# --------------------------------------------------------------------------- figures


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def fmt_spread(x: dict[str, Any], digits: int = 2) -> str:
    std = "n/a" if x["std"] is None else f"{x['std']:.{digits}f}"
    return f"{x['mean']:.{digits}f} (std {std}, min-max {x['min']:.{digits}f}..{x['max']:.{digits}f})"
