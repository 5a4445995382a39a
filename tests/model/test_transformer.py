"""The model: exact parameter count, masks, decoding with a cache, learning at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attntune.model.config import ConfigError, ModelConfig
from attntune.model.transformer import Transformer, beam_search, greedy_decode, n_params


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64, dropout=0.0, max_len=32)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(tie_embeddings=False),
        dict(norm_first=False),
        dict(norm_first=False, tie_embeddings=False),
        dict(n_encoder_layers=3, n_decoder_layers=1, d_ff=48, n_heads=2),
        dict(d_model=48, n_heads=6, n_encoder_layers=1, n_decoder_layers=4),
    ],
)
def test_n_params_is_exact(kw):
    cfg = tiny(**kw)
    for vs, vt in ((11, 13), (100, 7)):
        model = Transformer(cfg, vs, vt)
        assert n_params(cfg, vs, vt) == sum(p.numel() for p in model.parameters())


def test_structure_exposes_heads_and_layers():
    model = Transformer(tiny(n_encoder_layers=3, n_decoder_layers=1, n_heads=2), 10, 10)
    assert len(model.encoder_layers) == 3 and len(model.decoder_layers) == 1
    assert model.encoder_layers[0].self_attn.n_heads == 2
    assert model.decoder_layers[0].cross_attn.n_heads == 2
    assert "positions" not in dict(model.named_parameters()) and "positions" not in model.state_dict()


def test_tied_embeddings_share_storage():
    model = Transformer(tiny(), 10, 12)
    assert model.generator.weight is model.tgt_embed.weight
    untied = Transformer(tiny(tie_embeddings=False), 10, 12)
    assert untied.generator.weight is not untied.tgt_embed.weight


def test_config_validation_reports_every_problem():
    with pytest.raises(ConfigError) as e:
        ModelConfig(d_model=130, n_heads=4, dropout=1.5, n_encoder_layers=0)
    msg = str(e.value)
    assert "d_model: 130 is not divisible by n_heads=4" in msg
    assert "dropout" in msg and "n_encoder_layers" in msg


@pytest.mark.parametrize("norm_first", [True, False])
def test_source_padding_does_not_change_outputs(norm_first):
    torch.manual_seed(0)
    model = Transformer(tiny(norm_first=norm_first), 20, 20).eval()
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 8, 9]])
    alone = model(src, tgt)
    # Same sentence padded next to a longer one; the padding must be invisible to it.
    batch_src = torch.tensor([[5, 6, 7, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9, 3]])
    batch_tgt = torch.tensor([[2, 8, 9], [2, 10, 11]])
    padded = model(batch_src, batch_tgt)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
def test_future_and_padded_target_tokens_do_not_leak(norm_first):
    torch.manual_seed(0)
    model = Transformer(tiny(norm_first=norm_first), 20, 20).eval()
    src = torch.randint(4, 20, (3, 6))
    tgt = torch.randint(4, 20, (3, 8))
    tgt[:, 0] = 2
    out = model(src, tgt)
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(4, 20, (3, 3))
    changed[1, 6:] = 0  # padding at the end of a row
    out2 = model(src, changed)
    torch.testing.assert_close(out[:, :5], out2[:, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_greedy_with_cache_equals_full_recomputation():
    torch.manual_seed(1)
    model = Transformer(tiny(), 20, 20).eval()
    src = torch.randint(4, 20, (4, 7))
    src[0, 4:] = 0
    got = greedy_decode(model, src, bos_id=2, eos_id=3, max_len=10)
    ys = torch.full((4, 1), 2)
    with torch.no_grad():
        for _ in range(10):
            ys = torch.cat([ys, model(src, ys)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, ref in zip(got, ys[:, 1:].tolist(), strict=True):
        want = ref[: ref.index(3)] if 3 in ref else ref
        assert row == want
    assert beam_search(model, src, 2, 3, 10, beam_size=1) == got
    beams = beam_search(model, src, 2, 3, 10, beam_size=3)
    assert len(beams) == 4 and all(len(b) <= 10 for b in beams)


def test_sequences_longer_than_max_len_are_refused():
    model = Transformer(tiny(max_len=8), 20, 20)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("norm_first", [True, False])
def test_tiny_model_overfits_one_batch(norm_first):
    torch.manual_seed(0)
    model = Transformer(tiny(norm_first=norm_first, n_encoder_layers=1, n_decoder_layers=1), 16, 16)
    src = torch.randint(4, 16, (8, 6))
    tgt = torch.cat([torch.full((8, 1), 2), torch.randint(4, 16, (8, 6)), torch.full((8, 1), 3)], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    assert greedy_decode(model, src, 2, 3, 10) == tgt[:, 1:-1].tolist()
