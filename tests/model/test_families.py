"""Architecture families (transformer, rnn, mlp): exact parameter counts, padding invisible to every
output, cached decoding equal to recomputation, configs that refuse settings a family ignores, and
train -> checkpoint -> translate for each family."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attntune.model.checkpoint import load_checkpoint, translate
from attntune.model.config import ConfigError, ModelConfig, TrainConfig, apply_overrides, load_run_config
from attntune.model.cost import n_params
from attntune.model.decoding import beam_search, greedy_decode
from attntune.model.families import build_model
from attntune.model.train import train

BASE = dict(d_model=32, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_len=32)
SHAPES = {
    "transformer": dict(n_heads=4, d_ff=64),
    "rnn-gru-additive": dict(family="rnn", attention="additive"),
    "rnn-lstm-bi-dot": dict(family="rnn", rnn_cell="lstm", bidirectional=True, attention="dot", hidden=24),
    "rnn-gru-bi-additive": dict(family="rnn", bidirectional=True, hidden=16),
    "mlp": dict(family="mlp", d_ff=64, token_mixing_dim=16),
}


def tiny(name: str, **kw) -> ModelConfig:
    return ModelConfig(**{**BASE, **SHAPES[name], **kw})


def built(name: str, vocab: int = 20, seed: int = 0, **kw):
    """A model in eval mode; the MLP's position maps drawn at random (they start near zero), so a
    leak through them would show."""
    torch.manual_seed(seed)
    model = build_model(tiny(name, **kw), vocab, vocab)
    if model.cfg.family == "mlp":
        for p in model.parameters():
            if p.shape == (model.cfg.max_len, model.cfg.max_len):
                torch.nn.init.normal_(p, std=0.3)
    return model.eval()


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"n_encoder_layers": 1, "n_decoder_layers": 3}])
def test_n_params_is_exact(name, kw):
    cfg = tiny(name, **kw)
    for vs, vt in ((11, 13), (100, 7)):
        model = build_model(cfg, vs, vt)
        assert n_params(cfg, vs, vt) == sum(p.numel() for p in model.parameters()), cfg


@pytest.mark.parametrize("name", SHAPES)
def test_tied_embeddings_share_storage(name):
    model = build_model(tiny(name), 10, 12)
    assert model.generator.weight is model.tgt_embed.weight
    untied = build_model(tiny(name, tie_embeddings=False), 10, 12)
    assert untied.generator.weight is not untied.tgt_embed.weight


# --------------------------------------------------------------------------- padding and causality


@pytest.mark.parametrize("name", SHAPES)
def test_source_padding_changes_no_output(name):
    model = built(name)
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 8, 9]])
    batch_src = torch.tensor([[5, 6, 7, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9, 3], [9, 3, 0, 0, 0, 0, 0]])
    batch_tgt = torch.tensor([[2, 8, 9], [2, 10, 11], [2, 12, 13]])
    with torch.no_grad():
        alone, padded = model(src, tgt), model(batch_src, batch_tgt)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    # Decoding too: the sentence's greedy and beam translations do not depend on its neighbours.
    for decode in (greedy_decode, lambda m, s, *a: beam_search(m, s, *a, beam_size=3)):
        assert decode(model, batch_src, 2, 3, 8)[0] == decode(model, src, 2, 3, 8)[0]


@pytest.mark.parametrize("name", SHAPES)
def test_future_and_padded_target_tokens_do_not_leak(name):
    model = built(name)
    src = torch.randint(4, 20, (3, 6))
    tgt = torch.randint(4, 20, (3, 8))
    tgt[:, 0] = 2
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(4, 20, (3, 3))
    changed[1, 6:] = 0  # padding at the end of a row
    with torch.no_grad():
        out, out2 = model(src, tgt), model(src, changed)
    torch.testing.assert_close(out[:, :5], out2[:, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_mlp_refuses_sequences_longer_than_max_len():
    model = built("mlp", max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


# --------------------------------------------------------------------------- cached decoding


@pytest.mark.parametrize("name", SHAPES)
def test_cached_decoding_equals_full_recomputation(name):
    model = built(name, seed=1)
    src = torch.randint(4, 20, (4, 7))
    src[0, 4:] = 0
    src[2, 5:] = 0
    ys = torch.full((4, 1), 2)
    with torch.no_grad():
        for _ in range(10):
            ys = torch.cat([ys, model(src, ys)[:, -1].argmax(-1, keepdim=True)], dim=1)
        full = model(src, ys)  # (B, T, V)
        state = model.start_decoding(src)
        for t in range(ys.shape[1]):
            logits, state = model.decode_step(ys[:, t : t + 1], state)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    want = [row[: row.index(3)] if 3 in row else row for row in ys[:, 1:].tolist()]
    assert greedy_decode(model, src, 2, 3, 10) == want
    assert beam_search(model, src, 2, 3, 10, beam_size=1) == want
    beams = beam_search(model, src, 2, 3, 10, beam_size=3)
    assert len(beams) == 4 and all(len(b) <= 10 for b in beams)


@pytest.mark.parametrize("name", SHAPES)
def test_beam_state_follows_its_hypotheses(name):
    """After ``reorder_state`` a hypothesis continues from its parent's state: stepping a reordered
    beam gives the logits of recomputing that beam's prefix."""
    model = built(name, seed=2)
    src = torch.randint(4, 20, (2, 5))
    src[1, 3:] = 0
    k = 3
    prefix = torch.randint(4, 20, (2 * k, 3))
    prefix[:, 0] = 2
    with torch.no_grad():
        state = model.start_decoding(src, beams=k)
        for t in range(2):
            _, state = model.decode_step(prefix[:, t : t + 1], state)
        rows = torch.tensor([2, 0, 0, 4, 5, 3])  # each row stays within its sentence's beams
        state = model.reorder_state(state, rows)
        logits, _ = model.decode_step(prefix[rows, 2:3], state)
        want = model(src.repeat_interleave(k, dim=0), prefix[rows])[:, -1]
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SHAPES)
def test_bf16_autocast_trains_and_decodes(name):
    """Mixed precision as training on a GPU runs it (here on the CPU's autocast): finite gradients
    everywhere, and decoding works on the mixed-dtype state."""
    model = built(name).train()
    src = torch.randint(4, 20, (3, 6))
    src[0, 3:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, src)
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert len(beam_search(model.eval(), src, 2, 3, 5, beam_size=2)) == 3


