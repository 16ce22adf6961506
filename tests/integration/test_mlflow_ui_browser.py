"""The MLflow UI in real headless Chromium: find the federation's run, open a per-round chart.

Needs Debian's chromium and chromium-driver (.ci/run installs them). Skipped where they are
missing, unless FEDTL_REQUIRE_BROWSER=1 (CI sets it), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from fedtl.shared.processes import free_port, start, stop, wait_for_port
from tests.integration.harness import Federation, fedtl_cmd
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _browser_or_skip() -> tuple[str, str]:
    chrome, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chrome and driver):
        if os.environ.get("FEDTL_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("chromium/chromedriver not installed")
    return chrome, driver


def _driver(chrome: str, driver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    return browser


def test_mlflow_ui_shows_the_federation_run_and_its_round_charts(tmp_path):
    chrome, driver = _browser_or_skip()
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    fed = Federation(tmp_path)
    fed.add_site("clinic_x", types=("classification",))
    fed.write_config(rounds=2, min_sites=1, final_evaluate=False, name="uitest")
    fed.run_to_completion("clinic_x")
    client = MlflowClient(fed.tracking_uri)
    exp = client.get_experiment_by_name("tests")
    run = client.search_runs([exp.experiment_id])[0]

    port = free_port()
    ui = start(fedtl_cmd("ui", "--tracking-uri", fed.tracking_uri, "--port", str(port)), tmp_path / "ui.log",
               cwd=tmp_path)
    browser = None
    OUTPUT.mkdir(exist_ok=True)
    try:
        wait_for_port("127.0.0.1", port, 120, ui, "fedtl ui", tmp_path / "ui.log")
        printed = wait_until(lambda: re.search(r"MLflow UI: (http://\S+)", (tmp_path / "ui.log").read_text()), 30,
                             "fedtl ui to print its URL")
        landing = printed.group(1)
        assert f"/#/experiments/{exp.experiment_id}/runs" in landing  # the federation's experiment, its runs
        profile = tempfile.mkdtemp(prefix="chrome-profile-")
        browser = _driver(chrome, driver, profile)
        wait = WebDriverWait(browser, 90)
        base = f"http://127.0.0.1:{port}"
        # the URL fedtl ui prints opens the runs table in MLflow's model-training view, not its GenAI
        # view (which a bare experiment URL opens: Observability, Evaluation runs, Prompts)
        browser.get(landing)
        link = wait.until(EC.presence_of_element_located((By.XPATH, f"//a[contains(., '{run.info.run_name}')]")))
        nav = browser.find_element(By.TAG_NAME, "body").text
        assert "Model registry" in nav and "Evaluation runs" not in nav and "Observability" not in nav, nav[:800]
        browser.save_screenshot(str(tmp_path / "runs.png"))
        link.click()
        wait.until(EC.url_contains(run.info.run_id))
        browser.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")) >= 2)
        page = browser.page_source
        assert "federation/round_seconds" in page or "round_seconds" in page
        shot = tmp_path / "round-metrics.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, OUTPUT / "mlflow-round-metrics.png")
        shutil.copy(tmp_path / "runs.png", OUTPUT / "mlflow-landing.png")
    finally:
        if browser is not None:
            browser.quit()
        stop(ui)
