"""Checkpoints: round trip, config and credits, and refusal to unpickle."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import yaml

from attntune.model.checkpoint import load_checkpoint, load_train_state, translate
from attntune.model.config import ModelConfig, TrainConfig, load_run_config
from attntune.model.data import DataError
from attntune.model.train import train

TINY = ModelConfig(d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=2, d_ff=64, dropout=0.1, max_len=32)
FAST = TrainConfig(lr=3e-3, warmup_steps=10, epochs=1, batch_size=32, max_steps_per_epoch=5, bleu_samples=0)


@pytest.fixture(scope="module")
def trained(reverse_data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    threads = torch.get_num_threads()  # module scope runs before the per-test one_thread fixture
    torch.set_num_threads(1)
    try:
        result = train(TINY, FAST, reverse_data, checkpoint_dir=ckpt, provenance={"trial": 7})
    finally:
        torch.set_num_threads(threads)
    return result, ckpt


def test_round_trip_gives_identical_outputs(trained, reverse_data):
    result, ckpt = trained
    model, run_config, src_tok, tgt_tok = load_checkpoint(ckpt)
    assert not model.training
    src = torch.tensor([s + [0] * (9 - len(s)) for s, _ in reverse_data.val[:8]])
    tgt = torch.tensor([t[:4] for _, t in reverse_data.val[:8]])
    original = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), original(src, tgt), rtol=0, atol=0)
    sentences = [s for s, _ in reverse_data.val_text[:10]]
    assert translate(model, src_tok, tgt_tok, sentences) == translate(
        original, reverse_data.src_tok, reverse_data.tgt_tok, sentences
    )
    assert len(translate(model, src_tok, tgt_tok, sentences, beam_size=3)) == 10
    assert model.generator.weight is model.tgt_embed.weight  # tying survives the round trip


def test_config_is_a_loadable_run_config(trained, reverse_data):
    _, ckpt = trained
    doc = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8"))
    run = load_run_config(doc)
    assert run.model == TINY and run.train == FAST and run.task == reverse_data.config
    assert doc["provenance"]["trial"] == 7
    assert doc["provenance"]["data"]["fingerprint"] == reverse_data.fingerprint
    assert {"model.safetensors", "src_tokenizer.json", "tgt_tokenizer.json", "train_state.pt"} <= {
        p.name for p in ckpt.iterdir()
    }


def test_credits_are_carried(tatoeba_path, tmp_path):
    from attntune.model.checkpoint import read_metadata
    from attntune.model.config import TaskConfig
    from attntune.model.data import load_task

    from .conftest import ATTRIBUTION

    data = load_task(
        TaskConfig(
            name="tsv", path=str(tatoeba_path), src_col=1, tgt_col=0, max_pairs=400, val_size=20, test_size=0,
            license="CC-BY 2.0 FR", attribution=ATTRIBUTION,
        )
    )
    train(TINY, TrainConfig(**{**FAST.__dict__, "max_steps_per_epoch": 1}), data, checkpoint_dir=tmp_path)
    meta = read_metadata(tmp_path)
    assert meta["attribution"] == ATTRIBUTION and meta["license"] == "CC-BY 2.0 FR" and meta["epoch"] == "1"
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    assert doc["task"]["attribution"] == ATTRIBUTION and doc["provenance"]["data"]["attribution"] == ATTRIBUTION


class Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_crafted_pickle_checkpoints_are_refused(trained, tmp_path):
    _, ckpt = trained
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in ckpt.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    blob = pickle.dumps({"state_dict": Payload(str(marker))})
    (evil / "model.safetensors").write_bytes(blob)
    with pytest.raises(DataError, match="not a safetensors file"):
        load_checkpoint(evil)
    (evil / "evil.pt").write_bytes(blob)
    with pytest.raises(DataError, match="not an attntune checkpoint"):
        load_checkpoint(evil / "evil.pt")
    # The training state goes through torch.load(weights_only=True), which refuses the payload too.
    (evil / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    torch.save({"epoch": 1, "x": Payload(str(marker))}, evil / "train_state.pt")
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_train_state(evil)
    assert not marker.exists()


def test_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "nothing")
