"""Training throughput of each architecture family against a plain torch model of the same shape.

- transformer: attntune's ``Transformer`` vs ``torch.nn.Transformer`` (``reference_model.py``);
- rnn: ``RNNSeq2Seq`` vs ``nn.GRU``/``nn.LSTM`` encoder-decoder with the same attention written as
  the textbooks do (encoder always packed, scores by ``bmm`` + ``masked_fill`` + ``softmax``);
- mlp: ``MLPSeq2Seq`` vs the same gMLP ops written plainly (separate u/v projections, ``einsum``
  over positions, masks multiplied in).

Both models of a pair have the same parameter count (checked), embeddings, tied output projection,
padded batches, AdamW and label-smoothed loss. Runs alternate in one process, the order swapped
every round (A B, B A, A B, ...), so drifting machine load hits both equally and neither model
always runs right after the other's step; the figure is the median of the rounds. Prints target
tokens per second for each and the ratio attntune / reference (target: >= 1.0).

    python benchmarks/family_speed.py --quick
    python benchmarks/family_speed.py --device cuda --bf16
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings

import torch
import torch.nn.functional as F
from model_throughput import make_batches, run_steps  # benchmarks/, beside this script
from reference_model import PAD, Reference
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attntune.model.config import ModelConfig
from attntune.model.families import build_model


class ReferenceRNN(nn.Module):
    """GRU/LSTM encoder-decoder with Bahdanau/Luong attention, written plainly."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        d, h = cfg.d_model, cfg.rnn_hidden
        self.cfg, self.h = cfg, h
        e = h * (2 if cfg.bidirectional else 1)
        cell = nn.LSTM if cfg.rnn_cell == "lstm" else nn.GRU
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d), nn.Embedding(tgt_vocab, d)
        self.dropout = nn.Dropout(cfg.dropout)
        drop = cfg.dropout if cfg.n_encoder_layers > 1 else 0.0
        self.encoder = cell(d, h, cfg.n_encoder_layers, batch_first=True, dropout=drop, bidirectional=cfg.bidirectional)
        drop = cfg.dropout if cfg.n_decoder_layers > 1 else 0.0
        self.decoder = cell(d, h, cfg.n_decoder_layers, batch_first=True, dropout=drop)
        self.bridge = nn.Linear(e, cfg.n_decoder_layers * h)
        self.additive = cfg.attention == "additive"
        self.w_k = nn.Linear(e, h, bias=self.additive)
        if self.additive:
            self.w_q = nn.Linear(h, h, bias=False)
            self.v = nn.Linear(h, 1, bias=False)
        self.combine = nn.Linear(e + h, d)
        self.generator = nn.Linear(d, tgt_vocab, bias=False)
        self.generator.weight = self.tgt_embed.weight

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:  # (B, S), (B, T) -> (B, T, V)
        b, s = src.shape
        scale = math.sqrt(self.cfg.d_model)
        real = src.ne(PAD)  # (B, S)
        lengths = real.sum(1)
        x = self.dropout(self.src_embed(src) * scale)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        memory, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=s)  # (B, S, E)
        mean = (memory * real[..., None]).sum(1) / lengths[:, None]
        h0 = torch.tanh(self.bridge(mean)).view(b, self.cfg.n_decoder_layers, self.h).transpose(0, 1).contiguous()
        state = (h0, torch.zeros_like(h0)) if self.cfg.rnn_cell == "lstm" else h0
        out, _ = self.decoder(self.dropout(self.tgt_embed(tgt_in) * scale), state)  # (B, T, H)
        keys = self.w_k(memory)  # (B, S, H)
        if self.additive:
            scores = self.v(torch.tanh(self.w_q(out)[:, :, None] + keys[:, None])).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(out, keys.transpose(1, 2)) / math.sqrt(self.h)
        weights = torch.softmax(scores.masked_fill(~real[:, None, :], float("-inf")), dim=-1)
        context = torch.bmm(weights, memory)  # (B, T, E)
        return self.generator(self.dropout(torch.tanh(self.combine(torch.cat([context, out], dim=-1)))))


class RefGating(nn.Module):
    """gMLP spatial gating (or cross mixing, with ``cross``), plainly: einsum over positions."""

    def __init__(self, cfg: ModelConfig, causal: bool = False, cross: bool = False):
        super().__init__()
        d, e, m = cfg.d_model, cfg.mixing_dim, cfg.max_len
        self.cross = cross
        self.norm = nn.LayerNorm(d)
        self.u = nn.Linear(d, e)
        self.v = nn.Linear(d, e)
        self.v_norm = nn.Identity() if cross else nn.LayerNorm(e)
        self.weight = nn.Parameter(torch.empty(m, m).uniform_(-1e-3, 1e-3))
        self.bias = nn.Parameter(torch.ones(m))
        self.out = nn.Linear(e, d)
        self.register_buffer("mask", torch.tril(torch.ones(m, m)) if causal else torch.ones(m, m), persistent=False)

    def forward(self, x: Tensor, source: Tensor, keep: Tensor) -> Tensor:
        """x (B, T, D) mixes ``source`` (B, S, D) (itself, or the memory), ``keep`` (B, S, 1) float."""
        t, s = x.shape[1], source.shape[1]
        z = self.norm(x)
        v = self.v_norm(self.v(source if self.cross else z)) * keep
        w = self.weight[:t, :s] * self.mask[:t, :s]
        mixed = torch.einsum("ij,bjd->bid", w, v) + self.bias[:t, None]
        return self.out(F.gelu(self.u(z)) * mixed)