# --------------------------------------------------------------------------- configuration


def test_fields_of_another_family_are_refused_by_name():
    with pytest.raises(ConfigError) as e:
        ModelConfig(hidden=64, token_mixing_dim=8)
    msg = str(e.value)
    assert "hidden: 64 is not used by family='transformer' (only by rnn); leave it at its default None" in msg
    assert "token_mixing_dim: 8 is not used by family='transformer' (only by mlp)" in msg
    with pytest.raises(ConfigError, match="n_heads: 8 is not used by family='rnn'"):
        ModelConfig(family="rnn", n_heads=8)
    with pytest.raises(ConfigError, match=r"d_ff: 64 is not used by family='rnn' \(only by transformer and mlp\)"):
        ModelConfig(family="rnn", d_ff=64)
    with pytest.raises(ConfigError, match="norm_first: False is not used by family='mlp'"):
        ModelConfig(family="mlp", norm_first=False)
    line = str(pytest.raises(ConfigError, load_run_config, {"model": {"family": "cnn", "attention": "x"}}).value)
    assert "model.family: expected one of 'transformer', 'rnn' or 'mlp', got 'cnn'" in line
    assert "model.attention: expected one of 'additive' or 'dot', got 'x'" in line


def test_family_fields_and_defaults():
    """Defaults are accepted silently; d_model need not divide by n_heads outside the Transformer."""
    rnn = load_run_config({"model": {"family": "rnn", "d_model": 130, "hidden": 96, "bidirectional": True}}).model
    assert (rnn.rnn_hidden, rnn.n_heads, rnn.attention, rnn.rnn_cell) == (96, 4, "dot", "gru")
    assert ModelConfig(family="rnn").rnn_hidden == 128 and ModelConfig(family="mlp").mixing_dim == 128
    assert ModelConfig().family == "transformer"
    with pytest.raises(ConfigError, match="hidden: must be > 0"):
        ModelConfig(family="rnn", hidden=0)


def test_overriding_the_family_resets_what_the_new_family_does_not_read():
    """A family sampled onto a base config of another family (a search's base job) is valid; what
    the sample sets itself is kept and checked."""
    base = load_run_config({"model": {"d_model": 256, "n_heads": 8, "d_ff": 1024, "norm_first": False}})
    rnn = apply_overrides(base, {"model.family": "rnn", "model.hidden": 64}).model
    assert (rnn.family, rnn.d_model, rnn.hidden, rnn.n_heads, rnn.d_ff, rnn.norm_first) == ("rnn", 256, 64, 4, 512, True)
    mlp = apply_overrides(base, {"model.family": "mlp"}).model
    assert (mlp.d_ff, mlp.n_heads) == (1024, 4)
    with pytest.raises(ConfigError, match="n_heads: 2 is not used by family='mlp'"):
        apply_overrides(base, {"model.family": "mlp", "model.n_heads": 2})
    assert apply_overrides(base, {"model.d_model": 512}).model.n_heads == 8  # no family: nothing reset


# --------------------------------------------------------------------------- train, save, load, translate

