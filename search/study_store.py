"""The Optuna study of a search: opening, reading and releasing its storage.

The study is the search's source of truth (every trial, its state, the MLflow run ids), so
``resume``, ``--join``, ``results`` and ``report`` find everything from it alone. This is the one
module that touches Optuna's storage layer; everything else goes through ``StudyStore`` or the
functions here.

A local ``study.db`` runs in SQLite's WAL mode with ``synchronous=NORMAL``: every trial costs the
driver a dozen small commits, and this makes each several times cheaper while a killed driver still
loses nothing it committed (only a power cut can drop the last commits). When a search ends, its
log is folded into ``study.db`` (``release``), so the file holds the whole search alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attntune.model.config import ConfigError
from attntune.search.outcome import TrialState

STUDY_FILE = "study.db"
DEFAULT_OUTPUT_ROOT = "attntune-runs"


def storage_url(output: Path) -> str:
    """The study's storage URL for a search's output folder."""
    return f"sqlite:///{(output / STUDY_FILE).resolve().as_posix()}"


def optuna_storage_url(url: str) -> str:
    """A ``--storage`` URL as SQLAlchemy needs it here.

    SQLAlchemy 2.1 maps ``postgresql://`` to the psycopg 3 driver; attntune's ``postgres`` extra
    installs psycopg2, so a plain ``postgresql://`` URL gets ``+psycopg2`` when psycopg 3 is absent.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def open_storage(url: str) -> Any:
    """An Optuna ``RDBStorage`` for ``url``; a local SQLite file in WAL mode (see the module doc)."""
    import optuna
    from sqlalchemy import event

    if not url.startswith("sqlite:///"):
        return optuna.storages.RDBStorage(url)
    path = url[len("sqlite:///") :]
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
        con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})

    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", _pragmas)
    storage.engine.dispose()  # connections opened while creating the schema go; new ones get the pragma
    return storage


def release(storage: Any) -> None:
    """Fold a local SQLite study's write-ahead log into ``study.db`` and close its connections.

    In WAL mode most of a search lives in ``study.db-wal`` until a checkpoint, and SQLite only
    checkpoints when the last connection closes, which a CLI ending with ``os._exit`` never does:
    without this, a ``study.db`` copied alone would miss most of the search."""
    engine = getattr(storage, "engine", None)
    if engine is None or not str(engine.url).startswith("sqlite"):
        return
    with contextlib.suppress(Exception):  # best effort: a busy database is checkpointed next time
        with engine.connect() as con:
            con.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def study_exists(url: str, name: str) -> bool:
    """Whether the storage at ``url`` holds a study called ``name`` (never creates a file)."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return False
    try:
        names = optuna.get_all_study_names(url)
    except Exception:  # noqa: BLE001 - an empty/new storage has no tables yet
        return False
    return name in names


def find_output(name_or_folder: str, root: str | Path = DEFAULT_OUTPUT_ROOT) -> Path:
    """A search's output folder from its path or job name."""
    p = Path(name_or_folder)
    if (p / STUDY_FILE).exists():
        return p
    q = Path(root) / name_or_folder
    if (q / STUDY_FILE).exists():
        return q
    raise ConfigError(
        f"{name_or_folder}: no search found (looked for {p / STUDY_FILE} and {q / STUDY_FILE})"
    )


@contextlib.contextmanager
def reading(folder: Path, *, url: str | None = None, name: str | None = None) -> Iterator[Any]:
    """The study of a finished or interrupted search, read and released (no -wal/-shm left):
    the one in ``folder``'s study.db, or study ``name`` at ``url`` (``--storage``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url or storage_url(folder))
    try:
        names = optuna.get_all_study_names(storage)
        if not names or (name is not None and name not in names):
            raise ConfigError(f"{folder}: the study storage holds no search" + (f" named {name!r}" if name else ""))
        yield optuna.load_study(study_name=name or names[0], storage=storage)
    finally:
        release(storage)


def study_attrs(folder: Path) -> dict[str, Any]:
    """A search's study-level attributes (job file, tracking URI, parent run id, ...)."""
    with reading(folder) as study:
        return dict(study.user_attrs)


def state_of(trial: Any) -> TrialState:
    """An Optuna trial's state as attntune names it (INFEASIBLE is FAIL plus a user attr)."""
    if trial.user_attrs.get("attntune_state") in (TrialState.INFEASIBLE, TrialState.PRIOR):
        return TrialState(trial.user_attrs["attntune_state"])
    name = trial.state.name
    return {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAILED}.get(
        name, TrialState.RUNNING
    )


