"""Training loop: one model, one task, per-epoch metrics handed to an injected reporter.

Why a reporter instead of callbacks or logging: the search (Optuna/Ray) and the CLI need the same
loop; the search prunes by answering ``True`` from ``report``, the CLI prints a line. The metrics
follow docs/conventions.md: ``train_loss`` (the optimised loss, label smoothing included),
``val_loss`` (plain token cross-entropy without smoothing, so trials with different smoothing
compare), ``val_accuracy``, ``val_bleu``, ``lr``, ``tokens_per_s``, and the running totals ``step``
(optimizer steps so far) and ``tokens`` (target tokens trained so far).

An "epoch" of the loop is one pass over the training data, or a *round* of ``train.round_tokens``
tokens or ``round_steps`` steps; a production run may add a compute budget (``RunBudget``). How long a
run trains and at what rate (the batch stream, budgets, the schedule, the clock) lives in
``attntune.model.budget``; evaluation and the device rules in ``attntune.model.evaluate``. Their public
names are imported here too, where the search side and ``attntune train`` have always taken them.

Deterministic on CPU for a given ``train_cfg.seed``: the model, dropout and batch order are seeded,
and resuming restores the RNG state, so an interrupted and resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from attntune.model import mup
from attntune.model.budget import (  # noqa: F401 - token_budget_recipe: importers take it from here
    BatchStream,
    Clock,
    RunBudget,
    epoch_batches,
    lr_at,
    schedule_steps,
    token_budget_recipe,
)
from attntune.model.checkpoint import load_train_state, load_weights, save_checkpoint
from attntune.model.config import ConfigError, ModelConfig, TrainConfig, to_dict
from attntune.model.cost import n_params
from attntune.model.data import TaskData, batch_indices, collate
from attntune.model.evaluate import autocast_for, bleu_score, evaluate, resolve_device
from attntune.model.families import Seq2Seq, build_model

# 2: adds the running token count, the batch stream position and the loss average; a version-1
# state (epoch mode only) still resumes.
TRAIN_STATE_VERSION = 2
# Changing these between runs does not invalidate a checkpoint for resuming.
_RESUME_TOLERANT = ("epochs", "device", "num_threads", "bleu_samples", "max_decode_len", "beam_size", "bf16")
# TrainConfig keys newer than version-1 states; absent there, they had these values.
_ADDED_IN_V2 = {"round_tokens": None, "round_steps": None, "loss_ceiling": None}


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite, or stayed above ``train.loss_ceiling``."""


class LossCeiling:
    """Divergence by ceiling: an exponential moving average of the per-step training loss after warmup.

    Why an average and not the raw loss: a loss spike after warmup (the peak learning rate) is
    common and usually recovers; only a loss that *stays* high means the trial diverged. The
    average (alpha 0.1) starts at the first post-warmup step's loss; each step's loss enters it
    capped at twice the ceiling (the first one at the ceiling), so one step, however bad, moves it
    by at most 0.2 x ceiling, while a loss that stays above the ceiling lifts it over in a few steps.
    """

    ALPHA = 0.1

    def __init__(self, ceiling: float, warmup_steps: int, ema: float | None = None):
        self.ceiling = ceiling
        self.warmup_steps = warmup_steps
        self.ema = ema

    def update(self, step: int, loss: float) -> None:
        """Take step ``step``'s loss; raise DivergedError once the average is above the ceiling."""
        if step <= self.warmup_steps:
            return
        if self.ema is None:
            self.ema = min(loss, self.ceiling)
        else:
            self.ema += self.ALPHA * (min(loss, 2.0 * self.ceiling) - self.ema)
        if self.ema > self.ceiling:
            raise DivergedError(
                f"training loss moving average {self.ema:.4g} is above train.loss_ceiling {self.ceiling:g} "
                f"at step {step} (last loss {loss:.4g})"
            )


class Reporter(Protocol):
    """Receives progress; ``report`` returning True stops training after that epoch."""

    def start(self, info: dict[str, Any]) -> None: ...

    def report(self, epoch: int, metrics: dict[str, float]) -> bool: ...


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    model: Seq2Seq
    n_params: int
    info: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None  # "time_limit": the budget's time ran out before the recipe's end


