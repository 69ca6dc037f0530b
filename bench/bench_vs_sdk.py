"""Side by side, in one run: this app against what a capable user would write with Klaviyo's official SDK
(`klaviyo-api`: the csv module, sequential 10,000-profile jobs, waiting for each job), on the same export
and the same emulator (rate limits off, no artificial job latency).

    .venv/bin/python -m bench.bench_vs_sdk [--rows 200000] [--runs 3] [--realistic]

With --realistic, on the realistic sample (`localdev sample --realistic`): the script skips rows of the
wrong width and rows whose email the app's own pattern rejects (a capable user validates before sending:
Klaviyo refuses a whole job over one bad address), so the comparison is one of speed alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from klaviyo_api import KlaviyoAPI

from bench.bench_pipeline import KEY, new_list, run_cli
from bench.bench_plan import write_export
from localdev.services import run_emulator
from shared.planning.profiles import email_ok


def sdk_baseline(model_path: Path, url: str, list_id: str) -> float:
    t0 = time.perf_counter()
    sdk = KlaviyoAPI(KEY, max_delay=60, max_retries=3, test_host=url)
    model = orjson.loads(model_path.read_bytes())
    entity = model["entities"][0]
    columns = [a["name"] for a in entity["attributes"]]
    batch: list[dict] = []

    def send(profiles: list[dict]) -> None:
        body = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": profiles}},
                "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
            }
        }
        job = sdk.Profiles.bulk_import_profiles(body)
        job_id = job.data.id
        while sdk.Profiles.get_bulk_import_profiles_job(job_id).data.attributes.status != "complete":
            time.sleep(0.05)

    for part in entity["partitions"]:
        relative = part["location"].split("/klaviyo-export/", 1)[1]
        with open(model_path.parent / relative, newline="", encoding="utf-8-sig") as f:
            for values in csv.reader(f):
                if len(values) != len(columns):
                    continue
                row = dict(zip(columns, values, strict=True))
                email = row["Email"].strip().lower()
                if not email_ok(email):
                    continue
                batch.append(
                    {
                        "type": "profile",
                        "attributes": {
                            "email": email,
                            "first_name": row["FirstName"],
                            "last_name": row["LastName"],
                            "location": {"city": row["City"]},
                            "properties": {"tier": row["LoyaltyTier"]},
                        },
                    }
                )
                if len(batch) == 10_000:
                    send(batch)
                    batch = []
    if batch:
        send(batch)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--realistic", action="store_true", help="the realistic sample instead of the clean one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-vs-sdk-"))
    try:
        source = write_export(work / "src", args.rows, realistic=args.realistic)
        ratios = []
        with run_emulator(KEY, "--rate-limits", "off", "--job-latency", "0") as url:
            for i in range(args.runs):
                baseline = sdk_baseline(source, url, new_list(url))
                ours = run_cli(source, new_list(url), url, work / f"ours-{i}")
                ratios.append(baseline / ours["wall_s"])
                result = {"rows": args.rows, "realistic": args.realistic, "sdk_s": round(baseline, 2)}
                result |= {"app_s": ours["wall_s"], "app_peak_mb": ours["peak_rss_mb"]}
                print(json.dumps({**result, "ratio": round(ratios[-1], 2)}))
        print(json.dumps({"median_ratio": round(statistics.median(ratios), 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
