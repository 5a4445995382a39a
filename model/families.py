"""One builder for every architecture family (``model.family``), so training, checkpoints,
translation and latency measurement never name a model class.

Every family takes ``(cfg, src_vocab_size, tgt_vocab_size, pad_id)``, computes ``forward(src,
tgt_in) -> (B, T, V)`` logits with the Transformer's conventions (right padding with ``pad_id``,
teacher forcing, the output projection ``generator`` tied to ``tgt_embed`` when asked), and decodes
through ``attntune.model.decoding``'s interface. ``attntune.model.cost.n_params`` counts exactly
what is built here.
"""

from __future__ import annotations

from attntune.model.config import ModelConfig
from attntune.model.mlp import MLPSeq2Seq
from attntune.model.rnn import RNNSeq2Seq
from attntune.model.transformer import Transformer

Seq2Seq = Transformer | RNNSeq2Seq | MLPSeq2Seq

MODEL_CLASSES: dict[str, type[Seq2Seq]] = {"transformer": Transformer, "rnn": RNNSeq2Seq, "mlp": MLPSeq2Seq}


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0) -> Seq2Seq:
    """The model of ``cfg.family`` (on the CPU, in training mode, freshly initialised)."""
    return MODEL_CLASSES[cfg.family](cfg, src_vocab_size, tgt_vocab_size, pad_id=pad_id)
