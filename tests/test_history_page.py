"""The run-history page, as a person sees it: served by its HTTP function through the local host, rendered in
Debian's headless Chromium (driven by Selenium), with a screenshot kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from localdev.host_client import HostClient
from shared.platform.storage import BlobStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host, upload_export

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Chromium and chromedriver are needed: `make browser` installs Debian's packages")
    os.environ["SE_OFFLINE"] = "true"  # Selenium must not try to download a driver: the machine has one
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def synthetic_report(export: str, run_id: str, started: str, **fields) -> bytes:
    base = {"export": export, "run_id": run_id, "status": "succeeded", "started_at": started, "rows_read": 0,
            "profiles_submitted": 0, "profiles_removed": 0, "duration_s": 1.0}  # fmt: skip
    return orjson.dumps({**base, **fields})


def test_history_page_shows_runs_counts_failures_and_a_chart(azurite, emulator_url, browser):
    settings = host_settings(azurite, emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(new_list(emulator_url), settings))
        upload_export(azurite, settings, 1_500)
        started = api.start_run("weekly")
        final = api.wait_for_run(started["id"])
        assert final["report"]["status"] == "succeeded"
        # Two earlier runs of other kinds, as their reports would be stored.
        reports = BlobStore.from_connection_string(azurite.connection_string, settings["REPORTS_CONTAINER"])
        reports.write_bytes(
            "runs/weekly/old-1.json",
            synthetic_report(
                "weekly",
                "old-1",
                "2026-11-01T06:00:00Z",
                status="failed",
                error="Klaviyo refused the key (401) " + "while checking list XyZ123 on the account " * 12,
            ),
        )
        reports.write_bytes("runs/weekly/old-2.json", synthetic_report(
            "weekly", "old-2", "2026-11-02T06:00:00Z", status="partially_succeeded", rows_read=10,
            profiles_submitted=9, profiles_removed=4, rows_rejected=1, profiles_failed=1,
            rejects_sample=[{"partition": "Seg_1.csv", "row": 7, "reason": "invalid email address"}]))  # fmt: skip

        without_key = api.http.get(f"{host.base_url}/api/history", headers={"x-functions-key": ""})
        assert without_key.status_code == 401
        browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "run-history.png"))

        section = browser.find_element(By.ID, "export-weekly")
        rows = section.find_elements(By.CSS_SELECTOR, "tbody.run")
        assert [r.find_element(By.CLASS_NAME, "status").text for r in rows] == [
            "succeeded",
            "partially_succeeded",
            "failed",
        ]
        headers = [th.text for th in section.find_elements(By.CSS_SELECTOR, "thead th")]
        cells = dict(
            zip(headers, [c.text for c in rows[0].find_elements(By.CSS_SELECTOR, "tr:first-child td")], strict=True)
        )
        assert (cells["rows"], cells["sent"], cells["imported"], cells["duplicates"]) == (
            "1,500",
            "1,500",
            "1,500",
            "0",
        )
        assert (cells["mode"], cells["trigger"], cells["source"]) == ("upsert", "http", "model.json")
        assert (cells["subscribed / not consented"], cells["warnings"]) == ("0 / 0", "0")
        assert cells["started (UTC)"].endswith(" UTC")  # times say their zone
        assert "Seg_1.csv row 7: invalid email address" in rows[1].text
        assert "Klaviyo refused the key (401)" in rows[2].text
        chart = section.find_element(By.CSS_SELECTOR, "svg.chart")
        assert chart.is_displayed()
        assert len(chart.find_elements(By.CSS_SELECTOR, "rect.sent")) == 3
        heights = [float(r.get_attribute("height")) for r in chart.find_elements(By.CSS_SELECTOR, "rect.removed")]
        assert heights[1] > 0 and heights[0] == heights[2] == 0  # oldest first: only old-2 removed anyone
        failed = [float(r.get_attribute("height")) for r in chart.find_elements(By.CSS_SELECTOR, "rect.failed")]
        assert failed[1] > 0 and failed[0] == failed[2] == 0
        dates = [t.text for t in chart.find_elements(By.CSS_SELECTOR, "text.date")]
        assert dates[:2] == ["11-01", "11-02"] and len(dates) == 3  # the axis has each run's day
        # A long error wraps inside its cell instead of being cut or widening the table past the window.
        page = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        scroll_width, window_width = browser.execute_script(page)
        assert scroll_width <= window_width
        assert section.find_element(By.TAG_NAME, "button").text == "Run now"  # the function key may run it
