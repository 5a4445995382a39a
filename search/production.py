"""Production training in MLflow: the ``attntune train`` run, its checkpoint and a servable model.

Why here and not in ``attntune.model``: the training loop must run on a bare GPU box without
MLflow; this module wraps it. A ``train`` run lands in the experiment of the search it came from
(``provenance.experiment``/``provenance.job`` of an exported config, else ``attntune-train``),
tagged ``attntune.kind=train`` with the search and trial run ids, so the MLflow UI shows the
production run beside the search that chose it. Its name says the model, when it started and its
budget (``train d64 h4 L1 lr3e-3 2026-12-01T17:30:05 6ep``), so runs of one config stay apart. Writes go through the one ``Tracker`` (batched
metrics, explicit run id); only ``mlflow.pyfunc.log_model`` needs the fluent API.

The model is logged "from code" (``search/pyfunc_model.py``) with the safetensors weights, the
config and the tokenizers as plain artifacts, so loading it never unpickles anything. With
``register_as`` it becomes a new version of that registered model.

Two ways to use it::

    # live: metrics appear in the UI epoch by epoch; a crash ends the run FAILED
    with TrainingRun(run_cfg, data, tracking_uri, config_path=path) as tr:
        result = train(model_cfg, train_cfg, data, tr.reporter(printer), checkpoint_dir=out)
        record = tr.finish(result, out, register_as="my-model")

    # after the fact
    record = log_training_run(run_cfg, result, out, data, tracking_uri, register_as="my-model")

``download_checkpoint`` brings a logged checkpoint back (``runs:/...``, ``models:/NAME/VERSION``)
for ``attntune translate``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from attntune.model.config import ConfigError, RunConfig, to_dict
from attntune.search.job import TrackingConfig
from attntune.search.tracking import TAG_JOB, TAG_KIND, TAG_LICENSE, TAG_SEARCH, Tracker, check_tracking_uri

DEFAULT_EXPERIMENT = "attntune-train"
MODEL_NAME = "model"  # the logged model's name inside the run
TAG_TRIAL_RUN = "attntune.trial_run_id"
TAG_SOURCE_TRIAL = "attntune.source_trial"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# The pyfunc's artifact keys and the checkpoint files they are (same table in pyfunc_model.py,
# which is not imported here: importing it registers the model-from-code instance).
ARTIFACT_FILES = {
    "weights": "model.safetensors",
    "config": "config.yaml",
    "src_tokenizer": "src_tokenizer.json",
    "tgt_tokenizer": "tgt_tokenizer.json",
}


@dataclass(frozen=True)
class TrainingRecord:
    """Where a production run landed in MLflow."""

    run_id: str
    experiment_id: str
    experiment: str
    tracking_uri: str
    model_uri: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None

    @property
    def registry_uri(self) -> str | None:
        """``models:/NAME/VERSION``, loadable with ``mlflow.pyfunc.load_model``."""
        if self.registered_name and self.registered_version:
            return f"models:/{self.registered_name}/{self.registered_version}"
        return None


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``--tracking-uri``, MLFLOW_TRACKING_URI, then ``sqlite:///mlflow.db`` (as searches do)."""
    return TrackingConfig(uri=tracking_uri).resolved_uri()


def experiment_for(run_cfg: RunConfig) -> str:
    prov = run_cfg.provenance or {}
    return str(prov.get("experiment") or prov.get("job") or DEFAULT_EXPERIMENT)


def flat_params(run_cfg: RunConfig) -> dict[str, Any]:
    """task.* / model.* / train.* as MLflow params (unset values left out, as for trials)."""
    out: dict[str, Any] = {}
    for section in ("task", "model", "train"):
        for k, v in to_dict(getattr(run_cfg, section)).items():
            if v is not None:
                out[f"{section}.{k}"] = v
    return out


