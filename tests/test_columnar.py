"""The plan pass's columnar (Arrow) fast path must give exactly what the row-by-row (csv module) path gives:
the same counts, rejects, keys, emails, row numbers and units, whatever the input."""

from __future__ import annotations

import csv
import io
import sys

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.planning.plan as plan_module
from localdev.sample import write_ci_export
from shared.planning import native
from shared.planning.columnar import ColumnarProfiles, ColumnarReader
from shared.planning.plan import PlanOptions, SyncState, plan_export
from shared.planning.profiles import ProfileMapper
from shared.platform.storage import LocalStore
from shared.reading.csvscan import records_span
from shared.reading.formats import CsvFormat
from shared.reading.source import load_cdm
from tests.readers import write_cdm

COLS = ["CustomerId", "Email", "FirstName"]
_READ = ColumnarReader.read  # hypothesis runs examples under one monkeypatch: wrap the original only
FILES = ["plan.json", "send.bits", "keys.bin", "emails.txt", "rejects.ndjson"]


@pytest.fixture(params=["kernels", "arrow"])
def plan_path(request, monkeypatch):
    """The plan tests run twice: with the C kernels (Arrow where they decline), then as without the library:
    Arrow alone, and the spill in numpy."""
    if request.param == "arrow":
        monkeypatch.setattr(native, "available", False)
    return request.param


def _plan(tmp_path, name: str, source, *, columnar: bool, block: int, monkeypatch, **options):
    """Plan the export with or without the columnar path; (summary, workspace files, blocks it took)."""
    taken = []

    def counting(self, piece):
        result = _READ(self, piece) if columnar else None
        taken.append(result is not None)
        return result

    monkeypatch.setattr(ColumnarReader, "read", counting)
    monkeypatch.setattr(plan_module, "PLAN_BLOCK_BYTES", block)
    mapper = ProfileMapper(source.columns, "Email", {"FirstName": "first_name"})
    work = LocalStore(tmp_path / name / "work")
    summary = plan_export(source, mapper, work, "run/", PlanOptions(chunk_rows=3, **options))
    summary.pop("plan_s")
    return summary, {f: work.read_bytes(f"run/{f}") for f in FILES}, taken


def _source(tmp_path, parts: dict[str, bytes], settings: dict | None = None):
    store = LocalStore(tmp_path / "exports")
    return load_cdm(store, write_cdm(store, COLS, parts, settings=settings), ["exports"], None)


def _same_both_ways(tmp_path, parts, block, monkeypatch, settings=None, **options) -> list[bool]:
    source = _source(tmp_path, parts, settings)
    fast = _plan(tmp_path, "fast", source, columnar=True, block=block, monkeypatch=monkeypatch, **options)
    slow = _plan(tmp_path, "slow", source, columnar=False, block=block, monkeypatch=monkeypatch, **options)
    assert fast[0] == slow[0]
    for name in FILES:
        assert fast[1][name] == slow[1][name], name
    return fast[2]


def q(*fields: str) -> str:
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


def test_a_clean_export_takes_the_columnar_path_and_matches(tmp_path, monkeypatch, plan_path):
    lines = [q(str(i), f"Person{i}@Example.com ", f'Ann "{i}",\r\nJr') for i in range(40)]
    parts = {"a.csv": ("\ufeff" + "\r\n".join(lines) + "\r\n").encode(), "b.csv": "\n".join(lines[:10]).encode()}
    taken = _same_both_ways(tmp_path, parts, 256, monkeypatch)
    assert taken and all(taken)  # every block of a clean export is read column-wise


