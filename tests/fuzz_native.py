"""Differential fuzzing of the C kernels (shared/planning/native/fastpath.c) against the Python references
tests/test_native.py compares them with: the csv module (fields), the email pattern and xxhash (plan keys),
ProfileMapper (profiles' JSON), numpy (the spill's bucket sort). Seeded random cases, for a given time, with
fields around the 1 MB field limit and the csv module's old 128 K limit among them.

`make fuzz SECONDS=60` builds the kernels with AddressSanitizer and UndefinedBehaviorSanitizer and runs this
with that library (FASTPATH_LIBRARY); a sanitizer report aborts the process, a difference raises with the seed
and the case's number, so `python -m tests.fuzz_native --seed S --seconds 0 --case N` repeats it."""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash

from shared.planning import native
from shared.planning.columnar import ColumnarReader
from shared.planning.profiles import ProfileMapper, email_ok
from shared.platform.errors import SourceError
from shared.reading.csvscan import MAX_RECORD_BYTES
from shared.reading.formats import CsvFormat
from tests.test_columnar import PUSH_COLS, PUSH_MAP, _csv_bytes, _row_path

BOUNDARY = [0, 1, 2, 131_071, 131_072, 131_073, MAX_RECORD_BYTES - 1, MAX_RECORD_BYTES, MAX_RECORD_BYTES + 1]
CELL_CHARS = list('ab,"\r\n é\t\x00\\')
VALUE_CHARS = list(' \t\n\r\x0b\x01\x1f"\\,/xé\u00a0\u2028()-+0123456789')
EMAIL_CHARS = list("aZ9.-@_+'xn é\t\"!")
EMAILS = ["a@b.co", " A@B.CO\t", "p@example.com", "\x0bq@example.com\r\n", "x@y", "é@x.co", ""]


def use_library(path: str) -> None:
    """Load the kernels from `path` (a sanitizer build beside its copy of fastpath.c) instead of the app's."""
    native.LIBRARY = Path(path).resolve()
    native.lib, native.status = native._load()
    native.available = native.lib is not None
    if not native.available:
        raise SystemExit(f"{path} did not load (built from this fastpath.c?)")


def _text(rng: random.Random, chars: list[str], most: int) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(0, most)))


def _long(rng: random.Random) -> str:
    """A field at one of the limits, of one repeated character (a quote doubles in the CSV)."""
    return rng.choice('xé,"\n') * rng.choice(BOUNDARY) if rng.random() < 0.5 else "x" * rng.choice(BOUNDARY)


