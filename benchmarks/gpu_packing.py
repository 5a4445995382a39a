"""GPU packing and model efficiency: what fractional ``resources.gpus`` buys on one GPU.

Two measurements, one command (under 6 minutes on an H100/H200-class GPU):

1. **Packing.** The same 16 small trials (attntune ``Transformer`` models under 10M parameters, the
   training step of ``attntune.model.train``: bf16 autocast, label-smoothed loss on (B*T, V) rows,
   clipped gradients, fused AdamW, one ``loss.item()`` per step, a validation pass every 100 steps)
   run one at a time in one worker process, then four at a time in four worker processes that
   share the device (``CUDA_VISIBLE_DEVICES`` the same for all, as ``resources.gpus: 0.25`` gives).
   Workers start, initialise CUDA and signal ready before the clock starts, as attntune's warm
   worker pool does. Prints trials/hour for both and the ratio (target >= 2.5x), with each trial
   config's measured peak memory against ``attntune.search.memory.estimate_bytes``.
2. **Model efficiency.** attntune's ``Transformer`` against ``torch.nn.Transformer`` wrapped with
   the same embeddings and tied output projection, at d_model 1024 (16 heads, 6+6 layers, d_ff
   4096), bf16 autocast: training tokens/s of each (target ratio >= 1.0), and model FLOP
   utilisation of each against a bf16 matmul timed in the same run.

Runs on a bare GPU box with only torch: attntune's ``model`` (and ``search/memory.py``) are loaded
from this repository's folders by path, no install, no Ray/Optuna/MLflow, no tokenizers/sacrebleu
(the data is synthetic). ``--smoke`` runs tiny sizes on the CPU in well under a minute.

    python benchmarks/gpu_packing.py                 # a GPU
    python benchmarks/gpu_packing.py --smoke         # CPU check of the whole pipeline
    python benchmarks/gpu_packing.py --json out.json # also write the figures
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]


def load_attntune_model() -> types.ModuleType:
    """Import ``attntune.model`` from ``<repo>/model`` (and ``search/memory.py`` as a plain module)
    without installing anything: the namespace ``attntune`` is created here, its ``__path__``
    empty, so no other subpackage (with its Ray/MLflow imports) can be found by accident."""
    if "attntune.model" not in sys.modules:
        ns = sys.modules.get("attntune") or types.ModuleType("attntune")
        if not hasattr(ns, "__path__"):
            ns.__path__ = []  # type: ignore[attr-defined]
        sys.modules["attntune"] = ns
        spec = importlib.util.spec_from_file_location(
            "attntune.model", REPO / "model" / "__init__.py", submodule_search_locations=[str(REPO / "model")]
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["attntune.model"] = mod
        spec.loader.exec_module(mod)
        ns.model = mod  # type: ignore[attr-defined]
    mspec = importlib.util.spec_from_file_location("attntune_memory", REPO / "search" / "memory.py")
    assert mspec is not None and mspec.loader is not None
    memory = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(memory)
    return memory


MEMORY = load_attntune_model()
from reference_model import PAD, Reference  # noqa: E402 - benchmarks/, beside this script

from attntune.model.config import ModelConfig, TrainConfig  # noqa: E402
from attntune.model.transformer import Transformer, n_params  # noqa: E402

# --------------------------------------------------------------------------- trials


def trial_configs(n: int, smoke: bool) -> list[dict[str, Any]]:
    """``n`` small configs, varied as a search would sample them (all under 10M parameters)."""
    out = []
    for i in range(n):
        if smoke:
            d, heads, layers = (32, 64)[i % 2], 4, 1 + i % 2
        else:
            d, heads, layers = (128, 192, 256)[i % 3], (4, 8)[i % 2], 2 + i % 2
        out.append(
            {
                "number": i,
                "model": {"d_model": d, "n_heads": heads, "n_encoder_layers": layers, "n_decoder_layers": layers,
                          "d_ff": 4 * d, "dropout": 0.1},  # fmt: skip
                "lr": (3e-4, 6e-4, 1e-3, 2e-3)[i % 4],
            }
        )
    return out


def synthetic_batches(n: int, batch: int, length: int, vocab: int, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Reverse-the-sequence pairs, right-padded, lengths uniform in [length/2, length]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(4, vocab, (batch, length), generator=g)
        lens = torch.randint(length // 2, length + 1, (batch,), generator=g)
        tgt = torch.full((batch, length + 2), PAD, dtype=torch.long)
        for row in range(batch):
            k = int(lens[row])
            src[row, k:] = PAD
            tgt[row, 0] = 1  # BOS
            tgt[row, 1 : k + 1] = src[row, :k].flip(0)
            tgt[row, k + 1] = 2  # EOS
        out.append((src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()))
    return out


def run_trial(spec: dict[str, Any], steps: int, device: torch.device, vocab: int, batch: int, length: int) -> dict[str, Any]:
    """One trial as attntune trains it; returns seconds, parameters, peak memory and its estimate."""
    cfg = ModelConfig(**spec["model"], max_len=length + 2)
    torch.manual_seed(spec["number"])
    model = Transformer(cfg, vocab, vocab, pad_id=PAD).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.98), eps=1e-9, fused=True)
    data = synthetic_batches(8, batch, length, vocab, seed=spec["number"])
    val = synthetic_batches(2, batch, length, vocab, seed=10_000 + spec["number"])
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        src, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in data[step % len(data)])
        with amp:
            logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=0.1)
        value = loss.item()  # attntune checks every step's loss for NaN
        if not math.isfinite(value):
            raise RuntimeError(f"trial {spec['number']}: loss {value}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps:  # the per-epoch validation pass
            model.eval()
            with torch.no_grad(), amp:
                for s, ti, to in val:
                    lg = model(s.to(device), ti.to(device))
                    F.cross_entropy(lg.float().flatten(0, 1), to.to(device).flatten(), ignore_index=PAD).item()
            model.train()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    train_cfg = TrainConfig(batch_size=batch, bf16=True)
    estimate = MEMORY.estimate_bytes(cfg, train_cfg, vocab, vocab, length + 1, cuda=cuda)
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else None
    return {
        "number": spec["number"],
        "seconds": seconds,
        "n_params": n_params(cfg, vocab, vocab),
        "d_model": cfg.d_model,
        "layers": cfg.n_encoder_layers,
        "peak_bytes": peak,
        # what the allocator sees: the estimate without the CUDA context and workspaces
        "estimate_bytes": estimate - (MEMORY.CUDA_OVERHEAD if cuda else MEMORY.CPU_OVERHEAD),
        "final_loss": value,
    }


def worker(numbers: list[int], args: argparse.Namespace) -> None:
    """A worker process: initialise the device, say READY, wait for GO, run its trials, print JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        torch.set_num_threads(1)
    if device.type == "cuda":
        a = torch.randn(256, 256, device=device)
        (a @ a).sum().item()  # context, cuBLAS handle
    specs = {s["number"]: s for s in trial_configs(args.trials, args.smoke)}
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    results = [run_trial(specs[n], args.steps, device, args.vocab, args.batch, args.length) for n in numbers]
    print(json.dumps(results), flush=True)


