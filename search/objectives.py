"""Objectives and constraints of a search: what a trial is judged on, and what it must respect.

Three kinds, by when the value is known:

- ``reported``: a metric the trainer reports every epoch (``val_loss``, ``val_bleu``, ...); a
  trial's value is its best epoch;
- ``static``: known from the config before anything is built (``n_params``, ``flops``); a
  constraint on it makes a config INFEASIBLE, never trained;
- ``measured``: measured once after training on the trial's device (``latency_ms``: greedy
  translation of one sentence at batch 1); a constraint on it marks the *completed* trial
  infeasible (Optuna's constraints, the ``feasible`` tag), and it is never picked.

Job file::

    objectives: {val_loss: min, n_params: min}
    constraints: ["n_params <= 20e6", "latency_ms <= 5"]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REPORTED, STATIC, MEASURED = "reported", "static", "measured"

# Metrics the trainer reports every epoch, with the direction that is better.
METRIC_MODES = {
    "train_loss": "min",
    "val_loss": "min",
    "val_accuracy": "max",
    "val_bleu": "max",
}

# name -> (default mode, kind, what it is)
KNOWN: dict[str, tuple[str, str, str]] = {
    **{m: (mode, REPORTED, "reported each epoch; a trial's value is its best epoch") for m, mode in METRIC_MODES.items()},
    "n_params": ("min", STATIC, "trainable parameters, exact, from the config"),
    "flops": ("min", STATIC, "forward FLOPs per target token at the task's longest sequence, from the config"),
    "latency_ms": ("min", MEASURED, "ms to translate one validation sentence at batch 1 (greedy), after training"),
}


@dataclass(frozen=True)
class Objective:
    name: str
    mode: str  # "min" | "max"

    @property
    def kind(self) -> str:
        return KNOWN[self.name][1]


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str  # "<=" | ">="
    limit: float

    @property
    def kind(self) -> str:
        return KNOWN[self.name][1]

    def violation(self, value: float) -> float:
        """<= 0 when satisfied (Optuna's convention), else by how much it is missed."""
        return value - self.limit if self.op == "<=" else self.limit - value

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.limit:g}"


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE_]+)\s*$")