def _count(n: float) -> str:
    """5000 -> 5k, 1500000 -> 1.5M: a budget in a run name."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:g}"


def _duration(seconds: float) -> str:
    """480 -> 8m, 7200 -> 2h, 90 -> 90s."""
    for size, suffix in ((3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{suffix}"
    return f"{seconds:g}s"


def budget_label(run_cfg: RunConfig, budget: Mapping[str, Any] | None = None) -> str:
    """What a production run was allowed to spend, for its name: ``6ep``, ``50ktok``, ``8m``, ``50ktok 8m``.

    ``budget`` holds ``attntune train``'s ``max_tokens``, ``time_limit_s`` and ``open_ended`` (the time
    limit alone bounds the run); without it, the recipe's epochs (or rounds of tokens / steps).
    """
    b, t = dict(budget or {}), run_cfg.train
    parts = []
    if b.get("max_tokens"):
        parts.append(f"{_count(b['max_tokens'])}tok")
    elif not b.get("open_ended"):
        if t.round_tokens:
            parts.append(f"{_count(t.epochs * t.round_tokens)}tok")
        elif t.round_steps:
            parts.append(f"{_count(t.epochs * t.round_steps)}steps")
        else:
            parts.append(f"{t.epochs}ep")
    if b.get("time_limit_s"):
        parts.append(_duration(float(b["time_limit_s"])))
    return " ".join(parts)


def run_name(run_cfg: RunConfig, started: datetime, budget: Mapping[str, Any] | None = None) -> str:
    """``train d64 h4 L1 lr3e-3 2026-12-01T17:30:05 6ep``: the model, when it started, its budget."""
    m, t = run_cfg.model, run_cfg.train
    depth = f"L{m.n_encoder_layers}" if m.n_encoder_layers == m.n_decoder_layers else f"L{m.n_encoder_layers}/{m.n_decoder_layers}"
    mant, exp = f"{t.lr:.0e}".split("e")
    when = started.strftime("%Y-%m-%dT%H:%M:%S")
    return f"train d{m.d_model} h{m.n_heads} {depth} lr{mant}e{int(exp)} {when} {budget_label(run_cfg, budget)}"


def _license(data: Any) -> str | None:
    parts = [getattr(data, "license", None), getattr(data, "attribution", None)]
    return " ".join(p for p in parts if p) or None


def _requirements() -> list[str]:
    """Pinned requirements for serving, without MLflow's slow (model-loading) inference."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("attntune", "torch", "mlflow", "safetensors", "tokenizers", "pyyaml", "pandas"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("beam_size", "long", 1), ParamSpec("max_len", "long", 0)]),
    )


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API on ``uri`` for a moment, then exactly the previous state again.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI to the environment; a library
    call must not leave that behind (the next command in the process would silently write there).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _LoggingReporter:
    """Forwards the training loop's reporter calls to ``inner`` and logs each epoch to MLflow."""

    def __init__(self, owner: TrainingRun, inner: Any | None):
        self.owner = owner
        self.inner = inner

    def start(self, info: dict[str, Any]) -> None:
        self.owner.on_start(info)
        if self.inner is not None:
            self.inner.start(info)

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.owner.log_epoch(epoch, metrics)
        return bool(self.inner.report(epoch, metrics)) if self.inner is not None else False


