"""`attntune export` (from MLflow only) and the round trip to a registered, pickle-free model.

One real search on a small licensed TSV task (trial 1 fails on purpose), then: the default export
is the best COMPLETE trial, `--trial N` works, exports are byte-identical, bad requests exit 2
writing nothing, and `attntune train` on the export registers a pyfunc model that translates
exactly like the checkpoint and loads without any unpickling.
"""

from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.model.config import TaskConfig, load_run_config, to_dict
from attntune.search.cli import main
from attntune.search.export import (
    TASK_FIELDS,
    Export,
    ExportError,
    pick_family,
    pick_trial,
    print_export,
    task_section,
)
from attntune.search.job import parse_job
from attntune.search.records import TrialRecord, load_search
from attntune.search.run import run_search
from tests.conftest import fresh_store, tiny_job

NAME = "exp"
MODEL = "exp-best"
LICENSE = "CC0-1.0"
ATTRIBUTION = "attntune test pairs"
FAILING_TRIAL = 1
N_TRIALS = 3
MAX_EPOCHS = 2


def _write_pairs(path: Path, n: int = 480) -> None:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        seq = [rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))]
        lines.append(f"{' '.join(seq)}\t{' '.join(reversed(seq))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("export")
    fresh_store(mlflow_template, folder)  # ./mlflow.db: the default store, as a user would have it
    _write_pairs(folder / "pairs.tsv")
    task = {
        "name": "tsv",
        "path": "pairs.tsv",
        "src_tokenizer": "word",
        "tgt_tokenizer": "word",
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        "val_size": 64,
        "test_size": 16,
    }
    spec = tiny_job(NAME, task=task, budget={"n_trials": N_TRIALS, "max_epochs": MAX_EPOCHS, "min_epochs": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        job = parse_job(spec, text=yaml.safe_dump(spec, sort_keys=False), source="job.yaml")
        mp.setenv("ATTNTUNE_FAULTS", f"{FAILING_TRIAL}:raise")
        result = run_search(job, quiet=True, report=False)
        mp.delenv("ATTNTUNE_FAULTS")
        yield SimpleNamespace(folder=folder, result=result, job=job, uri="sqlite:///mlflow.db")


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def _trial_params(search: SimpleNamespace, number: int) -> dict:
    row = search.result.table.set_index("number").loc[number]
    return {k: row[k] for k in row.index if k.startswith(("model.", "train."))}


def test_default_export_is_the_best_complete_trial(search: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    table = search.result.table
    assert table.set_index("number").loc[FAILING_TRIAL, "state"] == "FAILED"
    complete = table[table["state"] == "COMPLETE"]
    best = complete.loc[complete["value"].astype(float).idxmin()]
    code, out, err = _cli(capsys, "export", "--experiment", NAME)
    assert code == 0, err
    path = Path("attntune-runs") / NAME / "best.yaml"
    # What it wrote (docs/mlflow.md): the trial and its metric, the file, the command to train it.
    assert out.splitlines() == [
        f"exported trial {int(best['number'])} (COMPLETE, val_loss={float(best['value']):.6g}) of search run "
        f"{search.result.parent_run_id} (experiment {NAME})",
        f"config: {path}",
        f"train it: attntune train {path}",
    ]
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    run = load_run_config(doc, source=str(path))  # exactly what `attntune train` reads
    prov = doc["provenance"]
    assert prov["trial_number"] == int(best["number"])
    assert prov["search_run_id"] == search.result.parent_run_id
    assert prov["trial_run_id"] == best["run_id"]
    assert (prov["metric"], prov["mode"], prov["experiment"], prov["job"]) == ("val_loss", "min", NAME, NAME)
    assert math.isclose(prov["value"], float(best["value"]))
    assert prov["data_fingerprint"] and prov["data_license"].startswith(LICENSE)
    assert prov["seed"] == 0 and prov["tracking_uri"] == "sqlite:///mlflow.db"
    assert set(prov["versions"]) == {"attntune", "torch", "optuna", "mlflow"}
    params = _trial_params(search, int(best["number"]))
    assert run.model.d_model == params["model.d_model"] and run.model.n_heads == params["model.n_heads"]
    assert run.model.n_encoder_layers == params["model.n_encoder_layers"]
    assert math.isclose(run.train.lr, params["train.lr"], rel_tol=1e-6)
    assert run.train.epochs == MAX_EPOCHS
    # A tsv task's section has a tsv task's fields only: the job's n_train, n_symbols and
    # max_seq_len (tiny_job's, ignored by a tsv task) are not carried over.
    assert list(doc["task"]) == [k for k in to_dict(run.task) if k in TASK_FIELDS["tsv"]]
    assert not {"n_train", "n_symbols", "min_seq_len", "max_seq_len"} & set(doc["task"])
    assert {k: getattr(run.task, k) for k in doc["task"]} == {k: getattr(search.job.base.task, k) for k in doc["task"]}
    assert run.train.max_steps_per_epoch == search.job.base.train.max_steps_per_epoch


def test_two_exports_are_byte_identical(search: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    assert _cli(capsys, "export", "--experiment", NAME)[0] == 0
    assert _cli(capsys, "export", "--experiment", NAME, "--output", "a.yaml")[0] == 0
    assert _cli(capsys, "export", "--experiment", NAME, "--output", "b.yaml", "--search-run", search.result.parent_run_id)[0] == 0
    a, b = Path("a.yaml").read_bytes(), Path("b.yaml").read_bytes()
    assert a == b
    assert a == (Path("attntune-runs") / NAME / "best.yaml").read_bytes()


def test_export_a_chosen_trial(search: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    table = search.result.table
    other = int(table[(table["state"] == "COMPLETE")]["number"].max())
    code, out, err = _cli(capsys, "export", "--experiment", NAME, "--trial", str(other), "--output", "chosen.yaml")
    assert code == 0, err
    doc = yaml.safe_load(Path("chosen.yaml").read_text(encoding="utf-8"))
    assert doc["provenance"]["trial_number"] == other
    params = _trial_params(search, other)
    assert doc["model"]["d_model"] == params["model.d_model"]
    assert math.isclose(doc["train"]["lr"], params["train.lr"], rel_tol=1e-6)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trial", str(FAILING_TRIAL)], f"--trial {FAILING_TRIAL}: trial {FAILING_TRIAL} is FAILED (InjectedFault"),
        (["--trial", "99"], "--trial 99: search run"),
        (["--experiment", "nope"], "--experiment nope: no such MLflow experiment (experiments: exp)"),
        (["--search-run", "0" * 32], f"--search-run {'0' * 32}: no such run"),
    ],
)
def test_bad_requests_exit_2_writing_nothing(
    search: SimpleNamespace, capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    argv = ["export", "--experiment", NAME, "--output", "never.yaml", *args]
    if "--experiment" in args:
        argv = ["export", "--output", "never.yaml", *args]
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert not Path("never.yaml").exists()


def test_output_outside_cwd_and_output_folder_exits_2(
    search: SimpleNamespace, capsys: pytest.CaptureFixture, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "best.yaml"
    code, out, err = _cli(capsys, "export", "--experiment", NAME, "--output", str(outside))
    assert code == 2
    assert f"--output {outside}: must be inside the current folder or the search's output folder" in err
    assert not outside.exists()
    # ../ tricks resolve to the same place and are refused too.
    sneaky = Path("attntune-runs") / NAME / ".." / ".." / ".." / "sneaky.yaml"
    code, _, err = _cli(capsys, "export", "--experiment", NAME, "--output", str(sneaky))
    assert code == 2 and "must be inside" in err
    assert not (search.folder.parent / "sneaky.yaml").exists()


@pytest.mark.parametrize("name", ["reverse", "sort", "numbers"])
def test_a_generated_task_exports_its_own_fields(name: str) -> None:
    """No tsv field (path, columns, tokenizers, license): only what the task reads, except a field
    the job set away from its default, kept so the config (and so the data fingerprint, a hash of
    it) is the search's."""
    task = TaskConfig(name=name, n_train=300, max_seq_len=9, n_symbols=12, val_size=32, test_size=8)
    section = task_section(task)
    assert not {"path", "src_col", "tgt_col", "license", "attribution", "src_tokenizer", "tgt_tokenizer"} & set(section)
    assert section["n_train"] == 300 and section["val_size"] == 32
    assert load_run_config({"task": section}).task == task
    if name == "numbers":  # numbers reads neither sequence lengths nor symbols, but the job set two
        assert "min_seq_len" not in section and section["max_seq_len"] == 9
    odd = TaskConfig(name=name, src_tokenizer="bpe")  # ignored by a generated task, but set
    assert task_section(odd)["src_tokenizer"] == "bpe" and load_run_config({"task": task_section(odd)}).task == odd
    plain = task_section(TaskConfig(name="tsv", path="p.tsv", n_train=400, n_symbols=10))
    assert list(plain) == [k for k in to_dict(TaskConfig()) if k in TASK_FIELDS["tsv"]]


def test_a_pick_says_how_the_trial_was_chosen() -> None:
    """--pick/--knee: the rule, the front's size and the trial's objectives follow the first line;
    a path with a space is quoted in the train command."""
    prov = {"experiment": "mo", "pick": "knee of the front", "pareto_trials": [1, 4, 6], "objectives": {"val_loss": 2.5, "n_params": 15872}}
    result = Export(
        Path("my best.yaml"), TrialRecord(4, "r4", "t004", "COMPLETE", score=2.5), "abc", "val_loss", {"provenance": prov}
    )
    out = io.StringIO()
    print_export(result, out)
    assert out.getvalue().splitlines() == [
        "exported trial 4 (COMPLETE, val_loss=2.5) of search run abc (experiment mo)",
        "picked: knee of the front, from 3 Pareto trials (val_loss=2.5, n_params=15872)",
        "config: my best.yaml",
        "train it: attntune train 'my best.yaml'",
    ]


def test_nan_and_inf_never_win() -> None:
    def trial(number: int, state: str, score: float) -> TrialRecord:
        return TrialRecord(number, f"r{number}", f"t{number:03d}", state, score=score)

    trials = [
        trial(0, "COMPLETE", float("nan")),
        trial(1, "COMPLETE", float("-inf")),
        trial(2, "COMPLETE", 2.5),
        trial(3, "PRUNED", 0.1),
        trial(4, "COMPLETE", 2.5),
    ]
    assert pick_trial(trials, "min", None, "val_loss", "s").number == 2  # ties: the lower number
    assert pick_trial(trials, "max", None, "val_loss", "s").number == 2
    assert pick_trial(trials, "min", 3, "val_loss", "s").number == 3  # a pruned trial on request


def test_the_read_model_agrees_with_the_results_table(search: SimpleNamespace) -> None:
    """MLflow (records) and the study (results) name the same trials, states and best trial."""
    table = search.result.table
    data = load_search(search.uri, search.result.parent_run_id, curves=False, space=False)
    assert {t.number: str(t.state) for t in data.trials} == dict(zip(table["number"], table["state"], strict=True))
    best = search.result.best
    assert data.best() is not None and data.best().number == int(best["number"])
    assert data.best().score == pytest.approx(float(best["value"]), rel=1e-12)


def _train_and_register(config: Path, capsys: pytest.CaptureFixture) -> str:
    """`attntune train CONFIG --epochs 1 --register-as MODEL`; returns the checkpoint folder."""
    code, out, err = _cli(capsys, "train", str(config), "--epochs", "1", "--register-as", MODEL, "--output", "prod")
    assert code == 0, err
    return "prod"


def test_export_train_register_and_load_without_pickle(
    search: SimpleNamespace, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudpickle
    import mlflow

    from attntune.model.checkpoint import load_checkpoint, translate
    from attntune.search.production import using_tracking_uri

    config = Path("attntune-runs") / NAME / "best.yaml"
    if not config.exists():
        assert _cli(capsys, "export", "--experiment", NAME)[0] == 0
    prov = yaml.safe_load(config.read_text())["provenance"]
    ckpt = _train_and_register(config, capsys)

    client = MlflowClient(search.uri)
    version = client.get_model_version(MODEL, "1")
    assert version.tags["attntune.search_run_id"] == prov["search_run_id"]
    assert version.tags["attntune.trial_run_id"] == prov["trial_run_id"]
    run = client.get_run(version.run_id)
    tags = run.data.tags
    assert tags["attntune.kind"] == "train" and run.info.status == "FINISHED"
    assert tags["attntune.search_run_id"] == prov["search_run_id"]
    assert tags["attntune.trial_run_id"] == prov["trial_run_id"]
    assert tags["data.license"].startswith(LICENSE) and ATTRIBUTION in tags["data.license"]
    assert tags["data.fingerprint"] == prov["data_fingerprint"] and "data.fingerprint_changed" not in tags
    assert client.get_experiment(run.info.experiment_id).name == NAME  # beside its search
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]
    assert run.data.params["model.d_model"] == str(yaml.safe_load(config.read_text())["model"]["d_model"])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert {"checkpoint/model.safetensors", "checkpoint/config.yaml", "checkpoint/src_tokenizer.json"} <= files

    model, _, src_tok, tgt_tok = load_checkpoint(ckpt)
    from attntune.model.data import load_task

    sentences = [s for s, _ in load_task(load_run_config(yaml.safe_load(config.read_text())).task).test_text[:8]]
    expected = translate(model, src_tok, tgt_tok, sentences)

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the registered model must load without unpickling")

    class RefusingUnpickler:
        def __init__(self, *a: object, **k: object) -> None:
            refuse()

    for mod in (pickle, cloudpickle):
        monkeypatch.setattr(mod, "load", refuse)
        monkeypatch.setattr(mod, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    if hasattr(cloudpickle, "Unpickler"):
        monkeypatch.setattr(cloudpickle, "Unpickler", RefusingUnpickler)

    import pandas as pd

    with using_tracking_uri(search.uri):
        loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1"))
    assert loaded.predict(sentences) == expected
    assert loaded.predict(pd.DataFrame({"text": sentences})) == expected
    names = {p.name for p in local.rglob("*") if p.is_file()}
    assert "model.safetensors" in names and not any(n.endswith((".pkl", ".pickle", ".cloudpickle")) for n in names)
    assert "python_model.pkl" not in names


def test_a_training_run_that_raises_ends_failed(tmp_path: Path, mlflow_template: Path) -> None:
    """The live API: epochs are logged as they come; an exception ends the run FAILED, not RUNNING."""
    from attntune.model.config import RunConfig, TaskConfig
    from attntune.model.data import load_task
    from attntune.search.production import TrainingRun

    uri = fresh_store(mlflow_template, tmp_path)
    run_cfg = RunConfig(task=TaskConfig(name="reverse", n_train=64, val_size=8, test_size=8), provenance={"job": "p"})
    data = load_task(run_cfg.task)
    with pytest.raises(RuntimeError, match="diverged"):
        with TrainingRun(run_cfg, data, uri) as tr:
            reporter = tr.reporter()
            reporter.start({"n_params": 123, "device": "cpu"})
            reporter.report(1, {"train_loss": 2.0, "val_loss": 2.5})
            raise RuntimeError("training diverged (stands in for DivergedError)")
    client = MlflowClient(uri)
    run = client.get_run(tr.run_id)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["failure_reason"]
    assert run.data.tags["attntune.kind"] == "train" and run.data.params["n_params"] == "123"
    assert client.get_experiment(run.info.experiment_id).name == "p"
    assert [(m.step, m.value) for m in client.get_metric_history(tr.run_id, "val_loss")] == [(1, 2.5)]


# --------------------------------------------------------------------------- --family

FAMILY_SEARCH = "exp-fam"


@pytest.fixture(scope="module")
def family_search(search: SimpleNamespace, mlflow_template: Path) -> SimpleNamespace:
    """A real search over two model families (a `when`-conditional rnn_cell), in a store of its own
    so the main search's experiment list stays as the tests above expect; cwd: ``search.folder``."""
    uri = fresh_store(mlflow_template, search.folder / "fam-store")
    space = {
        "params": {
            "model.family": {"choices": ["transformer", "rnn"]},
            "model.rnn_cell": {"choices": ["gru", "lstm"], "when": {"model.family": "rnn"}},
            "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        }
    }
    spec = tiny_job(FAMILY_SEARCH, space=space, model={"d_model": 16, "n_heads": 2, "d_ff": 32},
                    budget={"n_trials": 4, "max_epochs": 1, "min_epochs": 1})  # fmt: skip
    job = parse_job(spec, text=yaml.safe_dump(spec, sort_keys=False), source="job.yaml", tracking_uri=uri)
    result = run_search(job, quiet=True, report=False)
    table = result.table
    done = table[table["state"] == "COMPLETE"]
    assert set(done["model.family"]) == {"transformer", "rnn"}, table[["number", "state", "model.family"]]
    return SimpleNamespace(result=result, table=table, uri=uri)


def _best_of_family(table: pd.DataFrame, family: str) -> pd.Series:
    done = table[(table["state"] == "COMPLETE") & (table["model.family"] == family)]
    return done.sort_values(["value", "number"]).iloc[0]


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_export_the_best_trial_of_one_family(
    family_search: SimpleNamespace, capsys: pytest.CaptureFixture, family: str
) -> None:
    """`--family F`: the best COMPLETE trial whose model.family is F, written with F in its
    provenance, and a config `attntune train` runs as it is."""
    best = _best_of_family(family_search.table, family)
    target = f"{family}.yaml"
    code, out, err = _cli(capsys, "export", "--experiment", FAMILY_SEARCH, "--family", family, "--output", target,
                          "--tracking-uri", family_search.uri)  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"exported trial {int(best['number'])} (COMPLETE, val_loss=")
    assert out.splitlines()[1] == f"family: {family} (its best trial by val_loss)"
    doc = yaml.safe_load(Path(target).read_text(encoding="utf-8"))
    prov = doc["provenance"]
    assert (prov["family"], prov["trial_number"]) == (family, int(best["number"]))
    assert math.isclose(prov["value"], float(best["value"]))
    run = load_run_config(doc)
    assert run.model.family == family and run.model.d_model == 16
    if family == "rnn":
        assert run.model.rnn_cell == best["model.rnn_cell"]
    else:
        assert run.model.n_heads == 2 and run.model.d_ff == 32
    code, _, err = _cli(capsys, "train", target, "--epochs", "1", "--no-tracking", "--output", f"train-{family}")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--family", "mlp"], "--family mlp: search run "),
        (["--family", "cnn"], "error: --family cnn: not a model family (valid: transformer, rnn, mlp)"),
        (["--family", "rnn", "--trial", "0"], "error: --family and --trial: choose one"),
        (["--family", "rnn", "--knee"], "error: --family and --pick: choose one"),
    ],
)
def test_a_bad_family_request_is_one_line_and_exit_2(
    family_search: SimpleNamespace, capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    code, out, err = _cli(capsys, "export", "--experiment", FAMILY_SEARCH, "--output", "never.yaml",
                          "--tracking-uri", family_search.uri, *args)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    if "mlp" in args:  # no mlp trial at all: the line says which families did complete
        n = family_search.table.groupby("model.family")["state"].apply(lambda s: int((s == "COMPLETE").sum()))
        assert err.strip().endswith(
            f"has no COMPLETE mlp trial with a finite val_loss (COMPLETE trials: {n['transformer']} transformer, "
            f"{n['rnn']} rnn)"
        ), err
    assert not Path("never.yaml").exists()


def test_a_run_without_a_family_param_is_a_transformer() -> None:
    """pick_family: best_of's rule within the family; an old run (no model.family) is a transformer."""

    def trial(number: int, family: str | None, state: str, score: float) -> TrialRecord:
        params = {"model.family": family} if family else {}
        return TrialRecord(number, f"r{number}", f"t{number:03d}", state, params=params, score=score)

    trials = [trial(0, None, "COMPLETE", 2.0), trial(1, "rnn", "COMPLETE", 1.5), trial(2, "rnn", "PRUNED", 0.1),
              trial(3, "rnn", "COMPLETE", 1.5), trial(4, "transformer", "COMPLETE", 2.5)]  # fmt: skip
    trials[3].feasible = False
    assert pick_family(trials, "min", "transformer", "val_loss", "s").number == 0
    assert pick_family(trials, "min", "rnn", "val_loss", "s").number == 1
    assert pick_family(trials, "max", "rnn", "val_loss", "s").number == 1  # 3 missed a constraint
    with pytest.raises(ExportError, match=r"no COMPLETE mlp trial .* \(COMPLETE trials: 2 transformer, 2 rnn\)"):
        pick_family(trials, "min", "mlp", "val_loss", "s")
