"""Tasks (parallel text), splits, tokenisation and length-bucketed batches.

A task builder in ``TASKS`` turns a ``TaskConfig`` into raw (source, target) text pairs; ``load_task``
does the rest the same way for every task: seeded shuffle, optional ``max_pairs`` subset, test /
validation / training split, tokenizers trained on the training split only, length filtering.

Bad data raises ``DataError`` with one line naming the file (and line) and the problem; the CLI
turns it into exit code 2. Loading does not import torch, so such errors come back in a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attntune.model.config import ConfigError, TaskConfig, file_not_found, to_dict
from attntune.model.tokenize import Tokenizer

if TYPE_CHECKING:
    import torch

Pair = tuple[list[int], list[int]]  # (source ids + EOS, BOS + target ids + EOS)


class DataError(ValueError):
    """Unusable data: one line naming the file (and line) and the problem."""

    def line(self) -> str:
        return str(self)


@dataclass
class RawTask:
    """What a task builder returns: text pairs plus how to tokenise and credit them."""

    pairs: list[tuple[str, str]]
    src_kind: str
    tgt_kind: str
    fingerprint: str
    source: str  # the file (or task name) that errors should name
    license: str | None = None
    attribution: str | None = None
    lowercase: bool = False
    skipped: int = 0  # lines without the needed columns


@dataclass
class TaskData:
    """A tokenised task ready for training.

    ``train``/``val``/``test`` hold (source ids + EOS, BOS + target ids + EOS) pairs; ``val_text`` and
    ``test_text`` hold the same pairs as text (references for BLEU).
    """

    name: str
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    val_text: list[tuple[str, str]]
    test_text: list[tuple[str, str]]
    license: str | None
    attribution: str | None
    fingerprint: str
    config: TaskConfig | None = None
    n_filtered: int = 0  # pairs dropped for exceeding max_tokens
    n_skipped_lines: int = 0  # tsv lines without the needed columns

    @property
    def src_vocab_size(self) -> int:
        return self.src_tok.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt_tok.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tgt_tok.pad_id


# --------------------------------------------------------------------------- tsv


def _read_text(path: Path, shown: str) -> str:
    """File contents as UTF-8 (BOM allowed); DataError names the line of the first bad byte."""
    if not path.exists():
        raise DataError(f"{shown}: {file_not_found(path)}")
    if not path.is_file():
        raise DataError(f"{shown}: not a file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{shown}: file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{shown}:{line}: undecodable bytes at column {col} (byte 0x{raw[e.start]:02x}); "
            "the file must be UTF-8"
        ) from None


def build_tsv(cfg: TaskConfig) -> RawTask:
    """Tab-separated pairs from ``cfg.path``: columns ``src_col`` and ``tgt_col``, others ignored."""
    if not cfg.path:
        raise ConfigError("task.path: required for task 'tsv'")
    shown = cfg.path
    path = Path(cfg.path)
    text = _read_text(path, shown)
    need = max(cfg.src_col, cfg.tgt_col) + 1
    pairs: list[tuple[str, str]] = []
    skipped = 0
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < need:
            skipped += 1
            continue
        src, tgt = cols[cfg.src_col].strip(), cols[cfg.tgt_col].strip()
        if not src or not tgt:
            skipped += 1
            continue
        pairs.append((src, tgt))
    if not pairs:
        raise DataError(
            f"{shown}: no line has non-empty tab-separated columns {cfg.src_col} and {cfg.tgt_col} "
            f"(task.src_col/task.tgt_col, counted from 0; needs at least {need} columns)"
        )
    return RawTask(
        pairs=pairs,
        src_kind=cfg.src_tokenizer,
        tgt_kind=cfg.tgt_tokenizer,
        fingerprint=hashlib.sha256(path.read_bytes()).hexdigest(),
        source=shown,
        license=cfg.license,
        attribution=cfg.attribution,
        lowercase=cfg.lowercase,
        skipped=skipped,
    )


# --------------------------------------------------------------------------- generated tasks


def _symbols(n: int) -> list[str]:
    """Readable symbol names: a..z, then x26, x27, ..."""
    return [chr(ord("a") + i) if i < 26 else f"x{i}" for i in range(n)]


def _config_fingerprint(cfg: TaskConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def _generated(cfg: TaskConfig, make: Callable[[random.Random], tuple[str, str]], src: str, tgt: str) -> RawTask:
    if cfg.path:
        raise ConfigError(f"task.path: not used by the generated task {cfg.name!r} (remove it)")
    rng = random.Random(cfg.split_seed)
    total = cfg.n_train + cfg.val_size + cfg.test_size
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str]] = []
    tries = 0
    # Distinct examples while the space allows it, so validation pairs are not training pairs.
    while len(pairs) < total:
        p = make(rng)
        tries += 1
        if p in seen and tries < 20 * total:
            continue
        seen.add(p)
        pairs.append(p)
    return RawTask(pairs, src, tgt, _config_fingerprint(cfg), source=f"task {cfg.name!r}")


def _sequence_task(cfg: TaskConfig, transform: Callable[[list[int]], list[int]]) -> RawTask:
    names = _symbols(cfg.n_symbols)

    def make(rng: random.Random) -> tuple[str, str]:
        seq = [rng.randrange(cfg.n_symbols) for _ in range(rng.randint(cfg.min_seq_len, cfg.max_seq_len))]
        return " ".join(names[i] for i in seq), " ".join(names[i] for i in transform(seq))

    return _generated(cfg, make, "word", "word")


def build_reverse(cfg: TaskConfig) -> RawTask:
    """Random symbol sequences (``n_symbols`` symbols, ``min_seq_len``..``max_seq_len`` long), reversed."""
    return _sequence_task(cfg, lambda s: s[::-1])


def build_sort(cfg: TaskConfig) -> RawTask:
    """Random symbol sequences, sorted by symbol index."""
    return _sequence_task(cfg, sorted)


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_CN_DIGITS = "零一二三四五六七八九"


def english_number(n: int) -> str:
    """0 <= n < 1,000,000 in British English words: 312 -> 'three hundred and twelve'."""

    def below_100(k: int) -> str:
        if k < 20:
            return _ONES[k]
        return _TENS[k // 10] + ("-" + _ONES[k % 10] if k % 10 else "")

    def below_1000(k: int) -> str:
        h, r = divmod(k, 100)
        if not h:
            return below_100(r)
        return _ONES[h] + " hundred" + (" and " + below_100(r) if r else "")

    if n == 0:
        return "zero"
    th, rest = divmod(n, 1000)
    words = below_1000(th) + " thousand" if th else ""
    if rest:
        sep = " and " if th and rest < 100 else " "
        words = (words + sep if words else "") + below_1000(rest)
    return words


def chinese_number(n: int) -> str:
    """0 <= n < 100,000,000 in Chinese numerals: 312 -> '三百一十二', 1005 -> '一千零五'."""

    def below_10000(k: int, leading: bool) -> str:
        out, started, gap = "", False, False
        for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            d = k // value % 10
            if d == 0:
                gap = gap or started
                continue
            if gap:
                out += "零"
                gap = False
            # 10..19 at the very start read 十, 十一 ... (not 一十); inside a number 一十 is kept.
            if not (leading and not started and value == 10 and d == 1):
                out += _CN_DIGITS[d]
            out += unit
            started = True
        return out

    if n == 0:
        return "零"
    hi, lo = divmod(n, 10000)
    if not hi:
        return below_10000(lo, True)
    out = below_10000(hi, True) + "万"
    if lo:
        out += ("零" if lo < 1000 else "") + below_10000(lo, False)
    return out


def build_numbers(cfg: TaskConfig) -> RawTask:
    """English number words -> Chinese numerals, 0..999,999 with 1 to 6 digits equally likely."""

    def make(rng: random.Random) -> tuple[str, str]:
        digits = rng.randint(1, 6)
        n = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)
        return english_number(n), chinese_number(n)

    return _generated(cfg, make, "word", "char")


TASKS: dict[str, Callable[[TaskConfig], RawTask]] = {
    "tsv": build_tsv,
    "reverse": build_reverse,
    "sort": build_sort,
    "numbers": build_numbers,
}


# --------------------------------------------------------------------------- loading


def resolve_path(path: str, base_dir: str | Path | None) -> str:
    """A relative ``path`` is tried against the working directory first, then ``base_dir``."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base_dir is None:
        return path
    alt = Path(base_dir) / p
    return str(alt) if alt.exists() else path