def load_study(folder: Path) -> Any:
    """The study of the search in ``folder``, left open (notebooks, tests, benchmarks); commands
    use ``reading``, which releases it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(folder)
    names = optuna.get_all_study_names(url)
    if not names:
        raise ConfigError(f"{folder}: the study storage holds no search")
    return optuna.load_study(study_name=names[0], storage=url)


class StudyStore:
    """A search's study, open for its driver: the live ``Trial`` of each sampled trial is kept
    (``ask``), so reports, attributes and tells go through Optuna's public trial API. Only the
    trial id (``set_trial_attrs``, reruns of a dead driver's trials, and the intermediate values
    of a multi-objective study, which ``Trial.report`` refuses) reaches below it, here."""

    def __init__(self, study: Any, storage: Any):
        self.study = study
        self.storage = storage  # the RDBStorage we opened (Optuna wraps it in a cache for the study)

    @classmethod
    def open(cls, name: str, url: str, *, sampler: Any, pruner: Any, directions: list[str]) -> StudyStore:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(url)
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, directions=directions, load_if_exists=True
        )
        return cls(study, storage)

    # ------------------------------------------------------------------ the study
    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def trials(self, running_only: bool = False) -> list[Any]:
        """Frozen trials, without copies (read-only)."""
        import optuna

        states = (optuna.trial.TrialState.RUNNING,) if running_only else None
        return self.study.get_trials(deepcopy=False, states=states)

    def release(self) -> None:
        release(self.storage)

    def trial(self, number: int) -> Any:
        """Trial ``number`` as Optuna holds it (a FrozenTrial), without reading the others."""
        storage = self.storage or self.study._storage  # noqa: SLF001 - an in-memory study (tests) has no other
        study_id = storage.get_study_id_from_name(self.study.study_name)
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))

    # ------------------------------------------------------------------ trials
    def add_trials(self, trials: list[Any]) -> None:
        """Finished trials made elsewhere (a warm start's priors), told to the sampler as they are."""
        self.study.add_trials(trials)

    def enqueue(self, values: dict[str, Any], attrs: dict[str, Any]) -> None:
        """A trial with these parameters, asked before any sampled one (Optuna's enqueue)."""
        self.study.enqueue_trial(values, user_attrs=attrs)

    def ask(self) -> tuple[Any, int]:
        """A new trial: (its live ``optuna.trial.Trial``, its storage id)."""
        trial = self.study.ask()
        return trial, trial._trial_id  # noqa: SLF001 - the id, kept once, for the writes below

    def handle(self, frozen: Any) -> tuple[Any, int]:
        """(live trial, storage id) of a RUNNING trial this driver did not ask (a rerun)."""
        import optuna

        tid = frozen._trial_id  # noqa: SLF001 - a FrozenTrial's id has no public accessor
        return optuna.trial.Trial(self.study, tid), tid

    @staticmethod
    def set_trial_attrs(trial: Any, attrs: dict[str, Any]) -> None:
        """User attributes of a live trial (one small commit each)."""
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def record_extension(self, key: str, budget: dict[str, Any]) -> None:
        """A resumed search's new budget under ``key``, and every extension in ``extensions``."""
        self.set_attr(key, budget)
        self.set_attr("extensions", [*self.attrs.get("extensions", []), {**budget, "at": time.time()}])

    def record_job(self, job: Any, started_at: float, experiment_id: str | None) -> None:
        """What ``resume``, ``--join`` and ``report`` need to know of the search, from the study
        alone: the job file, its metric and objectives, the tracking URI."""
        attrs = {
            "job_name": job.name,
            "job_yaml": job.source_text,
            "metric": job.metric,
            "space_fingerprint": job.space.fingerprint(),
            "mode": job.mode,
            "objectives": [[o.name, o.mode] for o in job.objectives],
            "constraints": [str(c) for c in job.constraints],
            "strategy": job.strategy,
            "scheduler": job.scheduler,
            "backend": job.backend,
            "tracking_uri": job.tracking.resolved_uri(),
            "experiment_id": experiment_id,
        }
        for key, value in attrs.items():
            self.set_attr(key, value)
        if "started_at" not in self.attrs:
            self.set_attr("started_at", started_at)

    def report(self, trial: Any, trial_id: int, epoch: int, value: float, *, rerun: bool) -> bool:
        """Record an epoch's value; False if Optuna refused it (the trial has ended meanwhile).

        Optuna's ``Trial.report`` refuses multi-objective studies and ignores an epoch a killed
        attempt already reported, so those are written to the storage directly."""
        try:
            if len(self.study.directions) > 1 or (
                rerun and epoch in self.storage.get_trial(trial_id).intermediate_values
            ):
                self.storage.set_trial_intermediate_value(trial_id, epoch, float(value))
            else:
                trial.report(float(value), epoch)
        except (NotImplementedError, ValueError, RuntimeError):
            return False
        return True

    def tell(self, number: int, state: str, values: list[float] | None = None) -> None:
        """Finish trial ``number`` in Optuna: COMPLETE with its values, PRUNED, or FAIL (FAILED and
        INFEASIBLE)."""
        import optuna

        if state == TrialState.COMPLETE:
            self.study.tell(number, values if values is not None and len(values) > 1 else (values or [None])[0])
        elif state == TrialState.PRUNED:
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
