"""Configuration objects: one frozen dataclass per concern, validated at construction.

A config file (``yaml.safe_load`` output) is type-checked by pydantic v2 at the parsing boundary
(``attntune.model.parsing``, whose names are importable from here too): unknown keys rejected,
*every* problem reported at once with its dotted key. The dataclasses stay plain and frozen, their
cross-field rules in ``__post_init__``, so ``attntune.model`` builds configs with torch alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from attntune.model.parsing import (  # noqa: F401 - the parser's names, imported from here by their users
    ConfigError,
    Validated,
    check_positive,
    config_fields,
    did_you_mean,
    file_not_found,
    format_errors,
    load_dataclass,
    parse_dataclass,
    parse_fields,
    pydantic_type,
    rule_error,
    to_dict,
)

# --------------------------------------------------------------------------- model


# µP (``parameterization: mup``, model/mup.py): the switch, then the fields only it reads.
MUP_FIELDS = ("parameterization", "mup_base_d_model", "mup_output_mult", "mup_attn_mult")
# The fields each architecture family reads (``model.family``); every other field must keep its
# default, so a config never carries a setting that changes nothing (docs/conventions.md).
_SHARED_FIELDS = ("family", "d_model", "n_encoder_layers", "n_decoder_layers", "dropout", "tie_embeddings", "max_len")
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "transformer": (*_SHARED_FIELDS, "n_heads", "d_ff", "norm_first", *MUP_FIELDS),
    "rnn": (*_SHARED_FIELDS, "rnn_cell", "hidden", "bidirectional", "attention"),
    "mlp": (*_SHARED_FIELDS, "d_ff", "token_mixing_dim"),
}


def fields_read(family: str, parameterization: str = "standard") -> tuple[str, ...]:
    """The model fields a config of ``family`` reads: what records show (MLflow params, the best
    config a search prints), so a Transformer's run never lists an RNN setting that changed nothing."""
    used = FAMILY_FIELDS.get(family, FAMILY_FIELDS["transformer"])
    return used if parameterization == "mup" else tuple(f for f in used if f not in MUP_FIELDS[1:])


def fields_unread(family: str, parameterization: str = "standard") -> set[str]:
    """The model fields of other families (and ``mup_*`` under standard): left out of records."""
    every = {f for fields in FAMILY_FIELDS.values() for f in fields}
    return every - set(fields_read(family, parameterization))


_CHOICES = {
    "family": tuple(FAMILY_FIELDS),
    "rnn_cell": ("gru", "lstm"),
    "attention": ("additive", "dot"),
    "parameterization": ("standard", "mup"),
}


