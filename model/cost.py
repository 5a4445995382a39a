"""What a model config costs, from the config alone: no torch here.

Why a module of its own: the search driver counts every sampled config's parameters before a trial
starts (``max_params``, constraints, the memory estimate, the ``n_params`` objective), and it must
not import torch for that: the driver never builds a model, and torch's import is over a second of
every ``attntune run``. ``attntune.model.families.build_model`` builds exactly the model counted
here, for every family (the tests compare each count with the built module's).
"""

from __future__ import annotations

from attntune.model.config import ModelConfig


def n_params(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> int:
    """Exact number of trainable parameters of ``build_model(cfg, ...)``, tied weights counted once."""
    body = {"transformer": transformer_params, "rnn": rnn_params, "mlp": mlp_params}[cfg.family](cfg)
    embeddings = (src_vocab_size + tgt_vocab_size) * cfg.d_model
    output = 0 if cfg.tie_embeddings else tgt_vocab_size * cfg.d_model  # the generator has no bias
    return embeddings + body + output


def transformer_params(cfg: ModelConfig) -> int:
    """``Transformer``'s layers and final norms (embeddings and output projection excluded)."""
    d, f = cfg.d_model, cfg.d_ff
    norm = 2 * d  # LayerNorm weight + bias
    attn = 4 * d * d + 4 * d  # Q, K, V and output projections with biases (fused or not)
    ffn = d * f + f + f * d + d
    encoder = cfg.n_encoder_layers * (attn + ffn + 2 * norm)
    decoder = cfg.n_decoder_layers * (2 * attn + ffn + 3 * norm)
    final_norms = 2 * norm if cfg.norm_first else 0
    return encoder + decoder + final_norms


def rnn_gates(cfg: ModelConfig) -> int:
    """Gate blocks per RNN layer: GRU 3 (reset, update, new), LSTM 4 (input, forget, cell, output)."""
    return 4 if cfg.rnn_cell == "lstm" else 3


def rnn_params(cfg: ModelConfig) -> int:
    """``RNNSeq2Seq`` without embeddings and output projection: RNN stacks, bridge, attention, combine."""
    d, h, g = cfg.d_model, cfg.rnn_hidden, rnn_gates(cfg)
    dirs = 2 if cfg.bidirectional else 1
    e = dirs * h  # encoder state size

    def layer(inputs: int) -> int:  # nn.GRU/nn.LSTM, one direction: W_ih, W_hh, b_ih, b_hh
        return g * h * (inputs + h) + 2 * g * h

    encoder = dirs * (layer(d) + (cfg.n_encoder_layers - 1) * layer(e))
    decoder = layer(d) + (cfg.n_decoder_layers - 1) * layer(h)
    bridge = (e + 1) * cfg.n_decoder_layers * h
    attention = (e * h + h + h * h + h) if cfg.attention == "additive" else e * h  # W_k (+ bias, W_q, v)
    combine = (e + h) * d + d
    return encoder + decoder + bridge + attention + combine


def mlp_params(cfg: ModelConfig) -> int:
    """``MLPSeq2Seq`` without embeddings and output projection: mixing layers and final norms."""
    d, e, f, m = cfg.d_model, cfg.mixing_dim, cfg.d_ff, cfg.max_len
    norm = 2 * d
    position_map = m * m + m  # W and its per-position bias
    spatial = norm + d * 2 * e + 2 * e + 2 * e + position_map + e * d + d  # LN, in_proj, LN(v), W, out_proj
    cross = norm + 2 * (d * e + e) + position_map + e * d + d  # LN, q_proj, mem_proj, C, out_proj
    channel = norm + d * f + f + f * d + d
    encoder = cfg.n_encoder_layers * (spatial + channel)
    decoder = cfg.n_decoder_layers * (spatial + cross + channel)
    return encoder + decoder + 2 * norm
