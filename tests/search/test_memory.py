"""The memory estimate: close to measured peaks, and an over-limit config is INFEASIBLE, never started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from attntune.model.config import ModelConfig, TrainConfig, to_dict
from attntune.search.job import parse_job
from attntune.search.memory import GiB, estimate_bytes, longest_sequence, memory_problem, trial_memory_limit
from attntune.search.run import run_search
from tests.conftest import REPO, fresh_store, tiny_job


def _model(d: int, h: int, layers: int, ff: int, dropout: float) -> dict:
    return {"d_model": d, "n_heads": h, "n_encoder_layers": layers, "n_decoder_layers": layers, "d_ff": ff, "dropout": dropout}


# Three shapes where a different term dominates: the output vocabulary, the weights and optimizer
# state, and the per-layer activations (with dropout, a key-padding mask and label smoothing).
CONFIGS = {
    "vocabulary": {"model": _model(32, 2, 1, 64, 0.0), "train": {"batch_size": 64}, "src_vocab": 50, "tgt_vocab": 12000, "max_tokens": 32},
    "weights": {"model": _model(384, 6, 4, 1536, 0.1), "train": {"batch_size": 2}, "src_vocab": 100, "tgt_vocab": 100, "max_tokens": 8},
    "activations": {"model": _model(256, 4, 3, 1024, 0.1), "train": {"batch_size": 96}, "src_vocab": 40, "tgt_vocab": 40, "max_tokens": 16},
}

def test_estimate_is_within_30_percent_of_the_measured_peak() -> None:
    """Each config trains two real steps in a fresh process (peak RSS growth over the baseline);
    the three run side by side, which changes nothing about each one's own peak."""
    procs = {}
    for name, spec in CONFIGS.items():
        spec = {**spec, "train": {**spec["train"], "device": "cpu"}, "threads": 1}
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "attntune.search.memory", json.dumps(spec)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    ratios = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        r = json.loads(out.strip().splitlines()[-1])
        assert r["measured"] > 50 * 2**20, (name, r)  # big enough that allocator noise is small
        ratios[name] = r["estimate"] / r["measured"]
    assert all(0.7 <= v <= 1.3 for v in ratios.values()), ratios


def test_estimate_grows_with_what_costs_memory() -> None:
    m, t = ModelConfig(d_model=128, n_heads=4, d_ff=512), TrainConfig(batch_size=32)
    base = estimate_bytes(m, t, 1000, 1000, 32)
    assert estimate_bytes(m, TrainConfig(batch_size=64), 1000, 1000, 32) > base
    assert estimate_bytes(ModelConfig(d_model=256, n_heads=4, d_ff=512), t, 1000, 1000, 32) > base
    assert estimate_bytes(m, t, 1000, 8000, 32) > base
    assert estimate_bytes(m, t, 1000, 1000, 64) > base
    # On a GPU, bf16 activations halve that part; the CUDA context is added.
    assert estimate_bytes(m, t, 1000, 1000, 32, cuda=True) > base


def test_gpu_jobs_get_their_share_of_the_device() -> None:
    job = parse_job(tiny_job("g", resources={"gpus": 0.25}))
    limit = trial_memory_limit(job, gpu_sizes=[80 * GiB, 40 * GiB])
    assert limit is not None and limit[0] == 10 * GiB and "gpus=0.25" in limit[1]
    assert trial_memory_limit(job, gpu_sizes=[]) is None  # no GPU visible: no implied limit
    explicit = parse_job(tiny_job("g", resources={"gpus": 0.25, "memory_gb": 3}))
    assert trial_memory_limit(explicit, gpu_sizes=[80 * GiB])[0] == 3 * GiB
    assert trial_memory_limit(parse_job(tiny_job("c")), gpu_sizes=[80 * GiB]) is None  # CPU job


def test_a_config_over_the_limit_is_infeasible_without_being_started(tmp_path: Path, mlflow_template: Path) -> None:
    from attntune.search.worker import load_task_cached

    space = {"params": {"model.n_heads": [4], "model.head_dim": [8, 256], "train.lr": [3e-3, 5e-3]}}
    raw = tiny_job("mem", space=space, budget={"n_trials": 3, "max_epochs": 1, "min_epochs": 1})
    job = parse_job(raw)
    data = load_task_cached(to_dict(job.base.task))
    vocab, longest = (data.src_vocab_size, data.tgt_vocab_size), longest_sequence(data)

    def need(head_dim: int) -> int:
        m = ModelConfig(d_model=4 * head_dim, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0)
        return estimate_bytes(m, job.base.train, *vocab, longest)

    small, big = need(8), need(256)
    assert big > 2 * small
    limit_gb = (small + big) / 2 / GiB
    store = fresh_store(mlflow_template, tmp_path)
    job = parse_job({**raw, "resources": {"memory_gb": limit_gb}, "tracking": store, "output": str(tmp_path / "out")})
    result = run_search(job, quiet=True, report=False)
    t = result.table
    infeasible, done = t[t["state"] == "INFEASIBLE"], t[t["state"] != "INFEASIBLE"]
    assert set(done["state"]) == {"COMPLETE"} and (done["model.d_model"] == 32).all()
    # Two configs fit (d_model 32 at two learning rates): each is trained once, a repeat is answered.
    trained = done[done["duplicate_of"].isna()] if "duplicate_of" in done else done
    assert len(trained) == 2 and trained["train.lr"].nunique() == 2
    assert len(infeasible) >= 1 and (infeasible["model.head_dim"] == 256).all()
    assert (infeasible["epochs"] == 0).all() and infeasible["host"].isna().all()  # no worker ever saw it
    runs = MlflowClient(store).search_runs([result.experiment_id], max_results=100)
    for r in runs:
        if r.data.tags.get("attntune.state") == "INFEASIBLE":
            reason = r.data.tags["failure_reason"]
            assert "memory estimate" in reason and "exceeds the limit" in reason and "resources.memory_gb" in reason
            assert r.data.tags["failure_kind"] == "infeasible" and not r.data.metrics and "host" not in r.data.tags
    cfg = parse_job(raw).base
    assert memory_problem(cfg, vocab, longest, None) is None  # no limit, never infeasible
