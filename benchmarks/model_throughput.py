"""Training throughput: attntune's Transformer vs torch.nn.Transformer at the same size.

Both models get the same embeddings (scaled, sinusoidal positions), the same tied output projection,
the same padded batches with key-padding and causal masks, the same AdamW optimizer and the same
label-smoothed loss; only the encoder-decoder stack differs. Note: with dropout > 0 the reference also
drops attention weights and FFN activations (attntune follows the paper and does not), so
``--dropout 0`` compares pure compute. Runs alternate (A, B, A, B, ...) in one
process so drifting machine load hits both equally. Prints target tokens per second for each and the
ratio attntune / reference (target: >= 1.0).

    python benchmarks/model_throughput.py --quick
    python benchmarks/model_throughput.py --device cuda --bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from reference_model import PAD, Reference  # benchmarks/, beside this script
from torch import Tensor, nn

from attntune.model.config import ModelConfig
from attntune.model.transformer import Transformer


def make_batches(n: int, batch: int, length: int, vocab: int, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Random batches, right-padded to ``length`` with lengths uniform in [length/2, length]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(4, vocab, (batch, length), generator=g)
        tgt = torch.randint(4, vocab, (batch, length + 1), generator=g)
        for row in range(batch):
            ls = int(torch.randint(length // 2, length + 1, (1,), generator=g))
            lt = int(torch.randint(length // 2, length + 1, (1,), generator=g))
            src[row, ls:] = PAD
            tgt[row, lt + 1 :] = PAD
        out.append((src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()))
    return out


def run_steps(model: nn.Module, opt: torch.optim.Optimizer, batches, device: str, bf16: bool) -> tuple[float, int]:
    """Train on ``batches``; return (seconds, target tokens)."""
    model.train()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    tokens = 0
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for src, tgt_in, tgt_out in batches:
        src, tgt_in, tgt_out = src.to(device), tgt_in.to(device), tgt_out.to(device)
        with ctx:
            logits = model(src, tgt_in)
        loss = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), tgt_out.view(-1), ignore_index=PAD, label_smoothing=0.1
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(tgt_out.ne(PAD).sum())
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens


def bench(cfg: ModelConfig, vocab: int, batch: int, length: int, steps: int, rounds: int, device: str, bf16: bool) -> None:
    torch.manual_seed(0)
    ours = Transformer(cfg, vocab, vocab, pad_id=PAD).to(device)
    ref = Reference(cfg, vocab, vocab).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    opts = {
        "attntune": (ours, torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True)),
        "nn.Transformer": (ref, torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True)),
    }
    batches = make_batches(steps, batch, length, vocab, seed=1)
    for model, opt in opts.values():  # warm-up (allocator, kernels)
        run_steps(model, opt, batches[:2], device, bf16)
    rates: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(rounds):
        for name, (model, opt) in opts.items():
            secs, toks = run_steps(model, opt, batches, device, bf16)
            rates[name].append(toks / secs)
    a = statistics.median(rates["attntune"])
    r = statistics.median(rates["nn.Transformer"])
    print(
        f"d_model={cfg.d_model} heads={cfg.n_heads} layers={cfg.n_encoder_layers}+{cfg.n_decoder_layers} "
        f"d_ff={cfg.d_ff} dropout={cfg.dropout} batch={batch} len={length} vocab={vocab} steps={steps}x{rounds} "
        f"params attntune={n_ours:,} reference={n_ref:,}"
    )
    print(f"  attntune       {a:12,.0f} tokens/s")
    print(f"  nn.Transformer {r:12,.0f} tokens/s")
    print(f"  ratio attntune/reference = {a / r:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of both models (default 0.1)")
    args = p.parse_args()
    if args.bf16 and args.device != "cuda":
        p.error("--bf16 needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, bf16 {args.bf16}")
    steps, rounds = (5, 3) if args.quick else (20, 5)
    if args.device == "cuda":
        steps, rounds = steps * 4, rounds
    small = ModelConfig(d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=512, dropout=args.dropout)
    bench(small, args.vocab, 64, 32, steps, rounds, args.device, args.bf16)
    if not args.skip_large:
        large = ModelConfig(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, dropout=args.dropout)
        bench(large, args.vocab, 64 if args.device == "cuda" else 16, 32, max(2, steps // 2), rounds, args.device, args.bf16)


if __name__ == "__main__":
    main()
