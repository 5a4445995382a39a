"""Tatoeba zh->en baseline: attntune's default model and recipe for a fixed wall time on CPU.

Trains ``ModelConfig()`` / ``TrainConfig()`` defaults (or ``--config FILE``'s model and train sections)
on the Tatoeba Chinese-English pairs for ``--minutes`` of wall time (evaluation included), then
reports BLEU of greedy translations of 1,000 held-out test pairs: sacrebleu corpus BLEU, 13a
tokenisation, lower-cased. Training runs in chunks of ``--chunk`` steps ("epochs" of the loop) so it
can stop on time; with the default inverse-sqrt schedule the chunking does not change the recipe.

    python benchmarks/tatoeba_baseline.py --minutes 8

Data: Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import sacrebleu
import torch
import yaml

from attntune.model.checkpoint import translate
from attntune.model.config import ModelConfig, TaskConfig, TrainConfig, load_dataclass
from attntune.model.data import load_task
from attntune.model.train import train

ATTRIBUTION = "Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tatoeba-cmn-eng" / "cmn.txt"


class WallClock:
    """Reporter: prints each chunk and stops once the time budget is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.t0 = time.perf_counter()
        self.info: dict = {}

    def start(self, info: dict) -> None:
        self.info = info
        print(
            f"model: {info['n_params']:,} params, {info['n_encoder_layers']}+{info['n_decoder_layers']} layers, "
            f"{info['n_heads']} heads, device {info['device']}, {info['n_train']:,} training pairs",
            flush=True,
        )

    def report(self, epoch: int, metrics: dict[str, float]) -> bool:
        elapsed = time.perf_counter() - self.t0
        print(
            f"{elapsed / 60:5.1f} min  chunk {epoch:3d}  train_loss {metrics['train_loss']:.3f}  "
            f"val_loss {metrics['val_loss']:.3f}  val_acc {metrics['val_accuracy']:.3f}  lr {metrics['lr']:.2e}  "
            f"{metrics['tokens_per_s']:,.0f} tok/s",
            flush=True,
        )
        return elapsed >= self.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-time budget for training (default 8)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cmn.txt (English TAB Chinese TAB credits)")
    p.add_argument("--config", type=Path, default=None, help="YAML whose model/train sections replace the defaults")
    p.add_argument("--chunk", type=int, default=100, help="training steps between evaluations (default 100)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()

    model_cfg, train_cfg = ModelConfig(), TrainConfig()
    if args.config is not None:
        doc = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        model_cfg = load_dataclass(ModelConfig, doc.get("model") or {}, "model")
        train_cfg = load_dataclass(TrainConfig, doc.get("train") or {}, "train")
    train_cfg = dataclasses.replace(
        train_cfg,
        epochs=1_000_000,
        max_steps_per_epoch=args.chunk,
        bleu_samples=0,
        seed=args.seed,
        device=args.device,
        num_threads=args.threads or train_cfg.num_threads,
    )
    task = TaskConfig(
        name="tsv",
        path=str(args.data),
        src_col=1,
        tgt_col=0,
        src_tokenizer="char",
        tgt_tokenizer="word",
        lowercase=True,
        val_size=1000,
        test_size=1000,
        license="CC-BY 2.0 FR",
        attribution=ATTRIBUTION,
    )
    print(f"torch {torch.__version__}, threads {train_cfg.num_threads or torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"model {dataclasses.asdict(model_cfg)}")
    print(f"train {dataclasses.asdict(train_cfg)}")
    t0 = time.perf_counter()
    data = load_task(task)
    print(f"data: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test pairs, "
          f"vocab zh {data.src_vocab_size:,} en {data.tgt_vocab_size:,}, loaded in {time.perf_counter() - t0:.2f}s")

    clock = WallClock(args.minutes * 60)
    result = train(model_cfg, train_cfg, data, clock)
    train_s = time.perf_counter() - clock.t0
    steps = sum(1 for _ in result.history) * args.chunk
    train_tokens = sum(len(t) - 1 for _, t in data.train)
    seen = sum(h["tokens_per_s"] for h in result.history) / max(1, len(result.history)) * train_s

    t1 = time.perf_counter()
    sources = [s for s, _ in data.test_text]
    refs = [t for _, t in data.test_text]
    hyps = translate(result.model, data.src_tok, data.tgt_tok, sources)
    bleu = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True)
    decode_s = time.perf_counter() - t1
    print()
    for s, h, r in list(zip(sources, hyps, refs, strict=True))[:5]:
        print(f"  {s}  ->  {h}   (ref: {r})")
    demo = translate(result.model, data.src_tok, data.tgt_tok, ["我爱你。", "今天天气很好。", "他在哪里？"])
    print("  " + " | ".join(demo))
    print()
    print(f"wall time: training {train_s / 60:.1f} min (~{steps} steps, ~{seen / train_tokens:.1f} epochs), "
          f"test decoding {decode_s:.0f}s; final load average {os.getloadavg()[0]:.1f}")
    print(f"test BLEU (1,000 pairs, greedy, 13a, lower-cased): {bleu.score:.1f}")
    print(f"  {bleu}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
