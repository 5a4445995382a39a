"""Declarative, Transformer-typed search spaces.

A space is a mapping from dotted config keys (``model.n_heads``, ``train.lr``) to distributions.
Three pseudo-parameters make every sample a valid Transformer *by construction*:

- ``model.head_dim``: d_model = n_heads x head_dim, so d_model % n_heads == 0 always;
- ``model.d_ff_ratio``: d_ff = round(ratio x d_model);
- ``model.n_layers``: n_encoder_layers = n_decoder_layers = n_layers (tied depth).

Searching ``model.d_model`` and ``model.n_heads`` directly is allowed only when every combination
divides; otherwise the space is rejected before anything starts (use ``model.head_dim``).

Sampling is define-by-run through an ``optuna.trial.Trial``-like object (``suggest_*``), so the same
code serves Optuna's samplers on both backends. This module imports Optuna only lazily.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from attntune.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_fields,
    did_you_mean,
    format_errors,
    parse_fields,
    pydantic_type,
    rule_error,
)

PSEUDO_PARAMS = {"model.head_dim", "model.d_ff_ratio", "model.n_layers"}
SPACES_DIR = Path(__file__).resolve().parent
_MAX_GRID = 100_000
_Number = pydantic_type(float)  # the config files' number rule: ints and "1e-3" strings, never bools


def valid_param_names() -> set[str]:
    names = {f"model.{n}" for n in config_fields(ModelConfig)}
    names |= {f"train.{n}" for n in config_fields(TrainConfig)}
    return names | PSEUDO_PARAMS


@dataclass(frozen=True)
class Param:
    """One searched parameter: a float/int range (optionally log or stepped) or a categorical."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # all must hold for the param to exist

    @property
    def enumerable(self) -> bool:
        return self.type in ("categorical", "int") or self.step is not None

    def values(self) -> list[Any]:
        """Every value of an enumerable parameter (used by grid search and validity checks)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            if self.log:
                out, v = [], int(self.low)
                while v <= self.high:
                    out.append(v)
                    v = max(v + 1, v * 2)
                return out
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is not None:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        raise ValueError(f"{self.name}: a continuous float range has no finite set of values")

    def extremes(self) -> list[Any]:
        """Values that bound what this parameter can produce (for checking rules up front)."""
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.type == "float" else [int(self.low), int(self.high)]

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(k in values and values[k] in allowed for k, allowed in self.when)

    def canonical(self, value: Any) -> Any:
        """``value`` as this parameter gives it (a categorical's own choice, an int as an int);
        ValueError when the parameter cannot produce it."""
        if self.type == "categorical":
            for c in self.choices:
                if (c is value) if isinstance(c, bool) or isinstance(value, bool) else c == value:
                    return c
            raise ValueError(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(value)
        grid = (value - self.low) / self.step if self.step else 0.0
        if not self.low - 1e-12 <= value <= self.high + 1e-12 or abs(grid - round(grid)) > 1e-6:
            raise ValueError(value)
        if self.type == "int":
            if float(value) != int(value):
                raise ValueError(value)
            return int(value)
        return float(value)

    def distribution(self) -> Any:
        """The Optuna distribution ``suggest`` draws from (for trials built outside a sampler:
        warm starts, the report's importance study)."""
        from optuna.distributions import (  # Optuna: only when a distribution is needed, never at import
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high)
            if self.log:
                d["log"] = True
            if self.step is not None:
                d["step"] = self.step
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        return d


@dataclass(frozen=True)
class Space:
    """A validated search space plus an optional parameter budget (``max_params``)."""

    params: tuple[Param, ...]
    max_params: float | None = None
    name: str = "inline"
    description: str = ""
    _order: tuple[str, ...] = field(default=(), repr=False)

    # ------------------------------------------------------------------ sampling
    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw one configuration through ``trial.suggest_*``; conditionals only when active."""
        values: dict[str, Any] = {}
        for p in self.ordered():
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return values

    def ordered(self) -> list[Param]:
        """Parents before the parameters conditioned on them."""
        by_name = {p.name: p for p in self.params}
        return [by_name[n] for n in self._order] if self._order else list(self.params)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list[Any]]:
        """Optuna GridSampler search space; raises ConfigError for a continuous parameter."""
        bad = [p.name for p in self.params if not p.enumerable]
        if bad:
            raise ConfigError(
                [
                    f"space.{n}: strategy grid cannot enumerate a continuous float range "
                    "(give choices, or a step)"
                    for n in bad
                ]
            )
        return {p.name: p.values() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"params": {p.name: p.to_dict() for p in self.params}}
        if self.max_params is not None:
            d["max_params"] = self.max_params
        return d


# ---------------------------------------------------------------------- expansion to configs


def expand(values: Mapping[str, Any], base: RunConfig | None = None) -> dict[str, Any]:
    """Turn sampled values (with pseudo-parameters) into plain dotted config keys."""
    out = {k: v for k, v in values.items() if k not in PSEUDO_PARAMS}
    if "model.n_layers" in values:
        out["model.n_encoder_layers"] = values["model.n_layers"]
        out["model.n_decoder_layers"] = values["model.n_layers"]
    n_heads = out.get("model.n_heads", base.model.n_heads if base else None)
    if "model.head_dim" in values:
        out["model.d_model"] = int(n_heads) * int(values["model.head_dim"])
    if "model.d_ff_ratio" in values:
        d_model = out.get("model.d_model", base.model.d_model if base else None)
        out["model.d_ff"] = int(round(float(values["model.d_ff_ratio"]) * int(d_model)))
    return out


def make_config(base: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """The RunConfig one trial trains: ``base`` with the sampled values applied."""
    return apply_overrides(base, expand(values, base))


def project(space: Space, cfg: RunConfig) -> tuple[dict[str, Any], list[str]]:
    """The space's parameter values that give ``cfg`` (``expand``'s inverse), and what keeps the
    space from producing it (a value outside a range or the choices), one line each."""
    m = cfg.model
    # widths left None mean d_model (model/rnn.py, model/mlp.py); the space names them
    widths = {"model.hidden": m.hidden, "model.token_mixing_dim": m.token_mixing_dim}
    derived: dict[str, Any] = {
        "model.head_dim": m.d_model // m.n_heads if m.d_model % m.n_heads == 0 else None,
        "model.d_ff_ratio": m.d_ff / m.d_model,
        "model.n_layers": m.n_encoder_layers if m.n_encoder_layers == m.n_decoder_layers else None,
        **{k: m.d_model if v is None else v for k, v in widths.items()},
    }
    values: dict[str, Any] = {}
    problems: list[str] = []
    for p in space.ordered():
        if not p.active(values):
            continue
        section, _, field_name = p.name.partition(".")
        value = derived[p.name] if p.name in derived else getattr(getattr(cfg, section), field_name)
        try:
            values[p.name] = p.canonical(value)
        except ValueError:
            problems.append(f"{p.name}={value} is outside the space ({_extent(p)})")
    filled = {k: values[k] for k in widths if k in values}  # cfg with those widths written out
    if not problems and make_config(cfg, values) != make_config(cfg, filled):  # e.g. d_ff not a whole ratio of d_model
        problems.append("the space cannot produce this exact config (d_ff or d_model differ after expansion)")
    return values, problems


def _extent(p: Param) -> str:
    if p.type == "categorical":
        return f"choices {list(p.choices)}"
    return f"{_num(p.low)}..{_num(p.high)}" + (f" step {_num(p.step)}" if p.step else "")


# ---------------------------------------------------------------------- parsing + validation


def _field_kind(name: str) -> str | None:
    """'int' or 'float' from the config field's annotation, so ``type`` may be left out."""
    import typing

    if name in ("model.head_dim", "model.n_layers"):
        return "int"
    if name == "model.d_ff_ratio":
        return "float"
    section, _, field_name = name.partition(".")
    cls = {"model": ModelConfig, "train": TrainConfig}.get(section)
    hint = typing.get_type_hints(cls).get(field_name) if cls else None
    text = str(hint)
    if hint is int or text.startswith("int"):
        return "int"
    if hint is float or text.startswith("float"):
        return "float"
    return None


def _num(v: float) -> str:
    """A bound as the user wrote it: ``0`` rather than ``0.0``, ``0.01`` as is."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


class ParamSpec(BaseModel):
    """One parameter as a space file writes it. The validators hold the rules a range or a choice
    list must follow, so a space that cannot be sampled is refused before any trial starts."""

    model_config = ConfigDict(strict=True, extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: _Number | None = None
    high: _Number | None = None
    log: bool = False
    step: Annotated[_Number, Field(gt=0)] | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None  # parent parameter -> value or list of values

    @model_validator(mode="before")
    @classmethod
    def shorthand(cls, data: Any, info: ValidationInfo) -> Any:
        """A list is a categorical; a left-out ``type`` comes from the config field's annotation."""
        if isinstance(data, list):
            return {"type": "categorical", "choices": data}
        if not isinstance(data, Mapping):
            raise rule_error(f"expected a mapping such as {{type: float, low: 1e-4, high: 1e-2}}, got {data!r}")
        data = dict(data)
        if "type" not in data:
            kind = "categorical" if "choices" in data else _field_kind((info.context or {}).get("name", ""))
            if kind is not None:
                data["type"] = kind
        return data

    @field_validator("choices")
    @classmethod
    def scalar_choices(cls, choices: list[Any] | None) -> list[Any] | None:
        """Samplers and MLflow params take scalars only; a repeated choice would skew the draw."""
        if choices is None:
            return None
        if not choices:
            raise ValueError("must be a non-empty list")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise ValueError("values must be numbers, strings, booleans or null")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"duplicate values in {choices}")
        return choices

    @model_validator(mode="after")
    def range_rules(self) -> ParamSpec:
        """The rules a sampler needs of a range (one at a time: the first broken one is reported)."""
        if self.type == "categorical":
            if self.choices is None:
                raise rule_error("must be a non-empty list", "choices")
            return self
        missing = [k for k in ("low", "high") if getattr(self, k) is None]
        if missing:
            raise rule_error(f"a range needs low and high (missing: {', '.join(missing)})")
        low, high, step = self.low, self.high, self.step
        if low > high:
            raise rule_error(f"low={_num(low)} > high={_num(high)} (low must be <= high)")
        if self.log and low <= 0:
            raise rule_error(f"log scale needs low > 0, got low={_num(low)}")
        if self.log and step is not None:
            raise rule_error("log scale and step cannot be combined")
        if self.type == "int" and not (low.is_integer() and high.is_integer()):
            raise rule_error(f"an int range needs integer low/high, got {_num(low)}..{_num(high)}")
        if self.type == "int" and step is not None and not step.is_integer():
            raise rule_error(f"an int range needs an integer step, got {_num(step)}", "step")
        return self

    def to_param(self, name: str) -> Param:
        when = tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in (self.when or {}).items())
        if self.type == "categorical":
            return Param(name, "categorical", choices=tuple(self.choices), when=when)
        conv = int if self.type == "int" else float
        step = None if self.step is None else conv(self.step)
        return Param(name, self.type, conv(self.low), conv(self.high), self.log, step, when=when)


