"""Does the search pay off? The exported best against attntune's default, on held-out Tatoeba pairs.

What it measures (issue 15): a user runs an attntune search on Tatoeba zh->en, exports the best trial
(``attntune export``) and trains it; would they have done better training attntune's own default,
``examples/train_tatoeba.yaml``? Steps, each through the real ``attntune`` CLI as a subprocess:

1. search: a job with the default's task, model and train sections as fixed settings (the space's
   parameters override them), ``space`` cpu-small, ``strategy`` bohb, ``budget`` {time_limit:
   --minutes, max_epochs: --epochs (3 at least with bohb), min_epochs: 1, n_trials: 100000 (time
   is the limit)},
   concurrency 2, its own MLflow store (``mlflow.db`` in the output folder). Its wall time, trials
   and their states are recorded (``results.csv``).
2. export: ``attntune export`` writes the best trial as ``best.yaml``.
3. production: the exported best and the default, each trained with ``--seeds`` training seeds
   (``train.seed`` 0, 1, ...; one config file per seed), the same budget (``--budget``), 2 threads,
   one run at a time (``attntune train CONFIG --output FOLDER --tracking-uri ...``).
4. held-out evaluation: every checkpoint greedily translates the task's test split; sacrebleu corpus
   BLEU (13a tokenisation, lower-cased) against its references, as ``tatoeba_baseline.py`` does.
   Also each run's final val_loss (its ``metrics.csv``) and its training and wall seconds.

Why the test split is held out: ``attntune.model.data.load_task`` shuffles the pairs with
``task.split_seed``, keeps the first ``max_pairs``, and cuts test, then validation, then training, in
that order; tokenizers are trained on the training split only. Training (``model/train.py``) and the
search read only ``train`` and ``val``; nothing but this script reads ``test``. So the 1,000
``test_size`` pairs (``split_seed: 0``) are unseen by the search and by every production run,
provided all of them use the same task section. The script checks that at run time: the parsed
search job's task equals the default's, and so do ``best.yaml``'s and every checkpoint's.
(Pairs longer than ``task.max_tokens`` are dropped from every split, so the held-out set can hold a
few pairs under 1,000; the count is printed.)

Target (issue 15): held-out BLEU of the exported best >= the default's + 3.0, mean over the seeds,
and no seed of the best below the default's mean.

    .venv/bin/python benchmarks/tatoeba_payoff.py                      # the full benchmark
    .venv/bin/python benchmarks/tatoeba_payoff.py --smoke              # the whole pipeline, quickly
    .venv/bin/python benchmarks/tatoeba_payoff.py --reuse benchmarks/out/payoff-2026-12-02   # continue

``--smoke``: ``task.max_pairs: 3000`` for the search and both configs (the held-out set is then
that run's own test split of the subset; ``load_task`` cuts the subset from the same seeded
shuffle, so they are the same 1,000 pairs as a full run's, but the tokenizers and models see only
~1,000 training pairs: its figures say nothing about the real question), a 2-minute search, 1
production epoch (the search keeps the 3 epochs that bohb's hyperband needs at least), 1 seed.

``--out`` (default ``benchmarks/out/payoff-<date>``, git-ignored) gets the job, ``best.yaml``, one
config per run (``configs/``), the search (``search/``), the checkpoints (``runs/``), the CLI's logs
(``logs/``), the MLflow store and ``payoff.json`` (every figure; ``--json FILE`` writes a copy).
``--reuse FOLDER`` continues an interrupted benchmark there: a finished search, export, training
or evaluation (each leaves a record file) is not redone; an unfinished one, or a training run whose
config or options changed, is redone from scratch; a search job that changed is refused.

``--budget`` (the production runs'; the search always counts epochs): ``epochs`` (default:
``--epochs`` for both configs), ``tokens N`` (``attntune train --max-tokens N``: exactly N target
tokens, reported in ``--epochs`` rounds) or ``time 8m`` (``attntune train --time-limit 8m`` alone,
which replaces ``train.epochs``: the time alone bounds both runs). The script checks that
``attntune train --help`` lists the option before it starts.

Data: Tatoeba (tatoeba.org), CC-BY 2.0 FR, via manythings.org/anki. Every file this script writes
from the data (configs, checkpoints, the JSON figures) carries that attribution.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python benchmarks/tatoeba_payoff.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attntune.model.config import TaskConfig, load_dataclass, load_run_config, to_dict  # noqa: E402
from attntune.model.data import TaskData, load_task  # noqa: E402
from attntune.search.job import load_job  # noqa: E402
from benchmarks.tatoeba_common import (  # noqa: E402
    ATTRIBUTION,
    ROOT,
    THREADS,
    Run,
    default_doc,
    fmt_spread,
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

HEADER = f"# Written by benchmarks/tatoeba_payoff.py. Data: {ATTRIBUTION}.\n"
TARGET_GAIN = 3.0
N_TRIALS = 100_000  # never reached: the time limit ends the search
SMOKE = {"max_pairs": 3000, "minutes": 2.0, "epochs": 1, "seeds": 1}
CONFIGS = ("best", "default")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Budget:
    """The production runs' budget: ``kind`` epochs | tokens | time, and its value."""

    kind: str
    value: str | None = None

    def label(self, epochs: int) -> str:
        return f"{epochs} epochs" if self.kind == "epochs" else f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Settings:
    out: Path
    reuse: bool
    space: str
    strategy: str
    scheduler: str | None
    minutes: float
    epochs: int
    seeds: int
    search_seed: int
    budget: Budget
    smoke: bool
    max_pairs: int | None
    json_path: Path | None

    @property
    def search_epochs(self) -> int:
        """bohb / hyperband / asha need max_epochs >= 3 x min_epochs (1): at least 3."""
        needs_rungs = self.strategy == "bohb" or self.scheduler in ("asha", "hyperband")
        return max(self.epochs, 3) if needs_rungs else self.epochs

    @property
    def job_name(self) -> str:
        return "tatoeba-payoff-smoke" if self.smoke else "tatoeba-payoff"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.out / 'mlflow.db').resolve()}"


