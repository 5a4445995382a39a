"""What a Transformer config costs, from the config alone: no torch here.

Why a module of its own: the search driver counts every sampled config's parameters before a trial
starts (``max_params``, constraints, the memory estimate, the ``n_params`` objective), and it must
not import torch for that: the driver never builds a model, and torch's import is over a second of
every ``attntune run``. ``attntune.model.transformer`` builds exactly the model counted here (its
tests compare this count with the built module's).
"""

from __future__ import annotations

from attntune.model.config import ModelConfig


def n_params(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> int:
    """Exact number of trainable parameters of ``Transformer(cfg, ...)``, tied weights counted once."""
    d, f = cfg.d_model, cfg.d_ff
    norm = 2 * d  # LayerNorm weight + bias
    attn = 4 * d * d + 4 * d  # Q, K, V and output projections with biases (fused or not)
    ffn = d * f + f + f * d + d
    encoder = cfg.n_encoder_layers * (attn + ffn + 2 * norm)
    decoder = cfg.n_decoder_layers * (2 * attn + ffn + 3 * norm)
    final_norms = 2 * norm if cfg.norm_first else 0
    embeddings = (src_vocab_size + tgt_vocab_size) * d
    output = 0 if cfg.tie_embeddings else tgt_vocab_size * d
    return embeddings + encoder + decoder + final_norms + output