def parse_param(name: str, spec: Any) -> Param:
    """One searched parameter from its spec (a mapping, or a list of choices); raise one
    ConfigError listing every problem, each under ``space.<name>``."""
    try:
        return ParamSpec.model_validate(spec, context={"name": name}).to_param(name)
    except ValidationError as e:
        raise ConfigError(format_errors(e.errors(), f"space.{name}", ParamSpec.model_fields)) from None


def _topological(params: list[Param], problems: list[str]) -> tuple[str, ...]:
    names = {p.name for p in params}
    order: list[str] = []
    pending = list(params)
    while pending:
        progressed = False
        for p in list(pending):
            parents = [k for k, _ in p.when]
            if all(k in order for k in parents):
                order.append(p.name)
                pending.remove(p)
                progressed = True
        if not progressed:
            for p in pending:
                missing = [k for k, _ in p.when if k not in names]
                if missing:
                    problems.append(f"space.{p.name}.when: refers to {missing[0]}, which is not in the space")
                else:
                    problems.append(f"space.{p.name}.when: circular condition")
            return ()
    return tuple(order)


def _check_validity(space_params: list[Param], base: RunConfig, problems: list[str]) -> None:
    """Reject spaces that could produce an invalid model, before any trial starts: for each model
    family the space can sample (``model.family``), the parameters that can exist for it."""
    family = next((p for p in space_params if p.name == "model.family"), None)
    families = [str(c) for c in family.choices] if family is not None else [base.model.family]
    for name in families:
        found: list[str] = []
        fbase = base if name == base.model.family else apply_overrides(base, {"model.family": name})
        _check_family([p for p in space_params if p.name != "model.family" and _may_exist(p, name)], fbase, found)
        prefix = f"with model.family={name}: " if family is not None else ""
        problems.extend(prefix + x for x in found)


