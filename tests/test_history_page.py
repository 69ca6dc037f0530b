"""The run-history page, as a person sees it: served by its HTTP function through the local host, rendered in
Debian's headless Chromium (driven by Selenium), with a screenshot kept in test-artifacts/."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from localdev.host_client import HostClient
from localdev.services import run_emulator
from shared.platform.storage import BlobStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import (
    FUNCTION_KEY,
    emulator_clock,
    export_body,
    host_settings,
    in_phase,
    new_host,
    upload_export,
)

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
            rejects_sample=[{"partition": "Seg_1.csv", "row": 7, "reason": "invalid email address"}],
            warnings=3, warning_kinds={"phone number is not E.164; left out of the profile": 3}))  # fmt: skip

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
        assert "warnings: phone number is not E.164; left out of the profile: 3" in rows[1].text
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


def principal(*roles: str) -> str:
    """App Service authentication's X-MS-CLIENT-PRINCIPAL for a user with `roles`."""
    claims = [{"typ": "roles", "val": r} for r in roles] + [{"typ": "name", "val": "someone@example.com"}]
    return base64.b64encode(orjson.dumps({"auth_typ": "aad", "claims": claims})).decode()


def test_run_detail_groups_rejects_by_reason_lists_jobs_and_serves_the_rejects_file(azurite, emulator_url, browser):
    settings = host_settings(azurite, emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)  # administrators only
        api.put_export("weekly", export_body(new_list(emulator_url), settings))
        reports = BlobStore.from_connection_string(azurite.connection_string, settings["REPORTS_CONTAINER"])
        run_id = "weekly.0123456789abcdef01234567"
        lines = [{"partition": "Seg_1.csv", "row": i + 2, "reason": "invalid email address", "kind": "rejected"}
                 for i in range(1_204)]  # fmt: skip
        lines += [{"partition": "Seg_2.csv", "row": i + 2, "reason": "duplicate of a later row", "kind": "duplicate"}
                  for i in range(3)]  # fmt: skip
        lines.append({"partition": "Seg_2.csv", "row": 90, "reason": "Invalid phone number", "kind": "failed"})
        reports.write_bytes(f"runs/weekly/{run_id}.rejects.ndjson", b"\n".join(map(orjson.dumps, lines)) + b"\n")
        jobs = [{"id": "job-1", "status": "complete", "total": 10_000, "completed": 9_999, "failed": 1}]
        reports.write_bytes(f"runs/weekly/{run_id}.json", synthetic_report(
            "weekly", run_id, "2026-11-03T06:00:00+00:00", status="partially_succeeded", rows_read=11_207,
            rows_rejected=1_204, duplicate_rows=3, profiles_submitted=10_000, profiles_imported=9_999,
            profiles_failed=1, jobs=jobs, rejects_file=f"runs/weekly/{run_id}.rejects.ndjson", mode="upsert",
            trigger="blob", ended_at="2026-11-03T06:02:00+00:00"))  # fmt: skip

        browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
        browser.find_element(By.CSS_SELECTOR, "#export-weekly tbody.run a").click()  # the run's start time
        assert run_id in browser.find_element(By.TAG_NAME, "h1").text
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "run-detail.png"))

        fields = browser.find_element(By.ID, "report")
        assert fields.find_element(By.CSS_SELECTOR, "dd.status").text == "partially_succeeded"
        assert fields.find_element(By.CSS_SELECTOR, "dd.rows_rejected").text == "1,204"
        assert fields.find_element(By.CSS_SELECTOR, "dd.ended_at").text == "2026-11-03 06:02:00 UTC"
        job = browser.find_element(By.CSS_SELECTOR, "#jobs tr.job")
        assert [c.text for c in job.find_elements(By.TAG_NAME, "td")] == ["job-1", "complete", "10,000", "9,999", "1"]
        groups = browser.find_elements(By.CSS_SELECTOR, "#rejects .reason")
        assert [(g.find_element(By.CLASS_NAME, "kind").text, g.find_element(By.CLASS_NAME, "why").text,
                 g.find_element(By.CLASS_NAME, "count").text) for g in groups] == [
            ("rejected", "invalid email address", "1,204"),
            ("duplicate", "duplicate of a later row", "3"),
            ("failed", "Invalid phone number", "1"),
        ]  # fmt: skip
        assert groups[0].find_element(By.CLASS_NAME, "shown").text == "showing 20 of 1,204"
        assert len(groups[0].find_elements(By.TAG_NAME, "li")) == 20
        assert groups[0].find_element(By.TAG_NAME, "li").text == "Seg_1.csv row 2"

        href = browser.find_element(By.ID, "download").get_attribute("href")
        assert href == f"{host.base_url}/api/runs/{run_id}/rejects?code={FUNCTION_KEY}"
        download = httpx.get(href)
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("application/x-ndjson")
        assert [orjson.loads(x) for x in download.content.splitlines()] == lines
        assert api.http.get(f"/api/runs/{run_id}/rejects", headers={"x-functions-key": ""}).status_code == 401
        # With App Service authentication, the run's roles apply: a contributor may not use an admins-only
        # connection, so neither its runs' pages nor their rejects, nor the buttons.
        contributor = {"x-ms-client-principal": principal("contributor")}
        assert api.http.get(f"/api/runs/{run_id}/rejects", headers=contributor).status_code == 403
        assert api.http.get(f"/api/history/{run_id}", headers=contributor).status_code == 403
        assert "Run now" not in api.http.get("/api/history", headers=contributor).text
        admin = {"x-ms-client-principal": principal("admin")}
        assert api.http.get(f"/api/runs/{run_id}/rejects", headers=admin).status_code == 200
        assert api.http.get("/api/runs/..%2F..%2Fsecrets/rejects").status_code == 400  # not a run id
        assert api.http.get("/api/history/weekly.nosuchrun").status_code == 404