FAST = TrainConfig(lr=5e-3, warmup_steps=5, epochs=1, batch_size=32, max_steps_per_epoch=6, bleu_samples=8)


@pytest.mark.parametrize("name", ["rnn-lstm-bi-dot", "rnn-gru-additive", "mlp"])
def test_train_save_load_translate(name, reverse_data, tmp_path):
    cfg = tiny(name, dropout=0.1)
    result = train(cfg, FAST, reverse_data, checkpoint_dir=tmp_path)
    assert result.n_params == n_params(cfg, reverse_data.src_vocab_size, reverse_data.tgt_vocab_size)
    assert result.info["family"] == cfg.family
    model, run_config, src_tok, tgt_tok = load_checkpoint(tmp_path)
    assert type(model) is type(result.model) and not model.training
    assert load_run_config(run_config).model == cfg
    src = torch.tensor([s + [0] * (9 - len(s)) for s, _ in reverse_data.val[:8]])
    tgt = torch.tensor([t[:4] for _, t in reverse_data.val[:8]])
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), result.model.eval()(src, tgt), rtol=0, atol=0)
    sentences = [s for s, _ in reverse_data.val_text[:10]]
    assert translate(model, src_tok, tgt_tok, sentences) == translate(
        result.model, reverse_data.src_tok, reverse_data.tgt_tok, sentences
    )
    assert len(translate(model, src_tok, tgt_tok, sentences, beam_size=3)) == 10
    # The run goes on from its checkpoint, as a Transformer's does.
    more = train(cfg, dataclasses.replace(FAST, epochs=2), reverse_data, checkpoint_dir=tmp_path)
    assert more.info.get("resumed_from_epoch") == 1 and more.epochs_run == 2


def test_checkpoints_from_before_families_load_and_resume(reverse_data, tmp_path):
    """A Transformer checkpoint whose config and training state lack the family fields (written
    before they existed) loads as the Transformer it was and resumes."""
    cfg = tiny("transformer")
    train(cfg, FAST, reverse_data, checkpoint_dir=tmp_path)
    added = ("family", "rnn_cell", "hidden", "bidirectional", "attention", "token_mixing_dim")
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    doc["model"] = {k: v for k, v in doc["model"].items() if k not in added}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if k not in added}
    torch.save(state, tmp_path / "train_state.pt")
    model, _, src_tok, tgt_tok = load_checkpoint(tmp_path)
    assert model.cfg == cfg and type(model).__name__ == "Transformer"
    assert translate(model, src_tok, tgt_tok, ["a b c"])
    more = train(cfg, dataclasses.replace(FAST, epochs=2), reverse_data, checkpoint_dir=tmp_path)
    assert more.info.get("resumed_from_epoch") == 1


def test_installed_cli_trains_and_translates_rnn_and_mlp(tmp_path):
    """``attntune train CONFIG`` then ``attntune translate --checkpoint`` (greedy and beam), through
    the installed console script, for the two new families."""
    exe = Path(sys.executable).with_name("attntune")
    assert exe.is_file(), f"the attntune console script is not installed next to {sys.executable}"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    models = {
        "rnn": {"family": "rnn", "d_model": 32, "hidden": 48, "bidirectional": True, "attention": "dot"},
        "mlp": {"family": "mlp", "d_model": 32, "d_ff": 64, "token_mixing_dim": 16, "max_len": 16},
    }
    shapes = {  # the model line names the family and the shape it reads
        "rnn": " parameters, rnn (gru, 1+1 layers, hidden 48, bidirectional encoder, dot attention); ",
        "mlp": " parameters, mlp (1+1 layers, token mixing 16); ",
    }
    for family, model in models.items():
        doc = {
            "task": {"name": "reverse", "n_train": 300, "val_size": 20, "test_size": 0, "n_symbols": 8, "max_seq_len": 6},
            "model": {**model, "dropout": 0.0},
            "train": {"lr": 5e-3, "warmup_steps": 5, "batch_size": 32, "epochs": 1, "max_steps_per_epoch": 4,
                      "bleu_samples": 8, "num_threads": 1},
        }
        config = tmp_path / f"{family}.yaml"
        config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        done = subprocess.run([str(exe), "train", str(config), "--no-tracking"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert shapes[family] in done.stdout and "None" not in done.stdout, done.stdout  # heads only where set
        ckpt = tmp_path / "attntune-runs" / f"train-{family}"
        assert yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8"))["model"]["family"] == family
        for extra in ([], ["--beam-size", "3"]):
            out = subprocess.run([str(exe), "translate", "--checkpoint", str(ckpt), "a b c d", "h g", *extra],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr[-2000:]
            lines = out.stdout.splitlines()
            assert len(lines) == 2 and all(set(line.split()) <= set("abcdefgh") for line in lines), out.stdout