@pytest.mark.parametrize(
    ("bad", "arrow_takes_it"),
    [
        (q("9", "bad@", "x"), True),  # an invalid email
        (q("9", "  ", "x"), True),  # a missing email
        (q("9", "K\u212a@example.com", "x"), True),  # a Kelvin sign lower-cases to an ASCII k in Python
        (q("9", "a@example.com"), True),  # a short row
        (q("9", "a@example.com", "x", "y"), True),  # a long row
        ("", False),  # a blank line: a record that is not a row (Arrow reads it as a row of empty fields)
        (q("9", "a@example.com", "x" * 120_000), False),  # a profile over 100 KB
        (q("9", "\u00e9@example.com", "x"), True),  # a non-ASCII email
        (q("9", "a@example.com\n", "x"), True),  # a line break inside the email field
        (q("9", "\u00a0a@example.com\x0b", "x"), True),  # white space str.strip() strips
        (q("9", 'a""b@example.com', "x"), True),  # a quote in the email
    ],
    ids=["invalid", "missing", "kelvin", "short", "long", "blank", "100KB", "non-ascii", "newline", "spaces", "quote"],
)
def test_a_bad_row_is_decided_in_place_and_its_block_stays_on_the_fast_path(
    tmp_path, monkeypatch, bad, arrow_takes_it, plan_path
):
    """The row is rejected (or taken) with the row path's reason and row number, and the block it is in is
    still read by the kernels (which leave at most that one record to the row path) or by Arrow."""
    lines = [q(str(i), f"p{i}@example.com", f"N{i}") for i in range(30)]
    lines.insert(17, bad)
    taken = _same_both_ways(tmp_path, {"a.csv": ("\r\n".join(lines) + "\r\n").encode()}, 200, monkeypatch)
    if plan_path == "kernels" or arrow_takes_it:
        assert taken and all(taken)
    else:
        assert set(taken) == {True, False}  # that block went row by row, the others column-wise


def test_a_field_over_the_csv_modules_default_limit_is_read_on_every_path(tmp_path, monkeypatch, plan_path):
    """A 200 KB notes column (not mapped): every path reads the row, the row path too, where the csv
    module's default limit (128 K characters) would have failed the run."""
    lines = [q(str(i), f"p{i}@example.com", "N") for i in range(30)]
    lines[3] = q("3", "long@example.com", "x" * 200_000)  # FirstName is mapped: this profile is over 100 KB
    lines[7] = q("n" * 200_000, "p7@example.com", "N")  # an unmapped column: fine
    lines[20] = q("20", "not an email", "N")
    taken = _same_both_ways(tmp_path, {"a.csv": "\n".join(lines).encode()}, 1_000_000, monkeypatch)
    # The long rows were read row by row (before, the csv module failed the run there): by the kernels one
    # record at a time, by Arrow with their blocks.
    assert all(taken) == (plan_path == "kernels")


def test_bad_utf8_is_rejected_in_place_by_the_kernels(tmp_path, monkeypatch, plan_path):
    lines = [q(str(i), f"p{i}@example.com", f"N{i}").encode() for i in range(20)]
    lines.insert(5, b'"5","x@example.com","Ev\xff"')  # in a mapped field
    lines.insert(12, b'"5\xff","y@example.com","Ev"')  # in a field that is not mapped: rejected all the same
    lines.insert(15, b'"5","z@example.com","\xed\xa0\x80 \xc0\xaf"')  # a surrogate, an overlong form
    taken = _same_both_ways(tmp_path, {"a.csv": b"\n".join(lines)}, 120, monkeypatch)
    if plan_path == "kernels":
        assert all(taken)
    else:  # without the kernels, blocks with bad bytes go row by row, clean ones column-wise
        assert set(taken) == {True, False}


def test_what_the_kernels_cannot_frame_goes_to_the_row_path_record_by_record(tmp_path, monkeypatch, plan_path):
    """A quote inside a plain field, text after a closing quote, a bare carriage return: the csv module
    reads those records (and finds where they end); the kernels read the rest of the block."""
    lines = [q(str(i), f"p{i}@example.com", f"N{i}") for i in range(40)]
    lines[3] = '3,p3@example.com,N"3'
    lines[9] = '"9"x,p9@example.com,N9'
    lines[20] = "20,p20@example.com,N\r20"
    lines[30] = '30,"p30@example.com,N30'  # an unbalanced quote: it runs on to the next quote
    taken = _same_both_ways(tmp_path, {"a.csv": "\n".join(lines).encode()}, 1_000_000, monkeypatch)
    if plan_path == "kernels":
        assert taken and all(taken)


