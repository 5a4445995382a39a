"""An all-MLP encoder-decoder (MLP-Mixer, Tolstikhin et al. 2021; gMLP, Liu et al. 2021): no attention,
tokens are mixed by learned linear maps over positions, so a search can ask what attention buys.

Why gMLP's gating: a token-mixing map is one learned (max_len, max_len) matrix W, the same for every
sentence; multiplying its output by a per-token gate (gelu(u)) lets content decide what each token
takes from the mix. A linear map keeps the decoder causal exactly (W lower-triangular), which a
token MLP with a hidden layer (MLP-Mixer's) could not be.

Each layer, pre-LN with residuals:

- token mixing (``SpatialGating``): u, v = split(Linear(LN(x))) of E = ``token_mixing_dim`` channels
  each; out = Linear(gelu(u) * (W[:L, :L] @ LN(v) + b[:L])); W causal (lower-triangular) in the decoder;
- decoder only, cross mixing (``CrossMixing``): a learned map C from source to target positions over
  the projected encoder output m: out = Linear(gelu(u) * (C[:T, :S] @ m + c[:T]));
- a channel MLP: Linear(D, d_ff) -> GELU -> Linear(d_ff, D).

Padding: padded source positions are zeroed before every source-side map, so a sentence's outputs
do not depend on the padding next to it; right-padded targets need nothing (causal). Positions come
from the maps themselves: no positional encoding, and sequences are at most ``max_len`` long.
Following gMLP, W and C start near zero with biases at one, so every block starts close to a channel
MLP. Incremental decoding caches, per layer, the prefix's mixing inputs LN(v) and the projected
encoder output m: one new position costs one row of W and of C.

Shapes: B batch, S source length, T target length, L either, D d_model, E token_mixing_dim,
F d_ff, M max_len, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attntune.model.config import ModelConfig
from attntune.model.decoding import DecodeState

LayerCache = dict[str, Tensor]  # {"v": (B, t, E) prefix mixing inputs, "m": (B, S, E) projected memory}


def _position_map(max_len: int) -> tuple[nn.Parameter, nn.Parameter]:
    """gMLP's initialisation: weights near zero ((M, M)), biases at one ((M,))."""
    weight = nn.Parameter(torch.empty(max_len, max_len).uniform_(-1e-3, 1e-3))
    return weight, nn.Parameter(torch.ones(max_len))


class SpatialGating(nn.Module):
    """Token mixing: gelu(u) * (W @ LN(v) + b), W a learned map over positions, causal if asked."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        d, e = cfg.d_model, cfg.mixing_dim
        self.causal = causal
        self.norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 2 * e)
        self.v_norm = nn.LayerNorm(e)
        self.weight, self.bias = _position_map(cfg.max_len)
        self.out_proj = nn.Linear(e, d)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # (B, L, D) -> (B, L, D)
        """``keep`` (B, L, 1) bool: True for real positions (None: no padding)."""
        u, v = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, L, E) each
        v = self.v_norm(v)
        if keep is not None:
            v = v.masked_fill(~keep, 0.0)
        length = x.shape[1]
        w = self.weight[:length, :length]  # (L, L)
        if self.causal:
            w = torch.tril(w)
        mixed = torch.einsum("ij,bjd->bid", w, v) + self.bias[:length, None]  # (L, L) x (B, L, E) -> (B, L, E)
        return self.out_proj(F.gelu(u) * mixed)

    def step(self, x: Tensor, t: int, cache: LayerCache) -> Tensor:  # (B, 1, D) at position t -> (B, 1, D)
        """One causal position: its mixing input joins the cached prefix; row t of W mixes the prefix."""
        u, v = self.in_proj(self.norm(x)).chunk(2, dim=-1)  # (B, 1, E) each
        prefix = torch.cat([cache["v"], self.v_norm(v)], dim=1) if "v" in cache else self.v_norm(v)  # (B, t+1, E)
        cache["v"] = prefix
        mixed = torch.matmul(self.weight[t : t + 1, : t + 1], prefix) + self.bias[t]  # (1, t+1) @ (B, t+1, E)
        return self.out_proj(F.gelu(u) * mixed)


class CrossMixing(nn.Module):
    """Target position i takes gelu(u_i) * (sum_j C[i, j] m_j + c_i) from the source positions j."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, e = cfg.d_model, cfg.mixing_dim
        self.norm = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, e)
        self.mem_proj = nn.Linear(d, e)
        self.weight, self.bias = _position_map(cfg.max_len)
        self.out_proj = nn.Linear(e, d)

    def project_memory(self, memory: Tensor, keep: Tensor | None) -> Tensor:  # (B, S, D) -> (B, S, E)
        m = self.mem_proj(memory)
        return m.masked_fill(~keep, 0.0) if keep is not None else m

    def forward(self, x: Tensor, m: Tensor, start: int = 0) -> Tensor:
        """(B, T, D) target positions start..start+T-1, (B, S, E) projected memory -> (B, T, D)."""
        rows = slice(start, start + x.shape[1])
        mixed = torch.einsum("ts,bsd->btd", self.weight[rows, : m.shape[1]], m) + self.bias[rows, None]  # (B, T, E)
        return self.out_proj(F.gelu(self.q_proj(self.norm(x))) * mixed)


