"""How fast the Klaviyo emulator ingests bulk profile imports (it must never be the bottleneck).

Starts the emulator as a child process (rate limits off, job latency 0), then per run: resets it, sends
JOBS bulk-import jobs of 10,000 new profiles each (bodies pre-serialised, CONCURRENCY connections), waits
until every job reads `complete` and checks the profile count and list size. Prints profiles/s per run
and the median of the runs.

    .venv/bin/python -m bench.bench_emulator [--jobs 20] [--runs 3] [--concurrency 2] [--no-msgspec]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localdev.services import run_emulator

KEY = "pk_bench_emulator_key"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {KEY}",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}
PER_JOB = 10_000


def build_bodies(run: int, jobs: int, list_id: str) -> list[bytes]:
    bodies = []
    for j in range(jobs):
        profiles = [
            {
                "type": "profile",
                "attributes": {
                    "email": f"r{run}.j{j}.p{i}@example.com",
                    "external_id": f"ci-{run}-{j}-{i}",
                    "first_name": "Ada",
                    "last_name": f"Lovelace{i}",
                    "properties": {"segment": "high-value", "source": "customer-insights"},
                },
            }
            for i in range(PER_JOB)
        ]
        body = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": profiles}},
                "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
            }
        }
        bodies.append(orjson.dumps(body))
    return bodies


async def one_run(url: str, run: int, jobs: int, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=120) as client:
        (await client.post("/__emulator/reset")).raise_for_status()
        r = await client.post(
            "/api/lists", content=orjson.dumps({"data": {"type": "list", "attributes": {"name": "b"}}})
        )
        r.raise_for_status()
        list_id = r.json()["data"]["id"]
        bodies = build_bodies(run, jobs, list_id)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        job_ids: list[str] = []

        async def sender() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                resp = await client.post("/api/profile-bulk-import-jobs", content=body)
                if resp.status_code != 202:
                    raise RuntimeError(f"import answered {resp.status_code}: {resp.text[:300]}")
                job_ids.append(resp.json()["data"]["id"])

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        for job_id in job_ids:  # poll (latency 0: already complete)
            while True:
                attrs = (await client.get(f"/api/profile-bulk-import-jobs/{job_id}")).json()["data"]["attributes"]
                if attrs["status"] == "complete":
                    break
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        stats = (await client.get("/__emulator/stats")).json()
        count = (await client.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"})).json()
        expected = jobs * PER_JOB
        if stats["state"]["profiles"] != expected or count["data"]["attributes"]["profile_count"] != expected:
            raise RuntimeError(f"expected {expected} profiles, emulator has {stats['state']}")
        return expected / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="10,000-profile jobs per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="connections sending in parallel")
    parser.add_argument("--no-msgspec", action="store_true", help="the emulator's orjson path (msgspec missing)")
    args = parser.parse_args()
    extra = ("--no-msgspec",) if args.no_msgspec else ()
    with run_emulator(KEY, "--rate-limits", "off", "--job-latency", "0", *extra) as url:
        rates = []
        for run in range(args.runs):
            rate = asyncio.run(one_run(url, run, args.jobs, args.concurrency))
            rates.append(rate)
            print(f"run {run + 1}: {rate:,.0f} profiles/s ({args.jobs} jobs x {PER_JOB:,} profiles)", flush=True)
    print(f"median: {statistics.median(rates):,.0f} profiles/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
