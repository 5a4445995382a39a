"""Checkpoints: weights in safetensors, config in YAML, tokenizers in JSON, training state for resuming.

Nothing here unpickles arbitrary objects: weights are read with safetensors (a pickle file is
rejected because it has no safetensors header) and ``train_state.pt`` with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

Layout of a checkpoint folder::

    model.safetensors     state dict (tied weights stored once), metadata: epoch, license, attribution
    config.yaml           task / model / train sections (loadable by ``attntune train``) + provenance
    src_tokenizer.json    tokenizer files (``attntune.model.tokenize.Tokenizer``)
    tgt_tokenizer.json
    train_state.pt        optimizer, step, epoch, RNG states and metric history (for resuming)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from attntune.model.config import ConfigError, ModelConfig, load_dataclass
from attntune.model.data import DataError
from attntune.model.decoding import beam_search, greedy_decode
from attntune.model.families import Seq2Seq, build_model
from attntune.model.tokenize import Tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
SRC_TOKENIZER_FILE = "src_tokenizer.json"
TGT_TOKENIZER_FILE = "tgt_tokenizer.json"
STATE_FILE = "train_state.pt"


def save_checkpoint(
    directory: str | Path,
    model: Seq2Seq,
    run_config: dict[str, Any],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    *,
    train_state: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint folder; each file is written to a temporary name, then renamed.

    ``train_state.pt`` is written last and carries the epoch also stored in the weights' metadata,
    so a crash between files is detected on resume (see ``load_train_state``).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in (metadata or {}).items() if v is not None}
    tmp = d / (MODEL_FILE + ".tmp")
    save_model(model, str(tmp), metadata=meta)
    os.replace(tmp, d / MODEL_FILE)
    for tok, name in ((src_tok, SRC_TOKENIZER_FILE), (tgt_tok, TGT_TOKENIZER_FILE)):
        tmp = d / (name + ".tmp")
        tok.save(tmp)
        os.replace(tmp, d / name)
    tmp = d / (CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(run_config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, d / CONFIG_FILE)
    if train_state is not None:
        tmp = d / (STATE_FILE + ".tmp")
        torch.save(train_state, tmp)
        os.replace(tmp, d / STATE_FILE)
    return d


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        if p.name != MODEL_FILE:
            raise DataError(f"{path}: not an attntune checkpoint (expected a folder with {MODEL_FILE}; pickle files are never loaded)")
        p = p.parent
    if not (p / MODEL_FILE).is_file() or not (p / CONFIG_FILE).is_file():
        raise DataError(f"{path}: no checkpoint found (expected {MODEL_FILE} and {CONFIG_FILE})")
    return p


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a checkpoint's weights (epoch, license, attribution)."""
    f = _folder(path) / MODEL_FILE
    try:
        with safe_open(str(f), framework="pt") as st:
            return dict(st.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any parse failure means "not safetensors"
        raise DataError(f"{f}: not a safetensors file ({type(e).__name__}); refusing to load it") from None


def load_weights(model: Seq2Seq, path: str | Path) -> None:
    """Load safetensors weights into ``model`` (strict: every tensor must match)."""
    f = _folder(path) / MODEL_FILE
    read_metadata(f.parent)  # validates the header before any tensor is read
    try:
        missing, unexpected = load_model(model, str(f), strict=False, device=str(_device_of(model)))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{f}: weights do not fit the configured model ({e})") from None
    if missing or unexpected:
        raise DataError(f"{f}: weights do not fit the configured model (missing {missing}, unexpected {unexpected})")


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Seq2Seq, dict[str, Any], Tokenizer, Tokenizer]:
    """(model in eval mode, run config dict, source tokenizer, target tokenizer) from a folder.

    The model's family is the config's ``model.family`` (absent in checkpoints from before families:
    a Transformer, loaded as it always was)."""
    d = _folder(path)
    try:
        run_config = yaml.safe_load((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{d / CONFIG_FILE}: malformed YAML ({e})") from None
    if not isinstance(run_config, dict) or "model" not in run_config:
        raise DataError(f"{d / CONFIG_FILE}: no model section")
    try:
        model_cfg = load_dataclass(ModelConfig, run_config["model"], "model")
    except ConfigError as e:
        raise e.with_source(str(d / CONFIG_FILE)) from None
    try:
        src_tok = Tokenizer.load(d / SRC_TOKENIZER_FILE)
        tgt_tok = Tokenizer.load(d / TGT_TOKENIZER_FILE)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{d}: unreadable tokenizer file ({e})") from None
    model = build_model(model_cfg, src_tok.vocab_size, tgt_tok.vocab_size, pad_id=tgt_tok.pad_id).to(device)
    load_weights(model, d)
    model.eval()
    return model, run_config, src_tok, tgt_tok


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    """The resumable training state, or None when there is none or it does not match the weights."""
    d = Path(directory)
    f = d / STATE_FILE
    if not f.is_file() or not (d / MODEL_FILE).is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses arbitrary pickles
        raise DataError(f"{f}: not a loadable training state ({type(e).__name__}); refusing to unpickle it") from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise DataError(f"{f}: not an attntune training state")
    if read_metadata(d).get("epoch") != str(state["epoch"]):
        return None  # interrupted between writing the weights and the state: not resumable
    return state


# --------------------------------------------------------------------------- translation


def translate(
    model: Seq2Seq,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sentences: list[str],
    max_len: int | None = None,
    beam_size: int = 1,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Translate ``sentences`` (in order). ``max_len`` caps generated tokens (default: 2 x source + 10).

    Batched, and the batches change no translation: sentences are sorted by length, so a batch needs
    little padding; every family masks padding out; each row keeps its own token limit (greedy
    decoding is row by row, so a longer neighbour's limit only adds tokens that are cut again).
    Beam search batches only sentences with the same limit (the same length unless ``max_len`` is
    given): its result depends on the limit. ``progress`` is called with the number of sentences
    each finished batch held.
    """
    if not sentences:
        return []
    was_training = model.training
    model.eval()
    device = _device_of(model)
    limit = model.cfg.max_len
    ids = [src_tok.encode(s)[: limit - 1] + [src_tok.eos_id] for s in sentences]
    caps = [max_len if max_len is not None else 2 * len(x) + 10 for x in ids]  # generated tokens, per sentence
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    try:
        for chunk in _batches(order, caps, batch_size, same_cap=beam_size > 1):
            longest = max(len(ids[i]) for i in chunk)
            src = torch.tensor(
                [ids[i] + [src_tok.pad_id] * (longest - len(ids[i])) for i in chunk], dtype=torch.long, device=device
            )
            n = max(caps[i] for i in chunk)
            if beam_size > 1:
                hyps = beam_search(model, src, tgt_tok.bos_id, tgt_tok.eos_id, n, beam_size=beam_size)
            else:
                hyps = greedy_decode(model, src, tgt_tok.bos_id, tgt_tok.eos_id, n)
            for i, h in zip(chunk, hyps, strict=True):
                out[i] = tgt_tok.decode(h[: max(1, min(caps[i], limit))])
            if progress is not None:
                progress(len(chunk))
    finally:
        model.train(was_training)
    return out


def _batches(order: list[int], caps: list[int], size: int, same_cap: bool) -> Iterator[list[int]]:
    """``order`` cut into batches of at most ``size``; with ``same_cap`` a batch never mixes token limits."""
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) >= size or (same_cap and caps[i] != caps[chunk[0]])):
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk
