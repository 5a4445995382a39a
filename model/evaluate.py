"""Evaluation: validation loss and accuracy, greedy BLEU, and the device and precision they run in.

Why apart from the loop (model/train.py): a trained or loaded model is scored the same way
after training (latency, export checks) as between epochs, and the device/autocast rules are
shared by training, evaluation and latency timing, so they agree. Metric names and meanings follow
docs/conventions.md: ``val_loss`` is plain token cross-entropy without label smoothing,
``val_accuracy`` token accuracy, ``val_bleu`` sacrebleu corpus BLEU of greedy translations.
"""

from __future__ import annotations

from contextlib import nullcontext

import sacrebleu
import torch
import torch.nn.functional as F

from attntune.model.config import ConfigError, TrainConfig
from attntune.model.data import Pair, TaskData, batch_indices, collate
from attntune.model.decoding import greedy_decode
from attntune.model.families import Seq2Seq


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
