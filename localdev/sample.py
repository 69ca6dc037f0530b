"""Generate Customer Insights-shaped segment exports (model.json + CSV partitions) for demos, tests and benchmarks."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson

from shared.platform.storage import ObjectStore

COLUMNS = ["CustomerId", "Email", "FirstName", "LastName", "Phone", "City", "Country", "LoyaltyTier"]
FIRST = ["Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farah", "Giulia", "Hiro", "Iris", "Jonas", "Kai", "Lena"]
LAST = ["Smith", "García", "Müller", "O'Brien", "Kowalski", "Nguyen", "Rossi", "Tanaka", "Okafor", "Dubois"]
CITIES = ["Seattle", "London", "Paris", "Berlin, Mitte", "São Paulo", "Tokyo", "Lagos", "Sydney"]
TIERS = ["Gold", "Silver", "Bronze", 'Platinum "Elite"']
DEFAULT_MAPPINGS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "Phone": "phone_number",
    "City": "location.city",
    "Country": "location.country",
    "CustomerId": "external_id",
    "LoyaltyTier": "properties.loyalty_tier",
}


def email_for(i: int, domain: str = "example.com") -> str:
    return f"customer{i:08d}@{domain}"


def row_for(i: int, rng: random.Random, version: int = 0) -> list[str]:
    return [
        f"C{i:09d}",
        email_for(i),
        rng.choice(FIRST),
        rng.choice(LAST),
        f"+1425{i % 10_000_000:07d}",  # unique: a phone number identifies a Klaviyo profile too
        rng.choice(CITIES),
        "US",
        TIERS[(i + version) % len(TIERS)],
    ]


def _quote(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


def csv_lines(rows, quote_all: bool = True, newline: str = "\r\n") -> bytes:
    if quote_all:
        text = newline.join(",".join(_quote(f) for f in r) for r in rows)
    else:
        text = newline.join(",".join(f if not any(c in f for c in ',"\r\n') else _quote(f) for f in r) for r in rows)
    return (text + newline).encode("utf-8")


def write_ci_export(
    store: ObjectStore,
    rows: int,
    *,
    root: str = "CustomerInsights_demo/klaviyo-export",
    entity: str = "HighValueCustomers",
    partitions: int = 4,
    seed: int = 7,
    changed_every: int = 0,
    version: int = 0,
    account_url: str = "https://contosoci.blob.core.windows.net/segments",
) -> str:
    """Write an export the way Customer Insights does (partitions first, then model.json); returns model.json's
    name. Partition locations point at Customer Insights' own account, as real ones do. With
    `changed_every=N`, every Nth row's loyalty tier differs by `version` (for incremental-sync runs)."""
    rng = random.Random(seed)
    stamp = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    folder = f"{root}/{entity}/{stamp:%Y/%m/%d/%H%M}"
    per_part = -(-rows // partitions) if rows else 0
    parts = []
    for p in range(partitions):
        lo, hi = p * per_part, min(rows, (p + 1) * per_part)
        name = f"{folder}/{entity}_{p + 1}.csv"
        step = 50_000
        data = bytearray()
        for start in range(lo, hi, step):
            batch = []
            for i in range(start, min(hi, start + step)):
                v = version if changed_every and i % changed_every == 0 else 0
                batch.append(row_for(i, rng, v))
            data += csv_lines(batch)
        store.write_bytes(name, bytes(data))
        parts.append(
            {
                "name": f"{entity}_{p + 1}",
                "location": f"{account_url}/{name}",
                "refreshTime": stamp.isoformat(),
                "fileFormatSettings": {
                    "$type": "CsvFormatSettings",
                    "columnHeaders": False,
                    "delimiter": ",",
                    "quoteStyle": "QuoteStyle.Csv",
                    "csvStyle": "CsvStyle.QuoteAlways",
                    "encoding": "UTF-8",
                },
            }
        )
    model = {
        "name": root.rsplit("/", 1)[-1],
        "version": "1.0",
        "modifiedTime": stamp.isoformat(),
        "entities": [
            {
                "$type": "LocalEntity",
                "name": entity,
                "attributes": [{"name": c, "dataType": "string"} for c in COLUMNS],
                "partitions": parts,
            }
        ],
    }
    name = f"{root}/model.json"
    store.write_bytes(name, orjson.dumps(model, option=orjson.OPT_INDENT_2))
    return name
