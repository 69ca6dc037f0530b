"""Faults and crashes lose nobody: Klaviyo answering 429, 5xx or dropping connections after doing the work,
and the command line killed part way, still end with the list exactly equal to the segment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from localdev.sample import email_for, write_ci_export
from localdev.services import run_emulator
from shared.platform.storage import LocalStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import ROOT, list_emails, new_list, run_cli

ARTIFACTS = ROOT / "test-artifacts"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_in_five_requests_faulty_loses_nobody(tmp_path, seed):
    """A subscribe run (imports and 1,000-profile subscription calls), then a mirror run that removes 10% of
    the list (lookups 100 emails a call, removals), with one request in five answered 429, 5xx, or dropped
    after the emulator did the work."""
    rows = 50_000
    store = LocalStore(tmp_path / "src")
    source = tmp_path / "src" / write_ci_export(store, rows, partitions=3)
    faults = ["--fault-rate", "0.2", "--fault-seed", str(seed), "--fault-kinds", "throttle,error,drop"]
    consent = ["--consent-field", "LoyaltyTier", "--consent-values", "Gold,Silver"]
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", *faults) as url:
        list_id = _new_list_despite_faults(url, seed)
        code, subscribed, err = run_cli(tmp_path, source, list_id, url, "--mode", "subscribe", *consent)
        assert code == 0, err
        members_after_subscribe = list_emails_despite_faults(url, list_id, seed)
        write_ci_export(store, rows - 5_000, partitions=3)  # 5,000 left the segment
        code, mirrored, err = run_cli(tmp_path, source, list_id, url, "--mode", "mirror")
        assert code == 0, err
        stats = httpx.get(f"{url}/__emulator/stats").json()
        members = list_emails_despite_faults(url, list_id, seed)
    ARTIFACTS.mkdir(exist_ok=True)  # the figures docs/RELIABILITY.md quotes
    figures = {"seed": seed, "rows": rows, "requests": stats["requests"], "faults_injected": stats["faults_injected"]}
    (ARTIFACTS / f"faults-seed-{seed}.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))

    assert sum(stats["faults_injected"].values()) >= 10, figures  # (list read-backs run with faults off)
    for report in (subscribed, mirrored):
        assert report["status"] == "succeeded", report
        assert report["profiles_submitted"] == report["profiles_imported"] + report["profiles_failed"]
        assert report["profiles_failed"] == 0
    assert subscribed["profiles_imported"] == rows and subscribed["profiles_subscribed"] == rows // 2
    assert members_after_subscribe == {email_for(i) for i in range(rows)}
    assert mirrored["profiles_removed"] == 5_000
    assert members == {email_for(i) for i in range(rows - 5_000)}


def list_emails_despite_faults(url: str, list_id: str, seed: int) -> set[str]:
    httpx.post(f"{url}/__emulator/faults", json={"random": {"rate": 0}}).raise_for_status()
    try:
        return list_emails(url, list_id)
    finally:
        rule = {"random": {"rate": 0.2, "seed": seed + 100, "kinds": ["throttle", "error", "drop"]}}
        httpx.post(f"{url}/__emulator/faults", json=rule).raise_for_status()


def _new_list_despite_faults(url: str, seed: int) -> str:
    httpx.post(f"{url}/__emulator/faults", json={"random": {"rate": 0}}).raise_for_status()
    list_id = new_list(url)
    httpx.post(
        f"{url}/__emulator/faults", json={"random": {"rate": 0.2, "seed": seed, "kinds": ["throttle", "error", "drop"]}}
    ).raise_for_status()
    return list_id


def _history_phase(workdir) -> str | None:
    for path in (workdir / "history").glob("*.json"):
        if path.name.startswith("."):  # the store's temporary file, about to be renamed into place
            continue
        try:
            record = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):  # replaced between the listing and the read
            continue
        return (record.get("customStatus") or {}).get("phase")
    return None


def _bulk_jobs(url: str) -> int:
    stats = httpx.get(f"{url}/__emulator/stats").json()
    return int(stats["endpoints"].get("POST /api/profile-bulk-import-jobs", {}).get("responses", {}).get("202", 0))


SLOW = {  # what holds a run in each phase long enough to kill it there
    "planning": {"kind": "slow", "path": "/api/lists/*", "method": "GET", "delay": 1.5},
    "pushing": {"kind": "slow", "path": "/api/profile-bulk-import-jobs", "method": "POST", "delay": 1.5},
    "finishing": {"kind": "slow", "path": "/api/profile-bulk-import-jobs/*/import-errors", "delay": 1.5},
}


@pytest.mark.parametrize("phase", ["planning", "pushing", "waiting_for_klaviyo", "finishing"])
def test_killed_command_line_resumes_and_ends_exact(tmp_path, phase):
    """SIGKILL while planning, pushing (calls answered slowly), waiting for Klaviyo's jobs (emulator clock
    frozen) or finishing (reading import errors slowly), then the same command again: the run resumes, the
    list ends exact, finished pushes are not sent again, and the sync state is committed by the resumed
    run. One row is one Klaviyo fails inside its job, so that finishing has import errors to read."""
    rows = 40_000  # 4 units of 10,000
    store = LocalStore(tmp_path / "src")
    source = tmp_path / "src" / write_ci_export(store, rows, partitions=2)
    partition = next(n for n in store.list() if n.endswith("_1.csv"))
    store.write_bytes(partition, store.read_bytes(partition) + b'"X","someone@fail.invalid","","","","","",""\r\n')
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "1") as url:
        list_id = new_list(url)
        if phase in SLOW:
            httpx.post(f"{url}/__emulator/faults", json=SLOW[phase]).raise_for_status()
        else:
            httpx.post(f"{url}/__emulator/clock", json={"freeze": True}).raise_for_status()
        cmd = [
            sys.executable, "-m", "localdev", "export", str(source), "--list-id", list_id, "--email-field", "Email",
            "--klaviyo-url", url, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"),
        ]  # fmt: skip
        env = {**os.environ, "KLAVIYO_API_KEY": EMULATOR_KEY, "PUSH_WAVE_WIDTH": "2"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _history_phase(tmp_path / "work") != phase:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never reached the phase"
            time.sleep(0.02)  # polling a file another process writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        jobs_before = _bulk_jobs(url)

        httpx.delete(f"{url}/__emulator/faults").raise_for_status()
        httpx.post(f"{url}/__emulator/clock", json={"freeze": False, "advance": 5}).raise_for_status()
        code, report, err = run_cli(tmp_path, source, list_id, url)
        jobs_after = _bulk_jobs(url)
        members = list_emails(url, list_id)

    assert code == 0, err
    assert report["status"] == "partially_succeeded"  # the one row Klaviyo failed, reported with its row
    assert (report["profiles_imported"], report["profiles_failed"]) == (rows, 1)
    assert [f["reason"] for f in report["failures_sample"]] != []
    assert members == {email_for(i) for i in range(rows)}
    jobs = 5  # 40,001 profiles: 5 bulk import jobs
    if phase == "planning":
        assert jobs_before == 0 and jobs_after == jobs
    elif phase == "pushing":
        assert jobs_after <= jobs + 2  # at most the wave in flight when killed is sent again
    else:
        assert jobs_before == jobs and jobs_after == jobs  # every push had finished: none was sent again
    state = orjson.loads((tmp_path / "state" / "state" / "local" / list_id / "meta.json").read_bytes())
    assert state["run_id"] == report["run_id"] and state["profiles"] == rows  # less the failed one


def test_the_key_never_lands_in_history_workspace_reports_or_output(tmp_path):
    """A canary key that Klaviyo (the emulator) accepts, over a whole run with rejects and import errors, and
    over a failed run (unknown list): nothing the app writes or prints holds it."""
    canary = "pk_canary_5f1c9a7e3b2d4c6a8e0f"
    store = LocalStore(tmp_path / "src")
    source = tmp_path / "src" / write_ci_export(store, 2_000, partitions=1)
    with run_emulator(canary, "--rate-limits", "off") as url:
        async_list = _list_with_key(url, canary)
        ok = subprocess.run(
            [sys.executable, "-m", "localdev", "export", str(source), "--list-id", async_list, "--email-field", "Email",
             "--klaviyo-url", url, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"),
             "--report", str(tmp_path / "ok.json")],
            cwd=ROOT, env={**os.environ, "KLAVIYO_API_KEY": canary}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        failed = subprocess.run(
            [sys.executable, "-m", "localdev", "export", str(source), "--list-id", "NoSuchList", "--email-field",
             "Email", "--klaviyo-url", url, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")],
            cwd=ROOT, env={**os.environ, "KLAVIYO_API_KEY": canary}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert failed.returncode == 1
    for output in (ok.stdout, ok.stderr, failed.stdout, failed.stderr):
        assert canary not in output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.parts]
    assert any("history" in p.parts for p in written) and any("reports" in p.parts for p in written)
    for path in written:
        assert canary.encode() not in path.read_bytes(), path


def _list_with_key(url: str, key: str) -> str:
    import asyncio

    from shared.pushing.klaviyo.client import KlaviyoClient

    async def go():
        async with KlaviyoClient(key, url) as client:
            return await client.create_list("canary")

    return asyncio.run(go())
