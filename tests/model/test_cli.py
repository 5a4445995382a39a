"""`attntune train` / `attntune translate` end to end, and bad input -> one line, exit code 2."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.search.cli import main
from tests.conftest import fresh_store

REVERSE = {
    "task": {"name": "reverse", "n_train": 2000, "val_size": 100, "test_size": 0, "n_symbols": 8, "max_seq_len": 6},
    "model": {"d_model": 64, "n_heads": 4, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 128, "dropout": 0.0},
    "train": {
        "lr": 5e-3, "warmup_steps": 50, "schedule": "cosine", "label_smoothing": 0.0, "batch_size": 32,
        "epochs": 2, "max_steps_per_epoch": 30, "bleu_samples": 20, "num_threads": 1,
    },
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: exit codes and stderr as a user sees them."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", "from attntune.search.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (fast) for the many bad-input cases."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_train_then_translate(tmp_path, capsys):
    """Short training in a real process (learning itself is tested in test_train.py), then translation."""
    config = write(tmp_path / "rev.yaml", REVERSE)
    done = cli("train", str(config), "--no-tracking", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "attntune-runs" / "train-rev"
    assert "epoch   1/2" in done.stdout and "epoch   2/2" in done.stdout
    assert str(Path("attntune-runs") / "train-rev") in done.stdout
    with (out / "metrics.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_accuracy", "val_bleu", "lr", "tokens_per_s"}
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])
    code, stdout, err = run_main(capsys, "translate", "--checkpoint", str(out), "a b c d e", "h g f", "--beam-size", "2")
    assert code == 0, err
    lines = stdout.splitlines()
    assert len(lines) == 2 and all(set(line.split()) <= set("abcdefgh") for line in lines)


def test_epochs_and_output_options(tmp_path, capsys):
    config = write(tmp_path / "rev.yaml", {**REVERSE, "train": {**REVERSE["train"], "epochs": 5, "max_steps_per_epoch": 3}})
    code, out, _ = run_main(capsys, "train", str(config), "--epochs", "1", "--output", str(tmp_path / "o"), "--no-tracking")
    assert code == 0 and "epoch   1/1" in out
    assert (tmp_path / "o" / "model.safetensors").is_file() and (tmp_path / "o" / "metrics.csv").is_file()
    code, _, err = run_main(capsys, "train", str(config), "--epochs", "0", "--no-tracking")
    assert code == 2 and "must be > 0" in err


def test_relative_data_path_is_found_next_to_the_config(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cfgs"
    folder.mkdir()
    (folder / "pairs.tsv").write_text("\n".join(f"a{i} b\tc{i} d" for i in range(30)), encoding="utf-8")
    doc = {
        "task": {"name": "tsv", "path": "pairs.tsv", "val_size": 3, "test_size": 0, "src_tokenizer": "word"},
        "model": {"d_model": 16, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 16},
        "train": {"epochs": 1, "bleu_samples": 2, "batch_size": 8},
    }
    config = write(folder / "t.yaml", doc)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "train", str(config), "--output", "out", "--no-tracking")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["task"]["path"] == "pairs.tsv"  # as written, never an absolute machine path


def test_bad_data_exits_2_with_one_line(tmp_path):
    data = tmp_path / "bad.tsv"
    data.write_bytes(b"fine\tok\n" * 3 + b"caf\xe9\tx\n")
    config = write(tmp_path / "c.yaml", {"task": {"name": "tsv", "path": str(data)}})
    done = cli("train", str(config), "--no-tracking", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.tsv:4: undecodable bytes" in lines[0]
    assert not (tmp_path / "attntune-runs").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"task": {"name": "tsv", "path": "missing.tsv"}}, "missing.tsv: file not found"),
        ({"task": {"name": "tsv", "path": "empty.tsv"}}, "empty.tsv: file is empty"),
        ({"task": {"name": "tsv", "path": "onecol.tsv"}}, "onecol.tsv: no line has non-empty tab-separated columns"),
        ("task: {name: reverse\nmodel: [", "c.yaml: line 2"),
        ("task: !!python/object/apply:os.system ['true']\n", "c.yaml: line 1: malformed YAML"),
        ({"model": {"d_model": 130, "n_heads": 4, "colour": "red"}, "train": {"lr": "fast"}}, "model.colour: unknown key"),
        ({"model": {"d_model": 130, "n_heads": 4}}, "model.d_model: 130 is not divisible by n_heads=4"),
        ({"task": {"name": "nope"}}, "unknown task 'nope' (valid tasks: numbers, reverse, sort, tsv)"),
    ],
)
def test_bad_input_exits_2(tmp_path, monkeypatch, capsys, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "onecol.tsv").write_text("just one column\n")
    config = write(tmp_path / "c.yaml", content)
    code, _, err = run_main(capsys, "train", str(config), "--no-tracking")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "attntune-runs").exists()


def test_config_errors_are_reported_together(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", {"model": {"d_model": 130, "n_heads": 4, "dropout": 2}, "train": {"lr": -1}})
    code, _, err = run_main(capsys, "train", str(config), "--no-tracking")
    assert code == 2 and "3 problems" in err and "model.dropout" in err and "train.lr" in err


def test_missing_config_and_checkpoint(tmp_path, capsys):
    code, _, err = run_main(capsys, "train", str(tmp_path / "none.yaml"), "--no-tracking")
    assert code == 2 and "none.yaml: file not found" in err
    code, _, err = run_main(capsys, "translate", "--checkpoint", str(tmp_path / "nope"), "我爱你")
    assert code == 2 and "no checkpoint found" in err


# --------------------------------------------------------------------------- budgets, run names, translate for real work

ENTRY = Path(sys.executable).with_name("attntune")  # the installed entry point, as a user runs it


def attntune(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(ENTRY), *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300)


def read_metrics(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mlflow_template) -> SimpleNamespace:
    """One production run on a token budget, registered as `rev` version 1 in a fresh SQLite store."""
    folder = tmp_path_factory.mktemp("registered")
    uri = fresh_store(mlflow_template, folder)
    config = write(folder / "rev.yaml", REVERSE)
    done = attntune(
        "train", str(config), "--max-tokens", "12000", "--epochs", "3", "--register-as", "rev", "--tracking-uri", uri,
        cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = MlflowClient(uri).get_model_version("rev", "1").run_id
    return SimpleNamespace(folder=folder, uri=uri, ckpt=folder / "attntune-runs" / "train-rev", run_id=run_id, out=done.stdout)


def one_by_one(ckpt: Path, sentences: list[str], beam_size: int = 1) -> list[str]:
    """Each sentence translated alone (no batch, no padding): what batched translation must equal."""
    from attntune.model.checkpoint import load_checkpoint, translate

    model, _, src_tok, tgt_tok = load_checkpoint(ckpt)
    return [translate(model, src_tok, tgt_tok, [s], beam_size=beam_size)[0] if s else "" for s in sentences]


def test_max_tokens_trains_exactly_that_many_tokens(registered):
    assert "budget 12ktok: exactly 12,000 target tokens in 3 rounds of 4,000" in registered.out
    rows = read_metrics(registered.ckpt)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[-1]["tokens"] == "12000"
    client = MlflowClient(registered.uri)
    run = client.get_run(registered.run_id)
    assert [m.value for m in client.get_metric_history(registered.run_id, "tokens")][-1] == 12000
    assert run.data.params["budget.max_tokens"] == "12000" and run.data.params["train.round_tokens"] == "4000"
    assert run.data.tags["attntune.budget"] == "12ktok" and run.info.run_name.endswith(" 12ktok")


def test_translate_a_file_stdin_and_an_output_file(registered, tmp_path, capsys):
    sentences = ["a b c d e", "", "h g f", "c c a b", "b", "d e f g h a"]
    expected = one_by_one(registered.ckpt, sentences)
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    ckpt = str(registered.ckpt)
    done = attntune("translate", "--checkpoint", ckpt, "--input", "in.txt", "--batch-size", "2", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected and done.stderr == ""  # no progress bar off a terminal
    done = attntune("translate", "--checkpoint", ckpt, "--input", "-", "--format", "tsv", "--device", "cpu",
                    cwd=tmp_path, stdin="\n".join(sentences))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{s}\t{t}" for s, t in zip(sentences, expected, strict=True)]
    code, out, err = run_main(capsys, "translate", "--checkpoint", ckpt, "-i", str(tmp_path / "in.txt"), "-o",
                              str(tmp_path / "out.txt"), "--device", "cpu")  # fmt: skip
    assert code == 0 and out == "", err
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "error: nothing to translate: give sentences, or --input FILE (--input - reads stdin)"),
        (("a b", "--input", "in.txt"), "error: give sentences or --input, not both"),
        (("--input", "missing.txt"), "missing.txt: file not found"),
        (("--input", "bad.txt"), "bad.txt:2: undecodable bytes"),
        (("a b", "--format", "csv"), "--format: 'csv' is not a format (valid: text, tsv)"),
        (("--input", "in.txt", "-o", "in.txt"), "--output in.txt: is the input file"),
    ],
)
def test_translate_bad_input_is_one_line(registered, tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a b\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"a b\ncaf\xe9\n")
    code, out, err = run_main(capsys, "translate", "--checkpoint", str(registered.ckpt), *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert (tmp_path / "in.txt").read_text(encoding="utf-8") == "a b\n"


def test_batching_changes_no_translation(registered):
    """Length-sorted, padded batches (greedy) and equal-length batches (beam) give exactly what each
    sentence gets alone, including sentences longer than any in training (they may never stop)."""
    from attntune.model.checkpoint import load_checkpoint, translate

    rng = random.Random(0)
    sentences = [" ".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 10))) for _ in range(60)]
    model, _, src_tok, tgt_tok = load_checkpoint(registered.ckpt)
    for beam in (1, 3):
        alone = one_by_one(registered.ckpt, sentences, beam_size=beam)
        for batch_size in (5, 64):
            assert translate(model, src_tok, tgt_tok, sentences, beam_size=beam, batch_size=batch_size) == alone


def test_translate_from_mlflow_addresses(registered, tmp_path, monkeypatch, capsys):
    """models:/NAME/VERSION (through the entry point), runs:/ID/checkpoint, runs:/ID (its logged
    model), MLFLOW_TRACKING_URI instead of --tracking-uri; bad addresses are one line, exit 2."""
    sentences = ["a b c d e", "h g f"]
    expected = one_by_one(registered.ckpt, sentences)
    uri = registered.uri
    done = attntune("translate", "--checkpoint", "models:/rev/1", "--tracking-uri", uri, "--device", "cpu", *sentences,
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stdout.splitlines() == expected, done.stderr
    for address in (f"runs:/{registered.run_id}/checkpoint", f"runs:/{registered.run_id}"):
        code, out, err = run_main(capsys, "translate", "--checkpoint", address, "--tracking-uri", uri, "--device", "cpu", *sentences)
        assert code == 0 and out.splitlines() == expected, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, out, err = run_main(capsys, "translate", "--checkpoint", f"runs:/{registered.run_id}/model", "--device", "cpu", *sentences)
    assert code == 0 and out.splitlines() == expected, err
    for address, problem in (
        ("models:/rev/9", "models:/rev/9: Model Version (name=rev, version=9) not found"),
        ("models:/nope/1", "models:/nope/1: Registered Model with name=nope not found"),
        ("runs:/0123abc/checkpoint", "runs:/0123abc/checkpoint: Run with id=0123abc not found"),
        (f"runs:/{registered.run_id}/nothing", "no attntune checkpoint there"),
    ):
        code, out, err = run_main(capsys, "translate", "--checkpoint", address, "a b")
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and problem in err, err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: an error, and none is created
    code, _, err = run_main(capsys, "translate", "--checkpoint", "models:/rev/1", "a b")
    assert code == 2 and "no MLflow store at sqlite:///mlflow.db" in err and not (tmp_path / "mlflow.db").exists()


def test_time_limit_stops_early_and_saves(tmp_path):
    """A config of 100000 epochs with --time-limit 4s: stops at a step boundary, evaluates, saves, exit 0;
    the cosine schedule was sized by the time, so the last learning rate is about 0."""
    config = write(tmp_path / "long.yaml", {**REVERSE, "train": {**REVERSE["train"], "epochs": 100000}})
    done = attntune("train", str(config), "--time-limit", "4s", "--no-tracking", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "attntune-runs" / "train-long"
    assert "budget 4s: epochs until the time runs out" in done.stdout
    assert "(time limit 4s; the last one partial)" in done.stdout
    assert (out / "model.safetensors").is_file()
    rows = read_metrics(out)
    assert 1 <= len(rows) < 100000 and float(rows[-1]["lr"]) < 0.1 * REVERSE["train"]["lr"]
    assert yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["provenance"]["budget"] == {
        "time_limit_s": 4.0, "open_ended": True,
    }  # fmt: skip


def test_budget_options_are_checked(tmp_path, capsys):
    config = write(tmp_path / "rev.yaml", REVERSE)
    code, _, err = run_main(capsys, "train", str(config), "--time-limit", "soon", "--max-tokens", "0", "--no-tracking")
    assert code == 2 and "--max-tokens: must be > 0, got 0" in err and "--time-limit: 'soon' is not a duration" in err
    assert not (tmp_path / "attntune-runs").exists()


def test_runs_of_one_config_get_distinct_names_and_folders(tmp_path, monkeypatch, capsys, mlflow_template):
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(mlflow_template, tmp_path)
    small = {**REVERSE, "train": {**REVERSE["train"], "epochs": 1, "max_steps_per_epoch": 3, "bleu_samples": 0}}
    config = write(tmp_path / "small.yaml", small)
    outs = []
    for _ in range(2):
        code, out, err = run_main(capsys, "train", str(config), "--tracking-uri", uri)
        assert code == 0, err
        outs.append(out)
    first, second = Path("attntune-runs") / "train-small", Path("attntune-runs") / "train-small-2"
    assert f"checkpoint: {first}" in outs[0] and f"checkpoint: {second}" in outs[1]
    assert f"{first} holds an earlier run; this one writes to {second}" in outs[1]
    assert (tmp_path / first / "model.safetensors").is_file() and (tmp_path / second / "model.safetensors").is_file()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("attntune-train")
    names = [r.info.run_name for r in client.search_runs([exp.experiment_id])]
    assert len(names) == 2 and len(set(names)) == 2, names
    assert all(n.startswith("train d64 h4 L1 lr5e-3 20") and " 1ep" in n for n in names), names
    # an --output folder that holds a run is refused, and left as it was
    before = (tmp_path / first / "model.safetensors").stat().st_mtime_ns
    code, _, err = run_main(capsys, "train", str(config), "--output", str(first), "--no-tracking")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--output {first}: already holds a run (model.safetensors)" in err
    assert (tmp_path / first / "model.safetensors").stat().st_mtime_ns == before
