"""The C kernels (shared/planning/native) against the references they must equal: the xxhash library, the csv module,
the email pattern, str.strip, ProfileMapper.profile_json, and the Arrow path. Where a kernel declines (None),
the Arrow or row path takes the block; these tests check it declines only where it must."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import orjson
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import shared.planning.plan as plan_module
from shared.pipeline import build_unit
from shared.planning import native
from shared.planning.columnar import ColumnarReader
from shared.planning.native import NativePlanReader, NativeProfiles, _Scanner
from shared.planning.plan import PlanOptions, plan_export
from shared.planning.profiles import ProfileMapper, email_ok
from shared.platform.storage import LocalStore
from shared.reading.formats import CsvFormat
from shared.reading.source import load_cdm
from tests.readers import write_cdm
from tests.test_columnar import EXAMPLE_ROWS, PUSH_COLS, PUSH_MAP, _csv_bytes, _row_path, push_case, push_rows


def test_the_library_is_built():
    assert native.available, f"{native.LIBRARY} is missing: `make native` builds it (make setup does too)"


def test_a_library_built_from_another_source_is_not_loaded(tmp_path, monkeypatch, caplog):
    """A stale build (its functions may take other arguments) is refused, and the Arrow path runs."""
    built = native.LIBRARY.with_name("fastpath.c").read_bytes()
    source, library = tmp_path / "fastpath.c", tmp_path / "libfastpath.so"
    source.write_bytes(built)
    digest = f'-DSOURCE_SHA256="{hashlib.sha256(built).hexdigest()}"'
    subprocess.run(["cc", "-O0", "-fPIC", "-shared", digest, "-o", str(library), str(source)], check=True)
    monkeypatch.setattr(native, "LIBRARY", library)
    assert native._load()[0] is not None  # built from the source beside it
    source.write_bytes(built + b"\n/* the next version */\n")
    assert native._load()[0] is None
    assert "built from another fastpath.c" in caplog.text


def test_xxh3_equals_the_xxhash_library_at_every_length():
    for length in range(241):
        for data in (os.urandom(length), bytes(length), b"\xff" * length):
            assert native.xxh3_64(data) == xxhash.xxh3_64_intdigest(data), length


# -- records cut into fields ---------------------------------------------------------------------------------


def _fields(piece: bytes, width: int, skip: int = 0, stop: int = -1) -> list[list[str]] | None:
    """The records as the scanner cuts them: a record's first `width` fields, and "+" for each one past
    those (it counts them without recording them); None where it declines."""
    scanner = _Scanner(CsvFormat(), width, list(range(width)))
    records = scanner.scan(piece, skip, stop)
    if records is None:
        return None
    bounds, escaped = scanner.bounds, scanner.escaped
    out = []
    for r in range(records):
        row = []
        for c in range(min(width, int(scanner.fields[r]))):
            start, end = bounds[2 * (r * width + c)], bounds[2 * (r * width + c) + 1]
            value = piece[start:end]
            row.append((value.replace(b'""', b'"') if escaped[r * width + c] else value).decode())
        out.append(row + ["+"] * (int(scanner.fields[r]) - width))
    return out


def _as_scanned(rows: list[list[str]], width: int) -> list[list[str]]:
    return [row[:width] + ["+"] * (len(row) - width) for row in rows]


cell = st.text(alphabet=st.sampled_from(list('ab,"\r\n é')), max_size=5)


@settings(max_examples=500, deadline=None)
@given(
    rows=st.lists(st.lists(cell, min_size=3, max_size=3), min_size=1, max_size=8),
    ending=st.sampled_from(["\n", "\r\n"]),
    terminated=st.booleans(),
    mangle=st.sampled_from([None, '"', "\r", "\n", ",", "\x00"]),
    at=st.integers(0, 200),
    quote_all=st.booleans(),
)
def test_fields_are_what_the_csv_module_reads(rows, ending, terminated, mangle, at, quote_all):
    """Written by the csv module (then perhaps with a stray byte put in), the piece is either read exactly as
    the csv module reads it or declined; with every field quoted and nothing put in, it is never declined.
    (Minimal quoting can write blank lines and bare \r, which the row path reads.)"""
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=ending, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)
    text = buf.getvalue() if terminated else buf.getvalue()[: -len(ending)]
    if mangle is not None:
        text = text[: at % (len(text) + 1)] + mangle + text[at % (len(text) + 1) :]
    piece = text.encode()
    parsed = _as_scanned(list(csv.reader(io.StringIO(text, newline=""))), 3)
    fields = _fields(piece, 3)
    if fields is not None:
        assert fields == parsed
    else:
        assert mangle is not None or not quote_all
    # Records [1, 3) alone, the others only counted (a push): the same fields.
    if fields is not None and len(parsed) >= 3:
        assert _fields(piece, 3, 1, 3) == parsed[1:3]
    # Where the scan declines, the records before the one it cannot frame are read all the same.
    if fields is None and "\x00" not in text:
        scanner = _Scanner(CsvFormat(), 3, [0, 1, 2])
        assert scanner.scan(piece) is None
        done, start = int(scanner.stats[1]), int(scanner.stats[2])
        assert _fields(piece[:start], 3) == parsed[:done]


def test_an_empty_range_of_records_scans_to_nothing():
    assert _Scanner(CsvFormat(), 1, [0]).scan(b"a\nb\n", 1, 1) == 0


def test_what_the_scanner_leaves_to_the_other_paths():
    for piece in (b'a,"b"c,d\n', b'a,b"c,d\n', b"a,b\rc,d\n", b'a,"b,c\n', b"a,\x00,c\n"):
        assert _fields(piece, 3) is None, piece
    assert _fields(b'a,"b\r\nc",d\r\ne,,\r\n', 3) == [["a", "b\r\nc", "d"], ["e", "", ""]]
    # Rows of another width and blank lines are the plan's to reject: the scan counts their fields.
    assert _fields(b"a,b,c\n\r\nd,e\nf,g,h,i\n\n", 3) == [["a", "b", "c"], [], ["d", "e"], ["f", "g", "h", "+"], []]


# -- the plan pass: emails checked and keyed ------------------------------------------------------------------

email_text = st.text(alphabet=st.sampled_from(list("aZ9.-@_+'xn é\t\"!\x0b\u00a0\u212a")), min_size=0, max_size=24)


@settings(max_examples=1500, deadline=None)
@given(
    email=st.one_of(
        email_text,
        st.emails().map(lambda e: e[:250]),
        st.from_regex(r"[a-z]{1,5}@[a-z]{1,5}\.xn--[a-z0-9-]{1,4}", fullmatch=True),
    )
)
def test_an_email_is_decided_exactly_as_the_row_path_decides(email):
    """Accepted (with its key) or rejected as missing or invalid as the row path does: str.strip(), lower(),
    the pattern; a non-ASCII email or a valid one over 240 bytes is left to the row path."""
    mapper = ProfileMapper(["Id", "Email"], "Email", {})
    piece = _csv_bytes([["1", email]])
    read = NativePlanReader(CsvFormat(), mapper).read(piece)
    assert read is not None and len(read.status) == 1
    normal = email.strip().lower()
    status = int(read.status[0])
    if status == native.ROW_DEFER:
        assert not email.strip().isascii() or (email_ok(normal) and len(normal) > 240)
        assert read.deferred == {0: piece}
    elif not normal:
        assert status == native.ROW_MISSING_EMAIL
    elif not email_ok(normal):
        assert status == native.ROW_INVALID_EMAIL
    else:
        assert status == native.ROW_OK
        assert read.emails.to_pylist() == [normal]
        assert read.ekeys.tolist() == [xxhash.xxh3_64_intdigest(normal)]
        assert read.ckeys.tolist() == [xxhash.xxh3_64_intdigest("")]


def test_keys_and_fingerprints_equal_the_arrow_paths():
    cols = ["Id", "Email", "First", "Note"]
    mapper = ProfileMapper(cols, "Email", {"First": "first_name", "Note": "properties.note"})
    rows = [[str(i), f" P{i}@Example.com\t", f'Ann "{i}"', "x\r\ny" * (i % 3)] for i in range(50)]
    piece = _csv_bytes(rows)
    rows[7][1] = "not an email"
    rows[9] = rows[9][:3]
    piece = _csv_bytes(rows)
    fast = ColumnarReader(CsvFormat(), mapper, native=True).native.read(piece)
    arrow = ColumnarReader(CsvFormat(), mapper, native=False).read(piece)
    assert fast is not None and arrow is not None
    assert fast.status.tolist() == arrow.status.tolist()
    assert fast.status.tolist() == [native.ROW_OK] * 7 + [native.ROW_INVALID_EMAIL, 0, native.ROW_WIDTH] + [0] * 40
    assert fast.fields == arrow.fields == {9: 3}
    assert fast.ekeys.tolist() == arrow.ekeys.tolist()
    assert fast.ckeys.tolist() == arrow.ckeys.tolist()
    assert fast.emails.to_pylist() == arrow.emails.to_pylist()
    # A fingerprinted text over 240 bytes takes xxhash's long path: those rows are hashed by the library.
    long_rows = [["1", "a@b.co", 'n"' * 150, "x"], ["2", "bad", "", ""], ["3", "c@d.co", "short", ""]]
    read = NativePlanReader(CsvFormat(), mapper).read(_csv_bytes(long_rows))
    assert read.ckeys.tolist() == [
        xxhash.xxh3_64_intdigest('n"' * 150 + "\x1fx"),
        xxhash.xxh3_64_intdigest("short\x1f"),
    ]


def test_what_the_plan_kernel_leaves_to_the_other_paths():
    mapper = ProfileMapper(["Id", "Email"], "Email", {})
    # The csv module fails a field over its size limit (csvscan sets it to 1 MB, the record limit).
    assert _fields(_csv_bytes([["x" * (1 << 20 | 1), "a@b.co"]]), 2) is None
    assert _fields(_csv_bytes([["x" * 140_000, "a@b.co"]]), 2) == [["x" * 140_000, "a@b.co"]]
    # The csv module ends a record at \r and \n whatever the delimiter.
    for delimiter in ("\r", "\n"):
        piece = f"1{delimiter}a@b.co\r\n2{delimiter}c@d.co\r\n".encode()
        assert NativePlanReader(CsvFormat(delimiter=delimiter), mapper).read(piece) is None
    assert NativePlanReader(CsvFormat(delimiter=";"), mapper).read(b"1;a@b.co\n") is not None


# -- a push: profiles as JSON --------------------------------------------------------------------------------


def _native_profiles(data: bytes, mapper: ProfileMapper, chosen: list[int], records: int | None = None):
    built = NativeProfiles(CsvFormat(), mapper).build(data, records or len(chosen), np.array(chosen))
    if built is None:
        return None
    profiles, sizes, ekeys, warnings = built
    assert sizes.tolist() == [len(p) for p in profiles]
    return profiles, ekeys.tolist(), warnings


def test_profiles_are_byte_for_byte_the_row_paths():
    rows = [
        *EXAMPLE_ROWS,
        ["5", "eve@example.com", "", "", "", "", ""],
        ["6", "\tfay@example.com\r\n", "\x0bFay\x1f", " +44\t20 7946 0958\n", "two\nlines", "", "a\x01\tb\x1f"],
    ]
    data = _csv_bytes(rows)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    built = _native_profiles(data, mapper, [0, 1, 2, 3, 4, 5])
    made, emails, warnings = _row_path(data, mapper, [0, 1, 2, 3, 4, 5])
    assert built == (made, [xxhash.xxh3_64_intdigest(e) for e in emails], warnings)
    assert warnings == 1  # "not a phone" is left out with a warning
    only_phone = ProfileMapper(PUSH_COLS, "Email", {"Phone": "phone_number"})
    assert _native_profiles(data, only_phone, [0])[0] == _row_path(data, only_phone, [0])[0]


def test_what_the_profile_kernel_leaves_to_the_other_paths():
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    for bad in (
        ["1", "a@example.com", "A", "+\u0661234567", "", "", ""],  # a non-ASCII phone
        ["1", "é@example.com", "A", "", "", "", ""],  # a non-ASCII email
    ):
        assert _native_profiles(_csv_bytes([bad]), mapper, [0]) is None
    clash = ProfileMapper(PUSH_COLS, "Email", {"First": "first_name", "Note": "first_name"})
    assert _native_profiles(_csv_bytes([["1", "a@b.co", "A", "", "", "", "B"]]), clash, [0]) is None


def test_values_are_trimmed_exactly_as_python_strips():
    mapper = ProfileMapper(["Id", "Email", "First"], "Email", {"First": "first_name"})
    chars = [chr(c) for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]  # NUL: the row path
    for lo in range(0, len(chars), 100_000):
        values = [v for ch in chars[lo : lo + 100_000] for v in (f"{ch}x{ch}", f"{ch}{ch}")]
        data = _csv_bytes([["1", "a@b.co", v] for v in values])
        profiles = _native_profiles(data, mapper, list(range(len(values))))[0]
        got = [orjson.loads(p)["attributes"].get("first_name", "") for p in profiles]
        assert got == [v.strip() for v in values]


any_row = push_rows(
    ' \t\n\r\x0b\x01\x1f"\\,/xé\u00a0\u2028()-+0123456789',
    ["a@b.co", " A@B.CO\t", "p@example.com", "\x0bq@example.com\r\n"],  # emails padded with ASCII white space
)


@settings(max_examples=400, deadline=None)
@given(rows=st.lists(any_row, min_size=1, max_size=20), data=st.data())
def test_profiles_agree_with_the_row_path_on_any_rows(rows, data):
    chosen, raw, mapper = push_case(rows, data)
    built = _native_profiles(raw, mapper, chosen, len(rows))
    foreign_phone = any(not rows[i][3].strip().isascii() for i in chosen)
    assert (built is None) == foreign_phone  # a non-ASCII phone goes to the other paths
    if built is not None:
        made, emails, warnings = _row_path(raw, mapper, chosen)
        assert built == (made, [xxhash.xxh3_64_intdigest(e) for e in emails], warnings)


def test_a_push_builds_the_same_jobs_with_and_without_the_kernels(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "exports")
    rows = [[str(i), f"P{i}@example.com", f"N{i}", f"+1425555{i:04d}", "Köln", "", f'"{i}"'] for i in range(900)]
    rows[5][1] = "not an email"
    rows[7][3] = "12"
    rows[9][1] = "  "  # a missing email
    rows[11] = rows[11][:4]  # a short row
    rows[13] = []  # a blank line (not a row)
    rows[15][1] = "\u00e9@example.com"  # a non-ASCII email
    lines = _csv_bytes(rows)
    source = load_cdm(store, write_cdm(store, PUSH_COLS, {"a.csv": lines, "b.csv": lines[:5000]}), ["exports"], None)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    work = LocalStore(tmp_path / "work")
    monkeypatch.setattr(plan_module, "PLAN_BLOCK_BYTES", 4096)  # chunks of ~50 rows: units span several
    summary = plan_export(source, mapper, work, "run/", PlanOptions(chunk_rows=100, unit_profiles=250))
    from shared.planning.units import PlanReader

    kernel, taken = NativeProfiles.build, []

    def jobs(with_kernels: bool):
        def build(self, *args):
            built = kernel(self, *args) if with_kernels else None
            taken.append(built is not None)
            return built

        monkeypatch.setattr(NativeProfiles, "build", build)
        reader = PlanReader(work, "run/")
        out = []
        for unit in summary["units"]:
            batches, _, keys, _, counts = build_unit(reader, source.store, unit, mapper, subscribing=False)
            out.append(([(b.locators, b.profiles) for b in batches], keys, counts))
        return out

    fast = jobs(True)
    # Every chunk of every unit, those with rows the plan rejected too: the kernel
    assert all(taken) and len(taken) > len(summary["units"])
    slow = jobs(False)
    assert fast == slow
    assert sum(len(batch[1]) for unit in fast for batch in unit[0]) == summary["profiles_to_send"] == 895
    assert sum(unit[2]["warnings"] for unit in fast) == 1  # row 7's phone (partition b's copy wins)


@pytest.fixture(autouse=True)
def _library_is_there():
    if not native.available:
        pytest.fail(f"{native.LIBRARY} is missing: `make native` builds it")


# -- the plan's spill ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_bucket_records_is_a_stable_sort_by_bucket(bits):
    rng = np.random.default_rng(bits)
    n = 5_000
    ekeys, ckeys = rng.integers(0, 2**64, n, np.uint64), rng.integers(0, 2**64, n, np.uint64)
    gids = np.arange(100, 100 + n, dtype=np.uint64)
    emails = pa.array([f"p{i}@example.com" * (i % 3 + 1) for i in range(n)])
    rec, text, lengths, counts, byte_counts = native.bucket_records(bits, ekeys, ckeys, gids, emails.slice(0))
    order = np.argsort(ekeys >> np.uint64(64 - bits), kind="stable")
    assert rec.tolist() == np.stack([ekeys, ckeys, gids], axis=1)[order].tolist()
    expected = [emails[int(i)].as_py() for i in order]
    assert lengths.tolist() == [len(e) for e in expected] and text.tobytes() == "".join(expected).encode()
    assert counts.tolist() == np.bincount(ekeys[order] >> np.uint64(64 - bits), minlength=1 << bits).tolist()
    assert byte_counts.sum() == len(text)
    picked = np.array([4, 0, 17])
    assert native.email_lines(emails.slice(3, 20), picked) == "".join(f"{emails[3 + i]}\n" for i in picked).encode()


# -- the fuzz harness (`make fuzz`) ---------------------------------------------------------------------------


def test_the_fuzz_harness_runs_every_target_and_reports_a_difference(monkeypatch, capsys):
    from tests import fuzz_native

    assert fuzz_native.main(["--seed", "17", "--seconds", "0", "--case", "3"]) == 0  # one case, as to repeat one
    for case in range(200):
        for target in fuzz_native.TARGETS.values():
            target(fuzz_native.random.Random(f"17:{case}"))
    monkeypatch.setattr(native, "xxh3_64", lambda data: 0)  # a kernel gone wrong
    assert fuzz_native.main(["--seed", "17", "--seconds", "5"]) == 1
    assert "DIFFERENCE in xxh3, seed 17" in capsys.readouterr().err


def test_warnings_by_kind_are_the_same_on_the_kernels_arrow_and_rows(tmp_path, monkeypatch):
    """A push's breakdown of warnings (the run console shows it) is the same whichever path built the unit:
    bad phones are counted under the row path's words, on the C kernels and on Arrow as row by row."""
    from shared.planning.columnar import ColumnarProfiles
    from shared.planning.profiles import PHONE_WARNING
    from shared.planning.units import PlanReader

    store = LocalStore(tmp_path / "exports")
    rows = [[str(i), f"P{i}@example.com", f"N{i}", f"+1425555{i:04d}", "Köln", "", "x"] for i in range(600)]
    bad = {3: "12", 40: "call me", 41: "0049", 250: "+0 123", 599: "555-1234"}  # not E.164: left out, warned
    for i, phone in bad.items():
        rows[i][3] = phone
    rows[7][1] = "not an email"  # rejected in the plan: its phone is not a warning
    rows[7][3] = "12"
    rows[60][3] = "  "  # no phone: no warning
    source = load_cdm(store, write_cdm(store, PUSH_COLS, {"a.csv": _csv_bytes(rows)}), ["exports"], None)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    work = LocalStore(tmp_path / "work")
    monkeypatch.setattr(plan_module, "PLAN_BLOCK_BYTES", 4096)  # several chunks, units spanning them
    summary = plan_export(source, mapper, work, "run/", PlanOptions(chunk_rows=100, unit_profiles=250))
    kernels, arrow = NativeProfiles.build, ColumnarProfiles.build_chunk
    taken: list[str] = []

    def counts(path: str) -> list[dict]:
        def kernel_build(self, *args):
            built = kernels(self, *args) if path == "kernels" else None
            taken.append(path if built is not None else "not kernels")
            return built

        def chunk_build(self, *args):
            built = arrow(self, *args) if path != "rows" else None
            taken.append(path if built is not None else "rows")
            return built

        monkeypatch.setattr(NativeProfiles, "build", kernel_build)
        monkeypatch.setattr(ColumnarProfiles, "build_chunk", chunk_build)
        reader = PlanReader(work, "run/")
        return [build_unit(reader, source.store, unit, mapper, subscribing=False)[4] for unit in summary["units"]]

    on_kernels = counts("kernels")
    assert set(taken) == {"kernels"}  # every chunk was built by the kernels
    taken.clear()
    on_arrow = counts("arrow")
    assert set(taken) == {"not kernels", "arrow"}  # ... then by Arrow
    taken.clear()
    on_rows = counts("rows")
    assert set(taken) == {"rows"}  # ... then row by row
    assert on_kernels == on_arrow == on_rows
    total: dict[str, int] = {}
    for unit in on_kernels:
        for kind, n in unit["warning_kinds"].items():
            total[kind] = total.get(kind, 0) + n
    assert total == {PHONE_WARNING: len(bad)}
    assert sum(unit["warnings"] for unit in on_kernels) == len(bad)
