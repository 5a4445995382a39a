"""Greedy and beam-search decoding for every architecture family, through one small interface.

Why an interface instead of one decoder per family: translation, BLEU, latency and the tests must
decode a Transformer, an RNN and an MLP alike. Each model keeps what it needs between steps in a
``DecodeState`` (key/value caches, an RNN state, a cached prefix) and offers three methods:

- ``start_decoding(src, beams)``: encode (B, S) sources once; a state for B x beams hypotheses,
  row ``i * beams + k`` being beam k of sentence i;
- ``decode_step(token, state)``: (B, 1) newest tokens -> (B, V) next-token logits and the state
  advanced by one position (cached: no earlier position is recomputed);
- ``reorder_state(state, rows)``: keep hypotheses ``rows`` (beam search). Rows never move to
  another sentence's beams, so what depends on the source alone needs no reordering.

Shapes: B batch (x beams), S source length, V target vocabulary, K beams.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from attntune.model.config import ModelConfig

DecodeState = dict[str, Any]


class Decodable(Protocol):
    """What a model offers for incremental decoding (see the module docstring)."""

    cfg: ModelConfig

    def start_decoding(self, src: Tensor, beams: int = 1) -> DecodeState: ...

    def decode_step(self, token: Tensor, state: DecodeState) -> tuple[Tensor, DecodeState]: ...

    def reorder_state(self, state: DecodeState, rows: Tensor) -> DecodeState: ...


def _max_steps(model: Decodable, max_len: int) -> int:
    # BOS sits at position 0, so at most max_len - 1 generated tokens are ever fed back.
    return max(1, min(max_len, model.cfg.max_len))


def _strip(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


@torch.no_grad()
def greedy_decode(model: Decodable, src: Tensor, bos_id: int, eos_id: int, max_len: int) -> list[list[int]]:
    """Greedy translations of (B, S) ``src``: per row the generated ids without BOS and EOS.

    The encoder runs once; the decoder runs one position per step on its cached state.
    Call ``model.eval()`` first (dropout is not switched off here).
    """
    state = model.start_decoding(src)
    b = src.shape[0]
    token = torch.full((b, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    steps: list[Tensor] = []
    for _ in range(_max_steps(model, max_len)):
        logits, state = model.decode_step(token, state)  # (B, V)
        nxt = logits.argmax(-1).masked_fill(finished, eos_id)  # (B,)
        steps.append(nxt)
        finished |= nxt.eq(eos_id)
        if bool(finished.all()):
            break
        token = nxt[:, None]
    return _strip(torch.stack(steps, dim=1).tolist(), eos_id)  # (B, L) -> rows


@torch.no_grad()
def beam_search(
    model: Decodable,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
) -> list[list[int]]:
    """Beam-search translations of (B, S) ``src``; ids without BOS/EOS, like ``greedy_decode``.

    Hypotheses are ranked by sum of log-probabilities during the search and by the GNMT length
    penalty ((5 + len) / 6) ** length_penalty at the end.
    """
    if beam_size <= 1:
        return greedy_decode(model, src, bos_id, eos_id, max_len)
    k = beam_size
    b = src.shape[0]
    dev = src.device
    state = model.start_decoding(src, beams=k)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # only the first beam is alive at the start
    tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=dev)  # (B*K, 1+t)
    finished = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, device=dev)
    base = (torch.arange(b, device=dev) * k)[:, None]  # (B, 1) first row of each batch item
    for _ in range(_max_steps(model, max_len)):
        logits, state = model.decode_step(tokens[:, -1:], state)  # (B*K, V)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        # A finished hypothesis continues only with EOS, at no cost, so its score stays put.
        logp[finished] = float("-inf")
        logp[finished, eos_id] = 0.0
        v = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * v)  # (B, K*V)
        scores, idx = cand.topk(k, dim=-1)  # (B, K)
        rows = (base + idx // v).view(-1)  # (B*K,) parent hypothesis of each new beam
        tok = (idx % v).view(-1)
        tokens = torch.cat([tokens[rows], tok[:, None]], dim=1)
        lengths = lengths[rows] + (~finished[rows]).float()
        finished = finished[rows] | tok.eq(eos_id)
        state = model.reorder_state(state, rows)
        if bool(finished.all()):
            break
    penalty = ((5.0 + lengths) / 6.0) ** length_penalty  # (B*K,)
    best = (scores.view(-1) / penalty).view(b, k).argmax(-1)  # (B,)
    return _strip(tokens[(base[:, 0] + best)][:, 1:].tolist(), eos_id)
