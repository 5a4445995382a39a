"""Is a Transformer even the right model at this budget? A family search on Tatoeba zh->en.

What it measures (issue 17, "Benchmarks"): at a fixed per-trial budget of N training tokens (target
tokens, padding excluded; the same N for every family), which model family does an attntune search
find best, and does the answer change with N? For each budget in ``--budgets`` (default 2M and 8M),
through the real ``attntune`` CLI as a subprocess:

1. search: a job with ``examples/train_tatoeba.yaml``'s task, model and train sections as fixed
   settings (the space's parameters override them), ``space`` families-cpu (transformer | rnn | mlp,
   each family's own parameters), ``strategy`` tpe, ``scheduler`` none, ``budget`` {max_tokens: N,
   min_tokens: N/9 (one round: 9 evaluated rounds per trial), time_limit: --minutes, n_trials:
   100000 (time is the limit)}, ``baseline`` {repeats: 1} (the default Transformer, then each other
   family's start: see below), concurrency 2 (1 CPU each), its own MLflow store
   (``mlflow.db`` in the budget's folder).
2. per family: the trials it got (trained: not INFEASIBLE, not a repeat answered from an earlier
   trial) and how many ended COMPLETE, its best search val_loss, and its share of the last third of
   the sampled trials (INFEASIBLE samples left out): the family the strategy converged to is the one
   with the largest share there.
3. export: ``attntune export --family F`` for each family with a COMPLETE trial.
4. production: each exported config trained with ``--seeds`` training seeds (``train.seed`` 0, 1,
   ...; default 1: this is about the ranking of families) and the trials' budget,
   ``attntune train CONFIG --max-tokens N`` (exactly N tokens, in the config's 9 rounds; a trial
   trained 9 rounds of at least N/9 tokens each, at most 9 batches more), 2 threads, one run at a
   time. Its val_loss in the table is its last round's (the search's is a trial's best round's).
   Beside them, the plain comparison: the ``default`` row is ``examples/train_tatoeba.yaml`` itself
   (attntune's default Transformer, what a user trains without searching) at the same N tokens in
   the same 9 rounds (``--max-tokens N --epochs 9``), with the same seeds.
5. held-out BLEU: every checkpoint greedily translates the task's 1,000-pair test split; sacrebleu
   corpus BLEU (13a, lower-cased), as ``tatoeba_payoff.py`` does (``tatoeba_common.heldout_bleu``).
   Nothing but this step reads the test split, and the script checks that the job, every export and
   every checkpoint have the default's task section (``tatoeba_payoff.py``'s docstring says why that
   makes the split held out).

It prints one table per budget and a last line naming the best family (highest mean held-out BLEU)
per budget.

Why scheduler ``none``: the question is the ranking of families *at N tokens*, and whether that
ranking changes with N. ASHA would judge trials at N/9 and N/3 tokens (its rungs), i.e. rank the
families at smaller budgets, the very thing that may differ: a family that learns fast early (an
RNN, a warm-up-0 trial) would survive and a late starter would be pruned before it reached N. Every
trial here trains the full N, so each family's best val_loss is measured at the budget it is named
for, and every family with a trial has a COMPLETE one to export. The price: fewer trials in the
time (``--scheduler asha`` runs the other choice). Why a baseline with one repeat: in a space that
searches ``model.family`` the baseline (the default Transformer) is followed by one start per other
family (its own model defaults, the baseline's shared settings; search/job_sections.py), so every
family is measured once at a sensible setting before TPE's random start-up draws families and then
follows whichever one led early. Before the starts (2026-12-02) the Transformer got 1 trial of 9 at
2M tokens. One repeat, not two: the noise estimate is not this benchmark's question, and each
trial is some 10% of the search.

Caveat, read before the convergence column: TPE samples at random until 5 trials have finished
(``tpe_startup``, search/strategies.py; 10 until 2026-12-02; the baseline and the family starts
count among them), and a 30-minute search on 2 cores gets roughly 8-12 trials at 2M tokens and 4-6
at 8M. So at the default ``--minutes`` the last third of either search may lie in or near that
random start-up, and "converged to" then says what random sampling drew; the script says how many
of the last third fell in the start-up. ``--minutes 90`` gives the
2M search some 25-30 trials. Both searches use the same ``--search-seed``, so their first random
trials are the same configurations (paired across budgets).

    .venv/bin/python benchmarks/families.py                         # the full benchmark
    .venv/bin/python benchmarks/families.py --smoke                 # the whole pipeline, quickly
    .venv/bin/python benchmarks/families.py --reuse benchmarks/out/families-2026-12-02   # continue

How long: per budget, the search (``--minutes``, 30) plus the trials still running when it ends,
then one production run per family and seed, one at a time. On the 2-core development box, idle,
a trial trains ~3,000-9,000 tokens/s (two at a time, 1 thread each), so a 2M-token trial takes
~5-12 minutes with its 9 evaluations and an 8M one ~20-45; a production run (2 threads alone)
~4-5 minutes at 2M and ~15-20 at 8M. The full run (2M and 8M, 1 seed) takes about 3-3.5 hours:
2M ~1 h (30 min search + ~10 min tail + 3 x ~5 min training + BLEU), 8M ~2-2.5 h (30 min search +
up to ~45 min tail + 3 x ~18 min training + BLEU). Run it alone: a production run's 2 OpenMP
threads on cores another job keeps busy crawl (the smoke run's, under ``nice``: ~300 tokens/s
while other jobs held both cores, ~20,000 when they did not).

``--smoke``: ``task.max_pairs: 3000`` (held-out set: that subset's own test split, the same 1,000
pairs as a full run's, but the tokenizers and models see ~1,000 training pairs: its figures say
nothing about the real question), a 3-minute search per budget, budgets 60k and 120k tokens, 1 seed.

``--out`` (default ``benchmarks/out/families-<date>``, git-ignored) gets one folder per budget
(``2M/``, ``8M/``): the job, the search (``search/``), its MLflow store, the exports (``exports/``),
one config per run (``configs/``), the checkpoints (``runs/``), the CLI's logs (``logs/``); and
``families.json`` (every figure; ``--json FILE`` writes a copy). ``--reuse FOLDER`` continues an
interrupted benchmark there: a finished search, export, training or evaluation is not redone; an
unfinished search is redone from scratch with everything derived from it; a changed job is refused.

Data: Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki. Every file this script writes
from the data (jobs, configs, checkpoints, the JSON figures) carries that attribution.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import shlex
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python benchmarks/families.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attntune.model.config import TaskConfig, load_dataclass, load_run_config, to_dict  # noqa: E402
from attntune.model.data import TaskData, load_task  # noqa: E402
from attntune.search.job import load_job  # noqa: E402
from attntune.search.strategies import tpe_startup  # noqa: E402
from benchmarks.tatoeba_common import (  # noqa: E402
    ATTRIBUTION,
    ROOT,
    THREADS,
    Run,
    default_doc,
    heldout_bleu,
    read_json,
    run_cli,
    same_task,
    spread,
    train_options,
    train_run,
    trial_states,
    write_json,
)

HEADER = f"# Written by benchmarks/families.py. Data: {ATTRIBUTION}.\n"
FAMILIES = ("transformer", "rnn", "mlp")
SPACE, STRATEGY = "families-cpu", "tpe"
ROUNDS = 9  # min_tokens = N / 9: each trial is evaluated (and reported) 9 times
N_TRIALS = 100_000  # never reached: the time limit ends the search
TPE_STARTUP = tpe_startup(N_TRIALS)  # TPE's random trials at this n_trials (search/strategies.py)
DEFAULT = "default"  # the production row of examples/train_tatoeba.yaml itself, at each budget
DEFAULT_NAME = "examples/train_tatoeba.yaml (a Transformer, not searched)"
SMOKE = {"max_pairs": 3000, "minutes": 3.0, "budgets": (60_000, 120_000), "seeds": 1}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    out: Path
    reuse: bool
    minutes: float
    budgets: tuple[int, ...]
    seeds: int
    search_seed: int
    scheduler: str
    smoke: bool
    max_pairs: int | None
    json_path: Path | None


@dataclass(frozen=True)
class BudgetFolder:
    """One per-trial budget's folder, search store and runs (what ``tatoeba_common.train_run`` reads)."""

    out: Path
    reuse: bool
    max_pairs: int | None
    tokens: int
    smoke: bool

    @property
    def label(self) -> str:
        return tokens_label(self.tokens)

    @property
    def job_name(self) -> str:
        return f"tatoeba-families-{'smoke-' if self.smoke else ''}{self.label}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.out / 'mlflow.db').resolve()}"


