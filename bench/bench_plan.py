"""Plan-pass benchmark: read + validate + de-duplicate + fingerprint an 8-column Customer Insights export.

    .venv/bin/python -m bench.bench_plan [--rows 1000000] [--runs 3]

Each run is a fresh process pinned to one core (taskset when available), so peak memory (ru_maxrss) is
the run's own. Prints one line per run and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def export_for(rows: int) -> Path:
    folder = OUT / f"export-{rows}"
    model = folder / "CustomerInsights_demo/klaviyo-export/model.json"
    if not model.exists():
        from localdev.sample import write_ci_export
        from shared.platform.storage import LocalStore

        shutil.rmtree(folder, ignore_errors=True)
        write_ci_export(LocalStore(folder), rows, partitions=4)
    return model


def one_run(model: str) -> None:
    import resource

    from shared.planning.plan import plan_export
    from shared.planning.profiles import ProfileMapper
    from shared.platform.storage import LocalStore
    from shared.reading.source import resolve_source_arg

    work = OUT / "work"
    source = resolve_source_arg(model)
    mapper = ProfileMapper(
        source.columns,
        "Email",
        {"FirstName": "first_name", "LastName": "last_name", "City": "location.city", "LoyaltyTier": "properties.tier"},
    )
    t0 = time.perf_counter()
    summary = plan_export(source, mapper, LocalStore(work), "bench/")
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": summary["rows_read"], "seconds": round(elapsed, 3),
                      "rows_per_s": round(summary["rows_read"] / elapsed), "peak_mb": round(peak_mb, 1)}))  # fmt: skip


def pinned_runs(module: str, one_run) -> list[dict] | None:
    """The benches' command line: `--one MODEL` is a single measured run (`one_run`); otherwise `--runs`
    fresh processes of `module --one`, each pinned to one core (taskset when available) so its peak memory
    is its own, on the export of `--rows`. Returns the JSON line each printed (echoed as it comes)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.one)
        return None
    model = export_for(args.rows)
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    results = []
    for _ in range(args.runs):
        proc = subprocess.run(
            [*pin, sys.executable, "-m", module, "--one", str(model)],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    return results


def main() -> None:
    results = pinned_runs("bench.bench_plan", one_run)
    if results:
        medians = {
            "median_rows_per_s": statistics.median(r["rows_per_s"] for r in results),
            "median_seconds": statistics.median(r["seconds"] for r in results),
        }
        print(json.dumps({**medians, "max_peak_mb": max(r["peak_mb"] for r in results)}))


if __name__ == "__main__":
    main()