class ReferenceMLP(nn.Module):
    """The all-MLP seq2seq's ops written plainly (same parameters as ``MLPSeq2Seq``)."""

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int):
        super().__init__()
        d = cfg.d_model
        self.scale = math.sqrt(d)
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d), nn.Embedding(tgt_vocab, d)
        self.dropout = nn.Dropout(cfg.dropout)

        def mlp() -> nn.Module:
            return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, d))

        self.enc = nn.ModuleList(nn.ModuleList([RefGating(cfg), mlp()]) for _ in range(cfg.n_encoder_layers))
        self.dec = nn.ModuleList(
            nn.ModuleList([RefGating(cfg, causal=True), RefGating(cfg, cross=True), mlp()])
            for _ in range(cfg.n_decoder_layers)
        )
        self.enc_norm, self.dec_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.generator = nn.Linear(d, tgt_vocab, bias=False)
        self.generator.weight = self.tgt_embed.weight

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:  # (B, S), (B, T) -> (B, T, V)
        keep = src.ne(PAD)[..., None].float()  # (B, S, 1)
        everywhere = torch.ones_like(tgt_in, dtype=torch.float)[..., None]
        x = self.dropout(self.src_embed(src) * self.scale)
        for mix, mlp in self.enc:
            x = x + self.dropout(mix(x, x, keep))
            x = x + self.dropout(mlp(x))
        memory = self.enc_norm(x)
        y = self.dropout(self.tgt_embed(tgt_in) * self.scale)
        for mix, cross, mlp in self.dec:
            y = y + self.dropout(mix(y, y, everywhere))
            y = y + self.dropout(cross(y, memory, keep))
            y = y + self.dropout(mlp(y))
        return self.generator(self.dec_norm(y))


def reference(cfg: ModelConfig, vocab: int) -> nn.Module:
    if cfg.family == "rnn":
        return ReferenceRNN(cfg, vocab, vocab)
    if cfg.family == "mlp":
        return ReferenceMLP(cfg, vocab, vocab)
    return Reference(cfg, vocab, vocab, tgt_padding_mask=False)


def bench(label: str, cfg: ModelConfig, vocab: int, batch: int, length: int, steps: int, rounds: int, args) -> float:
    """Print both models' median tokens/s over ``rounds`` alternating rounds; return the ratio."""
    torch.manual_seed(0)
    models = {"attntune": build_model(cfg, vocab, vocab, pad_id=PAD).to(args.device), "reference": reference(cfg, vocab).to(args.device)}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert counts["attntune"] == counts["reference"], counts
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True) for name, m in models.items()}
    batches = make_batches(steps, batch, length, vocab, seed=1)
    for name, m in models.items():  # warm-up (allocator, kernels)
        run_steps(m, opts[name], batches[:2], args.device, args.bf16)
    rates: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:  # A B, B A, ...: neither always runs first
            secs, toks = run_steps(models[name], opts[name], batches, args.device, args.bf16)
            rates[name].append(toks / secs)
    a, r = statistics.median(rates["attntune"]), statistics.median(rates["reference"])
    print(f"{label}: batch={batch} len={length} vocab={vocab} steps={steps}x{rounds} params={counts['attntune']:,}")
    print(f"  attntune  {a:12,.0f} tokens/s")
    print(f"  reference {r:12,.0f} tokens/s")
    print(f"  ratio attntune/reference = {a / r:.3f}  (target >= 1.0)")
    return a / r


def configs(dropout: float) -> dict[str, ModelConfig]:
    shared = dict(d_model=128, n_encoder_layers=2, n_decoder_layers=2, dropout=dropout, max_len=64)
    return {
        "transformer (nn.Transformer)": ModelConfig(**shared, n_heads=4, d_ff=512),
        "rnn gru additive (nn.GRU)": ModelConfig(**shared, family="rnn", attention="additive"),
        "rnn gru dot (nn.GRU)": ModelConfig(**shared, family="rnn"),
        "rnn lstm bidirectional dot (nn.LSTM)": ModelConfig(**shared, family="rnn", rnn_cell="lstm", bidirectional=True, attention="dot"),
        "mlp (plain gMLP ops)": ModelConfig(**shared, family="mlp", d_ff=512),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of every model (default 0.1)")
    p.add_argument("--only", default=None, help="run the configs whose label contains this word")
    args = p.parse_args()
    if args.bf16 and args.device != "cuda":
        p.error("--bf16 needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer with norm_first
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, bf16 {args.bf16}")
    steps, rounds = (4, 3) if args.quick else (20, 5)
    if args.device == "cuda":
        steps *= 4
    ratios = {}
    for label, cfg in configs(args.dropout).items():
        if args.only is None or args.only in label:
            ratios[label] = bench(label, cfg, args.vocab, args.batch, args.length, steps, rounds, args)
    print("\nsummary (attntune / reference tokens/s): " + ", ".join(f"{k.split(' (')[0]} {v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