def tokens_label(n: int) -> str:
    """2000000 -> 2M, 60000 -> 60k."""
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k" if n >= 1000 else str(n)


def parse_budgets(text: str) -> tuple[int, ...]:
    try:
        budgets = tuple(int(float(x)) for x in text.split(","))
    except ValueError:
        raise SystemExit(
            f"error: --budgets {text}: use token counts separated by commas, e.g. 2e6,8e6"
        ) from None
    if any(n < 3 * ROUNDS for n in budgets) or len(set(budgets)) != len(budgets):
        raise SystemExit(f"error: --budgets {text}: each budget once, at least {3 * ROUNDS} tokens")
    return budgets


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/out/families-<date>)")
    p.add_argument("--reuse", type=Path, metavar="FOLDER", help="continue the benchmark in FOLDER")
    p.add_argument(
        "--budgets", default="2e6,8e6", help="per-trial training tokens, comma-separated (2e6,8e6)"
    )
    p.add_argument("--minutes", type=float, default=30.0, help="each search's time limit (default 30)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per exported config (default 1)")
    p.add_argument("--search-seed", type=int, default=0, help="the search jobs' seed (default 0)")
    p.add_argument(
        "--scheduler", choices=("none", "asha"), default="none", help="search scheduler (default none)"
    )
    p.add_argument("--max-pairs", type=int, default=None, help="task.max_pairs for everything (default: all)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="whole pipeline in minutes: 3,000 pairs, 3-min searches, 60k and 120k tokens, 1 seed",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="write every figure to this JSON file")
    a = p.parse_args(argv)
    if a.out and a.reuse:
        p.error("--out and --reuse name the same thing: give one")
    budgets = parse_budgets(a.budgets)
    if a.smoke:
        a.minutes, budgets, a.seeds = SMOKE["minutes"], SMOKE["budgets"], SMOKE["seeds"]
        a.max_pairs = a.max_pairs or SMOKE["max_pairs"]
    tag = "families-smoke" if a.smoke else "families"
    out = a.reuse or a.out or ROOT / "benchmarks" / "out" / f"{tag}-{date.today().isoformat()}"
    return Settings(
        out=out.resolve(),
        reuse=a.reuse is not None,
        minutes=a.minutes,
        budgets=budgets,
        seeds=a.seeds,
        search_seed=a.search_seed,
        scheduler=a.scheduler,
        smoke=a.smoke,
        max_pairs=a.max_pairs,
        json_path=a.json_path,
    )


def budget_folder(s: Settings, tokens: int) -> BudgetFolder:
    return BudgetFolder(s.out / tokens_label(tokens), s.reuse, s.max_pairs, tokens, s.smoke)


# --------------------------------------------------------------------------- the search


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def job_doc(s: Settings, b: BudgetFolder, default: dict[str, Any]) -> dict[str, Any]:
    """The family search at ``b.tokens`` per trial: the default's sections fixed, families-cpu over them."""
    train = {k: v for k, v in default["train"].items() if k != "epochs"}  # the token budget sets it
    return {
        "name": b.job_name,
        "description": f"benchmarks/families.py: the family search at {b.label} training tokens per trial",
        "task": default["task"],
        "model": default["model"],
        "train": train,
        "space": SPACE,
        "strategy": STRATEGY,
        "scheduler": s.scheduler,
        "baseline": {"repeats": 1},
        "budget": {
            "n_trials": N_TRIALS,
            "time_limit": f"{s.minutes:g}m",
            "max_tokens": b.tokens,
            "min_tokens": math.ceil(b.tokens / ROUNDS),
        },
        "concurrency": 2,
        "resources": {"cpus": 1},
        "seed": s.search_seed,
        "tracking": b.tracking_uri,
        "output": str(b.out / "search"),
    }


def run_search(s: Settings, b: BudgetFolder, default: dict[str, Any]) -> dict[str, Any]:
    """Write the job, check its task, run it (unless a finished one is on record); its figures."""
    record, job = b.out / "search.json", job_doc(s, b, default)
    job_path = write_yaml(b.out / "job.yaml", job)
    same_task(default["task"], {"task": to_dict(load_job(job_path).base.task)}, f"search job {job_path}")
    done = read_json(record) if s.reuse else None
    if done is not None and done["job"] != job:
        raise SystemExit(
            f"error: {b.out} holds a search of another job (see {record}); use --out for a new benchmark"
        )
    if done is None:
        # An unfinished search starts over, and everything derived from an earlier one goes with it.
        for folder in ("search", "exports", "configs", "runs"):
            shutil.rmtree(b.out / folder, ignore_errors=True)
        wall = run_cli(["run", str(job_path), "-q"], b.out, b.out / "logs" / "search.log")
        done = {"wall_s": wall, "job": job}
        write_json(record, done)
    else:
        print(f"search {b.label}: reused ({record})")
    done["trials"] = trial_states(b.out / "search" / "results.csv")
    return done


@dataclass(frozen=True)
class Trial:
    """One row of a search's ``results.csv``, as this benchmark reads it."""

    number: int
    state: str
    family: str
    value: float  # the trial's best val_loss (nan unless COMPLETE)
    repeat: bool  # answered from an earlier trial with the same config, not trained
    n_params: int | None


def read_trials(results_csv: Path) -> list[Trial]:
    with results_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Trial(
            number=int(r["number"]),
            state=r["state"],
            family=r.get("model.family") or "transformer",  # a trial without the param is a Transformer
            value=float(r["value"]) if r.get("value") else math.nan,
            repeat=bool(r.get("duplicate_of")),
            n_params=int(float(r["n_params"])) if r.get("n_params") else None,
        )
        for r in sorted(rows, key=lambda r: int(r["number"]))
    ]


