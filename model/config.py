"""Configuration objects: one frozen dataclass per concern, validated at construction.

A config file (``yaml.safe_load`` output) is type-checked by pydantic v2 at the parsing boundary
(``parse_fields``/``load_dataclass``): unknown keys rejected, *every* problem reported at once with
its dotted key. The dataclasses stay plain and frozen, their cross-field rules in ``__post_init__``,
so ``attntune.model`` builds configs with torch alone. The same parser serves the model, training,
task and (in ``attntune.search``) search-job sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin


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


def file_not_found(path: str | os.PathLike[str]) -> str:
    """The problem for a missing file: "file not found", naming the folder a relative ``path`` was
    looked up in (the current folder, or one below it)."""
    if os.path.isabs(path):
        return "file not found"
    return f"file not found (looked in {os.path.dirname(os.path.abspath(path))})"


# --------------------------------------------------------------------------- parsing (pydantic v2)
#
# A config file is checked at this boundary by pydantic in strict mode, with two before-validators
# for our type rules (below); the dataclasses' own cross-field rules then run in ``__post_init__``.
# pydantic is imported inside these functions, never at the top: ``attntune.model`` must import and
# build configs on a bare GPU box with torch alone (benchmarks/gpu_packing.py); only parsing needs it.

# pydantic error type (its first word) -> what the key expects, in our words.
_EXPECTED = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping",
    "list": "a list",
}
# pydantic bound error type -> (its ctx key, the operator we print).
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def to_number(value: Any) -> Any:
    """``"1e-3"`` as 0.001, since YAML 1.1 reads a float without a dot as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def to_int(value: Any) -> Any:
    """``3.0`` as 3: a whole number written or computed as a float is still an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def pydantic_type(tp: Any) -> Any:
    """The strict-mode pydantic annotation for a config field's annotation.

    Strict mode already refuses bools as numbers, numbers as bools and strings as ints, and takes
    ints for floats; ``to_number``/``to_int`` add the two leniencies config files need. Unions are
    tried left to right, as written. A nested config dataclass becomes ``Any``: ``parse_fields``
    parses it on its own, under its own dotted key.
    """
    from pydantic import BeforeValidator, Field

    if tp is float:
        return Annotated[float, BeforeValidator(to_number)]
    if tp is int:
        return Annotated[int, BeforeValidator(to_int)]
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        members = [pydantic_type(a) for a in args if a is not type(None)]
        inner = functools.reduce(operator.or_, members)
        if len(members) > 1:
            inner = Annotated[inner, Field(union_mode="left_to_right")]
        return inner | None if type(None) in args else inner
    if origin in (dict, Mapping):
        return dict
    if origin is list:
        return list[pydantic_type(args[0])] if args else list
    if dataclasses.is_dataclass(tp):
        return Any
    return tp


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _required(cls: type) -> set[str]:
    return {n for n, f in _init_fields(cls).items() if f.default is f.default_factory is dataclasses.MISSING}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _adapter(cls: type) -> Any:
    """A strict, extra-forbidding pydantic TypeAdapter over ``cls``'s fields, built on first use.

    A TypedDict with every key optional: validation returns exactly the keys given (the dataclass
    supplies the defaults), and a failed key can be dropped and the rest validated again.
    """
    from pydantic import ConfigDict, TypeAdapter
    from typing_extensions import TypedDict

    hints = _hints(cls)
    schema = TypedDict(cls.__name__, {n: pydantic_type(hints[n]) for n in _init_fields(cls)}, total=False)
    schema.__pydantic_config__ = ConfigDict(strict=True, extra="forbid")
    return TypeAdapter(schema)


def rule_error(message: str, key: str = "") -> Exception:
    """For a pydantic model validator: a broken rule, shown as ``<prefix>[.key]: message``."""
    from pydantic_core import PydanticCustomError

    return PydanticCustomError("rule", "{rule}", {"rule": message, "key": key})


def format_errors(errors: Iterable[Mapping[str, Any]], prefix: str, valid_keys: Iterable[str]) -> list[str]:
    """pydantic's ``ValidationError.errors()`` as our one-line problems: dotted key, rule, value.

    Errors are grouped by key, so a union field reports once ("expected a number or a string").
    """
    dotted = f"{prefix}." if prefix else ""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for err in errors:
        sub = (err.get("ctx") or {}).get("key") if err["type"] == "rule" else None
        head = sub or (err["loc"][0] if err["loc"] else None)
        key = f"{dotted}{head}" if head is not None else prefix or "top level"
        groups.setdefault(key, []).append(err)
    return [f"{key}: {_describe(errs, valid_keys)}" for key, errs in groups.items()]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``, did you mean 'd_model'?`` for a misspelt name (nothing when no choice is close)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f", did you mean {close[0]!r}?" if close else ""


def _describe(errs: list[Mapping[str, Any]], valid_keys: Iterable[str]) -> str:
    err = errs[0]
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        name = str(err["loc"][-1]) if err.get("loc") else ""
        return f"unknown key{did_you_mean(name, valid_keys)} (valid keys: {', '.join(sorted(valid_keys))})"
    if kind == "missing":
        return "required key is missing"
    if kind == "rule":
        return ctx["rule"]
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        return f"must be {op} {ctx[name]}, got {value!r}"
    expected = []
    for e in errs:
        if e["type"] == "literal_error":
            text = "one of " + (e.get("ctx") or {}).get("expected", "")
        else:
            text = _EXPECTED.get(e["type"].split("_")[0]) or e["msg"].removeprefix("Input should be ")
        if text not in expected:
            expected.append(text)
    return f"expected {' or '.join(expected)}, got {value!r}"


def parse_fields(cls: type, data: Any, prefix: str, problems: list[str]) -> dict[str, Any] | None:
    """The keys of ``data`` that are valid for dataclass ``cls``, type-checked, nested config
    sections built; every problem is appended. A key that fails is left out, so the caller may let
    its default stand in and go on checking. None when ``data`` is not a mapping."""
    from pydantic import ValidationError

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{prefix or 'top level'}: expected a mapping, got {data!r}")
        return None
    dotted = f"{prefix}." if prefix else ""
    fields = _init_fields(cls)
    data, adapter = dict(data), _adapter(cls)
    try:
        values = adapter.validate_python(data)
    except ValidationError as e:
        errors = e.errors()
        problems.extend(format_errors(errors, prefix, fields))
        bad = {err["loc"][0] for err in errors if err["loc"]}
        values = adapter.validate_python({k: v for k, v in data.items() if k not in bad})
    problems.extend(f"{dotted}{name}: required key is missing" for name in sorted(_required(cls) - data.keys()))
    hints = _hints(cls)
    for name in list(values):
        if dataclasses.is_dataclass(hints[name]):
            section = parse_dataclass(hints[name], values[name], f"{dotted}{name}", problems)
            if section is None:
                del values[name]
            else:
                values[name] = section
    return dict(values)


def parse_dataclass(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, appending problems instead of raising.

    Unknown keys, wrong types and the class's own rules are all collected. Returns ``None`` when
    the object could not be built or any problem was found.
    """
    start = len(problems)
    values = parse_fields(cls, data, prefix, problems)
    if values is None:
        return None
    known = {k for k in (data or {}) if k in _init_fields(cls)}
    if not (known | _required(cls)) <= values.keys():
        return None  # a wrong type or a missing key: the class's rules would only add noise
    # Known keys with the right types: build anyway so the class's own rules are reported too.
    try:
        obj = cls(**values)
    except ConfigError as e:
        problems.extend(f"{prefix}.{p}" if prefix else p for p in e.problems)
        return None
    return obj if len(problems) == start else None


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


