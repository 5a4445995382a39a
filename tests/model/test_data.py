"""Tasks, splits, tokenizers, batches and bad data."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from attntune.model.config import ConfigError, TaskConfig
from attntune.model.data import (
    TASKS,
    DataError,
    batch_indices,
    chinese_number,
    collate,
    english_number,
    load_task,
)
from attntune.model.tokenize import Tokenizer, pieces_many

from .conftest import ATTRIBUTION


def write_tsv(folder: Path, rows: list[str], name: str = "pairs.tsv") -> Path:
    path = folder / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tsv_cfg(path: Path, **kw) -> TaskConfig:
    base = dict(name="tsv", path=str(path), val_size=2, test_size=2, src_tokenizer="word", tgt_tokenizer="char")
    return TaskConfig(**{**base, **kw})


# --------------------------------------------------------------------------- registry / generated


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        load_task(TaskConfig(name="nope"))
    assert "unknown task 'nope'" in str(e.value)
    for name in ("tsv", "reverse", "sort", "numbers"):
        assert name in TASKS and name in str(e.value)


def test_reverse_and_sort_tasks(reverse_data):
    for src, tgt in reverse_data.val_text:
        assert tgt.split() == src.split()[::-1]
        assert 3 <= len(src.split()) <= 8
    data = load_task(TaskConfig(name="sort", n_train=50, val_size=10, test_size=5, n_symbols=6))
    for src, tgt in data.val_text:
        assert tgt.split() == sorted(src.split())
    assert len(data.train) == 50 and len(data.val) == 10 and len(data.test) == 5
    assert data.src_vocab_size == 4 + 6
    for s, t in data.train:
        assert s[-1] == data.src_tok.eos_id and t[0] == data.tgt_tok.bos_id and t[-1] == data.tgt_tok.eos_id


def test_generated_task_refuses_a_path():
    with pytest.raises(ConfigError, match="task.path"):
        load_task(TaskConfig(name="reverse", path="x.tsv"))


def test_tsv_needs_a_path():
    with pytest.raises(ConfigError, match="task.path: required"):
        load_task(TaskConfig(name="tsv"))


@pytest.mark.parametrize(
    ("n", "en", "zh"),
    [
        (0, "zero", "零"),
        (10, "ten", "十"),
        (12, "twelve", "十二"),
        (21, "twenty-one", "二十一"),
        (105, "one hundred and five", "一百零五"),
        (110, "one hundred and ten", "一百一十"),
        (312, "three hundred and twelve", "三百一十二"),
        (1005, "one thousand and five", "一千零五"),
        (1050, "one thousand and fifty", "一千零五十"),
        (10012, "ten thousand and twelve", "一万零一十二"),
        (20304, "twenty thousand three hundred and four", "二万零三百零四"),
        (110000, "one hundred and ten thousand", "十一万"),
        (999999, "nine hundred and ninety-nine thousand nine hundred and ninety-nine", "九十九万九千九百九十九"),
    ],
)
def test_number_words(n, en, zh):
    assert english_number(n) == en
    assert chinese_number(n) == zh


def test_numbers_task():
    data = load_task(TaskConfig(name="numbers", n_train=200, val_size=20, test_size=0))
    assert data.src_tok.kind == "word" and data.tgt_tok.kind == "char"
    src, tgt = data.val_text[0]
    assert data.tgt_tok.decode(data.val[0][1]) == tgt and data.src_tok.decode(data.val[0][0]) == src


def test_generated_fingerprint_follows_the_config():
    a = load_task(TaskConfig(name="reverse", n_train=50, val_size=5, test_size=0))
    b = load_task(TaskConfig(name="reverse", n_train=50, val_size=5, test_size=0))
    c = load_task(TaskConfig(name="reverse", n_train=51, val_size=5, test_size=0))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.val_text == b.val_text


# --------------------------------------------------------------------------- tsv


def test_tsv_columns_license_fingerprint_and_subset(tmp_path):
    rows = [f"word{i} common\tx{i}y\textra\tmore" for i in range(40)]
    path = write_tsv(tmp_path, rows)
    cfg = tsv_cfg(path, src_col=0, tgt_col=1, license="CC-BY 2.0 FR", attribution=ATTRIBUTION)
    data = load_task(cfg)
    assert data.license == "CC-BY 2.0 FR" and data.attribution == ATTRIBUTION
    assert data.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(data.train) == 36 and len(data.val) == 2 and len(data.test) == 2
    for src, tgt in data.val_text + data.test_text:
        assert src.startswith("word") and tgt.startswith("x")
    swapped = load_task(tsv_cfg(path, src_col=1, tgt_col=0, src_tokenizer="char", tgt_tokenizer="word"))
    assert swapped.val_text[0][0].startswith("x")
    sub = load_task(tsv_cfg(path, max_pairs=10))
    sub2 = load_task(tsv_cfg(path, max_pairs=10))
    assert len(sub.train) == 6 and sub.val_text == sub2.val_text and sub.test_text == sub2.test_text
    firsts = {r.split("\t")[0] for r in rows[:10]}
    picked = {s for s, _ in sub.val_text + sub.test_text}
    assert not picked <= firsts  # taken after a shuffle, not the first lines of the file


def test_split_is_deterministic_by_seed(tmp_path):
    path = write_tsv(tmp_path, [f"s{i}\tt{i}" for i in range(60)])
    a = load_task(tsv_cfg(path, val_size=10, test_size=10, split_seed=1))
    b = load_task(tsv_cfg(path, val_size=10, test_size=10, split_seed=1))
    c = load_task(tsv_cfg(path, val_size=10, test_size=10, split_seed=2))
    assert a.val_text == b.val_text and a.train == b.train
    assert a.val_text != c.val_text
    assert not {s for s, _ in a.val_text} & {s for s, _ in a.test_text}


def test_tokenizers_see_only_the_training_split(tmp_path):
    rows = [f"common w{i}\tc" for i in range(30)]
    path = write_tsv(tmp_path, rows)
    data = load_task(tsv_cfg(path, val_size=5, test_size=5))
    unk = data.src_tok.unk_id
    for (src_ids, _), (src, _) in zip(data.val, data.val_text, strict=True):
        assert src_ids[1] == unk, src  # w<i> of a validation line never reached the vocabulary
    assert all(ids[1] != unk for ids, _ in data.train)


def test_long_pairs_are_filtered(tmp_path):
    rows = [f"a b\tx{i}" for i in range(20)] + [" ".join(["a"] * 30) + "\tlong"] * 5
    data = load_task(tsv_cfg(write_tsv(tmp_path, rows), max_tokens=10, val_size=1, test_size=1))
    assert all(len(s) <= 10 and len(t) <= 10 for s, t in data.train + data.val + data.test)
    assert data.n_filtered >= 4


def test_too_few_pairs_for_the_splits(tmp_path):
    path = write_tsv(tmp_path, ["a\tb", "c\td"])
    with pytest.raises(DataError, match="only 2 usable pairs"):
        load_task(tsv_cfg(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "pairs.tsv: file not found"),
        (b"", "pairs.tsv: file is empty"),
        (b"\n  \n", "pairs.tsv: file is empty"),
        (b"one column only\nstill one\n", "pairs.tsv: no line has non-empty tab-separated columns 0 and 1"),
        (b"ok\tfine\nok\tfine\n" + b"bad \xff\xfe byte\tx\n", "pairs.tsv:3: undecodable bytes at column 5"),
    ],
)
def test_bad_data_raises_one_clear_line(tmp_path, content, message):
    path = tmp_path / "pairs.tsv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_task(tsv_cfg(path))
    text = str(e.value)
    assert message in text and "\n" not in text


# --------------------------------------------------------------------------- Tatoeba


def test_tatoeba_loads_fast_and_splits(tatoeba_path):
    cfg = TaskConfig(
        name="tsv",
        path=str(tatoeba_path),
        src_col=1,
        tgt_col=0,
        lowercase=True,
        val_size=1000,
        test_size=1000,
        attribution=ATTRIBUTION,
    )
    load_task(cfg)  # warm caches (imports, page cache)
    t0, c0 = time.perf_counter(), time.process_time()
    data = load_task(cfg)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    # CPU time, not wall time: the test must not fail because other jobs share the cores.
    assert cpu < 2.0, f"loading Tatoeba took {cpu:.2f}s of CPU ({wall:.2f}s wall)"
    assert len(data.val) == 1000 and len(data.test) == 1000 and len(data.train) > 24000
    assert data.src_tok.kind == "char" and data.tgt_tok.kind == "word"
    assert 3000 < data.src_vocab_size < 5000 and 5000 < data.tgt_vocab_size <= 8000
    src, tgt = data.val_text[0]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in src) and tgt.isascii()
    assert data.tgt_tok.decode(data.tgt_tok.encode("I don't know, Tom.")) == "i don't know, tom."
    assert data.attribution == ATTRIBUTION


def test_fast_encoding_matches_hf_tokenizer(tatoeba_path):
    lines = tatoeba_path.read_text(encoding="utf-8").splitlines()
    en = [line.split("\t")[0] for line in lines]
    zh = [line.split("\t")[1] for line in lines]
    for texts, kind in ((en, "word"), (zh, "char")):
        tok, train_ids, other_ids = Tokenizer.train_and_encode(texts[:20000], texts[20000:], kind, 8000, True)
        assert train_ids + other_ids == tok.encode_many(texts)
    # A text holding a newline cannot be normalised in one joined string: the slow path takes over.
    assert pieces_many(["a\nb", "c"], "char", False) == [["a", "▁", "b"], ["c"]]
    assert pieces_many(["Don't GO", "x"], "word", True) == [["don't", "go"], ["x"]]


def test_tokenizer_save_load_roundtrip(tmp_path):
    texts = ["Hello there, Tom.", "I don't know!", "well-known (maybe)"]
    for kind in ("word", "char", "bpe"):
        tok = Tokenizer.train(texts * 5, kind, 60, lowercase=kind != "char")
        tok.save(tmp_path / f"{kind}.json")
        back = Tokenizer.load(tmp_path / f"{kind}.json")
        assert back.vocab_size == tok.vocab_size and back.kind == kind
        for t in texts:
            assert back.encode(t) == tok.encode(t)
    word = Tokenizer.train(texts, "word", 100, lowercase=True)
    assert word.decode(word.encode("I don't know!")) == "i don't know!"
    assert word.decode(word.encode("well-known (maybe)")) == "well-known (maybe)"
    char = Tokenizer.train(["我爱你 ok"], "char", 100, lowercase=False)
    assert char.decode(char.encode("我爱你 ok")) == "我爱你 ok"
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an attntune tokenizer"):
        Tokenizer.load(tmp_path / "bad.json")


# --------------------------------------------------------------------------- batches


def test_batches_cover_every_pair_once_with_little_padding(reverse_data):
    pairs = reverse_data.train
    batches = batch_indices(pairs, 32, "sentences", shuffle=True, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(pairs)))
    assert batches == batch_indices(pairs, 32, "sentences", shuffle=True, seed=3)
    assert batches != batch_indices(pairs, 32, "sentences", shuffle=True, seed=4)
    for b in batches:  # length-bucketed: target lengths within a batch differ by at most 1
        lengths = [len(pairs[i][1]) for i in b]
        assert max(lengths) - min(lengths) <= 1
    src, tgt_in, tgt_out = collate(pairs, batches[0], pad_id=0)
    assert tgt_in.shape == tgt_out.shape and src.shape[0] == len(batches[0])
    assert (tgt_in[:, 1:] == tgt_out[:, :-1]).all()


def test_token_batches_respect_the_cap(reverse_data):
    pairs = reverse_data.train
    batches = batch_indices(pairs, 100, "tokens", shuffle=True, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
    for b in batches:
        longest = max(max(len(pairs[i][0]), len(pairs[i][1])) for i in b)
        assert longest * len(b) <= 100
