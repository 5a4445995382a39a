"""The baseline both model benchmarks time attntune's Transformer against.

``torch.nn.Transformer`` with attntune's embeddings (scaled, sinusoidal positions) and tied output
projection, so only the encoder-decoder stack differs. It needs torch and ``attntune.model`` only:
``benchmarks/gpu_packing.py`` runs on a GPU box that has nothing else, and loads ``attntune.model``
from the repository before it imports this module.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from attntune.model.config import ModelConfig
from attntune.model.transformer import sinusoidal_positions

PAD = 0


class Reference(nn.Module):
    """``tgt_padding_mask``: also pass the target key-padding mask. Right-padded targets under a
    causal mask do not need it (attntune's model has none), and leaving it out keeps PyTorch's
    fast paths open; ``benchmarks/model_throughput.py``'s recorded CPU figures were measured with it."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, *, tgt_padding_mask: bool = True):
        super().__init__()
        d = cfg.d_model
        self.src_embed = nn.Embedding(src_vocab, d)
        self.tgt_embed = nn.Embedding(tgt_vocab, d)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, d), persistent=False)
        self.scale = math.sqrt(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.tgt_padding_mask = tgt_padding_mask
        self.core = nn.Transformer(
            d_model=d,
            nhead=cfg.n_heads,
            num_encoder_layers=cfg.n_encoder_layers,
            num_decoder_layers=cfg.n_decoder_layers,
            dim_feedforward=cfg.d_ff,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=cfg.norm_first,
        )
        self.generator = nn.Linear(d, tgt_vocab, bias=False)
        self.generator.weight = self.tgt_embed.weight

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:  # (B, S), (B, T) -> (B, T, V)
        s, t = src.shape[1], tgt_in.shape[1]
        x = self.dropout(self.src_embed(src) * self.scale + self.positions[:s])
        y = self.dropout(self.tgt_embed(tgt_in) * self.scale + self.positions[:t])
        src_pad = src.eq(PAD)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=src.device)
        out = self.core(
            x,
            y,
            tgt_mask=causal,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_in.eq(PAD) if self.tgt_padding_mask else None,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return self.generator(out)
