"""`attntune ui` in a real browser: the printed runs table, nested trial runs, compare view, artifacts.

A small real search writes ./mlflow.db; `attntune ui` runs as a subprocess in that folder; headless
Debian Chromium (Selenium 4) opens the address it prints. Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from attntune.search.cli import main
from attntune.search.job import parse_job
from attntune.search.run import run_search
from tests.conftest import fresh_store, tiny_job

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
NAME = "uisearch"
ADDRESS = re.compile(r"(http://127\.0\.0\.1:\d+/#/experiments/(\d+)/runs)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    msg = f"{CHROMIUM} / {CHROMEDRIVER} missing (make browser installs Debian's chromium and chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("ui")
    uri = fresh_store(mlflow_template, folder)
    spec = tiny_job(NAME, budget={"n_trials": 2, "max_epochs": 1, "min_epochs": 1}, tracking=uri, output=str(folder / "out"))
    job = parse_job(spec, text=yaml.safe_dump(spec, sort_keys=False), source="job.yaml")
    result = run_search(job, quiet=True, report=False)
    client = MlflowClient(uri)
    children = client.search_runs([result.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return SimpleNamespace(folder=folder, result=result, children=children, uri=uri)


class _Lines:
    """A subprocess's stdout, line by line, without blocking the test."""

    def __init__(self, stream) -> None:  # noqa: ANN001 - a text stream
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # noqa: ANN001
        for line in iter(stream.readline, ""):
            self.q.put(line)

    def wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = pattern.search(line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern.pattern} within {timeout} s; got {self.seen}")


@pytest.fixture(scope="module")
def ui(search: SimpleNamespace) -> Iterator[SimpleNamespace]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from attntune.search.cli import main; main()", "ui", "--port", str(port)],
        cwd=search.folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = _Lines(proc.stdout)
    try:
        m = lines.wait_for(ADDRESS, timeout=150)
        yield SimpleNamespace(proc=proc, address=m.group(1), experiment_id=m.group(2), port=port, lines=lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_text(driver, needle: str, timeout: float = 90) -> str:  # noqa: ANN001 - a WebDriver
    from selenium.webdriver.common.by import By

    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        try:
            text = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - the page is still being replaced
            text = ""
        if needle in text:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} not on the page within {timeout} s; page shows: {text[:800]!r}")


def test_ui_without_a_store_exits_2_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "mlflow.db"
    with pytest.raises(SystemExit) as e:
        main(["ui", "--tracking-uri", f"sqlite:///{db.as_posix()}", "--port", str(_free_port())])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no MLflow store here" in err
    assert not db.exists()


def test_addresses_list_search_experiments_most_recent_first(tmp_path: Path, mlflow_template: Path) -> None:
    import io

    from attntune.search.tracking import Tracker
    from attntune.search.ui import print_addresses

    uri = fresh_store(mlflow_template, tmp_path)
    tr = Tracker(uri)
    ids = {}
    for name, kind in (("older", "search"), ("not-a-search", "train"), ("newer", "search")):
        ids[name] = tr.ensure_experiment(name)
        tr.create_run(f"run {name}", tags={"attntune.kind": kind})
        time.sleep(0.05)  # distinct start times
    tr.close()
    out = io.StringIO()
    addresses = print_addresses("http://127.0.0.1:5999", uri, out=out)
    assert addresses == [
        f"http://127.0.0.1:5999/#/experiments/{ids['newer']}/runs",
        f"http://127.0.0.1:5999/#/experiments/{ids['older']}/runs",
    ]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("newer: ") and lines[1].startswith("older: ") and len(lines) == 2


def test_ui_on_a_busy_port_exits_2(search: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["ui", "--tracking-uri", search.uri, "--port", str(port)])
    assert e.value.code == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_ui_prints_the_runs_table_of_each_search_experiment(search: SimpleNamespace, ui: SimpleNamespace) -> None:
    assert ui.experiment_id == search.result.experiment_id
    assert ui.address == f"http://127.0.0.1:{ui.port}/#/experiments/{search.result.experiment_id}/runs"
    assert any(line.startswith(f"{NAME}: ") for line in ui.lines.seen)
    assert _listening_addresses(ui.port) == {"127.0.0.1"}  # bound to this machine only


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (Linux /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            if len(addr) == 8:
                found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
            else:
                found.add("::" if set(addr) == {"0"} else addr)
    return found


def test_runs_table_shows_the_search_and_its_trials(search: SimpleNamespace, ui: SimpleNamespace, browser, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    browser.get(ui.address)
    _wait_text(browser, f"search {NAME}")
    browser.save_screenshot(str(tmp_path / "runs-collapsed.png"))
    names = sorted(r.info.run_name for r in search.children)
    text = browser.find_element(By.TAG_NAME, "body").text
    if names[0] not in text:  # MLflow nests child runs under the parent: expand it
        button = browser.find_element(
            By.XPATH, f"//a[normalize-space(.)='search {NAME}']/ancestor::div[@role='gridcell'][1]//button"
        )
        button.click()
    for n in names:
        _wait_text(browser, n, timeout=30)
    assert re.search(r"\bt000 d\d+ h\d+ L\d", browser.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(tmp_path / "runs-expanded.png"))


def test_compare_view_of_two_trials_shows_val_loss(search: SimpleNamespace, ui: SimpleNamespace, browser, tmp_path: Path) -> None:  # noqa: ANN001
    ids = [r.info.run_id for r in search.children[:2]]
    assert len(ids) == 2
    base = ui.address.split("/#/")[0]
    url = (
        f"{base}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
        f"&experiments={urllib.parse.quote(json.dumps([ui.experiment_id]))}"
    )
    browser.get(url)
    text = _wait_text(browser, "val_loss")
    assert "Comparing 2 Runs" in text
    for r in search.children[:2]:
        _wait_text(browser, r.info.run_name, timeout=30)  # fails unless the page shows the trial's name
    browser.save_screenshot(str(tmp_path / "compare.png"))


def test_parent_artifacts_are_viewable(search: SimpleNamespace, ui: SimpleNamespace, browser, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    base = ui.address.split("/#/")[0]
    browser.get(f"{base}/#/experiments/{ui.experiment_id}/runs/{search.result.parent_run_id}/artifacts")
    text = _wait_text(browser, "results.csv")
    assert "job.yaml" in text and "space.yaml" in text
    browser.find_element(By.XPATH, "//*[normalize-space(text())='job.yaml']").click()
    _wait_text(browser, "max_epochs", timeout=30)  # the file's content, served by the UI's server
    browser.save_screenshot(str(tmp_path / "artifacts-job-yaml.png"))


def test_ctrl_c_stops_the_ui_and_its_server(ui: SimpleNamespace) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{ui.port}/health", timeout=10) as resp:
        assert resp.status == 200
    ui.proc.send_signal(signal.SIGINT)
    assert ui.proc.wait(timeout=60) == 130
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ui.port), timeout=2).close()