@pytest.mark.parametrize(
    ("settings", "sep", "quoted"),
    [
        ({"delimiter": "\t", "quoteStyle": "QuoteStyle.None"}, "\t", False),
        ({"delimiter": ";", "columnHeaders": True}, ";", True),
        ({"encoding": "latin-1"}, ",", True),
    ],
)
def test_format_settings_are_read_alike_both_ways(tmp_path, monkeypatch, settings, sep, quoted, plan_path):
    def line(*fields):
        return sep.join(f'"{f}"' if quoted else f for f in fields)

    lines = [line(str(i), f"P{i}@example.com", f'N"{i}' if not quoted else f"N;{i}") for i in range(30)]
    lines.insert(9, line("9", "not-an-email", "x"))
    if settings.get("columnHeaders"):
        lines.insert(0, line(*COLS))
    data = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    taken = _same_both_ways(tmp_path, {"a.csv": data}, 200, monkeypatch, settings=settings)
    assert (True in taken) == (settings.get("encoding") is None)  # other encodings are read row by row


def test_incremental_state_is_the_same_both_ways(tmp_path, monkeypatch, plan_path):
    parts = {"a.csv": "\n".join(q(str(i), f"p{i}@example.com", f"N{i}") for i in range(50)).encode()}
    source = _source(tmp_path / "first", parts)
    first = _plan(tmp_path, "first", source, columnar=True, block=300, monkeypatch=monkeypatch)
    keys = np.frombuffer(first[1]["keys.bin"], plan_module.KEYS_DTYPE).copy()
    mapper = ProfileMapper(COLS, "Email", {"FirstName": "first_name"})
    state = SyncState(keys[::2], mapper.mapping_key)  # half of them were confirmed earlier
    _same_both_ways(tmp_path / "again", parts, 300, monkeypatch, state=state)


def test_spilling_to_buckets_plans_exactly_what_memory_plans(tmp_path, monkeypatch, plan_path):
    """A large export spreads its keys over temporary files by key (buckets) and de-duplicates one bucket at a
    time: that must give the same files, row numbers and diff as keeping every key in memory."""
    rows = [q(str(i), f"p{i % 700}@example.com", f"N{i}") for i in range(1_000)]  # 300 emails twice
    rows.insert(400, q("x", "bad@", "x"))
    parts = {"a.csv": "\n".join(rows[:600]).encode(), "b.csv": "\n".join(rows[600:]).encode()}
    keys = np.frombuffer(_plan(tmp_path, "first", _source(tmp_path / "first", parts), columnar=True, block=2_000,
                               monkeypatch=monkeypatch)[1]["keys.bin"], plan_module.KEYS_DTYPE).copy()  # fmt: skip
    state = SyncState(keys[::3], ProfileMapper(COLS, "Email", {"FirstName": "first_name"}).mapping_key)
    source = _source(tmp_path, parts)
    in_memory = _plan(tmp_path, "memory", source, columnar=True, block=2_000, monkeypatch=monkeypatch, state=state)
    monkeypatch.setattr(plan_module._Spill, "BUCKET_SOURCE_BYTES", 1_000)  # 32 buckets of keys
    spilled = _plan(tmp_path, "spilled", source, columnar=True, block=2_000, monkeypatch=monkeypatch, state=state)
    assert spilled[0] == in_memory[0]
    assert (spilled[0]["duplicate_rows"], spilled[0]["rows_rejected"]) == (300, 1)
    assert 0 < spilled[0]["profiles_to_send"] < spilled[0]["unique_profiles"]
    for name in FILES:
        assert spilled[1][name] == in_memory[1][name], name


@pytest.mark.parametrize("bucket_bytes", [None, 10])  # in memory; spilled over 4,096 buckets, most empty
def test_an_export_with_no_valid_row_plans_nothing_to_send(tmp_path, monkeypatch, bucket_bytes, plan_path):
    parts = {"a.csv": "\n".join(q(str(i), f"not-an-email-{i}", "N") for i in range(40)).encode()}
    if bucket_bytes:
        monkeypatch.setattr(plan_module._Spill, "BUCKET_SOURCE_BYTES", bucket_bytes)
    summary, files, _ = _plan(tmp_path, "none", _source(tmp_path, parts), columnar=True, block=300,
                              monkeypatch=monkeypatch)  # fmt: skip
    assert (summary["rows_rejected"], summary["unique_profiles"], summary["units"]) == (40, 0, [])
    assert files["keys.bin"] == files["emails.txt"] == b""


