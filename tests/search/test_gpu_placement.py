"""GPU packing without a GPU: device slots on the optuna backend, Ray's logical GPUs on the ray backend.

CI has no GPU, so placement is checked where it is decided: each trial records the devices it was
given (``CUDA_VISIBLE_DEVICES``, and Ray's ``get_gpu_ids()``) and when it ran; at no instant may a
device hold more trials than ``floor(1 / resources.gpus)``. Training itself falls back to the CPU.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from attntune.search.backends.local import device_slots, max_concurrency
from attntune.search.job import parse_job
from attntune.search.run import run_search
from tests.conftest import fresh_store, tiny_job


@pytest.mark.parametrize(
    ("concurrency", "gpus", "ids", "expect_workers", "per_device"),
    [
        (8, 0.5, ["0", "1"], 4, 2),  # two trials per device, capped by the devices
        (3, 0.25, ["0", "1"], 3, 4),  # fewer trials than slots: spread over both devices
        (6, 0.3, ["0", "1", "2"], 6, 3),  # floor(1 / 0.3) = 3 per device
        (4, 1.0, ["0", "1", "2", "3"], 4, 1),
        (4, 2.0, ["0", "1", "2", "3"], 2, 1),  # two whole devices per trial
    ],
)
def test_device_slots_never_overcommit(concurrency: int, gpus: float, ids: list[str], expect_workers: int, per_device: int) -> None:
    n = max_concurrency(concurrency, gpus, ids)
    assert n == expect_workers
    envs = device_slots(n, gpus, ids)
    seen = Counter(d for e in envs for d in e["CUDA_VISIBLE_DEVICES"].split(","))
    assert set(seen) <= set(ids)
    assert max(seen.values()) <= per_device
    if gpus < 1 and n > 1:
        assert len(seen) == min(len(ids), n)  # trials spread over the devices first
    for e in envs:  # a multi-GPU trial gets distinct devices
        devs = e["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(devs) == max(1, int(gpus)) == len(set(devs))
    assert device_slots(2, 0.0, None) == [{}, {}]  # no GPUs: the environment is left alone


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = cur = 0
    for _, d in events:
        cur += d
        most = max(most, cur)
    return most


def _per_device(t: pd.DataFrame) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, r in t.iterrows():
        out[str(r["cuda_visible_devices"])].append((float(r["start_time"]), float(r["end_time"])))
    return out


def _packed_job(tmp_path: Path, template: Path, backend: str, n_trials: int, **overrides):
    store = fresh_store(template, tmp_path)
    raw = tiny_job(
        f"pack-{backend}",
        backend=backend,
        resources={"gpus": 0.5, "cpus": 0.5},
        budget={"n_trials": n_trials, "max_epochs": 1, "min_epochs": 1},
        tracking=store,
        output=str(tmp_path / "out"),
        **overrides,
    )
    return parse_job(raw)


def test_optuna_backend_pins_workers_to_device_slots(tmp_path: Path, mlflow_template: Path) -> None:
    """Five requested, four fit (two 0.5-GPU trials on each of two devices); each worker keeps
    its device for every trial it runs."""
    job = _packed_job(tmp_path, mlflow_template, "optuna", 6, concurrency=5)
    result = run_search(job, gpus=["0", "1"], quiet=True, report=False)
    t = result.table
    from attntune.search.study_store import load_study

    workers = {tr.number: tr.user_attrs["placement"].get("worker") for tr in load_study(tmp_path / "out").trials}
    t["worker"] = t["number"].map(workers)
    assert len(t) == 6 and set(t["state"]) == {"COMPLETE"}
    assert set(t["cuda_visible_devices"]) == {"0", "1"}  # spread over both devices
    assert t.groupby("worker")["cuda_visible_devices"].nunique().max() == 1  # pinned
    assert t["worker"].nunique() <= 4
    for dev, spans in _per_device(t).items():
        assert max_overlap(spans) <= 2, (dev, spans)


def test_ray_backend_packs_fractional_trials_on_logical_gpus(tmp_path: Path, mlflow_template: Path) -> None:
    """Ray started with two logical GPUs: four 0.5-GPU trials run at once, two per GPU id, and each
    trial sees exactly the device Ray assigned to it."""
    import ray

    assert not ray.is_initialized()
    job = _packed_job(tmp_path, mlflow_template, "ray", 4, concurrency=4)
    result = run_search(job, gpus=["0", "1"], quiet=True, report=False)
    assert not ray.is_initialized()  # the backend stops the Ray it started
    t = result.table
    assert len(t) == 4 and set(t["state"]) == {"COMPLETE"}
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(job.tracking.resolved_uri()).search_runs([result.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("attntune.kind") == "trial"]
    assert len(children) == 4
    for r in children:  # the visible device is the one Ray assigned, and only that one
        assert r.data.tags["cuda_visible_devices"] == r.data.tags["gpu_ids"]
        assert r.data.tags["cuda_visible_devices"] in {"0", "1"}
    for dev, spans in _per_device(t).items():
        assert max_overlap(spans) <= 2, (dev, spans)
