"""Training loop: one model, one task, per-epoch metrics handed to an injected reporter.

Why a reporter instead of callbacks or logging: the search (Optuna/Ray) and the CLI need the same
loop; the search prunes by answering ``True`` from ``report``, the CLI prints a line. The metrics
follow docs/conventions.md: ``train_loss`` (the optimised loss, label smoothing included),
``val_loss`` (plain token cross-entropy without smoothing, so trials with different smoothing
compare), ``val_accuracy``, ``val_bleu``, ``lr``, ``tokens_per_s``, and the running totals ``step``
(optimizer steps so far) and ``tokens`` (target tokens trained so far).

An "epoch" of the loop is one pass over the training data unless ``train_cfg.round_tokens`` or
``round_steps`` is set: then it is a *round* of that many target tokens (or optimizer steps) drawn
from a continuing stream of shuffled batches, so models with different batch sizes get the same
budget and a search places its rungs in tokens.

A production run may add a compute budget (``RunBudget``, ``attntune train --max-tokens/--time-limit``):
exactly ``max_tokens`` target tokens (the last batch is cut to fit; the schedule's length is the exact
step count of that many tokens), and/or a ``time_limit_s`` after which training stops at the next step
boundary, with a cosine schedule that decays over the time (see ``_Clock``).

Deterministic on CPU for a given ``train_cfg.seed``: the model, dropout and batch order are seeded,
and resuming restores the RNG state, so an interrupted and resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import sacrebleu
import torch
import torch.nn.functional as F

from attntune.model.checkpoint import load_train_state, load_weights, save_checkpoint
from attntune.model.config import ConfigError, ModelConfig, TrainConfig, to_dict
from attntune.model.cost import n_params
from attntune.model.data import Pair, TaskData, batch_indices, collate
from attntune.model.decoding import greedy_decode
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


def _epoch_batches(data: TaskData, cfg: TrainConfig, epoch: int, per_epoch: int) -> list[list[int]]:
    """Data epoch ``epoch``'s shuffled batches (seeded by the recipe's seed and the epoch), cut to
    ``per_epoch``: the same in epoch mode, in a round's stream and when a resume recounts tokens."""
    seed = cfg.seed * 100_003 + epoch
    return batch_indices(data.train, cfg.batch_size, cfg.batch_unit, shuffle=True, seed=seed)[:per_epoch]


class _BatchStream:
    """Training batches epoch after epoch of the data, each data epoch reshuffled with the seed an
    epoch-mode run uses for it; ``position`` (data epoch, next batch) is all a resume needs."""

    def __init__(self, data: TaskData, cfg: TrainConfig, per_epoch: int, position: tuple[int, int] = (1, 0)):
        self.data, self.cfg, self.per_epoch = data, cfg, per_epoch
        self.data_epoch, self.index = position
        self._batches: list[list[int]] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.data_epoch, self.index

    def __iter__(self) -> _BatchStream:
        return self

    def __next__(self) -> list[int]:
        if self._batches is None or self.index >= len(self._batches):
            if self._batches is not None:
                self.data_epoch, self.index = self.data_epoch + 1, 0
            self._batches = _epoch_batches(self.data, self.cfg, self.data_epoch, self.per_epoch)
        idx = self._batches[self.index]
        self.index += 1
        return idx