VALID = ["a@b.co", " A@B.CO\t", "x.y+z@sub.example.io", "p@example.com", "P@EXAMPLE.COM", "q@xn--bcher-kva.example"]
INVALID = ["bad@", "", "a@b.c", "\u00e9@example.com", "a b@example.com", "a@b.co\r\n"]
text = st.text(alphabet=st.sampled_from(list('ab ,"\r\n\t\u00e9x@.')), max_size=10)
clean_row = st.tuples(text, st.sampled_from(VALID), text).map(lambda r: q(*r))
junk_row = st.one_of(
    st.tuples(text, st.sampled_from(INVALID), text).map(lambda r: q(*r)),
    st.lists(text, min_size=1, max_size=4).map(lambda r: q(*r)),  # the wrong width
    st.text(alphabet=st.sampled_from(list('a@b.co ,"\r\t\u00e9')), max_size=14),  # raw, unquoted, stray quotes
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    rows=st.lists(clean_row, min_size=1, max_size=40),
    junk=st.lists(st.tuples(st.integers(0, 40), junk_row), max_size=3),
    ending=st.sampled_from(["\n", "\r\n"]),
    block=st.integers(16, 400),
)
def test_both_paths_agree_on_any_input(tmp_path_factory, monkeypatch, rows, junk, ending, block, plan_path):
    """Quoted fields with delimiters and line breaks, stray quotes, bare carriage returns, blank lines,
    repeats, odd widths: counts, rejects, keys, emails and row numbers are the same both ways."""
    tmp_path = tmp_path_factory.mktemp("agree")
    for at, line in junk:
        rows.insert(at, line)
    data = ending.join(rows).encode()
    _same_both_ways(tmp_path, {"a.csv": data, "b.csv": data[: len(data) // 2]}, block, monkeypatch)


# Dirt a real export can carry besides what the realistic sample writes, as whole CSV lines (bytes).
REAL_DIRT = [
    b'"C1","\xff\xfe@example.com","A","B","+1","X","US","Gold"',  # bad bytes in the email
    b'"C1","a@example.com","Ann\xc3","B","+1","X","US","Gold"',  # a cut UTF-8 sequence in a name
    '"C1","K\u212aate@example.com","A","B","+1","X","US","Gold"'.encode(),  # a Kelvin sign: lower() makes it k
    '"C1","\u00a0pad@example.com\u2003","A","B","+1","X","US","Gold"'.encode(),  # Unicode white space
    b'C1,plain@example.com,Ann "the" B,B,+1,X,US,Gold',  # quotes in a plain field
    b'"C1"x,after@example.com,A,B,+1,X,US,Gold',  # text after a closing quote
    b"C1,bare@example.com,A,B,+1,X\rUS,Gold",  # a bare carriage return
    b"",  # a blank line
    b'"C1","short@example.com"',  # a short row
    b'"C1","long@example.com","A","B","+1","X","US","Gold","extra"',  # a long row
    b'"C1","big@example.com","' + b"x" * 120_000 + b'","B","+1","X","US","Gold"',  # a profile over 100 KB
    b'"C1","' + b"a" * 250 + b'@example.com","A","B","+1","X","US","Gold"',  # an email over 254 characters
]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    rows=st.integers(200, 3_000),
    dirt=st.lists(st.tuples(st.integers(0, 3_000), st.sampled_from(REAL_DIRT)), max_size=6),
    block=st.sampled_from([512, 4_096, 65_536, 1 << 20]),
)
def test_realistic_blocks_give_every_row_the_same_outcome_on_every_path(
    tmp_path_factory, monkeypatch, rows, dirt, block, plan_path
):
    """The realistic sample's rows (missing, invalid and repeated emails, a short row, BOM, CRLF, quoted line
    breaks, Unicode, internationalised emails), with more dirt put in: each row sent, rejected (same reason,
    same row number) or a duplicate alike on the kernels, on Arrow and row by row."""
    tmp_path = tmp_path_factory.mktemp("real")
    store = LocalStore(tmp_path / "sample")
    model = write_ci_export(store, rows, partitions=1, realistic=True)
    part = next(p for p in store.list() if p.endswith(".csv"))
    lines = store.read_bytes(part).split(b"\r\n")
    for at, line in dirt:
        lines.insert(1 + at % len(lines), line)  # after the first line: the BOM stays first
    data = b"\r\n".join(lines)
    exports = LocalStore(tmp_path / "exports")
    source = load_cdm(exports, write_cdm(exports, sample_columns(store, model), {"a.csv": data}), ["exports"], None)
    fast = _plan(tmp_path, "fast", source, columnar=True, block=block, monkeypatch=monkeypatch)
    slow = _plan(tmp_path, "slow", source, columnar=False, block=block, monkeypatch=monkeypatch)
    assert fast[0] == slow[0]
    for name in FILES:
        assert fast[1][name] == slow[1][name], name
    assert slow[0]["rows_rejected"] > 0 and slow[0]["duplicate_rows"] > 0


def sample_columns(store: LocalStore, model: str) -> list[str]:
    return [a["name"] for a in orjson.loads(store.read_bytes(model))["entities"][0]["attributes"]]


# -- profiles built column-wise for a push ------------------------------------------------------------------

PUSH_COLS = ["Id", "Email", "First", "Phone", "City", "Tier", "Note"]
PUSH_MAP = {"First": "first_name", "Phone": "phone_number", "City": "location.city", "Tier": "properties.tier",
            "Note": "properties.note"}  # fmt: skip


def _row_path(data: bytes, mapper: ProfileMapper, chosen) -> tuple[list[bytes], list[str], int]:
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    made, emails, warnings = [], [], 0
    for i in chosen:
        email = rows[i][mapper.email_index].strip().lower()
        profile, warning = mapper.profile_json(rows[i], email)
        made.append(profile)
        emails.append(email)
        warnings += warning is not None
    return made, emails, warnings


def _plain(built) -> tuple[list[bytes], list[str], int]:
    """A column-wise build as the row path gives it, once its sizes are checked."""
    profiles, sizes, emails, warnings = built
    assert sizes.tolist() == [len(p) for p in profiles]
    return profiles, emails.to_pylist(), warnings


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode()


EXAMPLE_ROWS = [  # trimming, escaping, phones (one not E.164), Unicode white space
    ["1", " Ann@Example.com", " Ann ", "+1 (425) 555-0100", " Köln ", "Gold", 'say "hi" \\ bye'],
    ["2", "bob@example.com", "", "0044 20 7946 0958", "", "", ""],
    ["3", "cid@example.com", "Cid", "not a phone", "Zoë\u00a0", " spaced ", "é/ü"],
    ["4", "dee@example.com", "\u2003", "", "", "", ""],
]


def test_profiles_built_column_wise_are_byte_for_byte_the_row_paths():
    rows = EXAMPLE_ROWS
    data = _csv_bytes(rows)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    built = ColumnarProfiles(CsvFormat(), mapper).build(data, len(rows), np.array([0, 1, 2, 3]))
    assert built is not None
    assert _plain(built) == _row_path(data, mapper, [0, 1, 2, 3])
    assert built[3] == 1  # "not a phone" is left out with a warning


@pytest.mark.parametrize("native_first", [True, False])
def test_a_chunk_with_rows_the_plan_rejected_builds_its_profiles_on_the_fast_path(native_first):
    """Rows of another width, blank lines and bad emails are never sent: a push skips them, and the other
    rows' profiles are built by the kernels or column-wise by Arrow, byte for byte the row path's."""
    rows = [[str(i), f"p{i}@example.com", f"N{i}", "", "Köln", "", ""] for i in range(12)]
    rows[2] = rows[2][:3]  # short
    rows[5] = [*rows[5], "extra"]  # long
    rows[7] = []  # a blank line
    rows[9][1] = "not an email"
    data = _csv_bytes(rows)
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    chosen = np.array([0, 1, 3, 4, 6, 8, 10, 11])
    builder = ColumnarProfiles(CsvFormat(), mapper, native=native_first)
    built = builder.build_chunk(data, len(rows), chosen)
    assert built is not None
    made, sizes, ekeys, warnings = built
    expected, emails, expected_warnings = _row_path(data, mapper, chosen.tolist())
    assert (made, warnings) == (expected, expected_warnings)
    assert sizes.tolist() == [len(p) for p in made]
    assert ekeys.tolist() == [xxhash.xxh3_64_intdigest(e) for e in emails]
    # A row of another width is never one to send: asked for it, the chunk is not the planned one.
    assert ColumnarProfiles(CsvFormat(), mapper, native=False).build(data, len(rows), np.array([2])) is None


def test_control_characters_and_non_ascii_phones_go_row_by_row():
    mapper = ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)
    builder = ColumnarProfiles(CsvFormat(), mapper)
    for bad in (
        ["1", "a@example.com", "A", "", "", "", "line\nbreak"],
        ["1", "a@example.com", "A", "+\u0661234567", "", "", ""],
    ):
        assert builder.build(_csv_bytes([bad]), 1, np.array([0])) is None
    clash = ProfileMapper(PUSH_COLS, "Email", {"First": "first_name", "Note": "first_name"})
    assert (
        ColumnarProfiles(CsvFormat(), clash).build(
            _csv_bytes([["1", "a@b.co", "A", "", "", "", "B"]]), 1, np.array([0])
        )
        is None
    )


def test_arrow_trims_exactly_the_whitespace_python_strips():
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    values = ["x" + ch for ch in chars] + [ch + "x" for ch in chars]
    assert pc.utf8_trim_whitespace(pa.array(values)).to_pylist() == [v.strip() for v in values]


def push_rows(chars: str, emails: list[str]):
    """Rows of PUSH_COLS: an id, one of `emails`, and five values of `chars`."""
    value = st.text(alphabet=st.sampled_from(list(chars)), max_size=14)
    return st.tuples(st.sampled_from(["1", "2"]), st.sampled_from(emails), *[value] * 5)


def push_case(rows, data) -> tuple[list[int], bytes, ProfileMapper]:
    """(the rows a unit sends, drawn; the rows as CSV; the mapper) for generated rows."""
    chosen = sorted(data.draw(st.sets(st.integers(0, len(rows) - 1), min_size=1)))
    return chosen, _csv_bytes(rows), ProfileMapper(PUSH_COLS, "Email", PUSH_MAP)


push_row = push_rows(' \t"\\,/xé\u00a0()-+0123456789', ["a@b.co", " A@B.CO\t", "p@example.com"])


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(push_row, min_size=1, max_size=20), data=st.data())
def test_column_wise_profiles_agree_with_the_row_path(rows, data):
    chosen, raw, mapper = push_case(rows, data)
    built = ColumnarProfiles(CsvFormat(), mapper).build(raw, len(rows), np.array(chosen))
    tabs = any("\t" in field for i in chosen for field in rows[i][2:])
    foreign_phone = any(not rows[i][3].strip().isascii() for i in chosen)
    assert (built is None) == (tabs or foreign_phone)  # these go row by row
    if built is not None:
        assert _plain(built) == _row_path(raw, mapper, chosen)