def _may_exist(p: Param, family: str) -> bool:
    """Whether ``p`` can be active for a model of ``family`` (its ``when`` on model.family allows it)."""
    return all(family in [str(v) for v in allowed] for key, allowed in p.when if key == "model.family")


def _check_family(space_params: list[Param], base: RunConfig, problems: list[str]) -> None:
    by_name = {p.name: p for p in space_params}
    if "model.head_dim" in by_name and "model.d_model" in by_name:
        problems.append("space: model.head_dim and model.d_model cannot both be searched (d_model = n_heads x head_dim)")
        return
    if "model.n_layers" in by_name and (
        "model.n_encoder_layers" in by_name or "model.n_decoder_layers" in by_name
    ):
        problems.append("space: model.n_layers ties encoder and decoder depth; do not also search n_encoder_layers/n_decoder_layers")
        return
    if "model.d_ff_ratio" in by_name and "model.d_ff" in by_name:
        problems.append("space: model.d_ff_ratio and model.d_ff cannot both be searched")
        return
    # Each parameter's extreme values, alone, must give a valid config.
    for p in space_params:
        if p.name in ("model.d_model", "model.n_heads", "model.head_dim") and base.model.family == "transformer":
            continue  # checked jointly below
        for v in p.extremes():
            try:
                make_config(base, {p.name: v})
            except ConfigError as e:
                problems.append(f"space.{p.name}: value {v!r} gives an invalid config ({e.problems[0]})")
                break
    if base.model.family == "transformer":
        _check_heads(by_name, base, problems)


