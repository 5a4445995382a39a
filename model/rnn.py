"""Encoder-decoder RNN with attention (Bahdanau et al. 2015, Luong et al. 2015): the Transformer's
predecessor, so a search can ask whether attention-only models win at its budget.

Why this shape ("attention on top", Luong et al. without input feeding): the decoder RNN reads only
the target tokens, so teacher-forced training runs each RNN stack as one ``nn.GRU``/``nn.LSTM``
call (cuDNN on a GPU) over the whole sequence, and attention then scores every target position
against the encoder states at once. Feeding the context back into the RNN's input (Bahdanau's
decoder, Luong's input feeding) would force a Python loop over target positions in training.

- Encoder: embeddings -> ``n_encoder_layers`` GRU/LSTM layers, optionally bidirectional. Padded
  batches are packed: padding costs no RNN step, and a backward direction starts at each row's last
  real token. The decoder reads every target position, as the Transformer does (right-padded
  targets cannot reach an earlier position).
- Decoder state: tanh(Linear(masked mean of the encoder states)) for every layer (an LSTM's cell
  starts at zero); Bahdanau initialised from the backward encoder, the mean also suits one direction.
- Attention: keys W_k m_j, projected once per sentence; ``additive`` scores v . tanh(W_q h_t + k_j)
  (Bahdanau), ``dot`` scores h_t . k_j / sqrt(H) (Luong's "general", scaled); padded source
  positions are masked. The context c_t is the weighted sum of the encoder states m_j.
- Output: the attentional vector tanh(W_c [c_t; h_t]) of size D (so the output projection can share
  the target embedding, ``tie_embeddings``), dropout, then the vocabulary projection.

Dropout: on embeddings, between stacked RNN layers (``nn.GRU``'s own) and on the attentional vector.
Under autocast the RNN stacks still run in fp32 (``_run``); attention and projections follow autocast.
Embeddings are N(0, D^-1/2) and scaled by sqrt(D), as in the Transformer.

Shapes: B batch, S source length, T target length, D d_model, H hidden (``rnn_hidden``), E encoder
state size (H, or 2H bidirectional), L decoder layers, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from attntune.model.config import ModelConfig
from attntune.model.decoding import DecodeState

Hidden = Tensor | tuple[Tensor, Tensor]  # GRU: h (L, B, H); LSTM: (h, c)


def _rnn(cfg: ModelConfig, input_size: int, layers: int, bidirectional: bool = False) -> nn.RNNBase:
    cls = nn.LSTM if cfg.rnn_cell == "lstm" else nn.GRU
    dropout = cfg.dropout if layers > 1 else 0.0  # nn.GRU warns about dropout on a single layer
    return cls(input_size, cfg.rnn_hidden, layers, batch_first=True, dropout=dropout, bidirectional=bidirectional)


def _run(rnn: nn.RNNBase, x: Tensor | PackedSequence, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
    """``rnn(x, hidden)`` in fp32 even under autocast: CUDA autocast runs cuDNN's RNN in fp16 whatever
    its dtype, and fp16 gradients underflow without the loss scaler that bf16 training goes without."""
    if not torch.is_autocast_enabled(x.data.device.type):
        return rnn(x, hidden)
    if hidden is not None:
        hidden = tuple(h.float() for h in hidden) if isinstance(hidden, tuple) else hidden.float()
    with torch.autocast(x.data.device.type, enabled=False):
        return rnn(x.float(), hidden)


def _run_padded(rnn: nn.RNNBase, x: Tensor, pad: Tensor | None) -> Tensor:
    """``rnn`` over right-padded (B, L, .) ``x``, packed when ``pad`` (B, L) marks padding: trailing
    padding costs no RNN step, a backward direction starts at each row's last real token, and the
    output there is 0."""
    if pad is None:
        return _run(rnn, x)[0]
    positions = torch.arange(1, pad.shape[1] + 1, device=pad.device)
    lengths = (positions * ~pad).amax(1).clamp(min=1).cpu()  # up to each row's last real token
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(_run(rnn, packed)[0], batch_first=True, total_length=x.shape[1])[0]


class Attention(nn.Module):
    """Additive (Bahdanau) or scaled dot-product (Luong) attention over the encoder states."""

    def __init__(self, cfg: ModelConfig, enc_dim: int):
        super().__init__()
        h = cfg.rnn_hidden
        self.additive = cfg.attention == "additive"
        self.key_proj = nn.Linear(enc_dim, h, bias=self.additive)
        if self.additive:
            self.query_proj = nn.Linear(h, h, bias=False)
            self.score = nn.Linear(h, 1, bias=False)  # v

    def keys(self, memory: Tensor) -> Tensor:  # (B, S, E) -> (B, S, H), once per sentence
        return self.key_proj(memory)

    def forward(
        self,
        query: Tensor,  # (B, T, H) decoder states
        keys: Tensor,  # (B, S, H)
        memory: Tensor,  # (B, S, E) values
        mask: Tensor | None,  # (B, 1, S) bool, True = attend; None = attend everywhere
    ) -> Tensor:  # (B, T, E) contexts
        if self.additive:
            q = self.query_proj(query)  # (B, T, H)
            scores = self.score(torch.tanh(q[:, :, None, :] + keys[:, None, :, :])).squeeze(-1)  # (B, T, S)
        else:  # on CPU bmm beats F.scaled_dot_product_attention here: values (E) and keys (H) differ in size
            scores = torch.bmm(query * query.shape[-1] ** -0.5, keys.transpose(1, 2))  # (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ memory  # (B, T, S) @ (B, S, E)


class RNNSeq2Seq(nn.Module):
    """GRU/LSTM encoder-decoder with attention; ``forward(src, tgt_in)`` gives logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        d, h = cfg.d_model, cfg.rnn_hidden
        enc_dim = h * (2 if cfg.bidirectional else 1)
        self.src_embed = nn.Embedding(src_vocab_size, d)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d)
        self.embed_scale = math.sqrt(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = _rnn(cfg, d, cfg.n_encoder_layers, cfg.bidirectional)
        self.decoder = _rnn(cfg, d, cfg.n_decoder_layers)
        self.bridge = nn.Linear(enc_dim, cfg.n_decoder_layers * h)
        self.attention = Attention(cfg, enc_dim)
        self.combine = nn.Linear(enc_dim + h, d)
        self.generator = nn.Linear(d, tgt_vocab_size, bias=False)
        for table in (self.src_embed, self.tgt_embed):
            nn.init.normal_(table.weight, mean=0.0, std=d**-0.5)
        if cfg.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S) source ids -> encoder states (B, S, E) and the padding mask (B, 1, S) or None."""
        pad = src.eq(self.pad_id)  # (B, S)
        padded = bool(pad.any())
        x = self.dropout(self.src_embed(src) * self.embed_scale)  # (B, S, D)
        memory = _run_padded(self.encoder, x, pad if padded else None)  # (B, S, E)
        return memory, (~pad[:, None, :] if padded else None)

    def initial_state(self, memory: Tensor, mask: Tensor | None) -> Hidden:
        """The decoder's first state, (L, B, H) (an LSTM's cell at zero), from the mean encoder state."""
        if mask is None:
            mean = memory.mean(1)  # (B, E)
        else:
            keep = mask[:, 0, :, None].to(memory.dtype)  # (B, S, 1)
            mean = (memory * keep).sum(1) / keep.sum(1)
        b, n, h = memory.shape[0], self.cfg.n_decoder_layers, self.cfg.rnn_hidden
        state = torch.tanh(self.bridge(mean)).view(b, n, h).transpose(0, 1).contiguous()  # (L, B, H)
        return (state, torch.zeros_like(state)) if self.cfg.rnn_cell == "lstm" else state

    def decode(
        self,
        tgt_in: Tensor,  # (B, T) target ids shifted right (starting with BOS)
        memory: Tensor,  # (B, S, E)
        keys: Tensor,  # (B, S, H)
        mask: Tensor | None,  # (B, 1, S)
        hidden: Hidden,  # (L, B, H): the state before tgt_in[:, 0]
    ) -> tuple[Tensor, Hidden]:  # (B, T, V) logits, the state after tgt_in[:, -1]
        x = self.dropout(self.tgt_embed(tgt_in) * self.embed_scale)  # (B, T, D)
        out, hidden = _run(self.decoder, x, hidden)  # (B, T, H)
        context = self.attention(out, keys, memory, mask)  # (B, T, E)
        attentional = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))  # (B, T, D)
        return self.generator(self.dropout(attentional)), hidden

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """(B, S) source ids, (B, T) shifted target ids -> (B, T, V) logits (teacher forcing)."""
        memory, mask = self.encode(src)
        logits, _ = self.decode(tgt_in, memory, self.attention.keys(memory), mask, self.initial_state(memory, mask))
        return logits

    # ------------------------------------------------------------------ decoding (model/decoding.py)

    def start_decoding(self, src: Tensor, beams: int = 1) -> DecodeState:
        """Encode (B, S) ``src`` once; the state of B x ``beams`` hypotheses: encoder states, keys, mask
        and the decoder's RNN state."""
        memory, mask = self.encode(src)
        if beams > 1:
            memory = memory.repeat_interleave(beams, dim=0)  # (B*K, S, E)
            mask = mask.repeat_interleave(beams, dim=0) if mask is not None else None
        hidden = self.initial_state(memory, mask)
        return {"memory": memory, "keys": self.attention.keys(memory), "mask": mask, "hidden": hidden}

    def decode_step(self, token: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]:
        """(B, 1) newest tokens -> (B, V) logits; the RNN state advances by one position."""
        logits, state["hidden"] = self.decode(token, state["memory"], state["keys"], state["mask"], state["hidden"])
        return logits[:, -1], state

    def reorder_state(self, state: DecodeState, rows: Tensor) -> DecodeState:
        """Keep hypotheses ``rows``: only the RNN state moves (the encoder side is per sentence)."""
        hidden = state["hidden"]
        state["hidden"] = tuple(x[:, rows] for x in hidden) if isinstance(hidden, tuple) else hidden[:, rows]
        return state