def make_optimizer(model: Seq2Seq, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, LayerNorm parameters and nothing else skip weight decay; under µP the hidden
    matrices' groups carry their ``lr_mult`` (``mup.param_groups``), which the schedule multiplies."""
    groups = mup.param_groups(model, model.cfg, cfg)
    try:  # the fused kernel is ~3x faster than the per-parameter loop, on CPU too
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)


def run_config_dict(
    model_cfg: ModelConfig, train_cfg: TrainConfig, data: TaskData, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.yaml`` of a checkpoint: loadable by ``attntune train``; data credits in provenance."""
    prov = dict(provenance or {})
    prov["data"] = {
        "fingerprint": data.fingerprint,
        "license": data.license,
        "attribution": data.attribution,
        "src_vocab_size": data.src_vocab_size,
        "tgt_vocab_size": data.tgt_vocab_size,
    }
    return {
        "task": to_dict(data.config) if data.config is not None else {"name": data.name},
        "model": to_dict(model_cfg),
        "train": to_dict(train_cfg),
        "provenance": prov,
    }


def _resumable(state: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, data: TaskData) -> bool:
    if state.get("version") not in (1, TRAIN_STATE_VERSION) or state.get("data_fingerprint") != data.fingerprint:
        return False
    if {**to_dict(ModelConfig()), **(state.get("model") or {})} != to_dict(model_cfg):  # fields added later: defaults
        return False
    old = {k: v for k, v in {**_ADDED_IN_V2, **(state.get("train") or {})}.items() if k not in _RESUME_TOLERANT}
    new = {k: v for k, v in to_dict(train_cfg).items() if k not in _RESUME_TOLERANT}
    return old == new


@dataclass
class _Run:
    """One run's model, optimizer and counters, shared by set-up, resume, the epochs and the checkpoint.

    Why one object: the counters below are exactly what a checkpoint saves and a resume restores;
    keeping them together is what lets a resumed run continue bit-for-bit where it stopped.
    """

    model_cfg: ModelConfig
    cfg: TrainConfig
    data: TaskData
    device: torch.device
    model: Seq2Seq
    optimizer: torch.optim.AdamW
    n_params: int
    info: dict[str, Any]  # handed to ``Reporter.start`` and returned in ``TrainResult.info``
    steps_per_epoch: int  # batches of one epoch-mode epoch: min(batches, max_steps_per_epoch)
    total_steps: int | None  # of the whole run, for the learning-rate schedule (None: sized by the clock)
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0  # last completed epoch (or round)
    step: int = 0  # optimizer steps so far
    tokens: int = 0  # target tokens trained so far, padding excluded
    position: tuple[int, int] = (1, 0)  # where the batch stream starts (rounds only): (data epoch, batch)
    loss_ema: float | None = None  # where LossCeiling's average starts
    stream: BatchStream | None = None  # rounds only; None: each epoch is one pass over the data
    ceiling: LossCeiling | None = None
    budget: RunBudget | None = None
    clock: Clock | None = None  # with a time limit
    out_of_time: bool = False


@dataclass
class _EpochStats:
    """What one epoch's training leaves for its metrics."""

    loss_sum: float  # sum of each step's loss x its target tokens
    n_tokens: int  # target tokens trained in the epoch, padding excluded
    lr: float  # learning rate at the end of the epoch
    elapsed: float  # seconds of training (evaluation excluded)


def _check_max_len(model_cfg: ModelConfig, data: TaskData) -> None:
    """Refuse before training, not at the first too-long batch: the positional table is ``max_len`` long."""
    longest = max(max(len(s), len(t) - 1) for s, t in data.train)
    if longest > model_cfg.max_len:
        raise ConfigError(
            f"model.max_len: {model_cfg.max_len} is shorter than the longest training sequence "
            f"({longest} tokens); raise it or lower task.max_tokens"
        )


def _run_info(
    model_cfg: ModelConfig, count: int, device: torch.device, data: TaskData, cfg: TrainConfig
) -> dict[str, Any]:
    """The facts ``Reporter.start`` gets: a search logs them as trial attributes, the CLI prints them.
    Heads: the Transformer's; an RNN attends with one head of ``hidden``; the MLP has none (None)."""
    heads = {"transformer": (model_cfg.n_heads, model_cfg.head_dim), "rnn": (1, model_cfg.rnn_hidden)}
    n_heads, head_dim = heads.get(model_cfg.family, (None, None))
    return {
        "n_params": count,
        "family": model_cfg.family,
        "head_dim": head_dim,
        "n_heads": n_heads,
        "n_encoder_layers": model_cfg.n_encoder_layers,
        "n_decoder_layers": model_cfg.n_decoder_layers,
        "device": str(device),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "src_vocab_size": data.src_vocab_size,
        "tgt_vocab_size": data.tgt_vocab_size,
        "warmup_steps": cfg.warmup_steps,
    }


def _setup(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TaskData, budget: RunBudget | None = None) -> _Run:
    """Threads, device, the seeded model and its optimizer, and the schedule's length: a fresh run."""
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = resolve_device(train_cfg.device)
    _check_max_len(model_cfg, data)
    torch.manual_seed(train_cfg.seed)  # the model's initial weights, then dropout, follow from the seed
    model = build_model(model_cfg, data.src_vocab_size, data.tgt_vocab_size, pad_id=data.pad_id).to(device)
    count = sum(p.numel() for p in model.parameters())
    expected = n_params(model_cfg, data.src_vocab_size, data.tgt_vocab_size)
    assert count == expected, f"n_params formula {expected} != built model {count}"
    optimizer = make_optimizer(model, train_cfg)
    n_batches = len(batch_indices(data.train, train_cfg.batch_size, train_cfg.batch_unit))
    steps_per_epoch = min(n_batches, train_cfg.max_steps_per_epoch or n_batches)
    return _Run(
        model_cfg=model_cfg,
        cfg=train_cfg,
        data=data,
        device=device,
        model=model,
        optimizer=optimizer,
        n_params=count,
        info=_run_info(model_cfg, count, device, data, train_cfg),
        steps_per_epoch=steps_per_epoch,
        total_steps=schedule_steps(train_cfg, data, budget),
        budget=budget,
    )


def _resume(run: _Run, ckpt: Path) -> None:
    """Continue from ``ckpt``'s last completed epoch when it has the same model, data and recipe.

    Restores weights, optimizer, counters, history and the RNG state (dropout), so the run goes on
    exactly as if it had never stopped; a checkpoint that does not match is ignored with a warning.
    """
    state = load_train_state(ckpt)
    if state is None:
        return
    if not _resumable(state, run.model_cfg, run.cfg, run.data):
        # stacklevel 3: the warning points at the caller of train(), as it did before this helper
        warnings.warn(
            f"{ckpt}: checkpoint is from a different model, data or recipe; starting afresh", stacklevel=3
        )
        return
    load_weights(run.model, ckpt)
    run.optimizer.load_state_dict(state["optimizer"])
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.history = [dict(h) for h in state["history"]]
    if "tokens" in state:
        run.tokens, run.loss_ema = int(state["tokens"]), state.get("loss_ema")
        run.position = (int(state["stream"][0]), int(state["stream"][1]))
    else:  # a version-1 state (epoch mode): its epochs' target tokens, from their batches
        run.tokens = sum(
            len(run.data.train[i][1]) - 1
            for e in range(1, run.epoch + 1)
            for idx in epoch_batches(run.data, run.cfg, e, run.steps_per_epoch)
            for i in idx
        )
    torch.set_rng_state(state["rng_cpu"])
    if run.device.type == "cuda" and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    run.info["resumed_from_epoch"] = run.epoch


def _train_step(
    run: _Run, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, lr: float, epoch: int
) -> tuple[float, int]:
    """One optimizer step on one batch at learning rate ``lr``: (its loss, its target tokens).

    The loss is checked before ``backward`` so a NaN or a loss over the ceiling stops the trial before
    it can spoil the weights (and a checkpoint) any further.
    """
    cfg, pad = run.cfg, run.data.pad_id
    for g in run.optimizer.param_groups:  # scales each group's rate (µP: lr_mult), never overwrites it
        g["lr"] = lr * g.get("lr_mult", 1.0)
    with autocast_for(run.device, cfg.bf16):
        logits = run.model(src, tgt_in)  # (B, T, V)
    # (B*T, V) rows: log-softmax over a contiguous last dimension is ~10x faster than over dim 1.
    loss = F.cross_entropy(
        logits.float().flatten(0, 1),  # (B*T, V)
        tgt_out.flatten(),  # (B*T,)
        ignore_index=pad,
        label_smoothing=cfg.label_smoothing,
    )
    value = loss.item()
    if not math.isfinite(value):
        raise DivergedError(f"training loss became {value} at epoch {epoch}, step {run.step} (lr {lr:.3g})")
    if run.ceiling is not None:
        run.ceiling.update(run.step, value)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    return value, int(tgt_out.ne(pad).sum())


def _train_epoch(run: _Run, epoch: int) -> _EpochStats:
    """Epoch ``epoch``: one pass over its shuffled batches, or in round mode the next round of the stream.

    A round ends once it has trained ``round_tokens`` target tokens or ``round_steps`` steps, so
    models with different batch sizes get the same budget per reported epoch.
    """
    cfg = run.cfg
    run.model.train()
    batches: Iterable[list[int]]
    if run.stream is None:
        batches = epoch_batches(run.data, cfg, epoch, run.steps_per_epoch)
    else:
        batches, round_start = run.stream, run.step
    loss_sum, n_tokens = 0.0, 0
    t0 = time.perf_counter()
    max_tokens = run.budget.max_tokens if run.budget is not None else None
    lr = lr_at(max(run.step, 1), cfg, run.total_steps, run.clock.progress if run.clock else 0.0)
    for idx in batches:
        # src (B, S), tgt_in (B, T), tgt_out (B, T): tgt_in shifted right by one against tgt_out
        batch = collate(run.data.train, idx, run.data.pad_id)
        src, tgt_in, tgt_out = (t.to(run.device, non_blocking=True) for t in batch)
        if max_tokens is not None:
            tgt_out = _first_tokens(tgt_out, max_tokens - run.tokens - n_tokens, run.data.pad_id)
        run.step += 1
        floor = run.clock.schedule_progress(run.step, cfg.warmup_steps) if run.clock is not None else 0.0
        lr = lr_at(run.step, cfg, run.total_steps, floor)
        value, n = _train_step(run, src, tgt_in, tgt_out, lr, epoch)
        loss_sum += value * n
        n_tokens += n
        if run.stream is not None and _round_over(run, epoch, round_start, n_tokens):
            break
        if run.clock is not None and run.clock.expired():
            run.out_of_time = True
            break
    run.tokens += n_tokens
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # queued GPU work belongs to this epoch's time
    return _EpochStats(loss_sum=loss_sum, n_tokens=n_tokens, lr=lr, elapsed=time.perf_counter() - t0)


def _round_over(run: _Run, epoch: int, round_start: int, n_tokens: int) -> bool:
    """Whether round ``epoch`` has trained its tokens or steps (``n_tokens`` so far in it).

    Under a token budget the rounds end at cumulative targets (round k at k x round_tokens, the last
    at the budget), so the overshoot of one round's last batch does not add up over the run.
    """
    cfg = run.cfg
    if run.budget is not None and run.budget.max_tokens is not None:
        target = min(run.budget.max_tokens, epoch * (cfg.round_tokens or run.budget.max_tokens))
        return run.tokens + n_tokens >= target
    return n_tokens >= (cfg.round_tokens or math.inf) or run.step - round_start >= (cfg.round_steps or math.inf)


def _first_tokens(tgt_out: torch.Tensor, n: int, pad: int) -> torch.Tensor:
    """``tgt_out`` (B, T) with every target token after the first ``n`` (row by row) set to padding,
    so the loss and the token count take exactly ``n``; unchanged when it has no more than ``n``."""
    real = tgt_out.ne(pad)
    if int(real.sum()) <= n:
        return tgt_out
    keep = real.flatten().cumsum(0).le(n).view_as(real)
    return tgt_out.masked_fill(real & ~keep, pad)


def _epoch_metrics(run: _Run, stats: _EpochStats) -> dict[str, float]:
    """The epoch's metrics in the order of docs/conventions.md: evaluation first, then the running totals."""
    cfg = run.cfg
    val_loss, val_acc = evaluate(run.model, run.data.val, cfg, run.device, run.data.pad_id)
    metrics: dict[str, float] = {
        "train_loss": stats.loss_sum / max(stats.n_tokens, 1),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
    }
    if cfg.bleu_samples > 0:
        metrics["val_bleu"] = bleu_score(run.model, run.data, cfg.bleu_samples, cfg, run.device)
    metrics["lr"] = stats.lr
    metrics["tokens_per_s"] = stats.n_tokens / stats.elapsed if stats.elapsed > 0 else 0.0
    metrics["step"] = run.step
    metrics["tokens"] = run.tokens
    return metrics


def _save_epoch(run: _Run, ckpt: Path, provenance: dict[str, Any] | None) -> None:
    """Checkpoint after epoch ``run.epoch``: the weights, a loadable config, and all a resume needs."""
    data = run.data
    train_state = {
        "version": TRAIN_STATE_VERSION,
        "epoch": run.epoch,
        "step": run.step,
        "tokens": run.tokens,
        "stream": list(run.stream.position) if run.stream is not None else [run.epoch + 1, 0],
        "loss_ema": run.ceiling.ema if run.ceiling is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        "history": run.history,
        "model": to_dict(run.model_cfg),
        "train": to_dict(run.cfg),
        "data_fingerprint": data.fingerprint,
    }
    save_checkpoint(
        ckpt,
        run.model,
        run_config_dict(run.model_cfg, run.cfg, data, provenance),
        data.src_tok,
        data.tgt_tok,
        train_state=train_state,
        metadata={"epoch": str(run.epoch), "license": data.license, "attribution": data.attribution},
    )


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TaskData,
    reporter: Reporter | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    provenance: dict[str, Any] | None = None,
    budget: RunBudget | None = None,
) -> TrainResult:
    """Train ``model_cfg`` on ``data``; report metrics each epoch; checkpoint each epoch if asked.

    With ``round_tokens``/``round_steps`` an epoch is a round of that many target tokens/steps.
    ``budget`` (production runs) caps the run at exactly ``max_tokens`` target tokens (the recipe
    must count rounds in tokens: ``token_budget_recipe``) and/or at ``time_limit_s`` seconds; a run
    stopped by its time has ``stopped_by="time_limit"``.
    With ``resume`` and a checkpoint in ``checkpoint_dir`` from the same model, data and recipe,
    training continues after its last completed epoch (``epochs`` may have grown).
    Raises DivergedError as soon as the training loss is NaN or infinite, or once its post-warmup
    average is above ``loss_ceiling`` (see LossCeiling).
    """
    if budget is not None and budget.max_tokens is not None and train_cfg.round_tokens is None:
        raise ConfigError("a token budget needs train.round_tokens (see token_budget_recipe)")
    run = _setup(model_cfg, train_cfg, data, budget)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume:
        _resume(run, ckpt)
    if reporter is not None:
        reporter.start(dict(run.info))

    if train_cfg.round_tokens is not None or train_cfg.round_steps is not None:
        run.stream = BatchStream(data, train_cfg, run.steps_per_epoch, run.position)
    if train_cfg.loss_ceiling:
        run.ceiling = LossCeiling(train_cfg.loss_ceiling, train_cfg.warmup_steps, run.loss_ema)
    if budget is not None and budget.time_limit_s is not None:
        run.clock = Clock(budget.time_limit_s)
    stopped = False
    open_ended = budget is not None and budget.open_ended
    first = run.epoch + 1
    epochs = itertools.count(first) if open_ended else range(first, train_cfg.epochs + 1)
    for epoch in epochs:
        if run.clock is not None and epoch > first and run.clock.expired():  # the last one ended on time
            run.out_of_time = True
            break
        stats = _train_epoch(run, epoch)
        run.epoch = epoch
        t_eval = time.perf_counter()
        metrics = _epoch_metrics(run, stats)
        run.history.append(metrics)
        if ckpt is not None:
            _save_epoch(run, ckpt, provenance)
        if reporter is not None and reporter.report(epoch, dict(metrics)):
            stopped = True
            break
        if run.clock is not None:
            run.clock.reserve = time.perf_counter() - t_eval
        spent = budget is not None and budget.max_tokens is not None and run.tokens >= budget.max_tokens
        if run.out_of_time or spent:
            break
    model = run.model
    model.eval()
    return TrainResult(
        history=run.history,
        epochs_run=len(run.history),
        stopped_early=stopped,
        model=model,
        n_params=run.n_params,
        info=run.info,
        stopped_by="time_limit" if run.out_of_time and not stopped else None,
    )