@dataclass(frozen=True)
class RunBudget:
    """A production run's compute budget, on top of its recipe (``attntune train --max-tokens/--time-limit``).

    ``max_tokens``: train exactly this many target tokens (padding excluded), in rounds of
    ``train.round_tokens`` (``token_budget_recipe`` sets them); the batch that crosses the budget is cut
    to the tokens left, and the learning-rate schedule spans the exact number of steps those tokens take.

    ``time_limit_s``: stop at the first step boundary once the time left is what the last evaluation and
    checkpoint took (so the final ones end about on time); that last, partial epoch is evaluated,
    reported and checkpointed as usual. The clock starts with training (data loading and MLflow logging
    are not counted). A cosine schedule decays by the larger of its step progress and the share of the
    time used after warm-up, so it reaches 0 when the time runs out whichever budget binds; warm-up,
    ``inverse_sqrt`` and ``constant`` are the recipe's. ``open_ended``: the time limit alone bounds the
    run (``train.epochs`` does not); a round recipe (``round_tokens``/``round_steps``) still sets what one
    reported epoch is.
    """

    max_tokens: int | None = None
    time_limit_s: float | None = None
    open_ended: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens is not None and self.max_tokens <= 0:
            problems.append(f"max_tokens: must be > 0, got {self.max_tokens}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            problems.append(f"time_limit: must be > 0, got {self.time_limit_s}")
        if self.open_ended and (self.time_limit_s is None or self.max_tokens is not None):
            problems.append("open_ended: only a time limit alone leaves the number of epochs open")
        if problems:
            raise ConfigError(problems)


def token_budget_recipe(cfg: TrainConfig, max_tokens: int, rounds: int | None = None) -> TrainConfig:
    """The recipe of a run of exactly ``max_tokens`` target tokens: reported in rounds of tokens.

    A recipe with ``round_tokens`` (a config exported from a token-budget search) keeps its round size
    unless ``rounds`` is given; otherwise ``rounds`` (default ``train.epochs``) rounds of
    ceil(max_tokens / rounds) tokens. ``epochs`` becomes the number of rounds.
    """
    if max_tokens <= 0:
        raise ConfigError(f"max_tokens: must be > 0, got {max_tokens}")
    if cfg.round_steps is not None:
        raise ConfigError(
            f"train.round_steps: {cfg.round_steps} counts rounds in steps; a token budget needs rounds in "
            "tokens (remove train.round_steps)"
        )
    if cfg.round_tokens is not None and rounds is None:
        size = cfg.round_tokens
    else:
        size = -(-max_tokens // (rounds or cfg.epochs))
    return replace(cfg, round_tokens=size, epochs=-(-max_tokens // size))


def _steps_for_tokens(data: TaskData, cfg: TrainConfig, per_epoch: int, max_tokens: int) -> int:
    """Optimizer steps that train exactly ``max_tokens`` target tokens: the batch stream, walked
    ahead (indices only, no tensors), so the schedule ends on the run's last step."""
    lengths = [len(t) - 1 for _, t in data.train]
    stream = _BatchStream(data, cfg, per_epoch)
    steps = tokens = 0
    while tokens < max_tokens:
        tokens += sum(lengths[i] for i in next(stream))
        steps += 1
    return steps


def schedule_steps(cfg: TrainConfig, data: TaskData, budget: RunBudget | None = None) -> int | None:
    """Optimizer steps the learning-rate schedule spans (None: open-ended, sized by the time limit)."""
    n_batches = len(batch_indices(data.train, cfg.batch_size, cfg.batch_unit))
    steps_per_epoch = min(n_batches, cfg.max_steps_per_epoch or n_batches)
    return _total_steps(cfg, data, n_batches, steps_per_epoch, budget)


def _total_steps(
    cfg: TrainConfig, data: TaskData, n_batches: int, steps_per_epoch: int, budget: RunBudget | None = None
) -> int | None:
    """Optimizer steps of the whole run, for the schedule: exact for epochs, ``round_steps`` and a
    token budget; for ``round_tokens`` estimated from the mean target tokens of a batch; None for a
    time limit alone (the clock sizes the schedule then)."""
    if budget is not None and budget.max_tokens is not None:
        return _steps_for_tokens(data, cfg, steps_per_epoch, budget.max_tokens)
    if budget is not None and budget.open_ended:
        return None
    if cfg.round_steps is not None:
        return cfg.round_steps * cfg.epochs
    if cfg.round_tokens is not None:
        per_batch = sum(len(t) - 1 for _, t in data.train) / max(n_batches, 1)
        return max(1, math.ceil(cfg.round_tokens / max(per_batch, 1.0))) * cfg.epochs
    return steps_per_epoch * cfg.epochs


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


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None, min_progress: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (1-based); ``cfg.lr`` is the peak, reached at warmup's end.

    A cosine schedule's progress is at least ``min_progress`` (the share of a time limit used, see
    ``_Clock``); ``total_steps`` None means the time alone sizes it.
    """
    warm = cfg.warmup_steps
    if warm and step <= warm:
        return cfg.lr * step / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(warm, 1) / max(step, 1))
    # cosine: from the peak at the end of warmup down to 0 at the last step
    by_steps = (step - warm) / max(1, total_steps - warm) if total_steps is not None else 0.0
    progress = min(1.0, max(by_steps, min_progress))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Clock:
    """A run's time limit: when training must stop, and how much of the time a cosine schedule has used.

    Why the schedule follows the clock: a run stopped by time at a high learning rate ends with a
    worse model than the same time spent on a schedule that had decayed; steps per second are not
    known in advance (and differ between machines), elapsed time is. The share is measured from the
    end of warm-up to the stop time and never goes back, so the learning rate only falls.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()
        self.reserve = 0.0  # what the last evaluation + checkpoint took: kept free for the final ones
        self.warm_end: float | None = None
        self.progress = 0.0

    def stop_at(self) -> float:
        return self.start + self.seconds - self.reserve

    def expired(self) -> bool:
        return time.perf_counter() >= self.stop_at()

    def schedule_progress(self, step: int, warmup_steps: int) -> float:
        if step <= warmup_steps:
            return 0.0
        now = time.perf_counter()
        if self.warm_end is None:
            self.warm_end = now
        span = self.stop_at() - self.warm_end
        share = 1.0 if span <= 0 else (now - self.warm_end) / span
        self.progress = max(self.progress, min(1.0, share))
        return self.progress


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def autocast_for(device: torch.device, bf16: bool):
    """bf16 autocast on a GPU when asked (training, evaluation and latency timing agree); else nothing."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: Seq2Seq, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, LayerNorm parameters and nothing else skip weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():  # tied weights appear once
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel is ~3x faster than the per-parameter loop, on CPU too
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)


@torch.no_grad()
def evaluate(
    model: Seq2Seq, pairs: list[Pair], train_cfg: TrainConfig, device: torch.device, pad_id: int
) -> tuple[float, float]:
    """(token cross-entropy without smoothing, token accuracy), padding excluded."""
    if not pairs:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for idx in batch_indices(pairs, train_cfg.batch_size, train_cfg.batch_unit):
        src, tgt_in, tgt_out = (t.to(device) for t in collate(pairs, idx, pad_id))
        with autocast_for(device, train_cfg.bf16):
            logits = model(src, tgt_in)  # (B, T, V)
        logits = logits.float()
        mask = tgt_out.ne(pad_id)
        loss_sum += float(
            F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad_id, reduction="sum")
        )
        correct += int((logits.argmax(-1).eq(tgt_out) & mask).sum())
        total += int(mask.sum())
    return loss_sum / total, correct / total


@torch.no_grad()
def bleu_score(model: Seq2Seq, data: TaskData, n: int, train_cfg: TrainConfig, device: torch.device) -> float:
    """sacrebleu corpus BLEU (13a tokens, lower-cased) of greedy translations of the first ``n`` val pairs."""
    pairs, texts = data.val[:n], data.val_text[:n]
    if not pairs:
        return 0.0
    model.eval()
    hyps: list[str] = [""] * len(pairs)
    for idx in batch_indices(pairs, 128):  # length-sorted, so little padding to decode
        src = collate(pairs, idx, data.pad_id)[0].to(device)
        max_len = train_cfg.max_decode_len or 2 * src.shape[1] + 10
        with autocast_for(device, train_cfg.bf16):
            out = greedy_decode(model, src, data.tgt_tok.bos_id, data.tgt_tok.eos_id, max_len)
        for i, ids in zip(idx, out, strict=True):
            hyps[i] = data.tgt_tok.decode(ids)
    refs = [t for _, t in texts]
    return float(sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score)


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
    stream: _BatchStream | None = None  # rounds only; None: each epoch is one pass over the data
    ceiling: LossCeiling | None = None
    budget: RunBudget | None = None
    clock: _Clock | None = None  # with a time limit
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
        total_steps=_total_steps(train_cfg, data, n_batches, steps_per_epoch, budget),
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
            for idx in _epoch_batches(run.data, run.cfg, e, run.steps_per_epoch)
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
    for g in run.optimizer.param_groups:
        g["lr"] = lr
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
        batches = _epoch_batches(run.data, cfg, epoch, run.steps_per_epoch)
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
        run.stream = _BatchStream(data, train_cfg, run.steps_per_epoch, run.position)
    if train_cfg.loss_ceiling:
        run.ceiling = LossCeiling(train_cfg.loss_ceiling, train_cfg.warmup_steps, run.loss_ema)
    if budget is not None and budget.time_limit_s is not None:
        run.clock = _Clock(budget.time_limit_s)
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