def load_task(cfg: TaskConfig, *, base_dir: str | Path | None = None) -> TaskData:
    """Build, split and tokenise the task ``cfg`` names.

    Order: builder -> seeded shuffle (``split_seed``) -> first ``max_pairs`` -> test, validation,
    training split -> tokenizers trained on the training split -> pairs longer than ``max_tokens``
    (special tokens included) dropped from every split.
    """
    builder = TASKS.get(cfg.name)
    if builder is None:
        raise ConfigError(f"task.name: unknown task {cfg.name!r} (valid tasks: {', '.join(sorted(TASKS))})")
    run_cfg = cfg
    if cfg.path and cfg.name == "tsv":
        run_cfg = dataclasses.replace(cfg, path=resolve_path(cfg.path, base_dir))
    raw = builder(run_cfg)
    if run_cfg is not cfg:
        raw.source = cfg.path or raw.source
    pairs = list(raw.pairs)
    random.Random(cfg.split_seed).shuffle(pairs)
    if cfg.max_pairs is not None:
        pairs = pairs[: cfg.max_pairs]
    n_eval = cfg.val_size + cfg.test_size
    if len(pairs) <= n_eval:
        raise DataError(
            f"{raw.source}: only {len(pairs)} usable pairs, need more than "
            f"task.val_size + task.test_size = {n_eval} to leave a training split"
        )
    test_text, val_text, train_text = pairs[: cfg.test_size], pairs[cfg.test_size : n_eval], pairs[n_eval:]
    lower = raw.lowercase
    eval_src = [s for s, _ in test_text + val_text]
    eval_tgt = [t for _, t in test_text + val_text]
    src_tok, train_src, eval_src_ids = Tokenizer.train_and_encode(
        [s for s, _ in train_text], eval_src, raw.src_kind, cfg.vocab_size, lower
    )
    tgt_tok, train_tgt, eval_tgt_ids = Tokenizer.train_and_encode(
        [t for _, t in train_text], eval_tgt, raw.tgt_kind, cfg.vocab_size, lower
    )
    bos, eos = tgt_tok.bos_id, tgt_tok.eos_id
    limit = cfg.max_tokens
    n_filtered = 0

    def keep(src_ids: list[list[int]], tgt_ids: list[list[int]], texts: list[tuple[str, str]]):
        nonlocal n_filtered
        out: list[Pair] = []
        out_text: list[tuple[str, str]] = []
        for s, t, txt in zip(src_ids, tgt_ids, texts, strict=True):
            if len(s) + 1 > limit or len(t) + 2 > limit or not s:
                n_filtered += 1
                continue
            out.append((s + [eos], [bos] + t + [eos]))
            out_text.append(txt)
        return out, out_text

    nt = cfg.test_size
    test, test_text_kept = keep(eval_src_ids[:nt], eval_tgt_ids[:nt], test_text)
    val, val_text_kept = keep(eval_src_ids[nt:], eval_tgt_ids[nt:], val_text)
    train, _ = keep(train_src, train_tgt, train_text)
    if not train:
        raise DataError(f"{raw.source}: no training pair is within task.max_tokens={limit} tokens")
    return TaskData(
        name=cfg.name,
        src_tok=src_tok,
        tgt_tok=tgt_tok,
        train=train,
        val=val,
        test=test,
        val_text=val_text_kept,
        test_text=test_text_kept,
        license=raw.license,
        attribution=raw.attribution,
        fingerprint=raw.fingerprint,
        config=cfg,
        n_filtered=n_filtered,
        n_skipped_lines=raw.skipped,
    )


