"""Training loop: one model, one task, per-epoch metrics handed to an injected reporter.

Why a reporter instead of callbacks or logging: the search (Optuna/Ray) and the CLI need the same
loop; the search prunes by answering ``True`` from ``report``, the CLI prints a line. The metrics
follow docs/conventions.md: ``train_loss`` (the optimised loss, label smoothing included),
``val_loss`` (plain token cross-entropy without smoothing, so trials with different smoothing
compare), ``val_accuracy``, ``val_bleu``, ``lr`` and ``tokens_per_s``.

Deterministic on CPU for a given ``train_cfg.seed``: the model, dropout and batch order are seeded,
and resuming restores the RNG state, so an interrupted and resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sacrebleu
import torch
import torch.nn.functional as F

from attntune.model.checkpoint import load_train_state, load_weights, save_checkpoint
from attntune.model.config import ConfigError, ModelConfig, TrainConfig, to_dict
from attntune.model.data import Pair, TaskData, batch_indices, collate
from attntune.model.transformer import Transformer, greedy_decode, n_params

TRAIN_STATE_VERSION = 1
# Changing these between runs does not invalidate a checkpoint for resuming.
_RESUME_TOLERANT = ("epochs", "device", "num_threads", "bleu_samples", "max_decode_len", "beam_size", "bf16")


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class Reporter(Protocol):
    """Receives progress; ``report`` returning True stops training after that epoch."""

    def start(self, info: dict[str, Any]) -> None: ...

    def report(self, epoch: int, metrics: dict[str, float]) -> bool: ...


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    model: Transformer
    n_params: int
    info: dict[str, Any] = field(default_factory=dict)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based); ``cfg.lr`` is the peak, reached at warmup's end."""
    warm = cfg.warmup_steps
    if warm and step <= warm:
        return cfg.lr * step / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(warm, 1) / max(step, 1))
    # cosine: from the peak at the end of warmup down to 0 at the last step
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def _autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
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
    model: Transformer, pairs: list[Pair], train_cfg: TrainConfig, device: torch.device, pad_id: int
) -> tuple[float, float]:
    """(token cross-entropy without smoothing, token accuracy), padding excluded."""
    if not pairs:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for idx in batch_indices(pairs, train_cfg.batch_size, train_cfg.batch_unit):
        src, tgt_in, tgt_out = (t.to(device) for t in collate(pairs, idx, pad_id))
        with _autocast(device, train_cfg.bf16):
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
def bleu_score(model: Transformer, data: TaskData, n: int, train_cfg: TrainConfig, device: torch.device) -> float:
    """sacrebleu corpus BLEU (13a tokens, lower-cased) of greedy translations of the first ``n`` val pairs."""
    pairs, texts = data.val[:n], data.val_text[:n]
    if not pairs:
        return 0.0
    model.eval()
    hyps: list[str] = [""] * len(pairs)
    for idx in batch_indices(pairs, 128):  # length-sorted, so little padding to decode
        src = collate(pairs, idx, data.pad_id)[0].to(device)
        max_len = train_cfg.max_decode_len or 2 * src.shape[1] + 10
        with _autocast(device, train_cfg.bf16):
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
    if state.get("version") != TRAIN_STATE_VERSION or state.get("data_fingerprint") != data.fingerprint:
        return False
    if state.get("model") != to_dict(model_cfg):
        return False
    old = {k: v for k, v in (state.get("train") or {}).items() if k not in _RESUME_TOLERANT}
    new = {k: v for k, v in to_dict(train_cfg).items() if k not in _RESUME_TOLERANT}
    return old == new


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TaskData,
    reporter: Reporter | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    provenance: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model_cfg`` on ``data``; report metrics each epoch; checkpoint each epoch if asked.

    With ``resume`` and a checkpoint in ``checkpoint_dir`` from the same model, data and recipe,
    training continues after its last completed epoch (``epochs`` may have grown).
    Raises DivergedError as soon as the training loss is NaN or infinite.
    """
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = resolve_device(train_cfg.device)
    longest = max(max(len(s), len(t) - 1) for s, t in data.train)
    if longest > model_cfg.max_len:
        raise ConfigError(
            f"model.max_len: {model_cfg.max_len} is shorter than the longest training sequence "
            f"({longest} tokens); raise it or lower task.max_tokens"
        )
    torch.manual_seed(train_cfg.seed)
    model = Transformer(model_cfg, data.src_vocab_size, data.tgt_vocab_size, pad_id=data.pad_id).to(device)
    count = sum(p.numel() for p in model.parameters())
    expected = n_params(model_cfg, data.src_vocab_size, data.tgt_vocab_size)
    assert count == expected, f"n_params formula {expected} != built model {count}"
    optimizer = _optimizer(model, train_cfg)

    first = model.encoder_layers[0].self_attn if len(model.encoder_layers) else model.decoder_layers[0].self_attn
    info = {
        "n_params": count,
        "head_dim": first.head_dim,
        "n_heads": first.n_heads,
        "n_encoder_layers": len(model.encoder_layers),
        "n_decoder_layers": len(model.decoder_layers),
        "device": str(device),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "src_vocab_size": data.src_vocab_size,
        "tgt_vocab_size": data.tgt_vocab_size,
    }

    n_batches = len(batch_indices(data.train, train_cfg.batch_size, train_cfg.batch_unit))
    steps_per_epoch = min(n_batches, train_cfg.max_steps_per_epoch or n_batches)
    total_steps = steps_per_epoch * train_cfg.epochs
    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume:
        state = load_train_state(ckpt)
        if state is not None and _resumable(state, model_cfg, train_cfg, data):
            load_weights(model, ckpt)
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            history = [dict(h) for h in state["history"]]
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and state.get("rng_cuda"):
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            info["resumed_from_epoch"] = start_epoch
        elif state is not None:
            warnings.warn(f"{ckpt}: checkpoint is from a different model, data or recipe; starting afresh", stacklevel=2)
    if reporter is not None:
        reporter.start(dict(info))

    pad = data.pad_id
    stopped = False
    for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
        model.train()
        batches = batch_indices(
            data.train, train_cfg.batch_size, train_cfg.batch_unit, shuffle=True, seed=train_cfg.seed * 100_003 + epoch
        )[:steps_per_epoch]
        loss_sum, n_tokens = 0.0, 0
        t0 = time.perf_counter()
        lr = lr_at(max(step, 1), train_cfg, total_steps)
        for idx in batches:
            src, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in collate(data.train, idx, pad))
            step += 1
            lr = lr_at(step, train_cfg, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with _autocast(device, train_cfg.bf16):
                logits = model(src, tgt_in)  # (B, T, V)
            # (B*T, V) rows: log-softmax over a contiguous last dimension is ~10x faster than over dim 1.
            loss = F.cross_entropy(
                logits.float().flatten(0, 1),
                tgt_out.flatten(),
                ignore_index=pad,
                label_smoothing=train_cfg.label_smoothing,
            )
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"training loss became {value} at epoch {epoch}, step {step} (lr {lr:.3g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            n = int(tgt_out.ne(pad).sum())
            loss_sum += value * n
            n_tokens += n
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, data.val, train_cfg, device, pad)
        metrics: dict[str, float] = {
            "train_loss": loss_sum / max(n_tokens, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        if train_cfg.bleu_samples > 0:
            metrics["val_bleu"] = bleu_score(model, data, train_cfg.bleu_samples, train_cfg, device)
        metrics["lr"] = lr
        metrics["tokens_per_s"] = n_tokens / elapsed if elapsed > 0 else 0.0
        history.append(metrics)
        if ckpt is not None:
            save_checkpoint(
                ckpt,
                model,
                run_config_dict(model_cfg, train_cfg, data, provenance),
                data.src_tok,
                data.tgt_tok,
                train_state={
                    "version": TRAIN_STATE_VERSION,
                    "epoch": epoch,
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "history": history,
                    "model": to_dict(model_cfg),
                    "train": to_dict(train_cfg),
                    "data_fingerprint": data.fingerprint,
                },
                metadata={"epoch": str(epoch), "license": data.license, "attribution": data.attribution},
            )
        if reporter is not None and reporter.report(epoch, dict(metrics)):
            stopped = True
            break
    model.eval()
    return TrainResult(
        history=history,
        epochs_run=len(history),
        stopped_early=stopped,
        model=model,
        n_params=count,
        info=info,
    )
