"""Generate Customer Insights-shaped segment exports (model.json + CSV partitions) for demos, tests and benchmarks.

Two kinds: clean (every row valid and distinct; the default) and realistic (`realistic=True`, `localdev sample
--realistic`), which carries the dirt real segment exports carry, in stated shares (`REALISTIC_SHARES`):
members without an email, invalid emails, repeats of an earlier member in other case and padding, one short
row, a byte-order mark, CRLF line ends, quoted line breaks and doubled quotes, Unicode names and cities, and a
rare internationalised email. Both are deterministic for a given seed and row count.
"""

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


# Realistic mode: which rows carry which dirt, per 100,000 rows (a row's kind is a hash of its index, so any
# row's kind is known without generating the rows before it). Everything else is a clean row.
REALISTIC_SHARES = {
    "missing_email": 2_000,  # ~2%: empty, or only spaces
    "invalid_email": 1_000,  # ~1%: no domain, two @, a space inside, "n/a", ...
    "repeat": 3_000,  # ~3%: an earlier clean member again, email in other case and with padding
    "idn_email": 2,  # rare: an internationalised address (non-ASCII local part or domain)
    "line_break": 100,  # ~0.1%: a quoted line break inside a mapped field (CR LF or LF)
}
REALISTIC_FIRST = [*FIRST, "Zoë", "Łukasz", "Ngozi", "Анна", "Søren", "Ōta", "José", "Siobhán", "Thảo", "Mehmet"]
REALISTIC_LAST = [*LAST, "Ødegaard", "Şahin", "Ñúñez", "Иванова", "王", "D'Arcy", "van der Berg", "Łęcka"]
REALISTIC_CITIES = [*CITIES, "Zürich", "Kraków", "東京", "München", "Reykjavík", "Île-de-France", "İstanbul"]
INVALID_EMAILS = [
    "customer{i}@example",
    "customer{i}.example.com",
    "customer{i}@@example.com",
    "customer {i}@example.com",
    "n/a",
    "customer{i}@example..com",
    "<customer{i}@example.com>",
]
# The row path rejects a non-ASCII address (its grammar is ASCII) and takes a punycode domain.
IDN_EMAILS = [
    "jürgen.{i}@example.com",
    "customer{i}@bücher.example",
    "用户{i}@例子.广告",
    "customer{i}@xn--bcher-kva.example",
]


def _mix(i: int, seed: int) -> int:
    """A 64-bit hash of a row index (splitmix64's finaliser): decides the row's kind."""
    z = (i * 0x9E3779B97F4A7C15 + seed) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


_KINDS = [kind for kind, n in REALISTIC_SHARES.items() for _ in range(n)]


def realistic_kind(i: int, seed: int = 7) -> str:
    """What a realistic export's row i carries: one of REALISTIC_SHARES' kinds, or "clean"."""
    slot = _mix(i, seed) % 100_000
    return _KINDS[slot] if slot < len(_KINDS) else "clean"


def repeated_member(i: int, seed: int) -> int | None:
    """The earlier clean row that row i, a repeat, repeats (None at the very start)."""
    j = i - 1 - _mix(i, seed + 1) % min(i, 100_000) if i else -1
    while j >= 0 and realistic_kind(j, seed) != "clean":
        j -= 1
    return j if j >= 0 else None


def realistic_row(i: int, rng: random.Random, version: int = 0, seed: int = 7, rows: int = 0) -> list[str]:
    """Row i of a realistic export of `rows` rows (see REALISTIC_SHARES): also, row rows // 3 has an
    internationalised email and row rows // 2 lacks its last field, so that even a small export has both."""
    kind = "idn_email" if i == rows // 3 else realistic_kind(i, seed)
    row = [
        f"C{i:09d}",
        email_for(i),
        rng.choice(REALISTIC_FIRST),
        rng.choice(REALISTIC_LAST),
        f"+1425{i % 10_000_000:07d}",
        rng.choice(REALISTIC_CITIES),
        "US",
        TIERS[(i + version) % len(TIERS)],
    ]
    if kind == "missing_email":
        row[1] = ["", "  "][i % 2]
    elif kind == "invalid_email":
        row[1] = INVALID_EMAILS[i % len(INVALID_EMAILS)].format(i=i)
    elif kind == "idn_email":
        row[1] = IDN_EMAILS[i % len(IDN_EMAILS)].format(i=i)
    elif kind == "repeat":
        j = repeated_member(i, seed)
        if j is not None:  # the same member again (its id), another export row's spelling of the email
            row[0] = f"C{j:09d}"
            email = email_for(j).upper() if j % 2 else email_for(j).capitalize().replace("example", "Example")
            row[1] = ["  ", " ", "\t", ""][i % 4] + email + ["", " ", "  "][i % 3]
    elif kind == "line_break":
        row[5] = ["Berlin\r\nMitte", "Flat 2\nLondon"][i % 2]
    if i == rows // 2:
        row.pop()
    return row


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
    """Rows as CSV, every field quoted (as Customer Insights writes) or only where needed."""
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
    realistic: bool = False,
) -> str:
    """Write an export the way Customer Insights does (partitions first, then model.json); returns model.json's
    name. Partition locations point at Customer Insights' own account, as real ones do. With
    `changed_every=N`, every Nth row's loyalty tier differs by `version` (for incremental-sync runs). With
    `realistic`, rows carry the dirt of REALISTIC_SHARES and each partition starts with a byte-order mark."""
    rng = random.Random(seed)
    stamp = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    folder = f"{root}/{entity}/{stamp:%Y/%m/%d/%H%M}"
    per_part = -(-rows // partitions) if rows else 0
    parts = []
    for p in range(partitions):
        lo, hi = p * per_part, min(rows, (p + 1) * per_part)
        name = f"{folder}/{entity}_{p + 1}.csv"
        step = 50_000
        data = bytearray(b"\xef\xbb\xbf" if realistic else b"")
        for start in range(lo, hi, step):
            batch = []
            for i in range(start, min(hi, start + step)):
                v = version if changed_every and i % changed_every == 0 else 0
                if realistic:
                    batch.append(realistic_row(i, rng, v, seed, rows))
                else:
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
