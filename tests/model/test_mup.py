"""µP (``model.parameterization: mup``, model/mup.py): the coordinate check, the rules, and that
the standard model, parameter counts and checkpoints are unchanged."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import yaml

from attntune.model import mup
from attntune.model.checkpoint import load_checkpoint, load_train_state
from attntune.model.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    at_width,
    load_run_config,
)
from attntune.model.cost import n_params
from attntune.model.data import TaskData, collate
from attntune.model.decoding import greedy_decode
from attntune.model.families import build_model
from attntune.model.train import lr_at, make_optimizer, train

WIDTHS = (64, 128, 256, 512)
ACTIVATIONS = ("embed", "attn", "cross", "ffn", "logits")
# A few Adam steps at a constant rate, nothing else that could hide a width effect.
COORD = TrainConfig(
    lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0, label_smoothing=0.0, batch_size=16,
    epochs=1, max_steps_per_epoch=4, grad_clip=None, bleu_samples=0, seed=0,
)  # fmt: skip
MUP = ModelConfig(d_model=64, n_heads=4, d_ff=128, dropout=0.1, max_len=32, parameterization="mup", mup_base_d_model=32)
FAST = TrainConfig(lr=3e-3, warmup_steps=4, epochs=3, batch_size=32, max_steps_per_epoch=4, bleu_samples=8)


def _activations(model: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """The target embeddings, encoder self-attention, decoder cross-attention and FFN outputs, and the
    logits, of one fixed batch (eval mode)."""
    model.eval()
    out: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda module, inputs, output: out.__setitem__(name, output)

    hooks = [
        model.embed_dropout.register_forward_hook(keep("embed")),  # its last call embeds the target
        model.encoder_layers[0].self_attn.register_forward_hook(keep("attn")),
        model.decoder_layers[-1].cross_attn.register_forward_hook(keep("cross")),
        model.decoder_layers[-1].ff.register_forward_hook(keep("ffn")),
    ]
    with torch.no_grad():
        out["logits"] = model(src, tgt_in)  # (B, T, V)
    for h in hooks:
        h.remove()
    return out


def _coordinate_sizes(data: TaskData, base: ModelConfig) -> dict[int, dict[str, float]]:
    """Width -> RMS of each activation's change over ``COORD``'s steps, on the same batch and data."""
    src, tgt_in, _ = collate(data.val, list(range(16)), data.pad_id)
    sizes = {}
    for width in WIDTHS:
        cfg = replace(base, d_model=width, d_ff=4 * width)
        torch.manual_seed(COORD.seed)  # as train() seeds before building: the same initial weights
        before = _activations(build_model(cfg, data.src_vocab_size, data.tgt_vocab_size, data.pad_id), src, tgt_in)
        after = _activations(train(cfg, COORD, data).model, src, tgt_in)
        sizes[width] = {k: float((after[k] - before[k]).pow(2).mean().sqrt()) for k in ACTIVATIONS}
    return sizes


@pytest.mark.parametrize("layout", [{}, {"norm_first": False, "tie_embeddings": False}], ids=["preln-tied", "postln-untied"])
def test_coordinate_check(reverse_data, layout):
    """Under µP each activation moves by about as much at width 512 as at 64 after a few Adam steps;
    under standard the same steps move the wide model's activations several times as far."""
    base = ModelConfig(n_heads=4, dropout=0.0, max_len=32, **layout)
    mup_sizes = _coordinate_sizes(reverse_data, replace(base, parameterization="mup", mup_base_d_model=128))
    for name in ACTIVATIONS:
        values = [mup_sizes[w][name] for w in WIDTHS]
        assert max(values) / min(values) < 1.6, (name, mup_sizes)
    standard = _coordinate_sizes(reverse_data, base)
    growth = {name: standard[512][name] / standard[64][name] for name in ACTIVATIONS}
    assert growth["embed"] > 1.8 and all(growth[n] > 2.5 for n in ACTIVATIONS if n != "embed"), growth


