"""The training loop: learning, metrics, reporter, schedules, determinism, resuming, divergence."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from attntune.model.checkpoint import translate
from attntune.model.config import ConfigError, ModelConfig, TaskConfig, TrainConfig
from attntune.model.data import load_task
from attntune.model.train import (
    DivergedError,
    LossCeiling,
    RunBudget,
    lr_at,
    schedule_steps,
    token_budget_recipe,
    train,
)
from attntune.model.transformer import n_params

TINY = ModelConfig(d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.1, max_len=32)
FAST = TrainConfig(lr=3e-3, warmup_steps=10, epochs=2, batch_size=32, max_steps_per_epoch=6, bleu_samples=16)


class Recorder:
    def __init__(self, stop_at: int | None = None, stop_if=None):
        self.info: dict = {}
        self.reports: list[tuple[int, dict]] = []
        self.stop_at = stop_at
        self.stop_if = stop_if

    def start(self, info):
        self.info = info

    def report(self, epoch, metrics):
        self.reports.append((epoch, metrics))
        if self.stop_if is not None and self.stop_if(metrics):
            return True
        return self.stop_at is not None and epoch >= self.stop_at


def comparable(history):
    return [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in history]


def test_reverse_task_is_learned():
    """>= 99% validation token accuracy on reversing 3-6 symbols, in seconds; translations are right."""
    data = load_task(TaskConfig(name="reverse", n_train=2000, val_size=100, test_size=0, n_symbols=8, max_seq_len=6))
    model = ModelConfig(d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=128, dropout=0.0)
    cfg = TrainConfig(lr=5e-3, warmup_steps=50, schedule="cosine", label_smoothing=0.0, batch_size=32, epochs=6, bleu_samples=0)
    rec = Recorder(stop_if=lambda m: m["val_accuracy"] >= 0.995)
    c0 = time.process_time()
    result = train(model, cfg, data, rec)
    cpu = time.process_time() - c0  # CPU, not wall time: other jobs may share the cores
    best = max(h["val_accuracy"] for h in result.history)
    assert best >= 0.99, result.history
    assert cpu < 60, f"{cpu:.0f}s of CPU"  # ~8 s on one idle core
    got = translate(result.model, data.src_tok, data.tgt_tok, ["a b c d e", "h g f", "c c a b"])
    assert got == ["e d c b a", "f g h", "b a c c"]


def test_metrics_info_and_reporter(reverse_data):
    rec = Recorder()
    result = train(TINY, FAST, reverse_data, rec)
    assert [e for e, _ in rec.reports] == [1, 2] and result.epochs_run == 2 and not result.stopped_early
    for _, m in rec.reports:
        assert set(m) == {"train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s", "step", "tokens"}
        assert all(math.isfinite(v) for v in m.values())
        assert 0 <= m["val_accuracy"] <= 1 and 0 <= m["val_bleu"] <= 100 and m["tokens_per_s"] > 0
    # running totals: optimizer steps (max_steps_per_epoch=6 a pass) and target tokens trained so far
    assert [m["step"] for _, m in rec.reports] == [6, 12]
    assert 0 < rec.reports[0][1]["tokens"] < rec.reports[1][1]["tokens"] <= 12 * FAST.batch_size * 9
    info = rec.info
    assert info["warmup_steps"] == FAST.warmup_steps
    assert info["n_params"] == result.n_params == n_params(TINY, reverse_data.src_vocab_size, reverse_data.tgt_vocab_size)
    assert info["n_heads"] == 4 and info["head_dim"] == 8
    assert info["n_encoder_layers"] == 1 and info["n_decoder_layers"] == 1 and info["device"] == "cpu"
    assert result.history == [m for _, m in rec.reports]


def test_bleu_samples_zero_skips_bleu(reverse_data):
    rec = Recorder()
    train(TINY, TrainConfig(**{**FAST.__dict__, "bleu_samples": 0, "epochs": 1}), reverse_data, rec)
    assert "val_bleu" not in rec.reports[0][1]


def test_reporter_can_stop_training(reverse_data):
    rec = Recorder(stop_at=1)
    result = train(TINY, TrainConfig(**{**FAST.__dict__, "epochs": 5}), reverse_data, rec)
    assert result.stopped_early and result.epochs_run == 1 and len(rec.reports) == 1


def test_same_seed_same_metrics(reverse_data):
    a = train(TINY, FAST, reverse_data)
    b = train(TINY, FAST, reverse_data)
    c = train(TINY, TrainConfig(**{**FAST.__dict__, "seed": 1}), reverse_data)
    assert comparable(a.history) == comparable(b.history)
    assert comparable(a.history) != comparable(c.history)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def _stop_after_epoch_1_then_resume(cfg: TrainConfig, data: Any, ckpt: Path) -> Any:
    """Train ``cfg`` (3 epochs or rounds) straight, and again stopped after the first one and
    resumed from its checkpoint: the resumed run must equal the straight one exactly. Returns the
    straight run."""
    straight = train(TINY, cfg, data)
    first = train(TINY, cfg, data, Recorder(stop_at=1), checkpoint_dir=ckpt)
    assert first.epochs_run == 1 and (ckpt / "train_state.pt").is_file()
    rec = Recorder()
    resumed = train(TINY, cfg, data, rec, checkpoint_dir=ckpt, resume=True)
    assert rec.info["resumed_from_epoch"] == 1 and [e for e, _ in rec.reports] == [2, 3]
    assert comparable(resumed.history) == comparable(straight.history)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    return straight


def test_resume_continues_exactly(reverse_data, tmp_path):
    cfg = TrainConfig(**{**FAST.__dict__, "epochs": 3})
    ckpt = tmp_path / "ckpt"
    straight = _stop_after_epoch_1_then_resume(cfg, reverse_data, ckpt)
    fresh = train(TINY, cfg, reverse_data, Recorder(), checkpoint_dir=ckpt, resume=False)
    assert comparable(fresh.history) == comparable(straight.history)


def test_checkpoint_of_another_model_is_not_resumed(reverse_data, tmp_path):
    train(TINY, FAST, reverse_data, checkpoint_dir=tmp_path)
    other = ModelConfig(**{**TINY.__dict__, "d_ff": 32})
    rec = Recorder()
    with pytest.warns(UserWarning, match="starting afresh"):
        result = train(other, FAST, reverse_data, rec, checkpoint_dir=tmp_path)
    assert "resumed_from_epoch" not in rec.info and result.epochs_run == 2


def test_divergence_raises_at_once(reverse_data):
    rec = Recorder()
    cfg = TrainConfig(lr=1e6, warmup_steps=0, schedule="constant", grad_clip=None, epochs=3, batch_size=32, bleu_samples=0)
    with pytest.raises(DivergedError, match="epoch 1"):
        train(TINY, cfg, reverse_data, rec)
    assert rec.reports == []


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_lr_schedules_peak_at_end_of_warmup(schedule):
    cfg = TrainConfig(lr=1e-3, warmup_steps=100, schedule=schedule)
    assert lr_at(50, cfg, 1000) == pytest.approx(5e-4)
    assert lr_at(100, cfg, 1000) == pytest.approx(1e-3)
    assert max(lr_at(s, cfg, 1000) for s in range(1, 1001)) == pytest.approx(1e-3)
    if schedule == "inverse_sqrt":
        assert lr_at(400, cfg, 1000) == pytest.approx(5e-4)
    elif schedule == "cosine":
        assert lr_at(550, cfg, 1000) == pytest.approx(5e-4) and lr_at(1000, cfg, 1000) == pytest.approx(0.0)
    else:
        assert lr_at(1000, cfg, 1000) == pytest.approx(1e-3)


def test_train_config_validation():
    with pytest.raises(ConfigError) as e:
        TrainConfig(lr=-1, label_smoothing=1.0, warmup_steps=-2)
    assert "lr: must be > 0" in str(e.value) and "label_smoothing" in str(e.value) and "warmup_steps" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TrainConfig(round_tokens=1000, round_steps=10, loss_ceiling=0)
    problems = e.value.problems
    assert any("round_tokens/round_steps" in p and "round_tokens=1000, round_steps=10" in p for p in problems), problems
    assert "loss_ceiling: must be > 0, got 0" in problems
    with pytest.raises(ConfigError, match="round_tokens: must be > 0, got -5"):
        TrainConfig(round_tokens=-5)
    with pytest.raises(ConfigError, match="round_steps: must be > 0, got 0"):
        TrainConfig(round_steps=0)


# --------------------------------------------------------------------------- budgets in tokens / steps

ROUNDS = TrainConfig(lr=3e-3, warmup_steps=10, epochs=3, batch_size=32, bleu_samples=0)


def _rounds(rec: Recorder, key: str) -> list[float]:
    """Per-round increments of the running total ``key`` (``step`` or ``tokens``)."""
    totals = [0] + [m[key] for _, m in rec.reports]
    return [b - a for a, b in zip(totals, totals[1:], strict=False)]


def test_round_tokens_give_every_batch_size_the_same_tokens(reverse_data):
    """Two batch sizes, one token budget a round: the same tokens (within one batch), different steps.
    2000 tokens a round is about half a pass over the data, so rounds cross data epochs."""
    round_tokens = 2000
    small, large = Recorder(), Recorder()
    for rec, bs in ((small, 16), (large, 48)):
        cfg = TrainConfig(**{**ROUNDS.__dict__, "batch_size": bs, "round_tokens": round_tokens})
        result = train(TINY, cfg, reverse_data, rec)
        assert [e for e, _ in rec.reports] == [1, 2, 3] and result.epochs_run == 3
        longest = max(len(t) - 1 for _, t in reverse_data.train)
        for delta in _rounds(rec, "tokens"):
            assert round_tokens <= delta < round_tokens + bs * longest, (bs, delta)
    assert sum(_rounds(small, "step")) > 2 * sum(_rounds(large, "step"))
    assert all(s > 0 for s in _rounds(large, "step"))


def test_round_steps_are_exact(reverse_data):
    """25 steps a round, 19 batches a pass over the data: rounds cross data epochs, steps are exact."""
    rec = Recorder()
    train(TINY, TrainConfig(**{**ROUNDS.__dict__, "round_steps": 25}), reverse_data, rec)
    assert _rounds(rec, "step") == [25, 25, 25]
    assert all(d > 0 for d in _rounds(rec, "tokens"))
    assert [m["lr"] for _, m in rec.reports] == [lr_at(s, ROUNDS, 75) for s in (25, 50, 75)]


def test_rounds_resume_exactly(reverse_data, tmp_path):
    """A checkpoint after round 1 (mid data epoch) resumes the batch stream where it stopped."""
    cfg = TrainConfig(**{**ROUNDS.__dict__, "round_tokens": 1500, "loss_ceiling": 50.0})
    ckpt = tmp_path / "ckpt"
    _stop_after_epoch_1_then_resume(cfg, reverse_data, ckpt)
    # A token round is not a step round: that checkpoint does not resume another recipe.
    other = TrainConfig(**{**ROUNDS.__dict__, "round_steps": 8, "loss_ceiling": 50.0})
    with pytest.warns(UserWarning, match="starting afresh"):
        train(TINY, TrainConfig(**{**other.__dict__, "epochs": 1}), reverse_data, checkpoint_dir=ckpt)


def test_loss_ceiling_stops_a_trial_whose_loss_stays_high(reverse_data):
    """lr 1.0 does not make the loss NaN here, it keeps it in the tens: the ceiling stops it."""
    cfg = TrainConfig(lr=1.0, warmup_steps=5, schedule="constant", epochs=3, batch_size=32, bleu_samples=0, loss_ceiling=10.0)
    rec = Recorder()
    with pytest.raises(DivergedError, match=r"moving average [0-9.]+ is above train.loss_ceiling 10 at step \d+"):
        train(TINY, cfg, reverse_data, rec)
    assert rec.reports == []  # in the first epoch


def _ceiling_average(losses: list[float], warmup: int, ceiling: float) -> list[float]:
    """The moving average LossCeiling keeps (alpha 0.1, capped inputs), for the steps after warmup."""
    out: list[float] = []
    for loss in losses[warmup:]:
        out.append(min(loss, ceiling) if not out else out[-1] + 0.1 * (min(loss, 2 * ceiling) - out[-1]))
    return out


def test_loss_ceiling_ignores_a_transient_spike(reverse_data):
    """Batches differ, so the per-step loss jumps about; single steps above the ceiling do not stop
    a trial whose average stays below it. One step a round makes each report one step's loss, so
    the ceiling is placed from a real run: above the average, below the highest step's loss."""
    cfg = TrainConfig(lr=3e-2, warmup_steps=10, epochs=40, batch_size=32, bleu_samples=0, round_steps=1)
    plain = train(TINY, cfg, reverse_data)
    losses = [h["train_loss"] for h in plain.history]
    post = losses[cfg.warmup_steps :]
    average = _ceiling_average(losses, cfg.warmup_steps, max(post))
    ceiling = (max(average) + max(post)) / 2
    average = _ceiling_average(losses, cfg.warmup_steps, ceiling)
    assert max(average) < ceiling < max(post), (max(average), ceiling, max(post))
    spikes = [s for s, loss in enumerate(losses, 1) if s > cfg.warmup_steps and loss > ceiling]
    assert spikes and spikes[0] > cfg.warmup_steps + 1  # a real spike, after the average started
    guarded = train(TINY, TrainConfig(**{**cfg.__dict__, "loss_ceiling": ceiling}), reverse_data)
    assert guarded.epochs_run == 40 and comparable(guarded.history) == comparable(plain.history)


