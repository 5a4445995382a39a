"""The parsing boundary of every config file: one-line problems, pydantic v2 checks, plain dicts.

A config file (``yaml.safe_load`` output) is type-checked by pydantic v2 here (``parse_fields`` /
``load_dataclass``): unknown keys rejected, *every* problem reported at once with its dotted key
(docs/conventions.md, "Configuration"). Why apart from the config classes (model/config.py): the
same parser serves the model, training, task and (in ``attntune.search``) search-job sections, and
the classes stay plain frozen dataclasses with their rules in ``Validated._check``, so
``attntune.model`` builds configs with torch alone. Every name here is also importable from
``attntune.model.config``, where its users have always taken it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin


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


def check_positive(problems: list[str], **values: Any) -> None:
    for k, v in values.items():
        if v is not None and v <= 0:
            problems.append(f"{k}: must be > 0, got {v}")


def config_fields(cls: type) -> list[str]:
    """The field names of config dataclass ``cls``, in order (the search space's valid keys)."""
    return [f.name for f in dataclasses.fields(cls)]
