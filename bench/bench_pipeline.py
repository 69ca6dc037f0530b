"""End-to-end benchmark through the command line (orchestrator + activities on the local durable driver)
into the Klaviyo emulator over HTTP:

  full      a first run of N rows (Klaviyo's rate limits on by default)
  unchanged the same export again (incremental: nothing to send)
  changed   1% of rows changed (about N/100 profiles sent)

    .venv/bin/python -m bench.bench_pipeline [--rows 1000000] [--rate-limits klaviyo|off] [--job-latency 0]
        [--samples clean,realistic] [--runs 1]

The clean sample and the realistic one (`localdev sample --realistic`) run side by side: each round runs
the scenarios on one, then on the other, each from a fresh state and list, and a fresh emulator account:
both samples hold the same emails, so without the reset the second one's "full" run would update the
first one's profiles (the emulator's per-profile path, 5x the CPU of a first import) and start inside the
first one's rate window. Prints one JSON line per
scenario: wall seconds, peak RSS of the command (MB), profiles sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_plan import write_export
from localdev.services import run_emulator
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
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "KLAVIYO_API_KEY": KEY}, stdout=subprocess.DEVNULL)
    _, code, usage = os.wait4(proc.pid, 0)  # this command's own peak, not the highest of every child so far
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(code)
    if proc.returncode:
        raise SystemExit(f"the export command failed ({proc.returncode})")
    body = json.loads(report.read_text())
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
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
    parser.add_argument("--samples", default="clean,realistic", help="clean, realistic or both (side by side)")
    parser.add_argument("--runs", type=int, default=1, help="rounds (each runs every sample)")
    args = parser.parse_args()
    emulator_args = ["--rate-limits", args.rate_limits, "--job-latency", args.job_latency]
    with run_emulator(KEY, *emulator_args) as url:
        for _ in range(args.runs):
            for sample in args.samples.split(","):
                realistic = sample == "realistic"
                work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
                try:
                    source = write_export(work / "src", args.rows, realistic=realistic)
                    httpx.post(f"{url}/__emulator/reset", timeout=300).raise_for_status()  # empty, full rate budget
                    list_id = new_list(url)
                    for scenario in args.scenarios.split(","):
                        if scenario == "changed":
                            write_export(work / "src", args.rows, changed_every=100, version=1, realistic=realistic)
                        throttled = emulator_429s(url)
                        result = run_cli(source, list_id, url, work)
                        result["answered_429"] = emulator_429s(url) - throttled  # Klaviyo's "slow down", as counted
                        print(
                            json.dumps(
                                {
                                    "sample": sample,
                                    "scenario": scenario,
                                    "rows": args.rows,
                                    "rate_limits": args.rate_limits,
                                    **result,
                                }
                            ),
                            flush=True,
                        )
                finally:
                    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
