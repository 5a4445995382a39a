"""Configuration objects: one frozen dataclass per concern, validated at construction.

Why a hand-rolled parser: YAML is parsed with ``yaml.safe_load`` and must reject unknown keys
and wrong types and report *every* problem at once, with the dotted key that is wrong. The
same parser serves the model, training, task and (in ``attntune.search``) search-job sections.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """One or more configuration problems, each naming the key, the value and the rule."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(self.line())

    def line(self) -> str:
        """All problems on one line, prefixed by the file they came from."""
        head = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return head + self.problems[0]
        return head + f"{len(self.problems)} problems: " + "; ".join(self.problems)

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.problems, source)


# --------------------------------------------------------------------------- generic parsing


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the (lightly coerced) value.

    Ints are accepted for floats; ``1e-3`` strings (YAML 1.1 reads them as strings) are accepted
    for floats; bools are never accepted as numbers.
    """
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
        for a in args:
            sub: list[str] = []
            v = coerce(value, a, key, sub)
            if not sub:
                return v
        problems.append(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{key}: {value!r} is not {_type_name(tp)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: expected a number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
        return dict(value) if isinstance(value, Mapping) else value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        (inner, *_) = get_args(tp) or (Any,)
        out = [coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, key, problems)
    return value


def parse_dataclass(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, appending problems instead of raising.

    Unknown keys, wrong types and the class's own ``validate()`` rules are all collected.
    Returns ``None`` when the object could not be built.
    """
    dotted = (prefix + ".") if prefix else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{prefix or 'top level'}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    unknown = False
    start = len(problems)
    for k, v in data.items():
        if k not in fields:
            valid = ", ".join(sorted(fields))
            problems.append(f"{dotted}{k}: unknown key (valid keys: {valid})")
            unknown = True
            continue
        kwargs[k] = coerce(v, hints[k], f"{dotted}{k}", problems)
    typed_ok = not any(": unknown key" not in p for p in problems[start:])
    before = len(problems)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{dotted}{name}: required key is missing")
    if len(problems) > before or not typed_ok:
        return None
    # Known keys with the right types: build anyway so the class's own rules are reported too.
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        problems.extend(f"{dotted}{p}" for p in e.problems)
        return None
    except TypeError as e:  # a nested section that failed to parse left a None behind
        problems.append(f"{prefix or 'top level'}: {e}")
        return None
    return None if unknown else obj


def load_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Build ``cls`` from ``data`` or raise one ConfigError listing every problem."""
    problems: list[str] = []
    obj = parse_dataclass(cls, data, prefix, problems)
    if problems:
        raise ConfigError(problems)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (tuples become lists, for YAML)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


class _Validated:
    """Mixin: run ``_check`` on construction and raise one ConfigError for all problems."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        self._check(problems)
        if problems:
            raise ConfigError(problems)

    def _check(self, problems: list[str]) -> None:  # pragma: no cover - overridden
        pass


def _positive(problems: list[str], **values: Any) -> None:
    for k, v in values.items():
        if v is not None and v <= 0:
            problems.append(f"{k}: must be > 0, got {v}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig(_Validated):
    """Encoder-decoder Transformer shape (Vaswani et al. 2017); vocab sizes come from the data."""

    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 1
    n_decoder_layers: int = 1
    d_ff: int = 512
    dropout: float = 0.1
    norm_first: bool = True
    tie_embeddings: bool = True
    max_len: int = 128

    def _check(self, problems: list[str]) -> None:
        _positive(
            problems,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers,
            d_ff=self.d_ff,
            max_len=self.max_len,
        )
        if self.d_model > 0 and self.n_heads > 0 and self.d_model % self.n_heads != 0:
            problems.append(
                f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads} "
                "(d_model must be a multiple of n_heads)"
            )
        if not (0.0 <= self.dropout < 1.0) or math.isnan(self.dropout):
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig(_Validated):
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
        _positive(
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
class TaskConfig(_Validated):
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
        _positive(
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
    configuration is checked by exactly the same code as a hand-written one.
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
        "model": {**to_dict(run.model), **sections["model"]},
        "train": {**to_dict(run.train), **sections["train"]},
        "provenance": run.provenance,
    }
    return load_dataclass(RunConfig, data)


def config_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
