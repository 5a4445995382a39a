"""Tokenizers: thin wrappers around Hugging Face ``tokenizers`` with fixed special tokens.

Kinds: ``char`` (one token per character, whitespace runs become ``▁``; for Chinese), ``word``
(words with inner apostrophes kept, each punctuation mark a token) and ``bpe`` (byte-pair pieces of
those words). Why char and word vocabularies are counted in Python rather than with the HF trainer:
HF spends ~14 us per sentence building ``Encoding`` objects, so training + encoding the 26k Tatoeba
pairs took ~1.4 s; counting here and encoding with a dict takes a fifth of that. The HF tokenizer
built from the same vocabulary, normaliser and pre-tokenizer encodes new text (``encode``) and is
what ``save`` writes; a test checks both paths give the same ids on the whole Tatoeba file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as hf_models
from tokenizers import trainers as hf_trainers

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0..3 in every vocabulary
SPACE = "▁"  # stands for a run of whitespace in char vocabularies
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"  # "don't" stays whole (as in sacrebleu's 13a), "." is its own token
_WORD_RE = re.compile(WORD_PATTERN)
_SPACE_RE = re.compile(r"\s+")
_FORMAT = "attntune-tokenizer"
KINDS = ("char", "word", "bpe")


def _normalizer(kind: str, lowercase: bool) -> normalizers.Normalizer:
    steps = [normalizers.NFKC(), normalizers.Strip()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if kind == "char":
        steps.append(normalizers.Replace(Regex(r"\s+"), SPACE))
    return normalizers.Sequence(steps)


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    if kind == "char":
        return pre_tokenizers.Split(Regex("."), behavior="isolated")
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )


def pieces(text: str, kind: str, lowercase: bool) -> list[str]:
    """Python twin of the HF normaliser + pre-tokenizer for ``char`` and ``word``."""
    text = unicodedata.normalize("NFKC", text).strip()
    if lowercase:
        text = text.lower()
    if kind == "char":
        return list(_SPACE_RE.sub(SPACE, text))
    return _WORD_RE.findall(text)


def pieces_many(texts: Sequence[str], kind: str, lowercase: bool) -> list[list[str]]:
    """``pieces`` of many texts, normalising them as one string (5x faster than one by one)."""
    joined = "\n".join(texts)
    norm = unicodedata.normalize("NFKC", joined)
    if lowercase:
        norm = norm.lower()
    lines = norm.split("\n")
    if len(lines) != len(texts) or joined.count("\n") != len(texts) - 1:  # a text holds a newline
        return [pieces(t, kind, lowercase) for t in texts]
    if kind == "char":
        sub = _SPACE_RE.sub
        return [list(sub(SPACE, line.strip())) for line in lines]
    findall = _WORD_RE.findall
    return [findall(line) for line in lines]


class _Index(dict):
    """token -> id with unknown tokens mapping to UNK's id, for ``map`` without a default argument."""

    def __missing__(self, key: str) -> int:
        return 1


def detokenize(words: Sequence[str]) -> str:
    """Join word tokens into text: no space before closing punctuation or around inner hyphens."""
    text = " ".join(words)
    text = re.sub(r" ([.,!?;:%)\]}»])", r"\1", text)
    text = re.sub(r"([(\[{«¿¡$]) ", r"\1", text)
    return re.sub(r"(\w) ([-/]) (?=\w)", r"\1\2", text)


