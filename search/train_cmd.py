"""`attntune train` and `attntune translate`: one model from a config file, and using it.

The config file has the schema `attntune export` writes (task / model / train / provenance). Bad
input (missing or malformed file, unknown keys, bad data) raises ConfigError or DataError before
anything is written; the CLI turns those into one line on stderr and exit code 2.
"""

from __future__ import annotations

import csv
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from attntune.model.config import ConfigError, RunConfig, apply_overrides, load_run_config
from attntune.model.data import load_task
from attntune.search.production import TrainingRun

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s", "seconds"]


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of ``path``; problems become ConfigError naming the file and line."""
    if not path.is_file():
        raise ConfigError("file not found" if not path.exists() else "not a file", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", source=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "python/" in str(e) or "could not determine a constructor" in str(e):
            problem = f"{problem} (only plain YAML is accepted; Python tags are refused)"
        raise ConfigError(f"{where}malformed YAML: {problem}", source=str(path)) from None


def load_config_file(config: Path, epochs: int | None = None) -> RunConfig:
    data = read_yaml(config)
    run = load_run_config(data, source=str(config))
    if epochs is not None:
        try:
            run = apply_overrides(run, {"train.epochs": epochs})
        except ConfigError as e:
            raise ConfigError([p.replace("train.epochs", "--epochs") for p in e.problems]) from None
    return run


class _EpochPrinter:
    """Reporter that prints one line per epoch and rewrites metrics.csv after each."""

    def __init__(self, out: Path, epochs: int, console: Any):
        self.out = out
        self.epochs = epochs
        self.console = console
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.last = self.t0

    def start(self, info: dict[str, Any]) -> None:
        resumed = info.get("resumed_from_epoch")
        self.console.print(
            f"model: {info['n_params']:,} parameters, {info['n_encoder_layers']}+{info['n_decoder_layers']} layers, "
            f"{info['n_heads']} heads of {info['head_dim']}; {info['n_train']:,} training pairs; device {info['device']}"
            + (f"; resuming after epoch {resumed}" if resumed else "")
        )

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        now = time.perf_counter()
        row = {"epoch": epoch, **metrics, "seconds": round(now - self.last, 2)}
        self.last = now
        self.rows.append(row)
        bleu = f"  bleu {metrics['val_bleu']:5.2f}" if "val_bleu" in metrics else ""
        self.console.print(
            f"epoch {epoch:>3}/{self.epochs}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}{bleu}  lr {metrics['lr']:.2e}  "
            f"{metrics['tokens_per_s']:,.0f} tok/s  {row['seconds']:.1f}s"
        )
        write_metrics(self.out / "metrics.csv", self.rows)
        return False


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
    tmp.replace(path)


def run_train(
    config: Path,
    epochs: int | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
    register_as: str | None = None,
    track: bool = True,
) -> Path:
    """Train the model ``config`` describes; write checkpoint + metrics.csv under ``output``.

    A relative ``task.path`` is looked up in the current folder first, then next to the config file.
    Returns the output folder.
    """
    config = Path(config)
    run = load_config_file(config, epochs)
    data = load_task(run.task, base_dir=config.parent)
    from attntune.model.train import DivergedError, train  # torch: only once the input is known good
    out = Path(output) if output is not None else Path("attntune-runs") / f"train-{config.stem}"
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"task {run.task.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test pairs, "
        f"vocab {data.src_vocab_size:,} -> {data.tgt_vocab_size:,}"
        + (f"  [{data.attribution}]" if data.attribution else "")
    )
    printer = _EpochPrinter(out, run.train.epochs, console)
    if register_as and not track:
        raise ConfigError("--register-as needs tracking (drop --no-tracking)")
    # Checks the store first (exit 2 before any training); the run ends FAILED if training raises.
    tracking = TrainingRun(run, data, tracking_uri, config_path=config) if track else None
    try:
        with tracking or nullcontext() as tr:
            result = train(
                run.model,
                run.train,
                data,
                tr.reporter(printer) if tr else printer,
                checkpoint_dir=out,
                resume=False,
                provenance=run.provenance,
            )
            if tr:
                record = tr.finish(result, out, register_as=register_as)
                console.print(
                    f"MLflow run {record.run_id}"
                    + (f"; registered {record.registry_uri}" if record.registry_uri else "")
                )
    except DivergedError as e:
        print(f"error: {config}: training diverged: {e}", file=sys.stderr)
        import typer

        raise typer.Exit(1) from None
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("val_loss", "val_accuracy", "val_bleu") if k in last)
    console.print(f"done: {result.epochs_run} epochs{'; ' + summary if summary else ''}")
    console.print(f"checkpoint: {out}")
    console.print(f"metrics:    {out / 'metrics.csv'}")
    return out


def run_translate(checkpoint: Path, texts: list[str], beam_size: int = 1) -> list[str]:
    """Print (and return) one translation per input sentence."""
    from attntune.model.checkpoint import load_checkpoint, translate  # torch: once the input is checked

    if beam_size < 1:
        raise ConfigError(f"--beam-size: must be >= 1, got {beam_size}")
    model, _, src_tok, tgt_tok = load_checkpoint(checkpoint)
    out = translate(model, src_tok, tgt_tok, list(texts), beam_size=beam_size)
    for line in out:
        print(line)
    return out