@pytest.fixture(scope="module")
def slow_klaviyo():
    """Klaviyo's jobs take 3 s of the emulator's clock, which the test freezes; rate limits off."""
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "3") as url:
        yield url


def test_a_running_run_shows_its_live_phase_and_the_page_refreshes(azurite, slow_klaviyo, browser):
    url = slow_klaviyo
    settings = host_settings(azurite, url)
    emulator_clock(url, freeze=True)  # Klaviyo's jobs do not finish until the clock moves on
    try:
        with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
            api.put_connection("shop", EMULATOR_KEY)
            api.put_export("weekly", export_body(new_list(url), settings))
            upload_export(azurite, settings, 2_000)
            run_id = api.start_run("weekly")["id"]
            api.wait_for_run(run_id, timeout=120, until=in_phase("waiting_for_klaviyo"))

            browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "run-history-in-progress.png"))
            refresh = browser.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
            assert refresh.get_attribute("content") == "5"
            row = browser.find_element(By.CSS_SELECTOR, "#in-progress tr.active")
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            assert (cells[0], cells[1], cells[3]) == ("weekly", run_id, "waiting_for_klaviyo")
            assert cells[2].endswith(" UTC") and cells[6] == "2,000"  # started; profiles sent so far
            row.find_element(By.TAG_NAME, "a").click()
            assert browser.find_element(By.CSS_SELECTOR, "#live .phase").text == "waiting_for_klaviyo"
            browser.save_screenshot(str(ARTIFACTS / "run-detail-in-progress.png"))

            emulator_clock(url, freeze=False, advance=10)
            assert api.wait_for_run(run_id, timeout=120)["report"]["status"] == "succeeded"
            browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
            assert not browser.find_elements(By.ID, "in-progress")
            assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    finally:
        emulator_clock(url, freeze=False)


def test_dry_run_button_starts_a_dry_run_and_shows_it(azurite, emulator_url, browser):
    settings = host_settings(azurite, emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(new_list(emulator_url), settings))
        upload_export(azurite, settings, 300)
        browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
        buttons = browser.find_elements(By.CSS_SELECTOR, "#export-weekly form.actions button")
        assert [b.text for b in buttons] == ["Run now", "Dry run"]
        buttons[1].click()  # a form POST; the app answers 303 to the run's page
        # Read the page once the browser is on it (the console's h1 is still there while it navigates).
        WebDriverWait(browser, 60).until(lambda b: "/api/history/" in b.current_url)
        heading = browser.find_element(By.TAG_NAME, "h1").text
        run_id = heading.removeprefix("Run ")
        assert run_id.startswith("weekly.") and "/api/history/" in browser.current_url
        final = api.wait_for_run(run_id)
        assert final["report"]["dry_run"] is True and final["report"]["profiles_imported"] == 0
        browser.get(f"{host.base_url}/api/history?code={FUNCTION_KEY}")
        assert browser.find_element(By.CSS_SELECTOR, "#export-weekly .status").text == "succeeded (dry run)"
        # Another site cannot start runs through a signed-in operator's browser.
        forged = api.http.post("/api/exports/weekly/runs", headers={"sec-fetch-site": "cross-site"})
        assert forged.status_code == 403


def test_rejects_are_grouped_in_one_pass_over_pieces_cut_anywhere(monkeypatch):
    from shared.finishing import history

    rows = [{"partition": "p", "row": i, "reason": f"reason {i % 3}", "kind": "rejected"} for i in range(50)]
    data = b"\n".join(map(orjson.dumps, rows)) + b"\n"
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # lines cut mid-way, as blob reads may be
    groups, kinds = history.group_rejects(pieces, per_reason=5)
    assert kinds == {"rejected": 50}
    assert [(g["reason"], g["count"], len(g["rows"])) for g in groups] == [
        ("reason 0", 17, 5), ("reason 1", 17, 5), ("reason 2", 16, 5),
    ]  # fmt: skip
    assert groups[0]["rows"][0] == rows[0]
    monkeypatch.setattr(history, "MAX_REASONS", 2)  # many distinct reasons: the rest are counted together
    groups, _ = history.group_rejects(pieces)
    assert {g["reason"]: g["count"] for g in groups} == {"reason 0": 17, "reason 1": 17, "other reasons": 16}
