"""`attntune train` and `attntune translate`: one model from a config file, and using it.

The config file has the schema `attntune export` writes (task / model / train / provenance). Bad
input (missing or malformed file, unknown keys, bad data, a bad budget or checkpoint address) raises
ConfigError or DataError before anything is written; the CLI turns those into one line on stderr
and exit code 2.

``train`` may run on a compute budget (``--max-tokens``, ``--time-limit``; ``RunBudget`` in
``attntune.model.train``). Each run gets its own output folder: without ``--output``,
``attntune-runs/train-<config stem>``, or ``...-2``, ``-3`` when that one exists; an ``--output``
folder that already holds a run's checkpoint is refused.

``translate`` reads sentences from the command line, a file or stdin, translates them in batches
(``attntune.model.checkpoint.translate``) and writes one translation a line (or source<TAB>
translation); the checkpoint is a folder or an MLflow ``runs:/`` / ``models:/`` address.
"""

from __future__ import annotations

import csv
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import yaml
from rich.console import Console

from attntune.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    apply_overrides,
    file_not_found,
    load_run_config,
)
from attntune.model.data import DataError, load_task
from attntune.search.job import DEFAULT_OUTPUT_ROOT, parse_duration
from attntune.search.production import TrainingRun, budget_label, download_checkpoint, is_mlflow_address

METRIC_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s", "step", "tokens", "seconds",
]  # fmt: skip
CHECKPOINT_MARKERS = ("model.safetensors", "metrics.csv")  # a folder holding either holds a run


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of ``path``; problems become ConfigError naming the file and line."""
    if not path.is_file():
        raise ConfigError(file_not_found(path) if not path.exists() else "not a file", source=str(path))
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

    def __init__(
        self,
        out: Path,
        epochs: int | None,
        console: Any,
        max_tokens: int | None = None,
        time_limit_s: float | None = None,
        model: ModelConfig | None = None,
    ):
        self.out = out
        self.model = model  # what the model line describes (its family's own shape)
        self.epochs = epochs  # None: open-ended (a time limit alone)
        self.console = console
        self.max_tokens = max_tokens
        self.time_limit_s = time_limit_s
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.last = self.t0

    def start(self, info: dict[str, Any]) -> None:
        resumed = info.get("resumed_from_epoch")
        self.console.print(
            f"model: {info['n_params']:,} parameters, {describe_model(info, self.model)}; "
            f"{info['n_train']:,} training pairs; device {info['device']}"
            + (f"; resuming after epoch {resumed}" if resumed else "")
        )
        self.t0 = self.last = time.perf_counter()

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        now = time.perf_counter()
        row = {"epoch": epoch, **metrics, "seconds": round(now - self.last, 2)}
        self.last = now
        self.rows.append(row)
        bleu = f"  bleu {metrics['val_bleu']:5.2f}" if "val_bleu" in metrics else ""
        of = f"/{self.epochs}" if self.epochs is not None else ""
        budget = ""
        if self.max_tokens is not None and "tokens" in metrics:
            budget += f"  tokens {int(metrics['tokens']):,}/{self.max_tokens:,}"
        if self.time_limit_s is not None:
            budget += f"  [{_clock(now - self.t0)}/{_clock(self.time_limit_s)}]"
        self.console.print(
            f"epoch {epoch:>3}{of}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}{bleu}  lr {metrics['lr']:.2e}  "
            f"{metrics['tokens_per_s']:,.0f} tok/s  {row['seconds']:.1f}s{budget}"
        )
        write_metrics(self.out / "metrics.csv", self.rows)
        return False


def describe_model(info: dict[str, Any], m: ModelConfig | None) -> str:
    """``transformer (2+2 layers, 4 heads of 32)``, ``rnn (gru, 2+2 layers, hidden 128, dot attention)``,
    ``mlp (1+1 layers, token mixing 64)``: the family and the shape that family reads; heads only
    where the model has them (an mlp has none)."""
    family = info.get("family") or (m.family if m else "transformer")
    parts = [f"{info['n_encoder_layers']}+{info['n_decoder_layers']} layers"]
    if m is not None and family == "rnn":
        parts = [m.rnn_cell, *parts, f"hidden {m.rnn_hidden}"]
        parts += ["bidirectional encoder"] if m.bidirectional else []
        parts.append(f"{m.attention} attention")
    elif m is not None and family == "mlp":
        parts.append(f"token mixing {m.mixing_dim}")
    elif family == "transformer" and info.get("n_heads") is not None:
        parts.append(f"{info['n_heads']} heads of {info['head_dim']}")
    return f"{family} ({', '.join(parts)})"


def _clock(seconds: float) -> str:
    """1:05:07 / 8:00 / 0:05."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(k, r.get(k, "")) for k in METRIC_COLUMNS})
    tmp.replace(path)


