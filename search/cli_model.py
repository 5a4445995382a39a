"""``attntune train`` and ``attntune translate``: the model commands, thin wrappers around
``attntune.search.train_cmd`` (which loads torch, so each imports it lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attntune.search.cli_base import TrackingOpt, UsageError, app


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