class Tokenizer:
    """A trained tokenizer: ``encode(str) -> ids`` (no BOS/EOS added), ``decode(ids) -> str``."""

    def __init__(self, hf: HFTokenizer, kind: str, lowercase: bool):
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r} (valid: {', '.join(KINDS)})")
        self.hf = hf
        self.kind = kind
        self.lowercase = lowercase
        vocab = hf.get_vocab()
        self._itos = [""] * len(vocab)
        for tok, i in vocab.items():
            self._itos[i] = tok
        self._stoi = vocab
        for i, tok in enumerate(SPECIALS):
            if vocab.get(tok) != i:
                raise ValueError(f"tokenizer vocabulary must start with {SPECIALS}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vocab(cls, kind: str, vocab: Sequence[str], lowercase: bool) -> Tokenizer:
        """Word-level HF tokenizer over ``vocab`` (specials are put first)."""
        tokens = SPECIALS + [t for t in vocab if t not in SPECIALS]
        hf = HFTokenizer(hf_models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=UNK))
        hf.normalizer = _normalizer(kind, lowercase)
        hf.pre_tokenizer = _pre_tokenizer(kind)
        return cls(hf, kind, lowercase)

    @classmethod
    def train(cls, texts: Sequence[str], kind: str, vocab_size: int, lowercase: bool) -> Tokenizer:
        """Train on ``texts``: most frequent ``vocab_size`` symbols (ties by symbol), or BPE merges."""
        if kind == "bpe":
            hf = HFTokenizer(hf_models.BPE(unk_token=UNK, continuing_subword_prefix="##"))
            hf.normalizer = _normalizer(kind, lowercase)
            hf.pre_tokenizer = _pre_tokenizer(kind)
            trainer = hf_trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=SPECIALS,
                continuing_subword_prefix="##",
                show_progress=False,
            )
            hf.train_from_iterator(texts, trainer)
            return cls(hf, kind, lowercase)
        counts = Counter(chain.from_iterable(pieces_many(texts, kind, lowercase)))
        return cls.from_vocab(kind, _top(counts, vocab_size - len(SPECIALS)), lowercase)

    @classmethod
    def train_and_encode(
        cls, train_texts: Sequence[str], other_texts: Sequence[str], kind: str, vocab_size: int, lowercase: bool
    ) -> tuple[Tokenizer, list[list[int]], list[list[int]]]:
        """Train on ``train_texts``; return the tokenizer and the ids of both text lists.

        For char/word the pieces are computed once and reused for counting and encoding.
        """
        if kind == "bpe":
            tok = cls.train(train_texts, kind, vocab_size, lowercase)
            return tok, tok.encode_many(train_texts), tok.encode_many(other_texts)
        train_pieces = pieces_many(train_texts, kind, lowercase)
        counts = Counter(chain.from_iterable(train_pieces))
        tok = cls.from_vocab(kind, _top(counts, vocab_size - len(SPECIALS)), lowercase)
        index = _Index(tok._stoi)
        get = index.__getitem__
        train_ids = [list(map(get, p)) for p in train_pieces]
        other_ids = [list(map(get, p)) for p in pieces_many(other_texts, kind, lowercase)]
        return tok, train_ids, other_ids

    # ------------------------------------------------------------------ use

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; padding, BOS and EOS are dropped, unknown ids read ``<unk>``."""
        skip = (self.pad_id, self.bos_id, self.eos_id)
        n = len(self._itos)
        toks = [self._itos[i] if 0 <= i < n else UNK for i in ids if i not in skip]
        if self.kind == "char":
            return "".join(toks).replace(SPACE, " ").strip()
        if self.kind == "bpe":
            words: list[str] = []
            for t in toks:
                if t.startswith("##") and words:
                    words[-1] += t[2:]
                else:
                    words.append(t)
            toks = words
        return detokenize(toks)

    def tokens(self, text: str) -> list[str]:
        return self.hf.encode(text, add_special_tokens=False).tokens

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def bos_id(self) -> int:
        return 2

    @property
    def eos_id(self) -> int:
        return 3

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """One JSON file: our settings plus the HF tokenizer's own JSON (no pickle)."""
        doc = {
            "format": _FORMAT,
            "version": 1,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "tokenizer": json.loads(self.hf.to_str()),
        }
        Path(path).write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{path}: not an attntune tokenizer file")
        hf = HFTokenizer.from_str(json.dumps(doc["tokenizer"]))
        return cls(hf, doc["kind"], bool(doc["lowercase"]))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, lowercase={self.lowercase})"


def _top(counts: Counter[str], n: int) -> list[str]:
    """The ``n`` most frequent symbols, ties broken by the symbol so the order is deterministic."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[: max(0, n)] if w not in SPECIALS]