@dataclass(frozen=True)
class ModelConfig(Validated):
    """An encoder-decoder's shape; vocab sizes come from the data.

    ``family`` picks the architecture: ``transformer`` (Vaswani et al. 2017, model/transformer.py),
    ``rnn`` (GRU/LSTM with attention, model/rnn.py) or ``mlp`` (gMLP-style token mixing,
    model/mlp.py). Depth is ``n_encoder_layers``/``n_decoder_layers`` in every family. A field that
    the family does not read (``FAMILY_FIELDS``) must keep its default: a non-default value is
    refused rather than silently ignored.

    ``parameterization: mup`` (transformer only) is µP (Yang et al. 2022, model/mup.py): the best
    learning rate and the multipliers ``mup_output_mult``/``mup_attn_mult`` found at one width hold
    at another (``at_width``); ``mup_base_d_model`` is the width at which it equals ``standard``
    (but for its zero-initialised queries). The ``mup_*`` fields are read only under ``mup``.
    """

    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 1
    n_decoder_layers: int = 1
    d_ff: int = 512
    dropout: float = 0.1
    norm_first: bool = True
    tie_embeddings: bool = True
    max_len: int = 128
    family: Literal["transformer", "rnn", "mlp"] = "transformer"
    # rnn: cell, state size (None: d_model), bidirectional encoder, Luong (dot) or Bahdanau (additive) scores;
    # dot by default: additive attention builds a (B, T, S, hidden) tensor for its scores
    rnn_cell: Literal["gru", "lstm"] = "gru"
    hidden: int | None = None
    bidirectional: bool = False
    attention: Literal["additive", "dot"] = "dot"
    # mlp: channels that go through the token-mixing maps (None: d_model)
    token_mixing_dim: int | None = None
    # transformer: µP (model/mup.py); the base width, the readout and attention-logit multipliers
    parameterization: Literal["standard", "mup"] = "standard"
    mup_base_d_model: int = 128
    mup_output_mult: float = 1.0
    mup_attn_mult: float = 1.0

    def _check(self, problems: list[str]) -> None:
        check_positive(
            problems,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers,
            d_ff=self.d_ff,
            max_len=self.max_len,
            hidden=self.hidden,
            token_mixing_dim=self.token_mixing_dim,
            mup_base_d_model=self.mup_base_d_model,
            mup_output_mult=self.mup_output_mult,
            mup_attn_mult=self.mup_attn_mult,
        )
        for name in ("mup_output_mult", "mup_attn_mult"):
            value = getattr(self, name)
            if math.isnan(value) or value == math.inf:
                problems.append(f"{name}: must be a finite number > 0, got {value}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                problems.append(f"{name}: expected one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        if self.family in FAMILY_FIELDS:
            self._check_family(problems)
        if self.family == "transformer" and self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads:
            problems.append(
                f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads} "
                "(d_model must be a multiple of n_heads)"
            )
        if not (0.0 <= self.dropout < 1.0) or math.isnan(self.dropout):
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")

    def _check_family(self, problems: list[str]) -> None:
        """A field the family does not read must keep its default (``FAMILY_FIELDS``), and the
        ``mup_*`` fields theirs under ``parameterization: standard``."""
        used = FAMILY_FIELDS[self.family]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "parameterization" and f.name not in used:
                problems.append(
                    f"parameterization: {value!r} is for family 'transformer' only (not for rnn/mlp yet), "
                    f"got family={self.family!r}"
                )
                continue
            if f.name in used and f.name in MUP_FIELDS[1:] and self.parameterization != "mup":
                problems.append(
                    f"{f.name}: {value!r} is read only under parameterization 'mup' (got {self.parameterization!r}); "
                    f"set model.parameterization: mup or leave it at its default {f.default!r}"
                )
                continue
            if f.name in used:
                continue
            users = [fam for fam, names in FAMILY_FIELDS.items() if f.name in names]
            problems.append(
                f"{f.name}: {value!r} is not used by family={self.family!r} (only by {' and '.join(users)}); "
                f"leave it at its default {f.default!r}"
            )

    @property
    def head_dim(self) -> int | None:
        """The transformer's per-head width; None for a family without heads."""
        return self.d_model // self.n_heads if self.family == "transformer" else None

    @property
    def rnn_hidden(self) -> int:
        """The RNN state size: ``hidden``, or ``d_model`` when unset."""
        return self.hidden if self.hidden is not None else self.d_model

    @property
    def mixing_dim(self) -> int:
        """The MLP's token-mixing width: ``token_mixing_dim``, or ``d_model`` when unset."""
        return self.token_mixing_dim if self.token_mixing_dim is not None else self.d_model


