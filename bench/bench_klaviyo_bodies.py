"""Throughput of bulk-import body building: profiles/s for batching and body assembly.

    .venv/bin/python -m bench.bench_klaviyo_bodies [--profiles 500000] [--wide]

Three numbers: serialising rows with orjson (the pipeline's share, for scale), splitting the
serialised profiles into jobs (``build_batches``), and assembling every job's request body.
"""

from __future__ import annotations

import argparse
import gc
import time

import orjson

from shared.pushing.klaviyo import build_batches, serialize_profile


def rows(n: int, wide: bool):
    for i in range(n):
        attrs = {
            "email": f"customer.{i}@example.com",
            "external_id": f"ci-{i:010d}",
            "first_name": "Alexandra",
            "last_name": f"Lastname{i}",
            "phone_number": f"+1415555{i % 10000:04d}",
            "location": {"city": "Seattle", "country": "US", "region": "WA", "zip": "98101"},
            "properties": {"segment": "High value", "ci_score": i % 100, "loyalty_tier": "gold"},
        }
        if wide:
            attrs["properties"].update({f"attr_{k}": f"value {k} for customer {i}" for k in range(60)})
        yield f"part-{i // 100_000:05d}.csv:row {i % 100_000 + 1}", attrs


def best_of(repeats: int, fn):
    best = float("inf")
    result = None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=500_000)
    ap.add_argument("--wide", action="store_true", help="~3 KB profiles instead of ~400 B")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.profiles

    source = list(rows(n, args.wide))
    t_ser, items = best_of(args.repeats, lambda: [(loc, serialize_profile(a)) for loc, a in source])
    avg = sum(len(p) for _, p in items) / n
    t_batch, batches = best_of(args.repeats, lambda: list(build_batches(items)))
    t_body, total = best_of(args.repeats, lambda: sum(len(b.body("AbC123")) for b in batches))
    # sanity: the bodies are the JSON they claim to be
    assert len(orjson.loads(batches[0].body("AbC123"))["data"]["attributes"]["profiles"]["data"]) == len(batches[0])

    print(f"{n:,} profiles, {avg:,.0f} B each on average, {len(batches)} jobs, {total / 1e6:,.1f} MB of bodies")
    print(f"serialise (orjson, pipeline side): {n / t_ser:>14,.0f} profiles/s")
    print(f"build_batches:                     {n / t_batch:>14,.0f} profiles/s")
    print(f"body assembly:                     {n / t_body:>14,.0f} profiles/s ({total / t_body / 1e9:.2f} GB/s)")
    t_all = t_batch + t_body
    print(f"batches + bodies:                  {n / t_all:>14,.0f} profiles/s")


if __name__ == "__main__":
    main()