def test_loss_ceiling_average_absorbs_any_single_spike():
    """However large one step's loss, the average moves by at most 0.2 x ceiling; a loss that stays
    above the ceiling lifts it over within a few steps. NaN/inf is the training loop's own check."""
    guard = LossCeiling(5.0, warmup_steps=3)
    for step, loss in enumerate([50.0, 60.0, 70.0], 1):  # warmup: not watched
        guard.update(step, loss)
    assert guard.ema is None
    guard.update(4, 2.0)
    assert guard.ema == 2.0
    guard.update(5, 1e9)
    assert guard.ema == pytest.approx(2.0 + 0.1 * (10.0 - 2.0))
    for step in range(6, 30):
        guard.update(step, 2.0)
    assert guard.ema < 2.1
    with pytest.raises(DivergedError, match=r"moving average 5\.\d+ is above train.loss_ceiling 5 at step 34 "):
        for step in range(30, 60):  # far above: capped at 2 x ceiling, over it in 5 steps
            guard.update(step, 12.0)


def test_model_max_len_must_fit_the_data(reverse_data):
    with pytest.raises(ConfigError, match="model.max_len"):
        train(ModelConfig(**{**TINY.__dict__, "max_len": 4}), FAST, reverse_data)


def test_short_tatoeba_run_lowers_val_loss(tatoeba_path: Path):
    data = load_task(
        TaskConfig(
            name="tsv", path=str(tatoeba_path), src_col=1, tgt_col=0, lowercase=True, max_pairs=2000, val_size=100, test_size=0
        )
    )
    model = ModelConfig(d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, d_ff=128, dropout=0.1)
    cfg = TrainConfig(lr=3e-3, warmup_steps=15, epochs=2, batch_size=64, max_steps_per_epoch=15, bleu_samples=10)
    result = train(model, cfg, data)
    losses = [h["val_loss"] for h in result.history]
    assert losses[1] < losses[0] < math.log(data.tgt_vocab_size)