class Validated:
    """Mixin: run ``_check`` on construction and raise one ConfigError for all problems.

    Config dataclasses keep their cross-field rules here, not in pydantic, so a config built in code
    (a sampled trial, a benchmark on a torch-only box) is checked by the same rules as a parsed one.
    """

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


# The fields each architecture family reads (``model.family``); every other field must keep its
# default, so a config never carries a setting that changes nothing (docs/conventions.md).
_SHARED_FIELDS = ("family", "d_model", "n_encoder_layers", "n_decoder_layers", "dropout", "tie_embeddings", "max_len")
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "transformer": (*_SHARED_FIELDS, "n_heads", "d_ff", "norm_first"),
    "rnn": (*_SHARED_FIELDS, "rnn_cell", "hidden", "bidirectional", "attention"),
    "mlp": (*_SHARED_FIELDS, "d_ff", "token_mixing_dim"),
}
_CHOICES = {"family": tuple(FAMILY_FIELDS), "rnn_cell": ("gru", "lstm"), "attention": ("additive", "dot")}


@dataclass(frozen=True)
class ModelConfig(Validated):
    """An encoder-decoder's shape; vocab sizes come from the data.

    ``family`` picks the architecture: ``transformer`` (Vaswani et al. 2017, model/transformer.py),
    ``rnn`` (GRU/LSTM with attention, model/rnn.py) or ``mlp`` (gMLP-style token mixing,
    model/mlp.py). Depth is ``n_encoder_layers``/``n_decoder_layers`` in every family. A field that
    the family does not read (``FAMILY_FIELDS``) must keep its default: a non-default value is
    refused rather than silently ignored.
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

    def _check(self, problems: list[str]) -> None:
        _positive(
            problems,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_encoder_layers=self.n_encoder_layers,
            n_decoder_layers=self.n_decoder_layers,
            d_ff=self.d_ff,
            max_len=self.max_len,
            hidden=self.hidden,
            token_mixing_dim=self.token_mixing_dim,
        )
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
        """A field the family does not read must keep its default (``FAMILY_FIELDS``)."""
        used = FAMILY_FIELDS[self.family]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in used or value == f.default:
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


def config_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