# -- a push parses only the records it sends ---------------------------------------------------------------

field_text = st.text(alphabet=st.sampled_from(list('ab,"\r\n')), max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(st.lists(field_text, min_size=1, max_size=3), min_size=1, max_size=12),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    terminated=st.booleans(),
    data=st.data(),
)
def test_a_span_of_records_found_without_parsing_is_exactly_those_records(fields, ending, terminated, data):
    """records_span cuts at line ends only when no record can hold one; what it cuts parses to exactly the
    records asked for, as the csv module reads them."""
    records = [q(*f) if data.draw(st.booleans()) else ",".join(f) for f in fields]
    piece = (ending.join(records) + (ending if terminated else "")).encode()
    parsed = list(csv.reader(io.StringIO(piece.decode(), newline="")))
    first = data.draw(st.integers(0, len(parsed) - 1)) if parsed else 0
    end = data.draw(st.integers(first, len(parsed)))
    span = records_span(piece, len(parsed), first, end)
    if span is not None:
        assert list(csv.reader(io.StringIO(span.decode(), newline=""))) == parsed[first:end]


def test_records_span_of_a_clean_export_and_where_it_declines():
    lines = [q(str(i), f"p{i}@example.com", "N") for i in range(6)]
    clean = ("\r\n".join(lines) + "\r\n").encode()
    assert records_span(clean, 6, 2, 4) == ("\r\n".join(lines[2:4]) + "\r\n").encode()
    assert records_span(clean[:-2], 6, 4, 6) == ("\r\n".join(lines[4:])).encode()  # no final line end
    assert records_span(clean.replace(b'"N"', b'"N\nM"', 1), 6, 2, 4) is None  # a line break inside quotes
    assert records_span(clean.replace(b"\r\n", b"\r", 1), 6, 2, 4) is None  # a record ended by a bare \r