def _check_heads(by_name: dict[str, Param], base: RunConfig, problems: list[str]) -> None:
    """Divisibility: every (d_model, n_heads) pair the space can produce must divide."""
    heads = by_name["model.n_heads"].values() if "model.n_heads" in by_name else [base.model.n_heads]
    if "model.head_dim" in by_name:
        return  # valid by construction
    dims = by_name["model.d_model"].values() if "model.d_model" in by_name else [base.model.d_model]
    if "model.n_heads" in by_name and not by_name["model.n_heads"].enumerable:
        problems.append("space.model.n_heads: must be categorical or int")
        return
    if "model.d_model" in by_name and not by_name["model.d_model"].enumerable:
        problems.append("space.model.d_model: must be categorical or int")
        return
    bad = [(d, h) for d, h in itertools.product(dims, heads) if h <= 0 or d % h != 0]
    if bad:
        d, h = bad[0]
        problems.append(
            f"space: model.d_model={d} is not divisible by model.n_heads={h} "
            f"({len(bad)} such pairs); search model.head_dim instead of model.d_model so "
            "d_model = n_heads x head_dim is valid by construction"
        )


@dataclass(frozen=True)
class _SpaceFile:
    """The keys of a space mapping; each parameter is then parsed on its own by ``parse_param``."""

    params: dict[str, Any]
    max_params: float | None = None
    description: str = ""
    name: str | None = None


def parse_space(data: Any, base: RunConfig | None = None, name: str = "inline") -> Space:
    """Build and fully check a space from its YAML mapping; raise one ConfigError for all problems."""
    base = base or RunConfig()
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError("space: expected a mapping with a 'params' section or a built-in space name")
    top = parse_fields(_SpaceFile, data, "space", problems) or {}
    raw = top.get("params")
    if "params" in top and not raw:
        problems.append("space.params: must be a non-empty mapping of parameter -> distribution")
    if not raw:
        raise ConfigError(problems)
    valid = valid_param_names()
    params: list[Param] = []
    for pname, spec in raw.items():
        if pname not in valid:
            if str(pname).startswith("task."):
                problems.append(f"space.{pname}: task settings cannot be searched")
            else:
                problems.append(
                    f"space.{pname}: unknown parameter{did_you_mean(str(pname), valid)} (valid: model.*/train.* "
                    f"config keys or {', '.join(sorted(PSEUDO_PARAMS))})"
                )
            continue
        try:
            params.append(parse_param(str(pname), spec))
        except ConfigError as e:
            problems.extend(e.problems)
    max_params = top.get("max_params")
    if max_params is not None and max_params <= 0:
        problems.append(f"space.max_params: must be > 0, got {data['max_params']!r}")
    order = _topological(params, problems) if params else ()
    if params:
        _check_validity(params, base, problems)
    if problems:
        raise ConfigError(problems)
    return Space(
        tuple(params),
        max_params,
        name=top.get("name") or name,
        description=top.get("description", ""),
        _order=order,
    )


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(ref: str | Mapping[str, Any], base: RunConfig | None = None) -> Space:
    """A space from a built-in name (``cpu-small``), a YAML file path, or an inline mapping."""
    if isinstance(ref, Mapping):
        return parse_space(ref, base)
    path = SPACES_DIR / f"{ref}.yaml"
    if not path.exists():
        candidate = Path(ref)
        if candidate.suffix in (".yaml", ".yml") and candidate.exists():
            path = candidate
        else:
            raise ConfigError(
                f"space: {ref!r} is not a built-in space (valid: {', '.join(builtin_spaces())}) "
                "nor a YAML file"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"space {path.name}: malformed YAML ({str(e).splitlines()[0]})") from None
    return parse_space(data, base, name=path.stem)


def iter_samples(space: Space, n: int, seed: int = 0) -> Iterable[dict[str, Any]]:
    """Random draws without Optuna (used by tests and the cost model)."""
    import random

    rng = random.Random(seed)

    class _Rand:
        def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
            return rng.choice(choices)

        def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
            if log:
                return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
            return rng.randrange(low, high + 1, step)

        def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
            if log:
                return math.exp(rng.uniform(math.log(low), math.log(high)))
            if step:
                return low + step * rng.randint(0, int((high - low) / step))
            return rng.uniform(low, high)

    for _ in range(n):
        yield space.sample(_Rand())