def _csv_value(key: str, v: Any) -> Any:
    return int(v) if key in ("step", "tokens") and isinstance(v, float) and v.is_integer() else v


# --------------------------------------------------------------------------- train


def parse_budget(max_tokens: int | None, time_limit: str | None) -> tuple[int | None, float | None]:
    """``--max-tokens`` and ``--time-limit`` (``90s``, ``8m``, ``2h``, or seconds) checked: (tokens, seconds)."""
    problems = []
    if max_tokens is not None and max_tokens <= 0:
        problems.append(f"--max-tokens: must be > 0, got {max_tokens}")
    seconds = None
    if time_limit is not None:
        try:
            seconds = parse_duration(time_limit)
        except ValueError as e:
            problems.append(f"--time-limit: {e}")
        else:
            if seconds is None or not seconds > 0:
                problems.append(f"--time-limit: must be > 0, got {time_limit!r}")
    if problems:
        raise ConfigError(problems)
    return max_tokens, seconds


def output_folder(output: Path | None, config: Path) -> tuple[Path, str | None]:
    """Where this run writes, and a note when it is not the usual folder.

    Without ``output``: ``attntune-runs/train-<stem>``, or the first free ``...-2``, ``-3``; the folder is
    created here (claimed, so two runs started together never share one). With ``output``: that folder,
    unless it already holds a run's checkpoint (refused: an earlier model is never replaced silently).
    """
    if output is not None:
        out = Path(output)
        if out.exists() and not out.is_dir():
            raise ConfigError("exists and is not a folder", source=f"--output {out}")
        held = [name for name in CHECKPOINT_MARKERS if (out / name).exists()]
        if held:
            raise ConfigError(
                f"already holds a run ({held[0]}); choose a new folder or remove it "
                "(without --output every run gets a folder of its own)",
                source=f"--output {out}",
            )
        return out, None
    root = Path(DEFAULT_OUTPUT_ROOT)
    first = root / f"train-{config.stem}"
    for n in itertools.count(1):
        out = first if n == 1 else root / f"train-{config.stem}-{n}"
        try:
            out.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return out, (f"{first} holds an earlier run; this one writes to {out}" if n > 1 else None)
    raise AssertionError("unreachable")


def run_train(
    config: Path,
    epochs: int | None = None,
    output: Path | None = None,
    tracking_uri: str | None = None,
    register_as: str | None = None,
    track: bool = True,
    max_tokens: int | None = None,
    time_limit: str | None = None,
) -> Path:
    """Train the model ``config`` describes; write checkpoint + metrics.csv under ``output``.

    A relative ``task.path`` is looked up in the current folder first, then next to the config file.
    ``max_tokens``: exactly that many target tokens, reported in rounds (``token_budget_recipe``).
    ``time_limit``: stop at a step boundary when it runs out (``RunBudget``); alone, it replaces the
    config's ``train.epochs`` (with ``epochs`` or ``max_tokens``, whichever ends first).
    Returns the output folder.
    """
    config = Path(config)
    max_tokens, time_limit_s = parse_budget(max_tokens, time_limit)
    run = load_config_file(config, epochs)
    if register_as and not track:
        raise ConfigError("--register-as needs tracking (drop --no-tracking)")
    if output is not None:
        output_folder(output, config)  # refuse before loading data
    data = load_task(run.task, base_dir=config.parent)
    run, budget = _with_budget(run, config, epochs, max_tokens, time_limit_s)
    budget_info = {"max_tokens": max_tokens, "time_limit_s": time_limit_s, "open_ended": budget.open_ended}
    console = Console(highlight=False, soft_wrap=True)
    _print_plan(console, run, data, budget)
    # Checks the store first (exit 2 before any training); the run ends FAILED if training raises.
    tracking = TrainingRun(run, data, tracking_uri, config_path=config, budget=budget_info) if track else None
    out, note = output_folder(output, config)
    if note:
        console.print(note)
    printer = _EpochPrinter(
        out, None if budget.open_ended else run.train.epochs, console, max_tokens=max_tokens,
        time_limit_s=time_limit_s, model=run.model,
    )  # fmt: skip
    provenance = dict(run.provenance or {})
    if max_tokens is not None or time_limit_s is not None:
        provenance["budget"] = {k: v for k, v in budget_info.items() if v}
    result = _train_tracked(
        run, data, budget, printer, tracking, out=out, provenance=provenance or None, register_as=register_as,
        console=console, config=config,
    )  # fmt: skip
    _print_done(console, result, out, time_limit)
    return out


