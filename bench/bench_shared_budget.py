"""Several exports started at once in separate processes that share a work folder, into the Klaviyo emulator
with Klaviyo's rate limits, as a segment refresh loads the app when it scales out (issue 19):

    .venv/bin/python -m bench.bench_shared_budget [--exports 4] [--rows 300000] [--realistic] [--tree PATH]
        [--logs DIR]
    .venv/bin/python -m bench.bench_shared_budget --draw-latency 500

Each process runs one export through the orchestrator and activities on the local durable driver (its own
history folder; the workspace, reports and state folders are shared, so the Klaviyo budget kept in the
workspace is shared too). ``--tree`` runs the processes on another checkout of the app (e.g. an older
commit) with this same driver, for a side-by-side. Prints one JSON line: wall time (start of the first
process to the end of the last), bulk import requests and how many the emulator answered 429, and each
list checked against the export's emails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "pk_bench_0123456789abcdef"
IMPORT = "POST /api/profile-bulk-import-jobs"
MAPPINGS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "City": "location.city",
    "LoyaltyTier": "properties.tier",
}


def worker(folder: Path, n: int, url: str, list_id: str) -> dict:
    """One export in this process, on the local durable driver (the app is imported from sys.path)."""
    from datetime import UTC, datetime

    import function_app
    from localdev.durable.driver import LocalDurableDriver
    from localdev.durable.store import LocalFolderHistoryStore
    from shared.platform.config import Connection, ExportConfig, PrivacyAcceptance, SourceConfig
    from shared.platform.runtime import local_store
    from shared.platform.settings import AppSettings
    from shared.runs import ORCHESTRATOR, build_run, instance_id

    source = folder / f"src-{n}"
    model = next(source.rglob("model.json"))
    entity = f"Segment{n}"
    cfg = ExportConfig(
        name=f"bench-{n}",
        connection="local",
        list_id=list_id,
        source=SourceConfig(kind="cdm", path_prefix="bench/", entity=entity),
        email_field="Email",
        field_mappings=MAPPINGS,
    )
    conn = Connection(
        name="local",
        secret_name="klaviyo-local",
        privacy_acceptance=PrivacyAcceptance(accepted_by="bench", accepted_at=datetime.now(UTC)),
    )
    settings = AppSettings(JOB_POLL_INTERVAL_S=1)
    run = build_run(
        cfg,
        conn,
        model.name,
        settings,
        instance_id(cfg.name, str(model), "bench", datetime.now(UTC)),
        source_store=local_store(str(model.parent)),
        root_parts=list(model.parent.parts[1:]),
        workspace_store=local_store(str(folder / "work")),
        state_store=local_store(str(folder / "state")),
        reports_store=local_store(str(folder / "reports")),
        klaviyo_base_url=url,
    )
    with LocalDurableDriver(function_app.app, LocalFolderHistoryStore(folder / f"history-{n}")) as driver:
        driver.start_new(ORCHESTRATOR, run["run_id"], run)
        final = driver.wait_for_status(run["run_id"], lambda s: s.is_terminal, timeout=None)
    report = final.output if isinstance(final.output, dict) else {"status": str(final.runtime_status)}
    out = {k: report.get(k) for k in ("status", "profiles_submitted", "profiles_imported", "duration_s")}
    try:  # the shared budget's storage round trips (absent on a checkout from before it)
        from shared.pushing.klaviyo import budget
    except ImportError:
        return out
    budgets = [lim.budget for lim in budget._LIMITERS.values() if lim.budget is not None]
    out["budget"] = {k: sum(getattr(b, k) for b in budgets) for k in ("round_trips", "slots", "fallbacks")}
    return out


def draw_latency(draws: int) -> dict:
    """Milliseconds per draw (one storage read + one conditional write) from one process, on a local folder
    and on Azurite (a tier wide enough that no draw waits)."""
    import statistics

    from localdev.services import run_azurite
    from shared.platform.storage import BlobStore, LocalStore
    from shared.pushing.klaviyo.budget import SharedBudget
    from shared.pushing.klaviyo.limits import Tier

    def measure(store) -> float:
        budget = SharedBudget(store, "bench", {"T": Tier(100_000, 1_000_000)})
        times = []
        for _ in range(draws):
            t0 = time.perf_counter()
            budget.draw("T", "op", lambda wall: wall)
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 2)

    with tempfile.TemporaryDirectory() as tmp, run_azurite() as azurite:
        blob = BlobStore.from_connection_string(azurite.connection_string, "bench")
        blob.ensure_container()
        return {"draws": draws, "local_ms": measure(LocalStore(tmp)), "azurite_ms": measure(blob)}


def members_of(rows: int, seed: int, realistic: bool) -> set[str]:
    """The emails an export of the sample should leave in its list (the realistic sample's dirt worked out
    from each row's kind, as tests/test_sample.py does)."""
    from localdev.sample import email_for, realistic_kind, repeated_member

    if not realistic:
        return {email_for(i) for i in range(rows)}
    members = set()
    for i in range(rows):
        kind = "idn_email" if i == rows // 3 else realistic_kind(i, seed)
        if i == rows // 2 or kind in ("missing_email", "invalid_email") or (kind == "idn_email" and i % 4 != 3):
            continue  # rejected
        if kind == "idn_email":
            members.add(f"customer{i}@xn--bcher-kva.example")
        elif kind == "repeat" and (j := repeated_member(i, seed)) is not None:
            members.add(email_for(j))
        else:
            members.add(email_for(i))
    return members


def import_stats(url: str) -> tuple[int, int]:
    ep = httpx.get(f"{url}/__emulator/stats").json()["endpoints"].get(IMPORT, {})
    return ep.get("requests", 0), int(ep.get("responses", {}).get("429", 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exports", type=int, default=4)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout of the app the exports run on")
    parser.add_argument("--job-latency", default="0")
    parser.add_argument("--realistic", action="store_true", help="the realistic sample (localdev sample --realistic)")
    parser.add_argument("--logs", type=Path, help="keep each process's log (stderr) in this folder")
    parser.add_argument("--draw-latency", type=int, metavar="N", help="only time N draws on a folder and Azurite")
    parser.add_argument("--worker", nargs=4, metavar=("FOLDER", "N", "URL", "LIST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.draw_latency:
        print(json.dumps(draw_latency(args.draw_latency)))
        return
    if args.worker:
        folder, n, url, list_id = args.worker
        print(json.dumps(worker(Path(folder), int(n), url, list_id)))
        return

    from localdev.sample import write_ci_export
    from localdev.services import run_emulator
    from shared.platform.storage import LocalStore
    from shared.pushing.klaviyo.client import KlaviyoClient
    from shared.pushing.klaviyo.limits import RateLimiter

    async def make_lists(url: str) -> list[str]:
        async with KlaviyoClient(KEY, url) as client:
            return [await client.create_list(f"bench-{n}") for n in range(args.exports)]

    async def members(url: str, list_id: str) -> set[str]:
        async with KlaviyoClient(KEY, url, limiter=RateLimiter.off()) as client:
            return {m["email"] async for m in client.iter_list_members(list_id, fields=("email",))}

    tree = args.tree.resolve()
    with (
        tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp,
        run_emulator(KEY, "--rate-limits", "klaviyo", "--job-latency", args.job_latency) as url,
    ):
        folder = Path(tmp)
        for n in range(args.exports):
            write_ci_export(
                LocalStore(folder / f"src-{n}"), args.rows, entity=f"Segment{n}", seed=n, realistic=args.realistic
            )
        lists = asyncio.run(make_lists(url))
        env = {**os.environ, "KLAVIYO_API_KEY": KEY, "PYTHONPATH": str(tree)}
        env.pop("KEY_VAULT_URL", None)
        t0 = time.perf_counter()
        me = str(Path(__file__).resolve())
        procs = [
            subprocess.Popen(
                [sys.executable, me, "--worker", str(folder), str(n), url, lists[n]],
                cwd=tree,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(args.exports)
        ]
        outs = [p.communicate() for p in procs]
        wall = time.perf_counter() - t0
        for n, (p, (_, err)) in enumerate(zip(procs, outs, strict=True)):
            if args.logs:
                (args.logs / f"worker-{n}.log").write_text(err)
            if p.returncode:
                raise SystemExit(f"a worker failed:\n{err[-3000:]}")
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
        requests, throttled = import_stats(url)
        httpx.post(f"{url}/__emulator/config", json={"rate_limits": "off"})  # our own check of the lists
        exact = [
            asyncio.run(members(url, list_id)) == members_of(args.rows, n, args.realistic)
            for n, list_id in enumerate(lists)
        ]
        budget_files = len(list((folder / "work").rglob("klaviyo-budget/*/*.json")))
    print(
        json.dumps(
            {
                "tree": str(tree),
                "exports": args.exports,
                "rows": args.rows,
                "sample": "realistic" if args.realistic else "clean",
                "wall_s": round(wall, 1),
                "import_requests": requests,
                "import_429": throttled,
                "import_429_share": round(throttled / requests, 3) if requests else 0.0,
                "lists_exact": exact,
                "statuses": [r["status"] for r in reports],
                "run_s": [r["duration_s"] for r in reports],
                "budget_objects": budget_files,
                "budget": {
                    k: sum(r.get("budget", {}).get(k, 0) for r in reports)
                    for k in ("round_trips", "slots", "fallbacks")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
