"""µP, the Maximal Update Parametrization (Yang et al. 2022, "Tensor Programs V", arXiv 2203.03466),
for the transformer family (``model.parameterization: mup``).

Why: under the standard parameterization the best Adam learning rate of a Transformer falls as it
gets wider, so a search on a narrow proxy says little about the wide model; under µP every layer's
activations move by the same order per step whatever the width, so the learning rate and the
multipliers tuned at a proxy width transfer (``attntune.model.config.at_width`` builds the target).
Depth transfer is not promised.

The rules, for Adam, at width W = ``d_model`` and base width B = ``mup_base_d_model`` (m = W / B).
At W = B every one equals the standard model's, so µP at the base width *is* the standard model
but for its zero-initialised queries:

- hidden matrices (the fused Q/K/V, cross-attention Q and K/V, output and feed-forward projections):
  learning rate lr / m and AdamW weight decay wd x m (so the decay per step, lr x wd, stays as it
  is: Microsoft's ``MuAdam`` does the same); their Xavier init has variance 2 / (fan_in + fan_out),
  which is proportional to 1 / fan_in because ``at_width`` widens every matrix by the same factor;
- embeddings, the untied readout, biases and LayerNorm: learning rate lr and their init at any
  width as at the base (embedding tables N(0, 1/B) scaled by sqrt(B) instead of N(0, 1/D) by
  sqrt(D); the untied readout's Xavier variance 2 / (B + V) instead of 2 / (D + V));
- the output logits are multiplied by ``mup_output_mult`` / m (applied to the decoder's last
  hidden state, so on (B, T, D) rather than (B, T, V)). With tied embeddings the shared matrix is
  handled as µP's shared readout (``MuSharedReadout``): an embedding (lr, width-independent init)
  whose readout use carries the 1 / m multiplier;
- attention logits are scaled by ``mup_attn_mult`` x sqrt(Dh_base) / Dh instead of 1 / sqrt(Dh),
  in self- and cross-attention (``F.scaled_dot_product_attention``'s ``scale=``), where
  Dh_base = B / n_heads is the head width at the base width (``at_width`` keeps ``n_heads``). It is
  1 / Dh times a width-independent constant, chosen so that it is 1 / sqrt(Dh) at the base width;
- the query projection is zero-initialised (self- and cross-attention);
- the learning-rate schedule multiplies each parameter group's ``lr_mult``; it never overwrites a
  group's rate (model/train.py).

Why the rules are written here rather than taken from Microsoft's ``mup`` package: the package
would be a fourth runtime dependency of ``attntune.model`` (docs/conventions.md allows torch,
tokenizers, safetensors and sacrebleu), it needs base-shape files or a second "base" model built
at set-up, it replaces the optimizer with its own (our weight-decay groups, fused AdamW and
resumable optimizer state would have to follow it), and it has nothing for the attention scale of
``F.scaled_dot_product_attention`` or for a fused QKV matrix whose query third must be zeroed. The
rules it would apply are the few lines below.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from attntune.model.config import ModelConfig, TrainConfig

if TYPE_CHECKING:
    from torch import nn

# Parameter names of the embedding tables and the readout: µP's input and output weights.
_TABLES = ("src_embed.", "tgt_embed.", "generator.")


def is_mup(cfg: ModelConfig) -> bool:
    return cfg.parameterization == "mup"


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_d_model: how much wider than the base the model is (1.0 under standard)."""
    return cfg.d_model / cfg.mup_base_d_model if is_mup(cfg) else 1.0


def embedding_width(cfg: ModelConfig) -> int:
    """The width whose N(0, 1/width) init and sqrt(width) multiplier the embedding tables take:
    d_model (standard), the base width (µP: their outputs and updates then do not grow with width)."""
    return cfg.mup_base_d_model if is_mup(cfg) else cfg.d_model


def attention_scale(cfg: ModelConfig) -> float | None:
    """SDPA's ``scale=``: None (its 1 / sqrt(Dh)) under standard; under µP
    mup_attn_mult x sqrt(Dh_base) / Dh with Dh_base = base width / n_heads."""
    if not is_mup(cfg):
        return None
    head_dim = cfg.d_model / cfg.n_heads
    return cfg.mup_attn_mult * math.sqrt(cfg.mup_base_d_model / cfg.n_heads) / head_dim


def readout_mult(cfg: ModelConfig) -> float | None:
    """What the readout's input is multiplied by: None (nothing) under standard; mup_output_mult / m."""
    return cfg.mup_output_mult * cfg.mup_base_d_model / cfg.d_model if is_mup(cfg) else None


def readout_init_gain(cfg: ModelConfig, vocab_size: int) -> float:
    """Factor on the untied readout's Xavier init (variance 2 / (D + V)) that gives it the base
    width's variance 2 / (B + V) under µP; 1.0 under standard."""
    if not is_mup(cfg):
        return 1.0
    return math.sqrt((cfg.d_model + vocab_size) / (cfg.mup_base_d_model + vocab_size))


def param_groups(model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: biases and LayerNorm parameters skip weight decay; under µP the
    hidden matrices also get ``lr_mult`` = 1 / m and weight decay x m (module docstring).

    Standard keeps today's two groups, without ``lr_mult`` (the schedule reads 1.0), so its
    optimizer and checkpoints are unchanged. Tied weights appear once.
    """
    wd = train_cfg.weight_decay
    if not is_mup(model_cfg):
        decay, no_decay = [], []
        for p in model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    hidden, tables, vectors = [], [], []
    for name, p in model.named_parameters():
        if p.dim() < 2:
            vectors.append(p)
        elif name.startswith(_TABLES):
            tables.append(p)
        else:
            hidden.append(p)
    shrink = model_cfg.mup_base_d_model / model_cfg.d_model  # 1 / m
    groups = [
        {"params": hidden, "lr_mult": shrink, "weight_decay": wd * model_cfg.d_model / model_cfg.mup_base_d_model},
        {"params": tables, "lr_mult": 1.0, "weight_decay": wd},
        {"params": vectors, "lr_mult": 1.0, "weight_decay": 0.0},
    ]
    for g in groups:
        g["lr"] = train_cfg.lr * g["lr_mult"]
    return groups