def _with_budget(
    run: RunConfig, config: Path, epochs: int | None, max_tokens: int | None, time_limit_s: float | None
) -> tuple[RunConfig, Any]:
    """The run's recipe under ``--max-tokens`` (rounds of tokens) and its ``RunBudget``."""
    from attntune.model.train import (  # torch: only once the input is known good
        RunBudget,
        token_budget_recipe,
    )

    if max_tokens is not None:
        try:
            run = replace(run, train=token_budget_recipe(run.train, max_tokens, rounds=epochs))
        except ConfigError as e:
            raise e.with_source(str(config)) from None
    open_ended = time_limit_s is not None and max_tokens is None and epochs is None
    return run, RunBudget(max_tokens=max_tokens, time_limit_s=time_limit_s, open_ended=open_ended)


def _print_plan(console: Any, run: RunConfig, data: Any, budget: Any) -> None:
    """The task's data and, under a budget, what the budget means for this run."""
    from attntune.model.train import schedule_steps  # torch: loaded already (_with_budget)

    console.print(
        f"task {run.task.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test pairs, "
        f"vocab {data.src_vocab_size:,} -> {data.tgt_vocab_size:,}"
        + (f"  [{data.attribution}]" if data.attribution else "")
    )
    if budget.max_tokens is not None or budget.time_limit_s is not None:
        console.print(_budget_line(run, budget, schedule_steps(run.train, data, budget)))


def _train_tracked(
    run: RunConfig,
    data: Any,
    budget: Any,
    printer: _EpochPrinter,
    tracking: TrainingRun | None,
    *,
    out: Path,
    provenance: dict[str, Any] | None,
    register_as: str | None,
    console: Any,
    config: Path,
) -> Any:
    """Train, logging to ``tracking`` (when on) and registering the model as ``register_as``; a
    diverged run ends the command with exit code 1."""
    from attntune.model.train import DivergedError, train  # torch: loaded already (_with_budget)

    try:
        with tracking or nullcontext() as tr:
            result = train(
                run.model,
                run.train,
                data,
                tr.reporter(printer) if tr else printer,
                checkpoint_dir=out,
                resume=False,
                provenance=provenance,
                budget=budget,
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
    return result


def _print_done(console: Any, result: Any, out: Path, time_limit: str | None) -> None:
    """The run's last metrics and where its checkpoint and metrics.csv are."""
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("val_loss", "val_accuracy", "val_bleu") if k in last)
    tokens = f", {int(last['tokens']):,} tokens" if "tokens" in last else ""
    stop = ""
    if result.stopped_by == "time_limit":
        stop = f" (time limit {time_limit}; the last one partial)"
    epochs_run = f"{result.epochs_run} epoch{'s' if result.epochs_run != 1 else ''}"
    console.print(f"done: {epochs_run}{stop}{tokens}{'; ' + summary if summary else ''}")
    console.print(f"checkpoint: {out}")
    console.print(f"metrics:    {out / 'metrics.csv'}")


def _budget_line(run: RunConfig, budget: Any, steps: int | None) -> str:
    """What the budget means for this run, printed before training."""
    t = run.train
    label = budget_label(
        run, {"max_tokens": budget.max_tokens, "time_limit_s": budget.time_limit_s, "open_ended": budget.open_ended}
    )
    parts = [f"budget {label}:"]
    if budget.max_tokens is not None:
        rounds = f"{t.epochs} rounds" if t.epochs > 1 else "1 round"
        parts.append(f"exactly {budget.max_tokens:,} target tokens in {rounds} of {t.round_tokens:,}")
    elif budget.open_ended:
        parts.append("epochs until the time runs out (train.epochs does not apply)")
    else:
        parts.append(f"at most {t.epochs} epochs")
    if budget.time_limit_s is not None:
        parts.append(f"stops at a step boundary {'when' if budget.open_ended else 'if'} the time runs out")
    schedule = f"{t.schedule} schedule"
    if t.schedule == "cosine":
        over = [f"{steps:,} steps" if steps is not None else None, "the time" if budget.time_limit_s else None]
        schedule += " over " + " or ".join(x for x in over if x) + (", whichever ends first" if all(over) else "")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:]) + f"; {schedule}"


# --------------------------------------------------------------------------- translate


