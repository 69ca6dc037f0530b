"""CPU fast path on one core: read, validate, fingerprint (the plan pass), then read every unit back and build
its bulk import bodies exactly as a push activity does (everything but the HTTP calls).

    .venv/bin/python -m bench.bench_fastpath [--rows 1000000] [--runs 3] [--samples clean,realistic]

Each run is a fresh process pinned to one core (taskset when available), so its peak memory (ru_maxrss) is
its own. The clean and the realistic sample run side by side (see bench_plan). Prints one JSON line per
run, then the medians of each sample and their ratio. Rates are given on wall time and on the process's
CPU time: these shared VMs lose 5-10% of a core to their neighbours (steal), and CPU time leaves that out.
"""

from __future__ import annotations

import json
import time

from bench.bench_plan import OUT, medians, pinned_runs

MAPPINGS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "City": "location.city",
    "LoyaltyTier": "properties.tier",
}


def one_run(model: str) -> None:
    import resource

    from shared.pipeline import build_unit
    from shared.planning.plan import plan_export
    from shared.planning.profiles import ProfileMapper
    from shared.planning.units import PlanReader
    from shared.platform.storage import LocalStore
    from shared.pushing.klaviyo.batching import import_body
    from shared.reading.source import resolve_source_arg

    work = LocalStore(OUT / "work-fastpath")
    source = resolve_source_arg(model)
    mapper = ProfileMapper(source.columns, "Email", MAPPINGS)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = plan_export(source, mapper, work, "bench/")
    t1, c1 = time.perf_counter(), time.process_time()
    reader = PlanReader(work, "bench/")
    profiles = body_bytes = 0
    for unit in summary["units"]:
        batches = build_unit(reader, source.store, unit, mapper, subscribing=False)[0]
        for batch in batches:
            body_bytes += len(import_body(batch.profiles, "LIST01"))
            profiles += len(batch)
    t2, c2 = time.perf_counter(), time.process_time()
    rows = summary["rows_read"]
    print(json.dumps({
        "rows": rows, "profiles": profiles, "body_mb": round(body_bytes / 1e6),
        "plan_s": round(t1 - t0, 3), "bodies_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
        "plan_rows_per_s": round(rows / (t1 - t0)), "fastpath_rows_per_s": round(rows / (t2 - t0)),
        "plan_cpu_s": round(c1 - c0, 3), "bodies_cpu_s": round(c2 - c1, 3),
        "plan_rows_per_cpu_s": round(rows / (c1 - c0)), "fastpath_rows_per_cpu_s": round(rows / (c2 - c0)),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))  # fmt: skip


def main() -> None:
    results = pinned_runs("bench.bench_fastpath", one_run)
    if results:
        keys = ("plan_rows_per_s", "fastpath_rows_per_s", "plan_rows_per_cpu_s", "fastpath_rows_per_cpu_s")
        medians(results, (*keys, "plan_s", "bodies_s", "total_s", "plan_cpu_s", "bodies_cpu_s"))


if __name__ == "__main__":
    main()