def parse_objectives(value: Any, problems: list[str]) -> tuple[Objective, ...]:
    """``{name: min|max}`` in order (a list of one-key mappings is accepted too)."""
    if value is None:
        return ()
    items: list[tuple[Any, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list) and all(isinstance(x, Mapping) and len(x) == 1 for x in value):
        items = [next(iter(x.items())) for x in value]
    else:
        problems.append("objectives: expected a mapping of objective name to min or max, e.g. {val_loss: min, n_params: min}")
        return ()
    out: list[Objective] = []
    for name, mode in items:
        if name not in KNOWN:
            problems.append(f"objectives.{name}: unknown objective (valid: {', '.join(KNOWN)})")
            continue
        if mode not in ("min", "max"):
            problems.append(f"objectives.{name}: mode must be min or max, got {mode!r}")
            continue
        out.append(Objective(str(name), str(mode)))
    if items and not out:
        return ()
    if out and not any(o.kind == REPORTED for o in out):
        problems.append(
            "objectives: at least one must be a metric reported during training "
            f"({', '.join(METRIC_MODES)}), so trials can be compared and stopped early"
        )
    return tuple(out)


def parse_constraints(value: Any, problems: list[str]) -> tuple[Constraint, ...]:
    """``["n_params <= 20e6", "latency_ms <= 5"]``."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        problems.append('constraints: expected a list such as ["n_params <= 20e6", "latency_ms <= 5"]')
        return ()
    out = []
    for i, text in enumerate(value):
        m = _CONSTRAINT_RE.match(str(text))
        if not m:
            problems.append(f"constraints[{i}]: {text!r} is not 'NAME <= NUMBER' or 'NAME >= NUMBER'")
            continue
        name, op, number = m.groups()
        if name not in KNOWN:
            problems.append(f"constraints[{i}]: unknown quantity {name!r} (valid: {', '.join(KNOWN)})")
            continue
        try:
            limit = float(number.replace("_", ""))
        except ValueError:
            problems.append(f"constraints[{i}]: {number!r} is not a number")
            continue
        if not math.isfinite(limit):
            problems.append(f"constraints[{i}]: the limit must be finite, got {number}")
            continue
        out.append(Constraint(name, op, limit))
    return tuple(out)


def forward_flops(cfg: Any, max_tokens: int) -> int:
    """Forward FLOPs per target token (2 per multiply-add) for a source and target of
    ``max_tokens`` tokens, without the output projection (``add_output_flops``), for the config's
    family (``model.family``; a config without one is a Transformer). Embedding lookups,
    normalisation and element-wise operations cost nothing here."""
    family = getattr(cfg, "family", "transformer")
    per_family = {"transformer": transformer_flops, "rnn": rnn_flops, "mlp": mlp_flops}[family]
    return int(per_family(cfg, max(1, int(max_tokens))))


def transformer_flops(cfg: Any, t: int) -> int:
    """Every layer's weight matmuls, plus attention's scores and weighted sums over ``t`` positions."""
    d, f = cfg.d_model, cfg.d_ff
    enc_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * t * d  # projections + FFN, scores + mix
    dec_layer = 2 * (8 * d * d + 2 * d * f) + 2 * 2 * 2 * t * d  # self + cross attention
    return int(cfg.n_encoder_layers * enc_layer + cfg.n_decoder_layers * dec_layer)


def rnn_flops(cfg: Any, t: int) -> int:
    """RNN layers (input and recurrent matmuls of every gate), the attention keys, scores and
    context over ``t`` source positions, and the attentional vector. One source token per target
    token (equal lengths); the decoder's initial state, once per sentence, is left out."""
    d = cfg.d_model
    h = cfg.hidden if cfg.hidden is not None else d
    dirs = 2 if cfg.bidirectional else 1
    e = dirs * h
    g = 4 if cfg.rnn_cell == "lstm" else 3

    def layer(inputs: int) -> int:
        return 2 * g * h * (inputs + h)

    encoder = dirs * (layer(d) + (cfg.n_encoder_layers - 1) * layer(e))
    decoder = layer(d) + (cfg.n_decoder_layers - 1) * layer(h)
    keys = 2 * e * h
    scores = 2 * h * h + 2 * t * h if cfg.attention == "additive" else 2 * t * h  # W_q + v.tanh(), or q.k
    return int(encoder + decoder + keys + scores + 2 * t * e + 2 * (e + h) * d)


def mlp_flops(cfg: Any, t: int) -> int:
    """Every layer's channel matmuls, plus the token-mixing maps over ``t`` positions (the full
    map, as ``transformer_flops`` counts full attention in the decoder)."""
    d, f = cfg.d_model, cfg.d_ff
    e = cfg.token_mixing_dim if cfg.token_mixing_dim is not None else d
    spatial = 2 * (d * 2 * e + e * d) + 2 * t * e  # in/out projections, the map over positions
    cross = 2 * (2 * d * e + e * d) + 2 * t * e  # gate and memory projections, out, the map
    channel = 2 * 2 * d * f
    return int(cfg.n_encoder_layers * (spatial + channel) + cfg.n_decoder_layers * (spatial + cross + channel))


def add_output_flops(flops: int, cfg: Any, tgt_vocab: int) -> int:
    return int(flops + 2 * cfg.d_model * tgt_vocab)


def static_values(model_cfg: Any, n_params: int, vocab: tuple[int, int], max_tokens: int) -> dict[str, float]:
    """The static quantities of a config: known before a model is built."""
    return {"n_params": n_params, "flops": add_output_flops(forward_flops(model_cfg, max_tokens), model_cfg, vocab[1])}


def violations(constraints: Sequence[Constraint], values: Mapping[str, Any]) -> list[float] | None:
    """One violation per constraint (<= 0 satisfied), or None if a value is missing."""
    out = []
    for c in constraints:
        v = values.get(c.name)
        if v is None or not math.isfinite(float(v)):
            return None
        out.append(c.violation(float(v)))
    return out