# --------------------------------------------------------------------------- production budgets (attntune train)


def test_token_budget_trains_exactly_that_many_tokens(reverse_data):
    """--max-tokens: equal rounds that do not drift, the last batch cut to fit, and a cosine schedule
    that spans exactly the steps the tokens take (it reaches 0 on the last one)."""
    cfg = TrainConfig(**{**ROUNDS.__dict__, "schedule": "cosine", "epochs": 4})
    recipe = token_budget_recipe(cfg, 7001)
    assert (recipe.round_tokens, recipe.epochs) == (1751, 4)  # train.epochs equal rounds
    budget = RunBudget(max_tokens=7001)
    rec = Recorder()
    result = train(TINY, recipe, reverse_data, rec, budget=budget)
    tokens = [m["tokens"] for _, m in rec.reports]
    assert [e for e, _ in rec.reports] == [1, 2, 3, 4] and tokens[-1] == 7001 and result.stopped_by is None
    longest = max(len(t) - 1 for _, t in reverse_data.train)
    for k, total in enumerate(tokens[:-1], 1):  # round k ends at the first batch past k x 1751
        assert k * 1751 <= total < k * 1751 + recipe.batch_size * longest
    steps = rec.reports[-1][1]["step"]
    assert steps == schedule_steps(recipe, reverse_data, budget)
    assert rec.reports[-1][1]["lr"] == lr_at(steps, recipe, steps) == 0.0


