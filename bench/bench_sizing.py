"""Sizing: the peak memory of one plan activity, one push activity and a worker running a wave of pushes,
from which host.json's durable concurrency and the Flex instance memory are set (docs/OPERATIONS.md).

    .venv/bin/python -m bench.bench_sizing [--rows 1000000 5000000] [--wave 8] [--plans 4] [--realistic]

Each measurement is a fresh process that imports the whole Functions app (as the Python worker does) and
calls the activity functions of functions/activities.py on a run built by shared.runs.build_run, local
stores, against the Klaviyo emulator (rate limits off). Peak memory is the process's VmHWM; "base" is
its RSS after the imports. Times on a shared machine are not reliable; memory is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_plan import export_for

KEY = "pk_bench_sizing_0123456789"


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    """VmHWM, the high-water mark of this process's own memory. (ru_maxrss is not: Linux carries it over
    an exec from the forked copy of the parent, so a parent that generated a 5 M-row export in memory
    would show through as every child's peak.)"""
    return _status_mb("VmHWM")


def make_run(model: Path, work: Path, klaviyo_url: str, list_id: str) -> dict:
    from localdev.sample import DEFAULT_MAPPINGS
    from shared.platform.config import Connection, ExportConfig, PrivacyAcceptance, SourceConfig
    from shared.platform.runtime import local_store
    from shared.platform.settings import AppSettings
    from shared.runs import build_run

    cfg = ExportConfig(
        name="sizing",
        connection="local",
        list_id=list_id,
        source=SourceConfig(kind="cdm", path_prefix="bench/"),
        email_field="Email",
        field_mappings=DEFAULT_MAPPINGS,
    )
    accepted = PrivacyAcceptance(accepted_by="bench", accepted_at=datetime.now(UTC))
    conn = Connection(name="local", secret_name="klaviyo-local", privacy_acceptance=accepted)
    return build_run(
        cfg,
        conn,
        model.name,
        AppSettings(),
        f"sizing.{int(time.time() * 1000)}",
        full_resync=True,
        source_store=local_store(str(model.parent)),
        root_parts=list(model.parent.parts[1:]),
        workspace_store=local_store(str(work / "work")),
        state_store=local_store(str(work / "state")),
        reports_store=local_store(str(work / "reports")),
        klaviyo_base_url=klaviyo_url,
    )


def child(kind: str, run_file: str, count: int) -> None:
    """One measured process: `plan`, `plans` (`count` at once), `push` (unit 0), `wave` (units 0..count-1 at
    once on threads) or `finish` (after `push`, with unit 0's jobs unfinished)."""
    import function_app  # noqa: F401  the worker imports the whole app before it runs anything
    from functions import activities

    base = _rss_mb()
    run = json.loads(Path(run_file).read_text())
    t0 = time.perf_counter()
    if kind == "plan":
        out = activities.plan_export(run)
        assert "fatal" not in out, out
        Path(run_file + ".plan").write_text(json.dumps(out))
        done = out["rows_read"]
    elif kind == "plans":  # plans of `count` exports at once, each in its own workspace
        runs = [{**run, "workspace": {**run["workspace"], "prefix": f"plans/{i}/"}} for i in range(count)]
        with ThreadPoolExecutor(count) as pool:
            done = sum(out["rows_read"] for out in pool.map(activities.plan_export, runs))
    elif kind == "finish":  # unit 0's jobs never completed: its profiles are left out of the committed state
        outcome = {"plan": json.loads(Path(run_file + ".plan").read_text()), "pushes": [{"unit": 0}], "jobs": []}
        report = activities.finish_export({"run": run, "outcome": outcome})
        done = report["profiles_failed"]
    else:
        units = json.loads(Path(run_file + ".plan").read_text())["units"][: (1 if kind == "push" else count)]
        payloads = [{"run": run, "index": i, "unit": u} for i, u in enumerate(units)]
        with ThreadPoolExecutor(len(payloads)) as pool:  # the worker runs sync activities on its threads
            results = list(pool.map(activities.push_unit, payloads))
        assert all("fatal" not in r for r in results), results
        done = sum(r["submitted"] for r in results)
    print(json.dumps({"kind": kind, "count": count, "done": done, "seconds": round(time.perf_counter() - t0, 1),
                      "base_mb": round(base, 1), "peak_mb": round(_peak_mb(), 1)}))  # fmt: skip


def measure(kind: str, run_file: Path, count: int = 1) -> dict:
    env = {**os.environ, "KLAVIYO_API_KEY": KEY, "KEY_VAULT_URL": "", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_sizing", "--child", kind, str(run_file), str(count)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--wave", type=int, default=8)
    parser.add_argument("--plans", type=int, default=0, help="also plan this many exports at once in one worker")
    parser.add_argument("--realistic", action="store_true", help="the realistic sample (localdev sample --realistic)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    import asyncio

    from localdev.services import run_emulator
    from shared.pushing.klaviyo.client import KlaviyoClient

    async def new_list(url: str) -> str:
        async with KlaviyoClient(KEY, url) as client:
            return await client.create_list("sizing")

    with run_emulator(KEY, "--rate-limits", "off", "--job-latency", "0") as url:
        for rows in args.rows:
            model = export_for(rows, realistic=args.realistic)
            with tempfile.TemporaryDirectory(prefix="sizing-") as tmp:
                run_file = Path(tmp) / "run.json"
                run_file.write_text(json.dumps(make_run(model, Path(tmp), url, asyncio.run(new_list(url)))))
                steps = [("plan", 1), ("push", 1), ("wave", args.wave), ("finish", 1)]
                steps += [("plans", args.plans)] if args.plans else []
                for kind, count in steps:
                    sample = "realistic" if args.realistic else "clean"
                    print(json.dumps({"rows": rows, "sample": sample, **measure(kind, run_file, count)}), flush=True)


if __name__ == "__main__":
    main()
