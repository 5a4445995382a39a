"""Encoder-decoder Transformer as in "Attention Is All You Need" (Vaswani et al. 2017).

Why a hand-written model instead of ``torch.nn.Transformer``: the search needs the exact parameter
count from the config alone (``n_params``), per-module access to ``n_heads``, an incremental decoder
with a key/value cache for fast greedy and beam decoding, and it must be at least as fast on CPU.
Speed comes from a fused QKV projection, one key-padding mask per forward pass shared by all layers
(``None`` when the batch has no padding), and ``is_causal=True`` instead of a materialised causal mask
(right-padded targets need no target padding mask under a causal mask: a real token never attends to
a later padding token).

Dropout is placed as in the paper (section 5.4): on the sums of embeddings and positions and on every
sub-layer output before the residual addition. ``torch.nn.Transformer`` also drops attention weights
and FFN activations; we do not, which keeps PyTorch's fused CPU attention kernel usable in training
(it has no dropout) and saves random draws, which are slow on CPU.

Shapes: B batch, S source length, T target length, D d_model, H heads, Dh head_dim, V vocabulary.
No I/O here; see ``attntune.model.checkpoint`` for saving and loading. Greedy and beam decoding
(``attntune.model.decoding``, imported here too) use ``start_decoding``/``decode_step``/``reorder_state``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attntune.model import mup
from attntune.model.config import ModelConfig
from attntune.model.cost import n_params  # noqa: F401 - part of the model's API: the count of what it builds
from attntune.model.decoding import (  # noqa: F401 - greedy_decode, beam_search: their home before families
    DecodeState,
    beam_search,
    greedy_decode,
)

LayerCache = dict[str, dict[str, Tensor]]  # {"self": {"k", "v"}, "cross": {"k", "v"}} for one layer


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """(max_len, D) table: sin on even, cos on odd dimensions, wavelengths 2*pi .. 10000*2*pi."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention``.

    Self-attention projects Q, K and V with one fused (D, 3D) matrix; cross-attention projects Q from
    the decoder and K, V (fused, (D, 2D)) from the encoder memory, once per sequence when decoding.
    ``scale`` multiplies the attention logits: None is SDPA's 1/sqrt(Dh); µP passes its own (model/mup.py).
    """

    def __init__(self, d_model: int, n_heads: int, cross: bool = False, scale: float | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.cross = cross
        self.scale = scale
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    @torch.no_grad()
    def zero_query_(self) -> None:
        """Zero the query projection (µP): the Q rows of the fused QKV matrix, or the cross-attention Q."""
        if self.cross:
            self.q_proj.weight.zero_()
            self.q_proj.bias.zero_()
        else:
            d = self.n_heads * self.head_dim
            self.qkv_proj.weight[:d].zero_()  # rows 0..D-1 of the (3D, D) weight give Q
            self.qkv_proj.bias[:d].zero_()

    def _heads(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """(B, L, n*D) -> n tensors of (B, H, L, Dh)."""
        b, length, _ = x.shape
        return x.view(b, length, n, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        x: Tensor,  # (B, T, D) queries (and keys/values for self-attention)
        memory: Tensor | None = None,  # (B, S, D) keys/values for cross-attention
        mask: Tensor | None = None,  # (B, 1, 1, S) bool, True = attend; None = attend everywhere
        is_causal: bool = False,
        cache: dict[str, Tensor] | None = None,  # incremental decoding state, updated in place
    ) -> Tensor:  # (B, T, D)
        if self.cross:
            (q,) = self._heads(self.q_proj(x), 1)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]  # memory projected on the first decoding step
            else:
                assert memory is not None, "cross-attention needs the encoder memory"
                k, v = self._heads(self.kv_proj(memory), 2)  # (B, H, S, Dh) each
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = self._heads(self.qkv_proj(x), 3)  # (B, H, T, Dh) each
            if cache is not None:
                if "k" in cache:  # append this step's keys/values to the earlier ones
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(  # (B, H, T, Dh)
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale
        )
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, d_ff) -> ReLU -> Linear(d_ff, D)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, d_ff) -> (B, L, D)
        return self.linear2(F.relu(self.linear1(x)))


class EncoderLayer(nn.Module):
    """Self-attention and FFN sublayers, each with residual + LayerNorm (pre- or post-LN)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, scale=mup.attention_scale(cfg))
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:  # (B, S, D) -> (B, S, D)
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.norm1(x), mask=mask))
            return x + self.dropout(self.ff(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, mask=mask)))
        return self.norm2(x + self.dropout(self.ff(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, FFN; residual + LayerNorm each."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, scale=mup.attention_scale(cfg))
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cross=True, scale=mup.attention_scale(cfg))
        self.ff = FeedForward(cfg.d_model, cfg.d_ff)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,  # (B, T, D)
        memory: Tensor,  # (B, S, D)
        mem_mask: Tensor | None,  # (B, 1, 1, S)
        cache: LayerCache | None = None,
    ) -> Tensor:  # (B, T, D)
        # With a cache, x holds only the newest position: it may attend to every cached key.
        causal = cache is None
        self_cache = cache["self"] if cache is not None else None
        cross_cache = cache["cross"] if cache is not None else None
        if self.norm_first:
            x = x + self.dropout(self.self_attn(self.norm1(x), is_causal=causal, cache=self_cache))
            x = x + self.dropout(self.cross_attn(self.norm2(x), memory, mem_mask, cache=cross_cache))
            return x + self.dropout(self.ff(self.norm3(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, is_causal=causal, cache=self_cache)))
        x = self.norm2(x + self.dropout(self.cross_attn(x, memory, mem_mask, cache=cross_cache)))
        return self.norm3(x + self.dropout(self.ff(x)))


class Transformer(nn.Module):
    """Encoder-decoder Transformer; ``forward(src, tgt_in)`` gives next-token logits (B, T, V).

    Token embeddings are scaled by sqrt(D) and added to sinusoidal positions (a buffer, not a
    parameter). Pre-LN models end each stack with a LayerNorm. With ``tie_embeddings`` the output
    projection shares its weight with the target embedding. The output projection has no bias.
    Under ``parameterization: mup`` the embedding scale, attention scale, readout multiplier and
    init follow model/mup.py; the parameters are the same (``n_params`` does not change).
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        d = cfg.d_model
        self.src_embed = nn.Embedding(src_vocab_size, d)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, d), persistent=False)
        self.embed_scale = math.sqrt(mup.embedding_width(cfg))  # sqrt(D); sqrt(base width) under µP
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        # Post-LN layers already end in a LayerNorm; pre-LN stacks need a final one.
        self.encoder_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if cfg.norm_first else nn.Identity()
        self.generator = nn.Linear(d, tgt_vocab_size, bias=False)
        self.readout_mult = mup.readout_mult(cfg)  # None under standard
        self._init_weights()
        if cfg.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        """Xavier for projections (as nn.Transformer); N(0, D^-1/2) embeddings, so scaled inputs are ~unit.

        µP (model/mup.py) draws the same numbers, then zeroes the queries and gives the embeddings
        and the untied readout the base width's scale.
        """
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, mean=0.0, std=mup.embedding_width(self.cfg) ** -0.5)
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias") and "norm" not in name:
                nn.init.zeros_(p)
        if mup.is_mup(self.cfg):
            for module in self.modules():
                if isinstance(module, MultiHeadAttention):
                    module.zero_query_()
            with torch.no_grad():  # when tied, this weight is replaced by the target embedding
                self.generator.weight.mul_(mup.readout_init_gain(self.cfg, self.tgt_vocab_size))

    def _embed(self, tokens: Tensor, table: nn.Embedding, start: int = 0) -> Tensor:
        """(B, L) ids -> (B, L, D) scaled embeddings + positions start..start+L-1."""
        length = tokens.shape[1]
        if start + length > self.cfg.max_len:
            raise ValueError(
                f"sequence of length {start + length} exceeds model.max_len={self.cfg.max_len}"
            )
        x = table(tokens) * self.embed_scale + self.positions[start : start + length]
        return self.embed_dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S) source ids -> memory (B, S, D) and key-padding mask (B, 1, 1, S) or None."""
        pad = src.eq(self.pad_id)  # (B, S)
        mask = ~pad[:, None, None, :] if bool(pad.any()) else None
        x = self._embed(src, self.src_embed)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(
        self,
        tgt_in: Tensor,  # (B, T) target ids shifted right (starting with BOS)
        memory: Tensor,  # (B, S, D)
        mem_mask: Tensor | None,  # (B, 1, 1, S)
        cache: list[LayerCache] | None = None,  # one per decoder layer, for incremental decoding
        start: int = 0,  # position of tgt_in[:, 0] (the number of cached steps)
    ) -> Tensor:  # (B, T, V) logits
        x = self._embed(tgt_in, self.tgt_embed, start)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, mem_mask, cache[i] if cache is not None else None)
        x = self.decoder_norm(x)  # (B, T, D)
        if self.readout_mult is not None:  # µP: mup_output_mult / m, on (B, T, D) rather than (B, T, V)
            x = x * self.readout_mult
        return self.generator(x)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """(B, S) source ids, (B, T) shifted target ids -> (B, T, V) logits (teacher forcing)."""
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    def new_cache(self) -> list[LayerCache]:
        """Empty key/value cache for incremental decoding, one entry per decoder layer."""
        return [{"self": {}, "cross": {}} for _ in self.decoder_layers]

    # ------------------------------------------------------------------ decoding (model/decoding.py)

    def start_decoding(self, src: Tensor, beams: int = 1) -> DecodeState:
        """Encode (B, S) ``src`` once; the state of B x ``beams`` hypotheses with an empty cache."""
        memory, mask = self.encode(src)  # (B, S, D), (B, 1, 1, S)
        if beams > 1:
            memory = memory.repeat_interleave(beams, dim=0)  # (B*K, S, D)
            mask = mask.repeat_interleave(beams, dim=0) if mask is not None else None
        return {"memory": memory, "mask": mask, "cache": self.new_cache(), "t": 0}

    def decode_step(self, token: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """(B, 1) newest tokens -> (B, V) logits; the key/value cache grows by one position."""
        logits = self.decode(token, state["memory"], state["mask"], state["cache"], start=state["t"])
        state["t"] += 1
        return logits[:, -1], state

    def reorder_state(self, state: DecodeState, rows: Tensor) -> DecodeState:
        """Keep hypotheses ``rows``: self-attention caches move; cross-attention keys are shared by
        the beams of one sentence, so they stay."""
        for layer_cache in state["cache"]:
            layer_cache["self"]["k"] = layer_cache["self"]["k"][rows]
            layer_cache["self"]["v"] = layer_cache["self"]["v"][rows]
        return state