class ChannelMLP(nn.Module):
    """Position-wise: LN -> Linear(D, F) -> GELU -> Linear(F, D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.linear2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        return self.linear2(F.gelu(self.linear1(self.norm(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mix = SpatialGating(cfg, causal=False)
        self.mlp = ChannelMLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:  # (B, S, D) -> (B, S, D)
        x = x + self.dropout(self.mix(x, keep))
        return x + self.dropout(self.mlp(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mix = SpatialGating(cfg, causal=True)
        self.cross = CrossMixing(cfg)
        self.mlp = ChannelMLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, m: Tensor, cache: LayerCache | None = None, start: int = 0) -> Tensor:
        """(B, T, D), (B, S, E) -> (B, T, D); with ``cache``, x is the one position ``start``."""
        mixed = self.mix(x) if cache is None else self.mix.step(x, start, cache)
        x = x + self.dropout(mixed)
        x = x + self.dropout(self.cross(x, m, start))
        return x + self.dropout(self.mlp(x))


class MLPSeq2Seq(nn.Module):
    """All-MLP encoder-decoder; ``forward(src, tgt_in)`` gives next-token logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        d = cfg.d_model
        self.src_embed = nn.Embedding(src_vocab_size, d)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d)
        self.embed_scale = math.sqrt(d)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder_norm = nn.LayerNorm(d)
        self.generator = nn.Linear(d, tgt_vocab_size, bias=False)
        for table in (self.src_embed, self.tgt_embed):
            nn.init.normal_(table.weight, mean=0.0, std=d**-0.5)
        if cfg.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def _embed(self, tokens: Tensor, table: nn.Embedding, end: int) -> Tensor:
        """(B, L) ids -> (B, L, D); ``end`` is one past the last position, at most max_len."""
        if end > self.cfg.max_len:
            raise ValueError(f"sequence of length {end} exceeds model.max_len={self.cfg.max_len}")
        return self.embed_dropout(table(tokens) * self.embed_scale)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S) source ids -> memory (B, S, D) and ``keep`` (B, S, 1) bool (True: real) or None."""
        pad = src.eq(self.pad_id)
        keep = ~pad[:, :, None] if bool(pad.any()) else None
        x = self._embed(src, self.src_embed, src.shape[1])
        for layer in self.encoder_layers:
            x = layer(x, keep)
        return self.encoder_norm(x), keep

    def decode(
        self,
        tgt_in: Tensor,  # (B, T) target ids shifted right (starting with BOS)
        memory: list[Tensor],  # per decoder layer (B, S, E): its projected, padding-zeroed memory
        cache: list[LayerCache] | None = None,  # per decoder layer, for incremental decoding
        start: int = 0,  # position of tgt_in[:, 0] (the number of cached steps)
    ) -> Tensor:  # (B, T, V) logits
        x = self._embed(tgt_in, self.tgt_embed, start + tgt_in.shape[1])
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory[i], cache[i] if cache is not None else None, start)
        return self.generator(self.decoder_norm(x))

    def project_memory(self, memory: Tensor, keep: Tensor | None) -> list[Tensor]:
        """Each decoder layer's view of the encoder output: (B, S, E), padding zeroed."""
        return [layer.cross.project_memory(memory, keep) for layer in self.decoder_layers]

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """(B, S) source ids, (B, T) shifted target ids -> (B, T, V) logits (teacher forcing)."""
        return self.decode(tgt_in, self.project_memory(*self.encode(src)))

    # ------------------------------------------------------------------ decoding (model/decoding.py)

    def start_decoding(self, src: Tensor, beams: int = 1) -> DecodeState:
        """Encode (B, S) ``src`` once; the state of B x ``beams`` hypotheses with empty prefixes."""
        memory = self.project_memory(*self.encode(src))
        if beams > 1:
            memory = [m.repeat_interleave(beams, dim=0) for m in memory]  # (B*K, S, E)
        return {"memory": memory, "cache": [{} for _ in self.decoder_layers], "t": 0}

    def decode_step(self, token: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """(B, 1) newest tokens -> (B, V) logits; each layer's cached prefix grows by one position."""
        logits = self.decode(token, state["memory"], state["cache"], start=state["t"])
        state["t"] += 1
        return logits[:, -1], state

    def reorder_state(self, state: DecodeState, rows: Tensor) -> DecodeState:
        """Keep hypotheses ``rows``: the prefixes move; the projected memory is per sentence."""
        for layer_cache in state["cache"]:
            layer_cache["v"] = layer_cache["v"][rows]
        return state