def test_token_budget_keeps_a_configs_round_size_and_refuses_step_rounds():
    exported = TrainConfig(round_tokens=1000, epochs=9)  # a config from a token-budget search
    assert (token_budget_recipe(exported, 4500).round_tokens, token_budget_recipe(exported, 4500).epochs) == (1000, 5)
    assert token_budget_recipe(exported, 4500, rounds=3).round_tokens == 1500  # --epochs 3
    with pytest.raises(ConfigError, match="train.round_steps"):
        token_budget_recipe(TrainConfig(round_steps=10), 4500)
    with pytest.raises(ConfigError, match="max_tokens: must be > 0"):
        RunBudget(max_tokens=0)
    with pytest.raises(ConfigError, match="open_ended"):
        RunBudget(max_tokens=10, time_limit_s=5, open_ended=True)


def test_time_limit_stops_at_a_step_boundary_with_a_decayed_schedule(reverse_data, tmp_path):
    """A time limit alone: epochs until the time runs out (train.epochs 1000 does not apply), the last
    one partial, evaluated and checkpointed; the cosine schedule has decayed to about 0 by then."""
    cfg = TrainConfig(**{**FAST.__dict__, "schedule": "cosine", "epochs": 1000, "max_steps_per_epoch": 10})
    rec = Recorder()
    t0 = time.perf_counter()
    result = train(TINY, cfg, reverse_data, rec, checkpoint_dir=tmp_path, budget=RunBudget(time_limit_s=1.5, open_ended=True))
    elapsed = time.perf_counter() - t0
    assert result.stopped_by == "time_limit" and not result.stopped_early
    assert 1.0 <= elapsed < 10, elapsed
    assert 2 <= result.epochs_run < 1000 and (tmp_path / "model.safetensors").is_file()
    lrs = [m["lr"] for _, m in rec.reports]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))  # after warm-up (10 steps) it only falls
    assert lrs[-1] < 0.1 * cfg.lr
    steps = [m["step"] for _, m in rec.reports]
    assert steps[-1] - steps[-2] <= 10  # the last epoch may be partial
    # with a recipe that ends first, the time limit changes nothing but the schedule's floor
    short = train(TINY, FAST, reverse_data, budget=RunBudget(time_limit_s=600))
    assert short.stopped_by is None and comparable(short.history) == comparable(train(TINY, FAST, reverse_data).history)