def parse_budget(words: list[str]) -> Budget:
    kind, rest = words[0], words[1:]
    if kind == "epochs" and not rest:
        return Budget("epochs")
    if kind == "tokens" and len(rest) == 1 and re.fullmatch(r"\d+(\.\d*)?(e\d+)?", rest[0]):
        return Budget("tokens", str(int(float(rest[0]))))
    if kind == "time" and len(rest) == 1 and re.fullmatch(r"\d+(\.\d+)?[smh]?", rest[0]):
        return Budget("time", rest[0])
    raise SystemExit(f"error: --budget {' '.join(words)}: use 'epochs', 'tokens N' or 'time 8m'")


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/out/payoff-<date>)")
    p.add_argument("--reuse", type=Path, metavar="FOLDER", help="continue the benchmark in FOLDER")
    p.add_argument("--space", default="cpu-small", help="search space (default cpu-small)")
    p.add_argument("--strategy", default="bohb", help="search strategy (default bohb)")
    p.add_argument("--scheduler", default=None, help="search scheduler (default: the strategy's)")
    p.add_argument("--minutes", type=float, default=60.0, help="search time limit (default 60)")
    p.add_argument(
        "--epochs", type=int, default=6, help="epochs of a trial and of a production run (default 6)"
    )
    p.add_argument("--seeds", type=int, default=3, help="training seeds per config (default 3)")
    p.add_argument("--search-seed", type=int, default=0, help="the search job's seed (default 0)")
    p.add_argument(
        "--budget",
        nargs="+",
        default=["epochs"],
        metavar="KIND",
        help="production budget: epochs (default) | tokens N | time 8m",
    )
    p.add_argument("--max-pairs", type=int, default=None, help="task.max_pairs for everything (default: all)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="whole pipeline in minutes: 3,000 pairs, 2-min search, 1 epoch, 1 seed",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="write every figure to this JSON file")
    a = p.parse_args(argv)
    if a.out and a.reuse:
        p.error("--out and --reuse name the same thing: give one")
    if a.smoke:
        a.minutes, a.epochs, a.seeds = SMOKE["minutes"], SMOKE["epochs"], SMOKE["seeds"]
        a.max_pairs = a.max_pairs or SMOKE["max_pairs"]
    tag = "payoff-smoke" if a.smoke else "payoff"
    out = a.reuse or a.out or ROOT / "benchmarks" / "out" / f"{tag}-{date.today().isoformat()}"
    return Settings(
        out=out.resolve(),
        reuse=a.reuse is not None,
        space=a.space,
        strategy=a.strategy,
        scheduler=a.scheduler,
        minutes=a.minutes,
        epochs=a.epochs,
        seeds=a.seeds,
        search_seed=a.search_seed,
        budget=parse_budget(a.budget),
        smoke=a.smoke,
        max_pairs=a.max_pairs,
        json_path=a.json_path,
    )


# --------------------------------------------------------------------------- files and the CLI


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def budget_args(budget: Budget) -> list[str]:
    """``attntune train`` options for the production budget; stops here while the CLI lacks them."""
    if budget.kind == "epochs":
        return []
    options = train_options()
    flag = "--max-tokens" if budget.kind == "tokens" else "--time-limit"
    if flag not in options:
        raise SystemExit(
            f"error: --budget {budget.kind} needs `attntune train {flag}`, which this attntune lacks"
        )
    return [flag, str(budget.value)]


# --------------------------------------------------------------------------- configs


def job_doc(s: Settings, default: dict[str, Any]) -> dict[str, Any]:
    """The search job: the default's task, model and train sections fixed; the space overrides them."""
    train = {k: v for k, v in default["train"].items() if k != "epochs"}  # a job's epochs are its budget's
    budget = {
        "n_trials": N_TRIALS,
        "time_limit": f"{s.minutes:g}m",
        "max_epochs": s.search_epochs,
        "min_epochs": 1,
    }
    job: dict[str, Any] = {
        "name": s.job_name,
        "description": "benchmarks/tatoeba_payoff.py: search, export, then train against the default",
        "task": default["task"],
        "model": default["model"],
        "train": train,
        "space": s.space,
        "strategy": s.strategy,
        "budget": budget,
        "concurrency": 2,
        "resources": {"cpus": 1},
        "seed": s.search_seed,
        "tracking": s.tracking_uri,
        "output": str(s.out / "search"),
    }
    if s.scheduler:
        job["scheduler"] = s.scheduler
    return job


def seed_configs(s: Settings, name: str, doc: dict[str, Any]) -> list[tuple[int, Path]]:
    """One production config per training seed: the same recipe, ``train.seed`` and 2 threads."""
    out = []
    for seed in range(s.seeds):
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
        d["train"].update(seed=seed, num_threads=THREADS, epochs=s.epochs)
        d["provenance"] = {
            **(doc.get("provenance") or {}),
            "benchmark": "tatoeba_payoff",
            "config": name,
            "benchmark_seed": seed,
            "data_attribution": ATTRIBUTION,
        }
        load_run_config(d, source=f"{name} seed {seed}")  # a bad config stops here, not in the CLI
        out.append((seed, write_yaml(s.out / "configs" / f"{name}-seed{seed}.yaml", d)))
    return out


# --------------------------------------------------------------------------- steps


def run_search(s: Settings, default: dict[str, Any]) -> dict[str, Any]:
    """Write the job, check its task, run it (unless a finished one is on record); its figures."""
    record = s.out / "search.json"
    job_path = write_yaml(s.out / "job.yaml", job_doc(s, default))
    same_task(default["task"], {"task": to_dict(load_job(job_path).base.task)}, "search job")
    done = read_json(record) if s.reuse else None
    if done is not None and done["job"] != job_doc(s, default):
        raise SystemExit(
            f"error: {s.out} holds a search of another job (see {record}); use --out for a new benchmark"
        )
    if done is None:
        # An unfinished search starts over, and what was trained from an earlier one goes with it.
        shutil.rmtree(s.out / "search", ignore_errors=True)
        (s.out / "best.yaml").unlink(missing_ok=True)
        for folder in (s.out / "runs").glob("best-seed*"):
            shutil.rmtree(folder)
        wall = run_cli(["run", str(job_path), "-q"], s.out, s.out / "logs" / "search.log")
        done = {"wall_s": wall, "job": job_doc(s, default)}
        write_json(record, done)
    else:
        print(f"search: reused ({record})")
    done["trials"] = trial_states(s.out / "search" / "results.csv")
    return done


def export_best(s: Settings, default: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """``attntune export`` of the search's best trial (kept if on record); the config and the wall seconds."""
    path, record = s.out / "best.yaml", s.out / "export.json"
    done = read_json(record) if path.is_file() else None
    if done is None:
        args = ["export", "--experiment", s.job_name, "--output", str(path), "--tracking-uri", s.tracking_uri]
        done = {"wall_s": run_cli(args, s.out, s.out / "logs" / "export.log")}
        write_json(record, done)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    same_task(default["task"], doc, "best.yaml")
    return doc, done["wall_s"]


# --------------------------------------------------------------------------- figures


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Per config: BLEU, val_loss and seconds over seeds; best - default paired by seed; the target."""
    by = {c: sorted((r for r in runs if r.config == c), key=lambda r: r.seed) for c in CONFIGS}
    per = {
        c: {
            "bleu": spread([r.bleu for r in rs]),
            "val_loss": spread([r.val_loss for r in rs]),
            "train_s": spread([r.train_s for r in rs]),
            "wall_s": spread([r.wall_s for r in rs]),
        }
        for c, rs in by.items()
    }
    diffs = spread([b.bleu - d.bleu for b, d in zip(by["best"], by["default"], strict=True)])
    default_mean = per["default"]["bleu"]["mean"]
    gain = per["best"]["bleu"]["mean"] - default_mean
    target = {
        "gain": gain,
        "gain_met": gain >= TARGET_GAIN,
        "never_below_met": per["best"]["bleu"]["min"] >= default_mean,
    }
    target["met"] = target["gain_met"] and target["never_below_met"]
    return {"per_config": per, "difference": diffs, "target": target}


def print_runs(runs: list[Run], summary: dict[str, Any]) -> None:
    print(
        f"\n{'config':<8} {'seed':>4} {'BLEU':>6} {'val_loss':>9} {'epochs':>6} {'train s':>8} {'wall s':>7}"
    )
    for r in sorted(runs, key=lambda r: (CONFIGS.index(r.config), r.seed)):
        print(
            f"{r.config:<8} {r.seed:>4} {r.bleu:>6.2f} {r.val_loss:>9.4f} {r.epochs:>6} {r.train_s:>8.1f} {r.wall_s:>7.1f}"
        )
    print()
    for c in CONFIGS:
        per = summary["per_config"][c]
        print(f"{c:<8} held-out BLEU {fmt_spread(per['bleu'])}; val_loss {fmt_spread(per['val_loss'], 4)}")
    d = summary["difference"]
    print(f"best - default (paired by seed): {fmt_spread(d)}")


def print_verdict(s: Settings, search: dict[str, Any], summary: dict[str, Any]) -> dict[str, float]:
    per, t = summary["per_config"], summary["target"]
    best_train, default_train = per["best"]["wall_s"]["mean"], per["default"]["wall_s"]["mean"]
    total = search["wall_s"] + search["export_wall_s"] + best_train
    walls = {
        "search_s": search["wall_s"],
        "search_export_train_best_s": total,
        "train_default_s": default_train,
        "ratio": total / default_train,
    }
    print(
        f"\nwall time: search {search['wall_s'] / 60:.1f} min ({search['trials']['n']} trials); search + export + "
        f"training the best once {total / 60:.1f} min vs training the default alone {default_train / 60:.1f} min "
        f"({walls['ratio']:.1f}x)"
    )
    print(
        f"gain {t['gain']:+.2f} BLEU (target >= +{TARGET_GAIN}: {'met' if t['gain_met'] else 'MISSED'}); "
        f"lowest seed of the best vs the default's mean: {'met' if t['never_below_met'] else 'MISSED'}"
    )
    verdict = "met" if t["met"] else "MISSED"
    print(
        f"Held-out BLEU of the exported best >= default + {TARGET_GAIN} (mean over {s.seeds} seeds); "
        f"never below the default's mean: {verdict}"
    )
    if s.smoke:
        print("(smoke run: a pipeline check on a 3,000-pair subset, not a measurement)")
    return walls


def print_header(s: Settings, data: TaskData) -> None:
    print(f"tatoeba_payoff: out {s.out}")
    print(
        f"torch {torch.__version__}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        f"search: space {s.space}, strategy {s.strategy}, {s.minutes:g} min, {s.search_epochs} epochs max, "
        f"concurrency 2; production: {s.budget.label(s.epochs)}, {s.seeds} seed(s), {THREADS} threads"
    )
    held = f"held-out set: the task's test split, {len(data.test_text):,} pairs (split_seed {data.config.split_seed})"
    if s.max_pairs is not None:
        held += (
            f", this run's own test split of its {s.max_pairs:,}-pair subset (task.max_pairs; cut from"
            " the same seeded shuffle, so the full run's test pairs, but tokenizers fit to the subset)"
        )
    print(f"{held}; train {len(data.train):,} / val {len(data.val):,} pairs. Data: {ATTRIBUTION}")


def print_search(search: dict[str, Any], best: dict[str, Any]) -> None:
    m, t, prov = best["model"], best["train"], best.get("provenance") or {}
    states = ", ".join(f"{n} {k.lower()}" for k, n in search["trials"]["states"].items())
    print(f"search: {search['wall_s'] / 60:.1f} min wall, {search['trials']['n']} trials ({states})")
    print(
        f"best: trial {prov.get('trial_number')} ({prov.get('metric')} {prov.get('value')}): d_model {m['d_model']}, "
        f"{m['n_heads']} heads, {m['n_encoder_layers']}+{m['n_decoder_layers']} layers, d_ff {m['d_ff']}, "
        f"dropout {m['dropout']}, lr {t['lr']:.2e}, warmup {t['warmup_steps']}"
    )


# --------------------------------------------------------------------------- main


def settings_dict(s: Settings) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d.update(
        out=str(s.out), json_path=str(s.json_path) if s.json_path else None, search_epochs=s.search_epochs
    )
    return d


def main(argv: list[str] | None = None) -> None:
    s = parse_args(argv)
    if s.out.exists() and any(s.out.iterdir()) and not s.reuse:
        raise SystemExit(
            f"error: {s.out} is not empty: pass --reuse {s.out} to continue it, or --out elsewhere"
        )
    s.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    extra_args = budget_args(s.budget)  # checked before an hour of search
    default = default_doc(s)
    data = load_task(load_dataclass(TaskConfig, default["task"], "task"))
    load_avg = [os.getloadavg()[0]]
    print_header(s, data)

    search = run_search(s, default)
    best, search["export_wall_s"] = export_best(s, default)
    print_search(search, best)

    runs = []
    for name, doc in (("best", best), ("default", default)):
        for seed, config in seed_configs(s, name, doc):
            runs.append(train_run(s, name, seed, config, extra_args))
    for run in runs:
        heldout_bleu(run, data, default["task"])
    summary = summarise(runs)
    print_runs(runs, summary)
    walls = print_verdict(s, search, summary)
    load_avg.append(os.getloadavg()[0])
    print(f"load average at start {load_avg[0]:.1f}, at end {load_avg[1]:.1f}")

    figures = {
        "date": date.today().isoformat(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "smoke": s.smoke,
        "settings": settings_dict(s),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": load_avg,
        "data_attribution": ATTRIBUTION,
        "heldout_pairs": len(data.test_text),
        "search": search,
        "best_config": best,
        "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(r).items()} for r in runs],
        "summary": summary,
        "wall": walls,
    }
    write_json(s.out / "payoff.json", figures)
    if s.json_path:
        write_json(s.json_path, figures)
        print(f"figures: {s.json_path}")


if __name__ == "__main__":
    main()