def fields_case(rng: random.Random) -> None:
    width = rng.randint(1, 4)
    rows = [[_text(rng, CELL_CHARS, 6) for _ in range(width)] for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.05:
        rows[rng.randrange(len(rows))][rng.randrange(width)] = _long(rng)
    buf = io.StringIO(newline="")
    quote_all = rng.random() < 0.5
    ending = rng.choice(["\n", "\r\n"])
    writer = csv.writer(buf, lineterminator=ending, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    text = buf.getvalue()
    if rng.random() < 0.3:
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(['"', "\r", "\n", ",", "\x00"]) + text[at:]
    piece = text.encode()
    try:
        expected = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        expected = None  # a field over the limit, a NUL: the kernel must decline
    skip = rng.randint(0, 2)
    stop = rng.choice([-1, skip + rng.randint(0, 3)])
    got = _scan(piece, width, skip, stop)
    if got is not None and (expected is not None or stop < 0):
        # (Records after `stop` are not read: the csv module's error there says nothing of those before.)
        want = None if expected is None else (expected[skip:] if stop < 0 else expected[skip:stop])
        if want is not None:  # rows of another width: their first `width` fields, "+" for each one past those
            want = [r[:width] + ["+"] * (len(r) - width) for r in want]
        assert got == want, f"fields differ: {piece[:200]!r}... skip={skip} stop={stop}"
    elif expected is not None and quote_all and text == buf.getvalue() and "\x00" not in text:
        # The kernel's limit is on a field's bytes as written (quotes doubled), the csv module's on characters.
        longest = max((len(f.encode()) + f.count('"') + 2 for r in rows for f in r), default=0)
        assert longest > MAX_RECORD_BYTES or any(len(r) != width for r in expected), "declined a clean piece"


def _scan(piece: bytes, width: int, skip: int, stop: int) -> list[list[str]] | None:
    scanner = native._Scanner(CsvFormat(), width, list(range(width)))
    records = scanner.scan(piece, skip, stop)
    if records is None:
        return None
    bounds, escaped, fields = scanner.bounds, scanner.escaped, scanner.fields
    out = []
    for r in range(records):
        row = []
        for c in range(min(width, int(fields[r]))):
            start, end = int(bounds[2 * (r * width + c)]), int(bounds[2 * (r * width + c) + 1])
            value = piece[start:end]
            row.append((value.replace(b'""', b'"') if escaped[r * width + c] else value).decode())
        out.append(row + ["+"] * (int(fields[r]) - width))
    return out


def plan_case(rng: random.Random) -> None:
    cols = ["Id", "Email", "First", "Note"]
    mapper = ProfileMapper(cols, "Email", {"First": "first_name", "Note": "properties.note"})
    rows = []
    for i in range(rng.randint(1, 8)):
        email = rng.choice(EMAILS) if rng.random() < 0.5 else _text(rng, EMAIL_CHARS, 24)
        note = _long(rng) if rng.random() < 0.05 else _text(rng, VALUE_CHARS, 20)
        rows.append([str(i), email, _text(rng, VALUE_CHARS, 8), note])
    piece = _csv_bytes(rows)
    reader = native.NativePlanReader(CsvFormat(), mapper)
    try:
        read = reader.read(piece, check_utf8=True)
    except SourceError:
        return  # a field over the csv module's limit: the row path fails the run there too
    if read is None:
        return
    assert len(read.status) == len(rows)
    ok = []
    for r, row in enumerate(rows):
        normal, status = row[1].strip().lower(), int(read.status[r])
        if status == native.ROW_DEFER:  # left to the row path: only what the kernel cannot be sure of
            long_record = sum(len(f.encode()) + f.count('"') + 3 for f in row) > reader.max_record - 8
            assert not row[1].strip().isascii() or len(normal) > 240 or long_record, f"deferred {row[1]!r}"
        elif not normal:
            assert status == native.ROW_MISSING_EMAIL, f"{row[1]!r}: {status}"
        elif not email_ok(normal):
            assert status == native.ROW_INVALID_EMAIL, f"{row[1]!r}: {status}"
        else:
            assert status == native.ROW_OK, f"{row[1]!r}: {status}"
            ok.append(normal)
    assert read.emails.to_pylist() == ok
    assert read.ekeys.tolist() == [xxhash.xxh3_64_intdigest(e) for e in ok]
    arrow = ColumnarReader(CsvFormat(), mapper, native=False).read(piece)
    if arrow is not None and arrow.status.tolist() == read.status.tolist():
        assert read.ckeys.tolist() == arrow.ckeys.tolist()


def profiles_case(rng: random.Random) -> None:
    rows = []
    for i in range(rng.randint(1, 12)):
        values = [_text(rng, VALUE_CHARS, 14) for _ in range(5)]
        if rng.random() < 0.03:
            values[rng.randrange(5)] = "x" * rng.choice([50_000, 99_000, 100_500, 131_073])
        rows.append([str(i), rng.choice(EMAILS[:4]), *values])
    chosen = sorted(rng.sample(range(len(rows)), rng.randint(1, len(rows))))
    data = _csv_bytes(rows)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    built = native.NativeProfiles(CsvFormat(), mapper).build(data, len(rows), np.array(chosen))
    if built is None:
        return
    profiles, sizes, ekeys, warnings = built
    made, emails, expected_warnings = _row_path(data, mapper, chosen)
    assert sizes.tolist() == [len(p) for p in profiles]
    assert profiles == made
    assert (ekeys.tolist(), warnings) == ([xxhash.xxh3_64_intdigest(e) for e in emails], expected_warnings)


def xxh3_case(rng: random.Random) -> None:
    data = rng.randbytes(rng.randint(0, 240))  # the inline paths; longer texts go to the library
    assert native.xxh3_64(data) == xxhash.xxh3_64_intdigest(data), len(data)


def bucket_case(rng: random.Random) -> None:
    bits, n = rng.randint(1, 8), rng.randint(0, 300)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    ekeys, ckeys = np_rng.integers(0, 2**64, n, np.uint64), np_rng.integers(0, 2**64, n, np.uint64)
    gids = np.arange(n, dtype=np.uint64)
    emails = pa.array([_text(rng, EMAIL_CHARS, 30) for _ in range(n)], pa.string())
    rec, text, lengths, counts, _ = native.bucket_records(bits, ekeys, ckeys, gids, emails)
    order = np.argsort(ekeys >> np.uint64(64 - bits), kind="stable")
    assert rec.tolist() == np.stack([ekeys, ckeys, gids], axis=1)[order].tolist()
    assert text.tobytes() == "".join(emails[int(i)].as_py() for i in order).encode()
    assert counts.sum() == n and len(lengths) == n


TARGETS = {
    "fields": fields_case,
    "plan": plan_case,
    "profiles": profiles_case,
    "xxh3": xxh3_case,
    "bucket": bucket_case,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_native", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--case", type=int, default=None, help="run only this case number of the seed")
    args = parser.parse_args(argv)
    if os.environ.get("FASTPATH_LIBRARY"):
        use_library(os.environ["FASTPATH_LIBRARY"])
    if not native.available:
        print("the kernels are not built: `make native` (or `make fuzz`)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    names = list(TARGETS)
    counts = dict.fromkeys(names, 0)
    deadline = time.monotonic() + args.seconds
    case = 0
    print(f"fuzzing {native.LIBRARY} with seed {seed} for {args.seconds:g} s", flush=True)
    while args.case is not None or time.monotonic() < deadline:
        if args.case is None or case == args.case:
            rng = random.Random(f"{seed}:{case}")
            name = names[case % len(names)]
            try:
                TARGETS[name](rng)
            except AssertionError as exc:
                print(f"DIFFERENCE in {name}, seed {seed} case {case}: {exc}", file=sys.stderr)
                return 1
            counts[name] += 1
            if args.case is not None:
                break
        case += 1
    print(f"no difference, no sanitizer report: {sum(counts.values())} cases {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