def test_mup_at_its_base_width_is_standard_but_for_zero_queries(reverse_data):
    std_cfg = ModelConfig(d_model=64, n_heads=4, d_ff=128, max_len=32, tie_embeddings=False)
    mup_cfg = replace(std_cfg, parameterization="mup", mup_base_d_model=64)
    torch.manual_seed(0)
    std = build_model(std_cfg, 20, 24).eval()
    torch.manual_seed(0)
    mu = build_model(mup_cfg, 20, 24).eval()
    for layer in [*std.encoder_layers, *std.decoder_layers]:
        layer.self_attn.zero_query_()
    for layer in std.decoder_layers:
        layer.cross_attn.zero_query_()
    for (name, p), q in zip(std.state_dict().items(), mu.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    src, tgt = torch.randint(4, 20, (3, 7)), torch.randint(4, 24, (3, 6))
    torch.testing.assert_close(mu(src, tgt), std(src, tgt), rtol=1e-6, atol=1e-6)
    assert mup.attention_scale(mup_cfg) == pytest.approx((64 // 4) ** -0.5)
    assert all(g["lr_mult"] == 1.0 for g in make_optimizer(mu, FAST).param_groups)


def test_rules_at_four_times_the_base_width():
    cfg = replace(MUP, d_model=128, d_ff=256)  # m = 4
    model = build_model(cfg, 20, 24)
    # queries start at zero: the Q rows of every fused QKV, the cross-attention Q
    for layer in [*model.encoder_layers, *model.decoder_layers]:
        assert not layer.self_attn.qkv_proj.weight[:128].any() and layer.self_attn.qkv_proj.weight[128:].any()
    assert not model.decoder_layers[0].cross_attn.q_proj.weight.any()
    # attention: mult x sqrt(Dh_base) / Dh with Dh_base = 32 / 4, Dh = 128 / 4; readout x mult / m
    assert model.encoder_layers[0].self_attn.scale == model.decoder_layers[0].cross_attn.scale == pytest.approx(8**0.5 / 32)
    assert mup.attention_scale(replace(cfg, mup_attn_mult=2.0)) == pytest.approx(2 * 8**0.5 / 32)
    assert model.readout_mult == pytest.approx(0.25) and mup.readout_mult(replace(cfg, mup_output_mult=3.0)) == 0.75
    # embeddings keep the base width's scale: N(0, 1/32) tables times sqrt(32)
    assert model.embed_scale == pytest.approx(32**0.5)
    assert model.src_embed.weight.std().item() == pytest.approx(32**-0.5, rel=0.1)
    opt = make_optimizer(model, replace(FAST, lr=1e-3, weight_decay=0.01))
    hidden, tables, vectors = opt.param_groups
    assert (hidden["lr"], hidden["lr_mult"], hidden["weight_decay"]) == (pytest.approx(2.5e-4), 0.25, 0.04)
    assert (tables["lr"], tables["lr_mult"], tables["weight_decay"]) == (1e-3, 1.0, 0.01)
    assert (vectors["lr"], vectors["lr_mult"], vectors["weight_decay"]) == (1e-3, 1.0, 0.0)
    assert tables["params"] == [model.src_embed.weight, model.tgt_embed.weight]  # tied: the readout is tgt_embed
    assert all(p.dim() == 2 for p in hidden["params"]) and all(p.dim() == 1 for p in vectors["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"norm_first": False, "n_decoder_layers": 2}])
@pytest.mark.parametrize("width", [32, 96, 256])
def test_n_params_is_exact_under_mup(kw, width):
    cfg = replace(MUP, d_model=width, d_ff=2 * width, **kw)
    model = build_model(cfg, 37, 41)
    assert sum(p.numel() for p in model.parameters()) == n_params(cfg, 37, 41) == n_params(
        replace(cfg, parameterization="standard", mup_base_d_model=128), 37, 41
    )


def test_schedule_multiplies_each_groups_rate(reverse_data, tmp_path):
    cfg = replace(MUP, d_model=128, d_ff=256)  # m = 4
    result = train(cfg, FAST, reverse_data, checkpoint_dir=tmp_path)
    state = load_train_state(tmp_path)
    assert state is not None
    lr = lr_at(state["step"], FAST, FAST.epochs * FAST.max_steps_per_epoch)
    assert result.history[-1]["lr"] == lr
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [lr * 0.25, lr, lr]


def test_mup_resumes_exactly_and_checkpoints_round_trip(reverse_data, tmp_path):
    straight = train(MUP, FAST, reverse_data)
    ckpt = tmp_path / "ckpt"

    class StopAfterFirst:
        def start(self, info):
            pass

        def report(self, epoch, metrics):
            return epoch == 1

    assert train(MUP, FAST, reverse_data, StopAfterFirst(), checkpoint_dir=ckpt).epochs_run == 1
    resumed = train(MUP, FAST, reverse_data, checkpoint_dir=ckpt)
    assert resumed.info["resumed_from_epoch"] == 1
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in straight.history
    ]
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    model, run_config, _, _ = load_checkpoint(ckpt)
    assert run_config["model"]["parameterization"] == "mup" and model.cfg == MUP
    assert load_run_config(run_config).model == MUP
    src, tgt_in, _ = collate(reverse_data.val, list(range(8)), reverse_data.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt_in), resumed.model(src, tgt_in))


def test_checkpoints_from_before_mup_load_as_standard(reverse_data, tmp_path):
    cfg = ModelConfig(d_model=32, n_heads=4, d_ff=64, max_len=32)
    result = train(cfg, replace(FAST, epochs=1), reverse_data, checkpoint_dir=tmp_path)
    config_file = tmp_path / "config.yaml"
    doc = yaml.safe_load(config_file.read_text())
    for key in ("parameterization", "mup_base_d_model", "mup_output_mult", "mup_attn_mult"):
        del doc["model"][key]
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    model, _, _, _ = load_checkpoint(tmp_path)
    assert model.cfg == cfg and model.cfg.parameterization == "standard"
    src, tgt_in, _ = collate(reverse_data.val, list(range(8)), reverse_data.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt_in), result.model(src, tgt_in))


def test_greedy_with_cache_equals_full_recomputation_under_mup():
    torch.manual_seed(1)
    model = build_model(replace(MUP, d_model=128, d_ff=256, dropout=0.0), 20, 20).eval()
    for p in model.parameters():  # move the zero queries, so attention is not uniform
        p.data.add_(0.05 * torch.randn_like(p))
    src = torch.randint(4, 20, (4, 7))
    src[0, 4:] = 0
    got = greedy_decode(model, src, bos_id=2, eos_id=3, max_len=10)
    ys = torch.full((4, 1), 2)
    with torch.no_grad():
        for _ in range(10):
            ys = torch.cat([ys, model(src, ys)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, ref in zip(got, ys[:, 1:].tolist(), strict=True):
        assert row == (ref[: ref.index(3)] if 3 in ref else ref)


def test_config_rules():
    with pytest.raises(ConfigError, match=r"parameterization: 'mup' is for family 'transformer' only \(not for rnn/mlp yet\)"):
        ModelConfig(family="rnn", parameterization="mup")
    for kw in ({"mup_attn_mult": 2.0}, {"mup_base_d_model": 64}):
        with pytest.raises(ConfigError, match="is read only under parameterization 'mup'"):
            ModelConfig(**kw)
    with pytest.raises(ConfigError, match="3 problems"):
        ModelConfig(parameterization="mup", mup_base_d_model=0, mup_output_mult=-1.0, mup_attn_mult=float("nan"))
    with pytest.raises(ConfigError, match="parameterization: expected one of 'standard', 'mup'"):
        ModelConfig(parameterization="mu")
    run = load_run_config({"model": {"parameterization": "mup", "mup_base_d_model": 64, "mup_output_mult": 2}})
    assert run.model.mup_output_mult == 2.0 and run.model.parameterization == "mup"
    tuned = apply_overrides(run, {"model.mup_attn_mult": 1.5, "train.lr": 1e-3})
    assert tuned.model.mup_attn_mult == 1.5
    # overriding the family resets the transformer-only µP fields
    assert apply_overrides(run, {"model.family": "mlp"}).model.parameterization == "standard"
    assert RunConfig().model.parameterization == "standard"


def test_at_width_keeps_heads_and_mup_hyperparameters():
    proxy = replace(MUP, d_model=64, n_heads=4, d_ff=256, mup_output_mult=2.0, mup_attn_mult=0.5, n_encoder_layers=2)
    target = at_width(proxy, 512)
    assert (target.d_model, target.n_heads, target.head_dim, target.d_ff) == (512, 4, 128, 2048)
    assert replace(target, d_model=64, d_ff=256) == proxy  # everything else, µP's base and multipliers too
    assert at_width(replace(proxy, d_ff=100), 96).d_ff == 150
    assert at_width(proxy, 64) == proxy
    with pytest.raises(ConfigError, match="d_model: 66 is not divisible by n_heads=4"):
        at_width(proxy, 66)
    with pytest.raises(ConfigError, match="d_model: the target width must be an integer > 0"):
        at_width(proxy, 0)
    with pytest.raises(ConfigError, match="family: width transfer is for family 'transformer' only"):
        at_width(ModelConfig(family="mlp"), 256)



def test_standard_keeps_its_groups_scales_and_init():
    """The standard path is today's model (its training was compared to the code before µP): two
    optimizer groups without ``lr_mult``, SDPA's own scale, no readout multiplier, N(0, 1/D) tables."""
    cfg = ModelConfig(d_model=64, n_heads=4, d_ff=128, max_len=32)
    model = build_model(cfg, 20, 24)
    assert model.readout_mult is None and model.embed_scale == 8.0
    assert all(m.scale is None for m in model.modules() if hasattr(m, "scale"))
    groups = make_optimizer(model, FAST).param_groups
    assert len(groups) == 2 and not any("lr_mult" in g for g in groups)
    assert [g["weight_decay"] for g in groups] == [FAST.weight_decay, 0.0]
    assert model.encoder_layers[0].self_attn.qkv_proj.weight[:64].any()
