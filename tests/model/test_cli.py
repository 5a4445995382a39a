"""`attntune train` / `attntune translate` end to end, and bad input -> one line, exit code 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attntune.search.cli import main

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