def run_pool(n_workers: int, args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    """Trials i, i+n, i+2n... in worker i, all workers on the same device. Returns (wall, results)."""
    env = {**os.environ}
    if torch.cuda.is_available() and not args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    procs = []
    for i in range(n_workers):
        numbers = list(range(i, args.trials, n_workers))
        cmd = [sys.executable, __file__, "--worker", ",".join(map(str, numbers)), *forward_args(args)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"worker failed to start: {line!r}")
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("GO\n")
        p.stdin.flush()
    results: list[dict[str, Any]] = []
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"worker exited with {p.returncode}")
        results.extend(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - t0, sorted(results, key=lambda r: r["number"])


def forward_args(args: argparse.Namespace) -> list[str]:
    out = ["--trials", str(args.trials), "--steps", str(args.steps), "--vocab", str(args.vocab)]
    out += ["--batch", str(args.batch), "--length", str(args.length)]
    return out + (["--smoke"] if args.smoke else [])


# --------------------------------------------------------------------------- model efficiency


def step_flops(cfg: ModelConfig, batch: int, s: int, t: int, vocab: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward), matmuls only: projections,
    attention scores and values (the causal self-attention counted at half), the output layer."""
    d, f = cfg.d_model, cfg.d_ff
    enc = cfg.n_encoder_layers * (2 * batch * s * (4 * d * d + 2 * d * f) + 4 * batch * s * s * d)
    dec_proj = 2 * batch * t * (4 * d * d + 2 * d * d + 2 * d * f) + 2 * batch * s * 2 * d * d
    dec = cfg.n_decoder_layers * (dec_proj + 2 * batch * t * t * d + 4 * batch * t * s * d)
    out = 2 * batch * t * d * vocab
    return 3.0 * (enc + dec + out)


def time_steps(model: nn.Module, device: torch.device, batches, amp, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True)

    def one(b) -> None:
        src, tgt_in, tgt_out = (x.to(device, non_blocking=True) for x in b)
        with amp:
            logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for b in batches[:3]:  # warm-up: allocator, kernel selection
        one(b)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        one(batches[i % len(batches)])
    sync()
    return (time.perf_counter() - t0) / steps


def matmul_flops(device: torch.device, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul (the roof the models are measured against)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def model_efficiency(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        cfg = ModelConfig(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.1, max_len=64)
        batch, length, vocab, steps, rounds, mm, dtype = 8, 16, 1000, 3, 2, 256, torch.float32
        amp = nullcontext()
    else:
        cfg = ModelConfig(d_model=1024, n_heads=16, n_encoder_layers=6, n_decoder_layers=6, d_ff=4096, dropout=0.1, max_len=256)
        batch, length, vocab, steps, rounds, mm, dtype = 64, 128, 32000, 20, 3, 8192, torch.bfloat16
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer with norm_first
    models = {"attntune": Transformer(cfg, vocab, vocab, pad_id=PAD).to(device), "nn.Transformer": Reference(cfg, vocab, vocab, tgt_padding_mask=False).to(device)}
    batches = synthetic_batches(4, batch, length, vocab, seed=1)
    tokens = [int(b[2].ne(PAD).sum()) for b in batches]
    secs: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):  # alternate, so drifting clocks or load hit both
        for name, m in models.items():
            secs[name].append(time_steps(m, device, batches, amp, steps))
    peak = matmul_flops(device, mm, dtype)
    flops = step_flops(cfg, batch, length, length + 1, vocab)
    out: dict[str, Any] = {
        "config": f"d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers, "
        f"d_ff {cfg.d_ff}, batch {batch} x len {length}, vocab {vocab}, {'bf16' if dtype == torch.bfloat16 else 'fp32'}",
        "matmul_tflops": peak / 1e12,
    }
    for name in models:
        s = statistics.median(secs[name])
        out[name] = {
            "tokens_per_s": statistics.mean(tokens) / s,
            "step_ms": s * 1e3,
            "model_tflops": flops / s / 1e12,
            "mfu_vs_matmul": flops / s / peak,
            "n_params": sum(p.numel() for p in models[name].parameters()),
        }
    out["tokens_ratio"] = out["attntune"]["tokens_per_s"] / out["nn.Transformer"]["tokens_per_s"]
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--trials", type=int, default=None, help="number of trials (16; 4 with --smoke)")
    p.add_argument("--packed", type=int, default=None, help="trials sharing the device at once (4; 2 with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (300; 20 with --smoke)")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--skip-model", action="store_true", help="only the packing measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.trials = args.trials or (4 if args.smoke else 16)
    args.packed = args.packed or (2 if args.smoke else 4)
    args.steps = args.steps or (20 if args.smoke else 300)
    if args.smoke:
        args.vocab, args.batch, args.length = min(args.vocab, 500), min(args.batch, 16), min(args.length, 12)
    if args.worker is not None:
        worker([int(x) for x in args.worker.split(",") if x], args)
        return
    if not args.smoke and not torch.cuda.is_available():
        p.error("no CUDA device here; run with --smoke for the CPU check")
    where = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, {where}, {args.trials} trials x {args.steps} steps, batch {args.batch} x len {args.length}")

    seq_s, seq = run_pool(1, args)
    pack_s, packed = run_pool(args.packed, args)
    per_hour = {"sequential": args.trials / seq_s * 3600, "packed": args.trials / pack_s * 3600}
    ratio = per_hour["packed"] / per_hour["sequential"]
    print("\n## packing: the same trials one at a time vs sharing one device")
    print(f"  one at a time : {seq_s:8.1f} s  {per_hour['sequential']:10.0f} trials/hour")
    print(f"  {args.packed} at a time  : {pack_s:8.1f} s  {per_hour['packed']:10.0f} trials/hour")
    print(f"  ratio packed/sequential = {ratio:.2f}x  (target >= 2.5x on a GPU)")
    print(f"  params per trial: {min(r['n_params'] for r in seq):,} .. {max(r['n_params'] for r in seq):,}")
    if seq[0]["peak_bytes"] is not None:
        print("  memory estimate vs measured peak (allocator), per trial shape:")
        seen = set()
        for r in seq:
            key = (r["d_model"], r["layers"])
            if key in seen:
                continue
            seen.add(key)
            print(
                f"    d_model {r['d_model']:4d} L{r['layers']}: estimate {r['estimate_bytes'] / 2**20:7.1f} MiB, "
                f"measured {r['peak_bytes'] / 2**20:7.1f} MiB, ratio {r['estimate_bytes'] / r['peak_bytes']:.2f}"
            )
    report: dict[str, Any] = {
        "device": where,
        "packing": {"sequential_s": seq_s, "packed_s": pack_s, "packed": args.packed, "trials_per_hour": per_hour, "ratio": ratio, "trials": seq},
    }
    if not args.skip_model:
        eff = model_efficiency(args)
        report["model"] = eff
        print(f"\n## model: attntune Transformer vs torch.nn.Transformer ({eff['config']})")
        print(f"  matmul roof: {eff['matmul_tflops']:.3g} TFLOP/s")
        for name in ("attntune", "nn.Transformer"):
            e = eff[name]
            print(
                f"  {name:15s} {e['tokens_per_s']:12,.0f} tokens/s  {e['step_ms']:8.1f} ms/step  "
                f"{e['model_tflops']:8.3g} TFLOP/s  MFU {100 * e['mfu_vs_matmul']:5.1f}% of the matmul"
            )
        print(f"  ratio attntune/nn.Transformer = {eff['tokens_ratio']:.3f}  (target >= 1.0)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