def run_translate(
    checkpoint: str | Path,
    texts: list[str] | None = None,
    beam_size: int = 1,
    *,
    input_path: str | None = None,
    output: Path | None = None,
    fmt: str = "text",
    batch_size: int = 64,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> int:
    """Translate ``texts`` or the lines of ``input_path`` (a file, or ``-`` for stdin); returns the count.

    Writes one translation a line (``fmt="tsv"``: source<TAB>translation) to ``output`` or stdout. A
    file is written under a temporary name and renamed at the end, so a failed run leaves nothing.
    An empty input line gives an empty translation (the lines stay aligned). ``checkpoint`` is a
    folder or an MLflow address (``runs:/...``, ``models:/NAME/VERSION``; ``download_checkpoint``).
    """
    texts = list(texts or [])
    problems = []
    if beam_size < 1:
        problems.append(f"--beam-size: must be >= 1, got {beam_size}")
    if batch_size < 1:
        problems.append(f"--batch-size: must be >= 1, got {batch_size}")
    if fmt not in ("text", "tsv"):
        problems.append(f"--format: {fmt!r} is not a format (valid: text, tsv)")
    if problems:
        raise ConfigError(problems)
    if texts and input_path is not None:
        raise ConfigError("give sentences or --input, not both")
    if not texts and input_path is None:
        raise ConfigError("nothing to translate: give sentences, or --input FILE (--input - reads stdin)")
    source = Path(input_path) if input_path not in (None, "-") else None
    if source is not None and not source.is_file():
        raise DataError(f"{source}: {file_not_found(source) if not source.exists() else 'not a file'}")
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise ConfigError("is a folder; give a file name", source=f"--output {output}")
        if not output.parent.is_dir():
            raise ConfigError(f"folder {output.parent} does not exist", source=f"--output {output}")
        if source is not None and output.resolve() == source.resolve():
            raise ConfigError("is the input file; write the translations elsewhere", source=f"--output {output}")
    from attntune.model.checkpoint import load_checkpoint, translate  # torch: once the input is checked
    from attntune.model.train import resolve_device  # torch: once the input is checked

    if is_mlflow_address(str(checkpoint)):
        with tempfile.TemporaryDirectory(prefix="attntune-checkpoint-") as tmp:
            folder = download_checkpoint(str(checkpoint), tracking_uri, tmp)
            model, _, src_tok, tgt_tok = load_checkpoint(folder, device=resolve_device(device))
    else:
        model, _, src_tok, tgt_tok = load_checkpoint(checkpoint, device=resolve_device(device))

    total = len(texts) if texts else (_count_lines(source) if source is not None else None)
    lines = iter(texts) if texts else _read_lines(source)
    chunk_size = max(batch_size * 16, 1024)
    count = 0
    with _progress(total, batch_size) as advance, _open_output(output) as out:
        while True:
            chunk = list(itertools.islice(lines, chunk_size))
            if not chunk:
                break
            todo = [i for i, s in enumerate(chunk) if s.strip()]
            done = translate(
                model, src_tok, tgt_tok, [chunk[i] for i in todo], beam_size=beam_size, batch_size=batch_size,
                progress=advance,
            )  # fmt: skip
            got = [""] * len(chunk)
            for i, t in zip(todo, done, strict=True):
                got[i] = t
            advance(len(chunk) - len(todo))
            for s, t in zip(chunk, got, strict=True):
                out.write(f"{s}\t{t}\n" if fmt == "tsv" else f"{t}\n")
            out.flush()
            count += len(chunk)
    return count


def _read_lines(path: Path | None) -> Iterator[str]:
    """Lines of ``path`` (stdin when None) without their line ends; undecodable bytes are a DataError."""
    name = str(path) if path is not None else "<stdin>"
    f = path.open("rb") if path is not None else sys.stdin.buffer
    try:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{name}:{number}: undecodable bytes (not UTF-8, byte {e.start})") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield line.rstrip("\r\n")
    finally:
        if path is not None:
            f.close()


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


class _open_output:
    """stdout, or a file written under a temporary name and renamed when all went well."""

    def __init__(self, path: Path | None):
        self.path = path
        self.tmp: Path | None = None
        self.f: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(name)
        self.f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        return self.f

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.f is None or self.tmp is None:
            return
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class _progress:
    """A rich progress bar on stderr for inputs longer than one batch, only when stderr is a terminal
    (pipes, logs and tests see nothing). Yields ``advance(n)``."""

    def __init__(self, total: int | None, batch_size: int):
        self.show = sys.stderr.isatty() and (total is None or total > batch_size)
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.show:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("translating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.bar.start()
        task = self.bar.add_task("translate", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
