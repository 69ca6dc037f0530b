"""Plan-pass benchmark: read + validate + de-duplicate + fingerprint an 8-column Customer Insights export.

    .venv/bin/python -m bench.bench_plan [--rows 1000000] [--runs 3] [--samples clean,realistic]

Each run is a fresh process pinned to one core (taskset when available), so peak memory (ru_maxrss) is
the run's own. The clean sample and the realistic one (`localdev sample --realistic`: missing, invalid and
repeated emails, a short row, BOM, quoted line breaks...) run side by side, one run of each in turn, so a
noisy neighbour weighs on both alike. Prints one line per run, then the medians of each sample and the
realistic/clean ratio.
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


def write_export(folder: Path, rows: int, **options) -> Path:
    """localdev.sample's export of `rows` rows in 4 partitions, written by a child process: a child started
    by this one inherits its peak RSS (Linux keeps the larger of the two across fork and exec), so the
    benches' own memory stays small and each measured command's peak is its own. Returns model.json."""
    code = (
        "import sys, json; from localdev.sample import write_ci_export; "
        "from shared.platform.storage import LocalStore; "
        "options = json.loads(sys.argv[3]); "
        "print(write_ci_export(LocalStore(sys.argv[1]), int(sys.argv[2]), partitions=4, **options))"
    )
    cmd = [sys.executable, "-c", code, str(folder), str(rows), json.dumps(options)]
    out = subprocess.run(cmd, cwd=OUT.parent.parent, capture_output=True, text=True, check=True)
    return folder / out.stdout.strip()


def export_for(rows: int, realistic: bool = False) -> Path:
    folder = OUT / f"export-{rows}{'-realistic' if realistic else ''}"
    model = folder / "CustomerInsights_demo/klaviyo-export/model.json"
    if not model.exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_export(folder, rows, realistic=realistic)
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


def pinned_runs(module: str, one_run) -> dict[str, list[dict]] | None:
    """The benches' command line: `--one MODEL` is a single measured run (`one_run`); otherwise `--runs`
    rounds of fresh processes of `module --one`, one per sample of `--samples` in turn (clean, realistic),
    each pinned to one core (taskset when available) so its peak memory is its own, on the exports of
    `--rows`. Returns the JSON lines each printed, by sample (echoed as they come)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", default="clean,realistic", help="clean, realistic or both (side by side)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.one)
        return None
    samples = args.samples.split(",")
    models = {sample: export_for(args.rows, realistic=sample == "realistic") for sample in samples}
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    results: dict[str, list[dict]] = {sample: [] for sample in samples}
    for _ in range(args.runs):
        for sample, model in models.items():
            proc = subprocess.run(
                [*pin, sys.executable, "-m", module, "--one", str(model)],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
            results[sample].append({"sample": sample, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(json.dumps(results[sample][-1]))
    return results


def medians(results: dict[str, list[dict]], keys: tuple[str, ...]) -> None:
    """One line per sample: the medians of `keys` and the highest peak; then realistic / clean."""
    summary = {}
    for sample, runs in results.items():
        summary[sample] = {f"median_{k}": statistics.median(r[k] for r in runs) for k in keys}
        summary[sample]["max_peak_mb"] = max(r["peak_mb"] for r in runs)
        print(json.dumps({"sample": sample, **summary[sample]}))
    if {"clean", "realistic"} <= summary.keys():
        clean, real = summary["clean"], summary["realistic"]
        print(json.dumps({"realistic_over_clean": {k: round(real[k] / clean[k], 2) for k in clean if clean[k]}}))


def main() -> None:
    results = pinned_runs("bench.bench_plan", one_run)
    if results:
        medians(results, ("rows_per_s", "seconds"))


if __name__ == "__main__":
    main()