class TrainingRun:
    """One ``train`` run in MLflow: open it before training, log epochs, finish with the model."""

    def __init__(
        self,
        run_cfg: RunConfig,
        data: Any,
        tracking_uri: str | None = None,
        *,
        config_path: str | Path | None = None,
        check: bool = True,
        budget: Mapping[str, Any] | None = None,
    ):
        self.run_cfg = run_cfg
        self.budget = {k: v for k, v in (budget or {}).items() if v}
        self.data = data
        self.uri = resolve_tracking_uri(tracking_uri)
        self.config_path = Path(config_path) if config_path else None
        self.experiment = experiment_for(run_cfg)
        self.tracker = Tracker(self.uri, check=check)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._epochs_logged: set[int] = set()
        self._finished = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TrainingRun:
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.run_id is not None and not self._finished:
            if exc_type is None:
                self.tracker.end_run(self.run_id, "FINISHED")
            else:
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt | SystemExit) else "FAILED"
                self.tracker.set_tags(self.run_id, {"failure_reason": f"{exc_type.__name__}: {exc}"[:500]})
                self.tracker.end_run(self.run_id, status)
        self.tracker.close()

    def open(self) -> str:
        """Create the run (RUNNING) with params, tags and the config file."""
        prov = self.run_cfg.provenance or {}
        self.experiment_id = self.tracker.ensure_experiment(self.experiment)
        tags: dict[str, Any] = {TAG_KIND: "train", "host": socket.gethostname()}
        if prov.get("search_run_id"):
            tags[TAG_SEARCH] = prov["search_run_id"]
        if prov.get("trial_run_id"):
            tags[TAG_TRIAL_RUN] = prov["trial_run_id"]
        if prov.get("trial_number") is not None:
            tags[TAG_SOURCE_TRIAL] = prov["trial_number"]
        if prov.get("job"):
            tags[TAG_JOB] = prov["job"]
        lic = _license(self.data)
        if lic:
            tags[TAG_LICENSE] = lic
        fingerprint = getattr(self.data, "fingerprint", None)
        if fingerprint:
            tags["data.fingerprint"] = fingerprint
            if prov.get("data_fingerprint") and prov["data_fingerprint"] != fingerprint:
                tags["data.fingerprint_changed"] = "true"  # trained on other data than the search
        if self.config_path:
            tags["attntune.config_file"] = self.config_path.name
        source = f" from trial {prov['trial_number']} of search run {prov['search_run_id']}" if prov.get("search_run_id") else ""
        tags["mlflow.note.content"] = f"attntune production training{source}."
        tags["attntune.budget"] = budget_label(self.run_cfg, self.budget)
        params = flat_params(self.run_cfg)
        params.update({f"budget.{k}": v for k, v in self.budget.items() if k in ("max_tokens", "time_limit_s")})
        self.run_id = self.tracker.create_run(
            self._free_name(run_name(self.run_cfg, datetime.now(), self.budget)), tags=tags, params=params
        )
        if self.config_path and self.config_path.is_file():
            self.tracker.log_artifact(self.run_id, self.config_path)
        else:
            text = yaml.safe_dump(to_dict(self.run_cfg), sort_keys=False, allow_unicode=True)
            self.tracker.log_text(self.run_id, text, "config.yaml")
        self.tracker.flush()
        return self.run_id

    def _free_name(self, name: str) -> str:
        """``name``, or ``name #2``, ``#3``... when a run of the experiment has it (two runs in one second)."""
        exp = self.experiment_id
        pattern = name.replace("'", "")

        def fn(c: Any) -> set[str]:
            runs = c.search_runs([exp], filter_string=f"attributes.run_name LIKE '{pattern}%'", max_results=1000)
            return {r.info.run_name for r in runs}

        taken = self.tracker.call(fn)
        return next(n for n in itertools.chain([name], (f"{name} #{i}" for i in itertools.count(2))) if n not in taken)

    # ------------------------------------------------------------------ during training
    def reporter(self, inner: Any | None = None) -> _LoggingReporter:
        """A reporter for ``attntune.model.train.train`` that logs each epoch, then calls ``inner``."""
        return _LoggingReporter(self, inner)

    def on_start(self, info: dict[str, Any]) -> None:
        assert self.run_id is not None
        tags = {k: info[k] for k in ("device", "resumed_from_epoch") if info.get(k) is not None}
        if tags:
            self.tracker.set_tags(self.run_id, tags)
        params = {k: info[k] for k in ("n_params", "head_dim") if info.get(k) is not None}
        if params:
            self.tracker.log_params(self.run_id, params)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        assert self.run_id is not None
        if epoch in self._epochs_logged:
            return
        self._epochs_logged.add(epoch)
        self.tracker.log_metrics(self.run_id, metrics, step=epoch)

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Epochs not logged live (``history[i]`` is epoch ``i + 1`` unless it has an ``epoch`` key)."""
        for i, h in enumerate(history):
            epoch = int(h.get("epoch", i + 1))
            self.log_epoch(epoch, {k: v for k, v in h.items() if k != "epoch"})

    # ------------------------------------------------------------------ the end
    def finish(self, result: Any, checkpoint_dir: str | Path, register_as: str | None = None) -> TrainingRecord:
        """Log the remaining epochs, the checkpoint files and the pyfunc model; end the run FINISHED."""
        import mlflow

        assert self.run_id is not None and self.experiment_id is not None
        ckpt = Path(checkpoint_dir)
        self.log_history(list(getattr(result, "history", []) or []))
        tags: dict[str, Any] = {
            "epochs_run": getattr(result, "epochs_run", len(self._epochs_logged)),
            "stopped_early": bool(getattr(result, "stopped_early", False)),
        }
        if getattr(result, "stopped_by", None):
            tags["stopped_by"] = result.stopped_by
        if getattr(result, "n_params", None) is not None:
            self.tracker.log_params(self.run_id, {"n_params": result.n_params})
        self.tracker.set_tags(self.run_id, tags)
        for f in sorted(ckpt.iterdir()):
            if f.is_file() and not f.name.endswith(".tmp"):
                self.tracker.log_artifact(self.run_id, f, "checkpoint")
        self.tracker.flush()  # everything above is written before the fluent API touches the store

        artifacts = {k: str((ckpt / name).resolve()) for k, name in ARTIFACT_FILES.items()}
        missing = [p for p in artifacts.values() if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{ckpt}: checkpoint is missing {', '.join(Path(p).name for p in missing)}")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with using_tracking_uri(self.uri), warnings.catch_warnings():
            # The signature is given; MLflow's hint about an input example does not apply.
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
                info = mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=str(PYFUNC_FILE),
                    artifacts=artifacts,
                    signature=_signature(),
                    pip_requirements=_requirements(),
                    registered_model_name=register_as,
                    model_config={"device": "cpu", "beam_size": 1},
                    metadata={"attntune_run_id": self.run_id},
                )
        version = str(info.registered_model_version) if register_as and info.registered_model_version else None
        if register_as and version:
            self._tag_version(register_as, version)
            self.tracker.set_tags(self.run_id, {"attntune.registered_model": f"{register_as}/{version}"})
        self.tracker.end_run(self.run_id, "FINISHED", wait=True)
        self._finished = True
        return TrainingRecord(
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            experiment=self.experiment,
            tracking_uri=self.uri,
            model_uri=info.model_uri,
            registered_name=register_as,
            registered_version=version,
        )

    def _tag_version(self, name: str, version: str) -> None:
        """Registry tags that lead from a model version back to its search and trial."""
        prov = self.run_cfg.provenance or {}
        tags = {TAG_KIND: "train", "attntune.train_run_id": self.run_id}
        for k in ("search_run_id", "trial_run_id", "trial_number", "metric", "value"):
            if prov.get(k) is not None:
                tags[f"attntune.{k}"] = prov[k]
        lic = _license(self.data)
        if lic:
            tags[TAG_LICENSE] = lic
        run_id = self.run_id

        def fn(c: Any) -> None:
            for k, v in tags.items():
                c.set_model_version_tag(name, version, k, str(v))
            c.update_model_version(name, version, description=f"attntune train run {run_id}")

        self.tracker.call(fn)


def log_training_run(
    run_cfg: RunConfig,
    result: Any,
    checkpoint_dir: str | Path,
    data: Any,
    tracking_uri: str | None = None,
    register_as: str | None = None,
    config_path: str | Path | None = None,
) -> TrainingRecord:
    """Record a finished ``train`` (params, per-epoch metrics, checkpoint, pyfunc model) in one go."""
    t0 = time.time()
    with TrainingRun(run_cfg, data, tracking_uri, config_path=config_path) as tr:
        record = tr.finish(result, checkpoint_dir, register_as=register_as)
        tr.tracker.set_tags(record.run_id, {"attntune.log_seconds": round(time.time() - t0, 2)})
    return record


# --------------------------------------------------------------------------- checkpoints from MLflow

MLFLOW_PREFIXES = ("runs:/", "models:/")


def is_mlflow_address(text: str) -> bool:
    """``runs:/...`` or ``models:/...``: a checkpoint to fetch from MLflow, not a folder."""
    return str(text).startswith(MLFLOW_PREFIXES)


def download_checkpoint(address: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """The checkpoint at an MLflow address, downloaded into the folder ``dst``; returns ``dst``.

    Addresses: ``runs:/RUN_ID/checkpoint`` (every ``train`` run's checkpoint files), ``runs:/RUN_ID/model``
    or just ``runs:/RUN_ID`` (its logged model), ``models:/NAME/VERSION`` (a registered version, as
    ``--register-as`` makes; ``models:/NAME@alias`` and ``models:/NAME/latest`` too). Only the four
    files a translation reads are fetched (never ``train_state.pt``); ``load_checkpoint`` then reads
    them as it reads any folder (safetensors, ``yaml.safe_load``, JSON). Any problem (no store, no such
    run, model or version, no checkpoint there) raises ConfigError naming the address.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri, address)
    if re.fullmatch(r"runs:/[^/]+/?", address):
        address = f"{address.rstrip('/')}/{MODEL_NAME}"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    folder, scratch = Path(dst), Path(dst) / ".download"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with using_tracking_uri(uri):
            base = _checkpoint_base(address, uri)
            for name in ARTIFACT_FILES.values():
                got = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{base}/{name}", dst_path=str(scratch), tracking_uri=uri
                )
                os.replace(got, folder / name)
    except MlflowException as e:
        message = (getattr(e, "message", None) or str(e)).strip().splitlines()
        raise ConfigError(message[0] if message else type(e).__name__, source=address) from None
    except OSError as e:
        raise ConfigError(f"cannot download the checkpoint ({e})", source=address) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _check_store(uri: str, address: str) -> None:
    """A read must not create a store: a SQLite file that is not there is an error, not a new store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.split(":///", 1)[1]).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"no MLflow store at {uri} ({path} does not exist); pass --tracking-uri or set MLFLOW_TRACKING_URI",
                source=address,
            )
        return
    check_tracking_uri(uri)


def _checkpoint_base(address: str, uri: str, depth: int = 0) -> str:
    """The address under which the four checkpoint files lie: ``address`` itself, or its
    ``artifacts/`` folder for a logged model (where ``log_model`` put them)."""
    import mlflow

    listing = {Path(f.path).name: f for f in mlflow.artifacts.list_artifacts(artifact_uri=address, tracking_uri=uri)}
    if all(name in listing for name in ARTIFACT_FILES.values()):
        return address.rstrip("/")
    if depth == 0 and "artifacts" in listing and listing["artifacts"].is_dir:
        return _checkpoint_base(f"{address.rstrip('/')}/artifacts", uri, depth + 1)
    expected = ", ".join(ARTIFACT_FILES.values())
    raise ConfigError(
        f"no attntune checkpoint there (expected {expected}; e.g. runs:/RUN_ID/checkpoint, runs:/RUN_ID/model "
        "or models:/NAME/VERSION)",
        source=address.removesuffix("/artifacts") if depth else address,
    )