def family_stats(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    """Per family: trials trained, COMPLETE, repeats, INFEASIBLE, and the best COMPLETE trial (lowest val_loss)."""
    out = {}
    for family in FAMILIES:
        mine = [t for t in trials if t.family == family]
        trained = [t for t in mine if t.state != "INFEASIBLE" and not t.repeat]
        complete = [t for t in trained if t.state == "COMPLETE" and math.isfinite(t.value)]
        best = min(complete, key=lambda t: (t.value, t.number), default=None)  # ties: the lower number
        out[family] = {
            "trials": len(trained),
            "complete": len(complete),
            "repeats": sum(t.repeat for t in mine),
            "infeasible": sum(t.state == "INFEASIBLE" for t in mine),
            "states": dict(sorted(Counter(t.state for t in trained).items())),
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "best_n_params": best.n_params if best else None,
        }
    return out


def convergence(trials: list[Trial]) -> dict[str, Any]:
    """The family shares of the last third of the sampled trials (INFEASIBLE samples left out)."""
    sampled = [t for t in trials if t.state != "INFEASIBLE"]
    if not sampled:
        return {"n_sampled": 0, "last_third": {}, "family": None, "share": None, "random_startup": None}
    k = math.ceil(len(sampled) / 3)
    last = sampled[-k:]
    counts = Counter(t.family for t in last)
    top = max(counts.values())
    leaders = [f for f in FAMILIES if counts[f] == top]
    startup = sum(i < TPE_STARTUP for i in range(len(sampled) - k, len(sampled)))
    return {
        "n_sampled": len(sampled),
        "trials": [last[0].number, last[-1].number],
        "last_third": {f: counts[f] for f in FAMILIES if counts[f]},
        "family": "/".join(leaders),  # a tie names every leader
        "share": top / k,
        "random_startup": startup,  # how many of the last third TPE may still have drawn at random
    }


# --------------------------------------------------------------------------- export, train, evaluate


def export_family(b: BudgetFolder, default: dict[str, Any], family: str) -> dict[str, Any]:
    """``attntune export --family`` (kept if on record): the family's best trial as a train config."""
    path, record = b.out / "exports" / f"{family}.yaml", b.out / "exports" / f"{family}.json"
    done = read_json(record) if path.is_file() else None
    if done is None:
        args = ["export", "--experiment", b.job_name, "--family", family, "--output", str(path)]
        args += ["--tracking-uri", b.tracking_uri]
        write_json(record, {"wall_s": run_cli(args, b.out, b.out / "logs" / f"export-{family}.log")})
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    same_task(default["task"], doc, str(path))
    return doc


def family_configs(s: Settings, b: BudgetFolder, family: str, doc: dict[str, Any]) -> list[tuple[int, Path]]:
    """One production config per training seed: the exported recipe (its rounds too), ``train.seed``, 2 threads."""
    out = []
    for seed in range(s.seeds):
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
        d["train"].update(seed=seed, num_threads=THREADS)
        d["provenance"] = {
            **(doc.get("provenance") or {}),
            "benchmark": "families",
            "budget_tokens": b.tokens,
            "family": family,
            "benchmark_seed": seed,
            "data_attribution": ATTRIBUTION,
        }
        load_run_config(d, source=f"{family} seed {seed}")  # a bad config stops here, not in the CLI
        out.append((seed, write_yaml(b.out / "configs" / f"{family}-seed{seed}.yaml", d)))
    return out


def trained_tokens(run: Run) -> int:
    """The training tokens a production run reports at its end (its ``metrics.csv``)."""
    with (run.folder / "metrics.csv").open(encoding="utf-8", newline="") as f:
        return int(float(list(csv.DictReader(f))[-1]["tokens"]))


def produce(
    s: Settings, b: BudgetFolder, default: dict[str, Any], data: TaskData, families: list[str]
) -> list[Run]:
    """Export, train (N tokens, each seed) and score on the held-out pairs each family's best trial,
    then the default config (``DEFAULT``) at the same N tokens in the same 9 rounds."""
    runs = []
    exported = [(family, export_family(b, default, family), []) for family in families]
    for name, doc, extra in [*exported, (DEFAULT, default, ["--epochs", str(ROUNDS)])]:
        for seed, config in family_configs(s, b, name, doc):
            run = train_run(b, name, seed, config, ["--max-tokens", str(b.tokens), *extra])
            heldout_bleu(run, data, default["task"])
            run.extra = {**run.extra, "tokens": trained_tokens(run), "model": doc["model"]}
            runs.append(run)
    return runs


def production(runs: list[Run]) -> dict[str, Any] | None:
    """The production runs of one config (every seed): held-out BLEU, val_loss, seconds, tokens."""
    if not runs:
        return None
    return {
        "bleu": spread([r.bleu for r in runs]),
        "val_loss": spread([r.val_loss for r in runs]),
        "train_s": spread([r.train_s for r in runs]),
        "tokens": [r.extra["tokens"] for r in runs],
    }


def run_budget(s: Settings, tokens: int, default: dict[str, Any], data: TaskData) -> dict[str, Any]:
    """Search, export, train and evaluate at one per-trial budget; its figures."""
    b = budget_folder(s, tokens)
    print(f"\n== {b.label} training tokens per trial ({b.out})", flush=True)
    search = run_search(s, b, default)
    trials = read_trials(b.out / "search" / "results.csv")
    stats = family_stats(trials)
    runs = produce(s, b, default, data, [f for f in FAMILIES if stats[f]["complete"]])
    for family in FAMILIES:
        stats[family]["production"] = production([r for r in runs if r.config == family])
    scored = [f for f in FAMILIES if stats[f]["production"]]
    best = max(scored, key=lambda f: stats[f]["production"]["bleu"]["mean"], default=None)
    return {
        "tokens": tokens,
        "label": b.label,
        "search": search,
        "families": stats,
        "default": production([r for r in runs if r.config == DEFAULT]),
        "convergence": convergence(trials),
        "best_family": best,
        "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(r).items()} for r in runs],
    }


# --------------------------------------------------------------------------- figures


def fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def fmt_bleu(prod: dict[str, Any] | None) -> str:
    if prod is None:
        return "-"
    b = prod["bleu"]
    return f"{b['mean']:.2f}" + ("" if b["std"] is None else f" +-{b['std']:.2f}")


def print_budget(s: Settings, r: dict[str, Any]) -> None:
    """One budget's table: trials per family, the search's best, the production runs' held-out BLEU."""
    search, conv, fam = r["search"], r["convergence"], r["families"]
    states = ", ".join(f"{n} {k.lower()}" for k, n in search["trials"]["states"].items())
    repeats = sum(x["repeats"] for x in fam.values())
    print(
        f"\n{r['label']} tokens per trial: search {search['wall_s'] / 60:.1f} min wall, "
        f"{search['trials']['n']} trials ({states}; {repeats} repeats answered without training)"
    )
    print(
        f"{'family':<12} {'trials':>6} {'complete':>8} {'last third':>10} {'search val_loss':>16} "
        f"{'params':>7} {'prod val_loss':>13} {'held-out BLEU':>13} {'train min':>9}"
    )
    for f in FAMILIES:
        x, prod = fam[f], fam[f]["production"]
        best = "-" if x["best_value"] is None else f"{x['best_value']:.4f} (t{x['best_trial']:03d})"
        last = f"{conv['last_third'].get(f, 0)}/{sum(conv['last_third'].values())}"
        val = "-" if prod is None else f"{prod['val_loss']['mean']:.4f}"
        minutes = "-" if prod is None else f"{prod['train_s']['mean'] / 60:.1f}"
        print(
            f"{f:<12} {x['trials']:>6} {x['complete']:>8} {last:>10} {best:>16} "
            f"{fmt_params(x['best_n_params']):>7} {val:>13} {fmt_bleu(prod):>13} {minutes:>9}"
        )
    prod = r.get("default")
    if prod is not None:
        print(
            f"{'default':<12} {'-':>6} {'-':>8} {'-':>10} {'(not searched)':>16} "
            f"{'-':>7} {prod['val_loss']['mean']:>13.4f} {fmt_bleu(prod):>13} "
            f"{prod['train_s']['mean'] / 60:>9.1f}"
        )
        print(f"default: {DEFAULT_NAME}, trained at the same {r['label']} tokens in {ROUNDS} rounds")
    if conv["family"] is None:
        print("converged to: - (no trial sampled)")
    else:
        note = ""
        if conv["random_startup"]:
            note = f"; {conv['random_startup']} of them within TPE's {TPE_STARTUP} random start-up trials"
        print(
            f"converged to: {conv['family']} ({conv['share']:.0%} of the last third of {conv['n_sampled']} "
            f"sampled trials, t{conv['trials'][0]:03d}-t{conv['trials'][1]:03d}{note})"
        )
    best = r["best_family"]
    seeds = f"mean over {s.seeds} seed{'s' if s.seeds > 1 else ''}"
    print(f"best held-out BLEU at {r['label']}: {best or '-'} ({seeds})")


def print_header(s: Settings, data: TaskData) -> None:
    print(f"families: out {s.out}")
    print(
        f"torch {torch.__version__}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        f"search: space {SPACE}, strategy {STRATEGY}, scheduler {s.scheduler}, {s.minutes:g} min, "
        f"per-trial budgets {', '.join(tokens_label(n) for n in s.budgets)} tokens ({ROUNDS} rounds), "
        f"concurrency 2; production: the same tokens, {s.seeds} seed(s), {THREADS} threads"
    )
    held = f"held-out set: the task's test split, {len(data.test_text):,} pairs (split_seed {data.config.split_seed})"
    if s.max_pairs is not None:
        held += f", this run's own test split of its {s.max_pairs:,}-pair subset (task.max_pairs)"
    print(f"{held}; train {len(data.train):,} / val {len(data.val):,} pairs. Data: {ATTRIBUTION}")


def print_verdict(s: Settings, results: list[dict[str, Any]]) -> None:
    parts = []
    for r in results:
        family = r["best_family"]
        if family is None:
            parts.append(f"{r['label']}: none")
        else:
            bleu = r["families"][family]["production"]["bleu"]["mean"]
            prod = r.get("default")
            vs = "" if prod is None else f"; the default Transformer {prod['bleu']['mean']:.2f}"
            parts.append(f"{r['label']}: {family} (BLEU {bleu:.2f}{vs})")
    line = f"\nbest family per budget (held-out BLEU): {'; '.join(parts)}"
    if len(results) > 1:
        same = len({r["best_family"] for r in results}) == 1
        line += "; the same at every budget" if same else "; it changes with the budget"
    print(line)
    if s.smoke:
        print("(smoke run: a pipeline check on a 3,000-pair subset, not a measurement)")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    s = parse_args(argv)
    if s.out.exists() and any(s.out.iterdir()) and not s.reuse:
        raise SystemExit(
            f"error: {s.out} is not empty: pass --reuse {s.out} to continue it, or --out elsewhere"
        )
    if "--max-tokens" not in train_options():  # checked before an hour of search
        raise SystemExit(
            "error: this benchmark needs `attntune train --max-tokens`, which this attntune lacks"
        )
    s.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    default = default_doc(s)
    data = load_task(load_dataclass(TaskConfig, default["task"], "task"))
    load_avg = [os.getloadavg()[0]]
    print_header(s, data)

    results = [run_budget(s, n, default, data) for n in s.budgets]
    for r in results:
        print_budget(s, r)
    print_verdict(s, results)
    load_avg.append(os.getloadavg()[0])
    print(f"load average at start {load_avg[0]:.1f}, at end {load_avg[1]:.1f}")

    settings = {
        **dataclasses.asdict(s),
        "out": str(s.out),
        "json_path": str(s.json_path) if s.json_path else None,
    }
    figures = {
        "date": date.today().isoformat(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": s.smoke,
        "settings": settings,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": load_avg,
        "data_attribution": ATTRIBUTION,
        "heldout_pairs": len(data.test_text),
        "budgets": {r["label"]: r for r in results},
        "best_family": {r["label"]: r["best_family"] for r in results},
    }
    write_json(s.out / "families.json", figures)
    if s.json_path:
        write_json(s.json_path, figures)
        print(f"figures: {s.json_path}")


if __name__ == "__main__":
    main()
