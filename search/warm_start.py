"""Warm starts: the best trials of earlier searches seed a new search's sampler.

A job that says ``warm_start: {from: [zh-en-small], top: 10}`` gets, before its first trial, the
``top`` best COMPLETE trials of each earlier search (a job name under ``attntune-runs/``, an output
folder, or a ``study.db`` file) added to its study as finished trials (Optuna ``add_trials``), so
TPE, GP, CMA-ES and NSGA-II start from what those searches learnt. They are state PRIOR: the user
attr ``warm_start_from`` names where each came from; they are never counted in the new budget,
never the new search's best and never exported (they have no run in the new search's MLflow
experiment); a config the new search samples again is trained like any other.

The rule for a changed space: a prior trial keeps only the new space's parameters (parameters the
new space does not have are dropped from it); if a parameter the new space has (and that is active
for the trial's values) is missing, or its value is one the new space cannot produce (outside a
range, off a step, not a choice), the whole trial is dropped. Values are never clipped. The earlier
search must have optimised the same metric (or objectives) in the same direction, else the job is
refused at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.job import SearchJob
from attntune.search.outcome import TrialState, ranked
from attntune.search.repeats import ATTR_DUPLICATE
from attntune.search.study_store import STUDY_FILE, find_output, reading, state_of
from attntune.spaces.space import Space

ATTR_PRIOR = "warm_start_from"  # "<source>#<trial number>" on a prior trial


def locate(source: str) -> Path:
    """The output folder of an earlier search: a job name, a folder, or a study.db file."""
    p = Path(source)
    if p.name == STUDY_FILE and p.is_file():
        return p.parent
    try:
        return find_output(source)
    except ConfigError:
        raise ConfigError(
            f"warm_start.from: {source}: no earlier search there (looked for {p / STUDY_FILE} and "
            f"attntune-runs/{source}/{STUDY_FILE})"
        ) from None


def check_sources(job: SearchJob) -> None:
    """Every earlier search exists and optimised what this job optimises (before anything is written)."""
    assert job.warm_start is not None
    mine = [[o.name, o.mode] for o in job.objectives]
    for source in job.warm_start.sources:
        with reading(locate(source)) as study:
            theirs = study.user_attrs.get("objectives") or [[study.user_attrs.get("metric"), study.user_attrs.get("mode")]]
        if [list(x) for x in theirs] != mine:
            raise ConfigError(
                f"warm_start.from: {source} optimised {_shown(theirs)}, this job {_shown(mine)}: its values "
                "would mislead the sampler"
            )


def _shown(objectives: list[list[str]]) -> str:
    return ", ".join(f"{name} ({mode})" for name, mode in objectives)


def fit(space: Space, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A prior trial's parameters as the new space takes them, or (None, why it was dropped)."""
    kept: dict[str, Any] = {}
    for p in space.ordered():
        if not p.active(kept):
            continue
        if p.name not in params:
            return None, f"no {p.name}"
        try:
            kept[p.name] = p.canonical(params[p.name])
        except ValueError:
            return None, f"{p.name}={params[p.name]} is outside the space"
    return kept, None


def priors(job: SearchJob) -> tuple[list[Any], list[str]]:
    """(the prior trials to add to the new study, one note per source for the user)."""
    import optuna  # only when a job warm-starts

    assert job.warm_start is not None
    out, notes = [], []
    dists = {p.name: p.distribution() for p in job.space.params}
    for source in job.warm_start.sources:
        with reading(locate(source)) as study:
            mode = "min" if study.directions[0].name == "MINIMIZE" else "max"
            done = [
                t for t in study.get_trials(deepcopy=False)
                if state_of(t) == TrialState.COMPLETE and t.user_attrs.get(ATTR_DUPLICATE) is None
            ]  # fmt: skip
            rows = [_Row(t.number, t.user_attrs.get("feasible", True), t.values[0] if t.values else None, t) for t in done]
            best = _distinct([r.trial for r in ranked(rows, mode)])[: job.warm_start.top]
        dropped: list[str] = []
        for t in best:
            params, why = fit(job.space, dict(t.params))
            if params is None:
                dropped.append(f"t{t.number:03d}: {why}")
                continue
            out.append(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params},
                values=list(t.values), user_attrs={"attntune_state": TrialState.PRIOR.value, ATTR_PRIOR: f"{source}#{t.number}"},
            ))  # fmt: skip
        kept = len(best) - len(dropped)
        note = f"warm start: {kept} of the best {len(best)} trials of {source} seed the sampler"
        notes.append(note + (f" ({len(dropped)} dropped: {'; '.join(dropped[:3])})" if dropped else ""))
    return out, notes


def _distinct(trials: list[Any]) -> list[Any]:
    """Each config once, at its best: a config told twice (good and bad group alike) would make TPE
    avoid it (benchmarks/warm_start.py measured the literal best-N losing to a cold start)."""
    seen: set[str] = set()
    out = []
    for t in trials:
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


class _Row:
    """A study trial as ``outcome.ranked`` ranks it."""

    def __init__(self, number: int, feasible: bool, value: float | None, trial: Any):
        self.number, self.feasible, self.value, self.trial = number, bool(feasible), value, trial
        self.state = TrialState.COMPLETE