def at_width(cfg: ModelConfig, d_model: int) -> ModelConfig:
    """``cfg`` at width ``d_model``: how a search tuned at a narrow proxy is trained at the target width.

    Keeps ``n_heads``, so ``head_dim`` grows with the width (µP's 1/head_dim attention scale is the
    rule for that), and scales ``d_ff`` by ``d_model / cfg.d_model`` (rounded), so every hidden
    matrix widens by the same factor; keeps depth, dropout, ``mup_base_d_model``, the multipliers and
    every other field. Under ``parameterization: mup`` the tuned learning rate and multipliers
    transfer; under ``standard`` this is a plain resize. Transformer only; raises ConfigError when
    ``d_model`` is not a positive multiple of ``n_heads``.
    """
    if cfg.family != "transformer":
        raise ConfigError(f"family: width transfer is for family 'transformer' only, got {cfg.family!r}")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
        raise ConfigError(f"d_model: the target width must be an integer > 0, got {d_model!r}")
    d_ff = max(1, round(cfg.d_ff * d_model / cfg.d_model))
    return dataclasses.replace(cfg, d_model=d_model, d_ff=d_ff)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig(Validated):
    """How one model is trained. ``lr`` is the peak learning rate, reached at the end of warmup."""

    lr: float = 2e-3
    warmup_steps: int = 200
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    batch_size: int = 64
    batch_unit: Literal["sentences", "tokens"] = "sentences"
    epochs: int = 10
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = 1.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    num_threads: int | None = None
    bleu_samples: int = 200
    max_decode_len: int | None = None
    beam_size: int = 1
    # A round instead of an epoch: each reported "epoch" trains this many target tokens (or exactly
    # this many optimizer steps) from a continuing stream of shuffled batches (model/train.py).
    round_tokens: int | None = None
    round_steps: int | None = None
    # Stop (DivergedError) once the post-warmup moving average of the training loss exceeds this.
    loss_ceiling: float | None = None

    def _check(self, problems: list[str]) -> None:
        check_positive(
            problems,
            lr=self.lr,
            batch_size=self.batch_size,
            epochs=self.epochs,
            max_steps_per_epoch=self.max_steps_per_epoch,
            grad_clip=self.grad_clip,
            num_threads=self.num_threads,
            max_decode_len=self.max_decode_len,
            beam_size=self.beam_size,
            round_tokens=self.round_tokens,
            round_steps=self.round_steps,
            loss_ceiling=self.loss_ceiling,
        )
        if self.round_tokens is not None and self.round_steps is not None:
            problems.append(
                f"round_tokens/round_steps: a round is either tokens or steps, not both "
                f"(got round_tokens={self.round_tokens}, round_steps={self.round_steps})"
            )
        if self.loss_ceiling is not None and math.isnan(self.loss_ceiling):
            problems.append(f"loss_ceiling: must be > 0, got {self.loss_ceiling}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not (0.0 <= self.label_smoothing < 1.0):
            problems.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.bleu_samples < 0:
            problems.append(f"bleu_samples: must be >= 0, got {self.bleu_samples}")


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskConfig(Validated):
    """Which data to train on. ``name`` picks a task from the registry in ``attntune.model.data``.

    Fields a task does not use are ignored by it; the task's builder rejects settings it cannot
    honour (e.g. ``path`` for a generated task).
    """

    name: str = "reverse"
    # tsv task
    path: str | None = None
    src_col: int = 0
    tgt_col: int = 1
    license: str | None = None
    attribution: str | None = None
    src_tokenizer: Literal["char", "word", "bpe"] = "char"
    tgt_tokenizer: Literal["char", "word", "bpe"] = "word"
    vocab_size: int = 8000
    lowercase: bool = False
    max_pairs: int | None = None
    # generated tasks
    n_train: int = 4000
    min_seq_len: int = 3
    max_seq_len: int = 12
    n_symbols: int = 20
    # splits (all tasks)
    val_size: int = 500
    test_size: int = 500
    max_tokens: int = 64
    split_seed: int = 0

    def _check(self, problems: list[str]) -> None:
        check_positive(
            problems,
            vocab_size=self.vocab_size,
            max_pairs=self.max_pairs,
            n_train=self.n_train,
            n_symbols=self.n_symbols,
            val_size=self.val_size,
            max_tokens=self.max_tokens,
            min_seq_len=self.min_seq_len,
        )
        if self.test_size < 0:
            problems.append(f"test_size: must be >= 0, got {self.test_size}")
        if self.max_seq_len < self.min_seq_len:
            problems.append(
                f"max_seq_len: {self.max_seq_len} is below min_seq_len={self.min_seq_len}"
            )
        if self.src_col < 0 or self.tgt_col < 0:
            problems.append("src_col/tgt_col: column indexes must be >= 0")


# --------------------------------------------------------------------------- one training run


@dataclass(frozen=True)
class RunConfig:
    """What ``attntune train`` takes: a task, a model and a training recipe.

    ``provenance`` is free-form and only recorded: ``attntune export`` writes it so a production
    run can be traced back to the search trial it came from.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    provenance: dict[str, Any] | None = None


def load_run_config(data: Any, source: str | None = None) -> RunConfig:
    """Parse a ``train`` YAML mapping; raise ConfigError (with the source file) listing all problems."""
    try:
        return load_dataclass(RunConfig, data)
    except ConfigError as e:
        raise (e.with_source(source) if source else e) from None


def apply_overrides(run: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """Return ``run`` with dotted keys (``model.d_model``, ``train.lr``) replaced.

    Raises ConfigError when a key is unknown or the resulting config breaks a rule, so a sampled
    configuration is checked by exactly the same code as a hand-written one. Overriding
    ``model.family`` resets the base's model fields that family does not read (``FAMILY_FIELDS``).
    """
    sections: dict[str, dict[str, Any]] = {"task": {}, "model": {}, "train": {}}
    problems: list[str] = []
    for key, v in values.items():
        section, _, name = key.partition(".")
        if section not in sections or not name:
            problems.append(f"{key}: unknown parameter (expected task.*, model.* or train.*)")
            continue
        sections[section][name] = v
    if problems:
        raise ConfigError(problems)
    data = {
        "task": {**to_dict(run.task), **sections["task"]},
        "model": _model_overrides(run.model, sections["model"]),
        "train": {**to_dict(run.train), **sections["train"]},
        "provenance": run.provenance,
    }
    return load_dataclass(RunConfig, data)


def _model_overrides(base: ModelConfig, values: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``values`` replaced; a new ``family`` also resets the base's fields it does not
    read to their defaults, so a family sampled onto a base config of another family is valid
    (fields given in ``values`` are kept, and checked)."""
    out = {**to_dict(base), **values}
    used = FAMILY_FIELDS.get(values.get("family", ""))
    if used is not None:
        defaults = to_dict(ModelConfig())
        out = {k: v if k in used or k in values else defaults[k] for k, v in out.items()}
    return out
