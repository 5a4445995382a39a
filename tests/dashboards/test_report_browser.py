"""The report in a real browser (Debian's headless Chromium): it loads from disk with no network,
logs no errors, and every chart draws."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.dashboards.test_report import Built, main_search

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        msg = f"{', '.join(missing)} not installed (make browser)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _need_browser()
    return main_search(tmp_path_factory.getbasetemp())


@pytest.fixture
def driver(tmp_path: Path) -> Any:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_report_renders_in_chromium_without_errors(built: Built, driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # a copy outside the search folder: the file must stand alone
    page = tmp_path / "report.html"
    shutil.copyfile(built.root / "rep-main" / "report.html", page)
    driver.get(page.as_uri())
    expected = sorted(built.figures)
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0 && "
            "document.querySelectorAll('.js-plotly-plot').length"
        ) == len(expected)
    )
    plots = driver.execute_script(
        """return Array.from(document.querySelectorAll('div.plot')).map(function (el) {
             var svg = el.querySelector('.main-svg'); var r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
             return {id: el.id, plotly: el.classList.contains('js-plotly-plot'), svgs: el.querySelectorAll('.main-svg').length,
                     w: r.width, h: r.height, points: el.querySelectorAll('.scatterlayer .point').length,
                     bars: el.querySelectorAll('.barlayer .point').length};
           });"""
    )
    assert sorted(p["id"].removeprefix("plot-") for p in plots) == expected
    for p in plots:
        assert p["plotly"] and p["svgs"] > 0 and p["w"] > 200 and p["h"] > 200, p
    by_id = {p["id"]: p for p in plots}
    n_points = sum(len(t["y"]) for t in built.figures["history"]["data"] if t["mode"] == "markers")
    assert by_id["plot-history"]["points"] >= n_points > 0  # markers were drawn, not just axes
    assert by_id["plot-curves"]["points"] > 0
    if "importance" in expected:
        assert by_id["plot-importance"]["bars"] > 0
    assert driver.find_element(By.CSS_SELECTOR, "header.hero h1").text == "rep-main"
    assert driver.find_element(By.ID, "top-trials").is_displayed()
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(int(height) + 40, 6000))
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
