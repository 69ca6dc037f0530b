"""End-to-end benchmark through the command line (orchestrator + activities on the local durable driver)
into the Klaviyo emulator over HTTP:

  full      a first run of N rows (Klaviyo's rate limits on by default)
  unchanged the same export again (incremental: nothing to send)
  changed   1% of rows changed (about N/100 profiles sent)

    .venv/bin/python -m bench.bench_pipeline [--rows 1000000] [--rate-limits klaviyo|off] [--job-latency 0]

Prints one JSON line per scenario: wall seconds, peak RSS of the command (MB), profiles sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from localdev.sample import write_ci_export
from localdev.services import run_emulator
from shared.platform.storage import LocalStore
from shared.pushing.klaviyo.client import KlaviyoClient

ROOT = Path(__file__).resolve().parent.parent
KEY = "pk_bench_0123456789abcdef"
MAPPINGS = ["--field", "FirstName=first_name", "--field", "LastName=last_name", "--field", "City=location.city",
            "--field", "LoyaltyTier=properties.tier"]  # fmt: skip


def new_list(url: str) -> str:
    async def go():
        async with KlaviyoClient(KEY, url) as client:
            return await client.create_list("bench")

    return asyncio.run(go())


def emulator_429s(url: str) -> int:
    return httpx.get(f"{url}/__emulator/stats").json()["throttled_429"]


def run_cli(source: Path, list_id: str, url: str, work: Path) -> dict:
    report = work / "report.json"
    cmd = [sys.executable, "-m", "localdev", "export", str(source), "--list-id", list_id, "--email-field", "Email",
           "--klaviyo-url", url, "--workdir", str(work / "runs"), "--state", str(work / "state"),
           "--report", str(report), *MAPPINGS]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "KLAVIYO_API_KEY": KEY}, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    body = json.loads(report.read_text())
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(max(peak, before) / 1024, 1),
        "status": body["status"],
        "sent": body["profiles_submitted"],
        "unchanged": body["profiles_unchanged"],
        "imported": body["profiles_imported"],
        "jobs": len(body["jobs"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate-limits", choices=("klaviyo", "off"), default="klaviyo")
    parser.add_argument("--job-latency", default="0")
    parser.add_argument("--scenarios", default="full,unchanged,changed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        store = LocalStore(work / "src")
        source = work / "src" / write_ci_export(store, args.rows, partitions=4)
        emulator_args = ["--rate-limits", args.rate_limits, "--job-latency", args.job_latency]
        with run_emulator(KEY, *emulator_args) as url:
            list_id = new_list(url)
            for scenario in args.scenarios.split(","):
                if scenario == "changed":
                    write_ci_export(store, args.rows, partitions=4, changed_every=100, version=1)
                throttled = emulator_429s(url)
                result = run_cli(source, list_id, url, work)
                result["answered_429"] = emulator_429s(url) - throttled  # Klaviyo's "slow down", as counted there
                print(json.dumps({"scenario": scenario, "rows": args.rows, "rate_limits": args.rate_limits, **result}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
