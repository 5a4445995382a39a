"""The optional sections of a search job: what a search is compared with (``baseline``), starts
from (``warm_start``) and transfers to (``transfer``), each parsed on its own, its problems added to
the job's (``attntune.search.job.parse_job``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError, RunConfig, apply_overrides
from attntune.search.yaml_io import read_yaml
from attntune.spaces.space import Space, expand, project


@dataclass(frozen=True)
class Baseline:
    """The config every trial is compared with, trained first (trials 0..repeats-1, the training
    seed differing) and never stopped early, so a search's best is never worse than it on the
    search's own metric and the repeats tell the metric's noise."""

    values: dict[str, Any]  # the space's parameters that give the config (spaces.space.project)
    repeats: int
    source: str  # "default", the file it came from, or "job file"
    # a search over model.family: each other family's start (family_starts), and why one was left out
    family_starts: tuple[tuple[str, dict[str, Any]], ...] = ()
    family_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WarmStart:
    """Earlier searches whose best trials seed this one's sampler (``search.warm_start``)."""

    sources: tuple[str, ...]  # job names (attntune-runs/<name>) or output folders or study.db files
    top: int = 10


def parse_baseline(
    spec: Any, n_trials: int, strategy: str, space: Space, base: RunConfig, source: str, problems: list[str]
) -> tuple[Baseline | None, str]:
    """The job's baseline and, when the default one is left out, why. ``baseline:`` is
    ``default`` (the job's own model and train settings over attntune's defaults), ``none``, a
    ``train`` config file (its model and train sections), or a mapping of parameters (space
    names or config keys) over the default, with an optional ``repeats`` (default: 2 from 8
    trials on, else 1)."""
    if spec in (None, False, "none", "off"):
        return None, ""
    explicit = spec != "default"
    if strategy == "grid":
        if explicit:
            problems.append("baseline: strategy grid trains every point of its grid already; remove baseline")
        return None, "strategy grid trains every point of its grid"
    repeats = 2 if n_trials >= 8 else 1
    cfg, label = base, "default"
    try:
        if isinstance(spec, str) and spec != "default":
            cfg, label = _baseline_file(spec, base, source), spec
        elif isinstance(spec, dict):
            settings = dict(spec)
            repeats = settings.pop("repeats", repeats)
            if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
                raise ConfigError(f"baseline.repeats: must be a whole number >= 1, got {repeats!r}")
            cfg, label = apply_overrides(base, expand(settings, base)), "job file"
        elif spec != "default":
            raise ConfigError(f"baseline: expected default, none, a train config file or a mapping, got {spec!r}")
    except ConfigError as e:
        problems.extend(p if p.startswith("baseline") else f"baseline: {p}" for p in e.problems)
        return None, ""
    values, outside = project(space, cfg)
    if outside:
        if explicit:
            problems.extend(f"baseline: {p}" for p in outside)
            return None, ""
        return None, f"the default config is outside the space ({'; '.join(outside)})"
    starts, notes = family_starts(space, cfg)
    return Baseline(values, repeats, label, starts, notes), ""


def family_starts(space: Space, cfg: RunConfig) -> tuple[tuple[tuple[str, dict[str, Any]], ...], tuple[str, ...]]:
    """In a space that searches ``model.family``: the baseline with each other family in its
    place (that family's own model defaults, the baseline's shared settings), as space values, and
    a line for each family whose start is outside the space. Trained once each after the baseline,
    so every family is measured at a sensible setting before the sampler's start-up draws the
    family at random and then follows whichever one led early (docs/search-job.md)."""
    param = next((p for p in space.params if p.name == "model.family"), None)
    if param is None or param.type != "categorical":
        return (), ()
    starts, notes = [], []
    for family in param.choices:
        if family == cfg.model.family:
            continue
        values, outside = project(space, apply_overrides(cfg, {"model.family": family}))
        if outside:
            notes.append(f"no {family} start: {'; '.join(outside)}")
        else:
            starts.append((str(family), values))
    return tuple(starts), tuple(notes)


def _baseline_file(path: str, base: RunConfig, source: str) -> RunConfig:
    """``base`` with the model and train sections of a train config file (``attntune export``'s
    schema; its epochs are the search's to set). Looked up in the current folder, then beside
    the job file."""
    p = Path(path)
    if not p.exists() and source and (Path(source).parent / p).exists():
        p = Path(source).parent / p
    data, _ = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a train config (task, model, train sections)")
    train = {k: v for k, v in (data.get("train") or {}).items() if k != "epochs"}
    model = data.get("model") or {}
    return apply_overrides(base, {**{f"model.{k}": v for k, v in model.items()}, **{f"train.{k}": v for k, v in train.items()}})

def parse_warm_start(spec: Any, strategy: str, problems: list[str]) -> WarmStart | None:
    """``warm_start: {from: [names or folders], top: N}`` (``from`` may be one string)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "from" not in spec or set(spec) - {"from", "top"}:
        problems.append("warm_start: expected {from: [earlier searches], top: N}")
        return None
    sources = [spec["from"]] if isinstance(spec["from"], str) else spec["from"]
    top = spec.get("top", 10)
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        problems.append(f"warm_start.from: expected a search name or folder, or a list of them, got {spec['from']!r}")
        return None
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        problems.append(f"warm_start.top: must be a whole number >= 1, got {top!r}")
        return None
    if strategy == "grid":
        problems.append("warm_start: strategy grid would skip the earlier trials' points; use tpe, gp, cmaes or nsga2")
        return None
    return WarmStart(tuple(sources), top)


def parse_transfer(spec: Any, base: RunConfig, space: Space | None, problems: list[str]) -> int | None:
    """``transfer: {model.d_model: N}``: the search tunes at the job's width (the proxy), and
    ``attntune export`` writes the config at width N with the tuned hyperparameters, which only
    muP makes transfer (docs/search-job.md)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != {"model.d_model"}:
        problems.append("transfer: expected {model.d_model: TARGET_WIDTH} (only width transfer is offered)")
        return None
    width = spec["model.d_model"]
    m = base.model
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        problems.append(f"transfer.model.d_model: must be a whole number > 0, got {width!r}")
    elif m.family != "transformer" or m.parameterization != "mup":
        problems.append(
            "transfer: needs model.parameterization: mup on the transformer (a learning rate tuned under "
            f"standard parameterisation does not transfer across widths), got family={m.family!r}, "
            f"parameterization={m.parameterization!r}"
        )
    elif width % m.n_heads:
        problems.append(f"transfer.model.d_model: {width} is not a multiple of model.n_heads={m.n_heads}")
    elif space is not None and {"model.d_model", "model.head_dim", "model.n_heads", "model.family"} & set(space.names()):
        problems.append(
            "transfer: the search tunes at one proxy width: do not search model.d_model, model.head_dim, "
            "model.n_heads or model.family (set them in the job's model section)"
        )
    else:
        return width
    return None