# --------------------------------------------------------------------------- batches


def batch_indices(
    pairs: Sequence[Pair], batch_size: int, unit: str = "sentences", *, shuffle: bool = False, seed: int = 0
) -> list[list[int]]:
    """Length-bucketed batches of pair indices.

    Pairs are sorted by (target, source) length so a batch needs little padding; with ``shuffle``
    equal lengths are ordered randomly and the batch order is shuffled (seeded). ``unit="tokens"``
    caps padded tokens per batch (longest side x sentences) at ``batch_size``, at least one pair.
    """
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: (len(pairs[i][1]), len(pairs[i][0])))  # stable: keeps the random ties
    batches: list[list[int]] = []
    if unit == "sentences":
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    elif unit == "tokens":
        cur: list[int] = []
        longest = 0
        for i in order:
            n = max(len(pairs[i][0]), len(pairs[i][1]))
            if cur and max(longest, n) * (len(cur) + 1) > batch_size:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
    else:
        raise ValueError(f"batch unit must be 'sentences' or 'tokens', got {unit!r}")
    if shuffle:
        rng.shuffle(batches)
    return batches


def steps_per_round(pairs: Sequence[Pair], batch_size: int, unit: str, max_steps_per_epoch: int | None,
                    round_tokens: int | None = None, round_steps: int | None = None) -> float:  # fmt: skip
    """Optimizer steps in one reported "epoch" of training on ``pairs``: one pass over the data
    (capped by ``max_steps_per_epoch``), or a round of ``round_steps`` steps, or of
    ``round_tokens`` target tokens at the data's mean target tokens per batch (as the trainer
    sizes its schedule)."""
    if round_steps is not None:
        return float(round_steps)
    batches = batch_indices(pairs, batch_size, unit)
    if round_tokens is not None:
        per_batch = sum(len(pairs[i][1]) - 1 for b in batches for i in b) / max(1, len(batches))
        return round_tokens / max(per_batch, 1.0)
    return float(min(len(batches), max_steps_per_epoch or len(batches)))


def collate(pairs: Sequence[Pair], idx: Sequence[int], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (src (B, S), tgt_in (B, T), tgt_out (B, T)) for the pairs ``idx``."""
    import torch  # here, so bad data is reported without paying for importing torch

    srcs = [pairs[i][0] for i in idx]
    tgts = [pairs[i][1] for i in idx]
    s_len = max(len(s) for s in srcs)
    t_len = max(len(t) for t in tgts)
    src = torch.tensor([s + [pad_id] * (s_len - len(s)) for s in srcs], dtype=torch.long)
    tgt = torch.tensor([t + [pad_id] * (t_len - len(t)) for t in tgts], dtype=torch.long)
    return src, tgt[:, :-1], tgt[:, 1:]
