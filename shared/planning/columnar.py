"""The plan pass's columnar fast path: a block of whole records parsed by Arrow's CSV reader, then checked,
keyed and fingerprinted a column at a time instead of a row at a time.

Row-level problems are decided here as the row-by-row path (the csv module) decides them, row by row in
place: a record of another width (Arrow's invalid-row handler names it), a missing or invalid email
(trimmed as str.strip() does, lower-cased, then the email pattern), a non-ASCII email (str.lower() and the
pattern on just that value). It returns None, and the row path reads the block, only where that could
differ: not UTF-8 (or bytes not valid in it), a blank line (Arrow reads it as a row of empty fields), a
value long enough that a profile could pass Klaviyo's 100 KB limit, a parse error.
Records are counted alike: Arrow and the csv module both end a record at \\n, \\r or \\r\\n outside quotes
(tests compare the two paths on generated CSV).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import xxhash

from shared.planning.native import (
    ROW_INVALID_EMAIL,
    ROW_MISSING_EMAIL,
    ROW_OK,
    ROW_WIDTH,
    NativePlanReader,
    NativeProfiles,
    PlanRead,
)
from shared.planning.profiles import EMAIL_BODY_PATTERN, MAX_PROFILE_BYTES, ProfileMapper, email_problem
from shared.reading.arrowtext import data as _data
from shared.reading.arrowtext import offsets as _offsets
from shared.reading.csvscan import records_span
from shared.reading.formats import CsvFormat
from shared.reading.xxh3 import xxh3_64_array

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def _hold_memory_flat() -> None:
    """Arrow's default pool (mimalloc) keeps freed pages per thread, and glibc gives each thread its own
    arena: with 8 pushes in parallel a 1 M-row run peaked at 443 MB instead of 287 MB. So Arrow allocates
    with malloc, and glibc keeps to two arenas (threads share them). glibc also raises its mmap threshold
    as large blocks are freed, until the plan's 1 MB pieces fragment its heap (256 MB at 5 M rows instead
    of 195 MB): a fixed 2 MB threshold keeps them apart, at the same speed. And glibc hands free memory at
    the top of its heap back to the system past 128 KB: each numpy or Arrow temporary of a block (80 KB for
    10,000 keys) then faults its pages in afresh, which made the plan pass 20% slower. Keeping up to 32 MB
    costs about 3 MB of peak (bench/RESULTS.md)."""
    pa.set_memory_pool(pa.system_memory_pool())
    if sys.platform == "linux":
        with contextlib.suppress(AttributeError, OSError):  # not glibc (musl has no mallopt): nothing to tune
            libc = ctypes.CDLL(None)
            libc.mallopt(_M_ARENA_MAX, 2)
            libc.mallopt(_M_MMAP_THRESHOLD, 2 * 1024 * 1024)
            libc.mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024)


_hold_memory_flat()

# RE2 (Arrow's regex engine) has no lookaheads: the lengths the row path checks in its pattern are checked
# with length kernels instead.
_EMAIL_RE2 = f"^{EMAIL_BODY_PATTERN}$"


class _ArrowCsv:
    """Arrow's CSV reader set up to read records exactly as the csv module does (see the module's doc)."""

    def __init__(self, fmt: CsvFormat, width: int, include: list[int], check_utf8: bool = True):
        self.usable = fmt.utf8 and len(fmt.delimiter) == 1
        self.invalid: list[tuple[int, int]] = []  # the last read's records of another width: (index, fields)
        self.unnumbered = False
        names = [f"c{i}" for i in range(width)]
        self.read_options = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 26)
        self.parse_options = pacsv.ParseOptions(
            delimiter=fmt.delimiter,
            quote_char='"' if fmt.quoting else False,
            double_quote=True,
            escape_char=False,
            newlines_in_values=True,
            ignore_empty_lines=False,  # a blank line must still count as a record: row numbers depend on it
            invalid_row_handler=self._invalid_row,
        )
        self.convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=check_utf8,
            include_columns=[names[i] for i in dict.fromkeys(include)],  # the others are still parsed
        )

    def _invalid_row(self, row) -> str:
        """A record of another width is left out of the table and listed (its number counts records, blank
        lines included, from 1), so the others stay on this path."""
        if row.number is None:
            self.unnumbered = True
        else:
            self.invalid.append((row.number - 1, row.actual_columns))
        return "skip"

    def columns(self, piece: bytes) -> dict[int, pa.StringArray] | None:
        """Column index -> values of the records of the right width (self.invalid lists the others), or None
        when the piece is not for this path (not UTF-8, a parse error)."""
        self.invalid, self.unnumbered = [], False
        if not self.usable:
            return None
        try:
            table = pacsv.read_csv(
                pa.py_buffer(piece),
                read_options=self.read_options,
                parse_options=self.parse_options,
                convert_options=self.convert_options,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if self.unnumbered:
            return None
        return {int(name[1:]): table.column(name).combine_chunks() for name in table.column_names}

    def records(self, rows: int) -> np.ndarray:
        """The record index of each of the last read's table rows (records of another width left out)."""
        if not self.invalid:
            return np.arange(rows)
        return np.delete(np.arange(rows + len(self.invalid)), [i for i, _ in self.invalid])


class ColumnarReader:
    """The plan pass's reading of a block: a PlanRead (each record's status, and the email keys, fingerprints
    and emails of the valid ones), or None when only the row path can be sure. The C kernels
    (shared/planning/native) read it when they can, Arrow when they cannot."""

    def __init__(self, fmt: CsvFormat, mapper: ProfileMapper, native: bool = True):
        self.native = NativePlanReader(fmt, mapper) if native else None
        self.email_index = mapper.email_index
        self.content_indexes = mapper.content_indexes
        # read() checks the whole block's UTF-8 first, so Arrow need not check the columns again.
        include = [mapper.email_index, *mapper.content_indexes]
        self.csv = _ArrowCsv(fmt, mapper.width, include, check_utf8=False)
        self.skeleton_bytes = mapper.skeleton_bytes()

    def read(self, piece: bytes) -> PlanRead | None:
        # The row path rejects a row with bad bytes in any field, mapped or not: the kernels check each
        # record's bytes; Arrow takes only a block that is valid UTF-8 as a whole.
        if self.native is not None and (read := self.native.read(piece, check_utf8=True)) is not None:
            return read
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return None
        columns = self.csv.columns(piece)
        if columns is None:
            return None
        rows = len(columns[self.email_index])
        if len(piece) * 6 + self.skeleton_bytes > MAX_PROFILE_BYTES:
            longest = sum(int(np.diff(_offsets(col)).max(initial=0)) for col in columns.values())
            if longest * 6 + self.skeleton_bytes > MAX_PROFILE_BYTES:
                return None
        raw = columns[self.email_index]
        emails = pc.ascii_lower(pc.utf8_trim_whitespace(raw))  # str.strip(), then lower-case (ASCII)
        offsets = _offsets(emails)
        lengths = np.diff(offsets)
        if (lengths == 0).any() and _may_hold_blank_lines(piece) and _blank(columns, lengths == 0):
            return None  # a blank line (no row) or a row of empty fields: only the csv module can tell
        status = np.full(rows, ROW_OK, np.uint8)
        # A valid email has 1-64 characters before its @, 3-254 in all, and matches the pattern.
        at = pc.find_substring(emails, "@").to_numpy(zero_copy_only=False)
        valid = (lengths >= 3) & (lengths <= 254) & (at >= 1) & (at <= 64)
        valid &= pc.match_substring_regex(emails, _EMAIL_RE2).to_numpy(zero_copy_only=False)
        status[~valid] = ROW_INVALID_EMAIL
        status[lengths == 0] = ROW_MISSING_EMAIL
        wide = _wide(raw)  # non-ASCII: str.lower() may differ from ASCII lower-casing; decided one by one
        if len(wide):
            values = emails.to_pylist()
            for r in wide.tolist():
                email = raw[r].as_py().strip().lower()
                values[r] = email
                problem = email_problem(email)
                status[r] = ROW_OK if problem is None else ROW_INVALID_EMAIL if email else ROW_MISSING_EMAIL
            emails = pa.array(values, pa.string())
        ok = status == ROW_OK
        if not ok.all():
            keep = pa.array(ok)
            emails = emails.filter(keep)
            columns = {i: col.filter(keep) for i, col in columns.items()}
        # The fingerprint is keyed by the email already: it covers the mapped fields only, joined by \x1f.
        content = [columns[i] for i in self.content_indexes]
        count = len(emails)
        if not content:
            ckeys = np.full(count, xxhash.xxh3_64_intdigest(""), np.uint64)
        else:
            ckeys = xxh3_64_array(content[0] if len(content) == 1 else pc.binary_join_element_wise(*content, "\x1f"))
        ekeys = xxh3_64_array(emails)
        if self.csv.invalid:  # the records Arrow left out, back in their places
            full = np.full(rows + len(self.csv.invalid), ROW_WIDTH, np.uint8)
            full[self.csv.records(rows)] = status
            status = full
        return PlanRead(status, ekeys, ckeys, emails, dict(self.csv.invalid), {})


def _wide(strings: pa.Array) -> np.ndarray:
    """Indexes of the values that hold a non-ASCII character."""
    data = _data(strings, _offsets(strings))
    if data.max(initial=0) < 128:
        return np.empty(0, np.int64)
    wide = pc.not_equal(pc.binary_length(strings), pc.utf8_length(strings))
    return np.flatnonzero(wide.to_numpy(zero_copy_only=False))


def _may_hold_blank_lines(piece: bytes) -> bool:
    """Whether a line end follows another anywhere (a blank line, or a quoted value's line breaks)."""
    return piece[:1] in (b"\n", b"\r") or any(pair in piece for pair in (b"\n\n", b"\n\r", b"\r\r"))


def _blank(columns: dict[int, pa.StringArray], empty_email: np.ndarray) -> bool:
    """Whether a row with an empty email has every column read empty too (it may be a blank line)."""
    blank = empty_email.copy()
    for col in columns.values():
        blank &= np.diff(_offsets(col)) == 0
    return bool(blank.any())


def lines_of(strings: pa.Array) -> memoryview:
    """The strings as UTF-8 bytes, each followed by a newline, without a Python object per string."""
    if len(strings) == 0:
        return memoryview(b"")
    joined = pc.binary_join_element_wise(strings, "", "\n")
    offsets = _offsets(joined)
    return memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


_PHONE_JUNK_RE2 = r"[\t\n\x0b\x0c\r\x1c-\x1f ().\-/]"  # the row path's [\s().\-/] on ASCII text
_E164_RE2 = r"^\+[1-9][0-9]{6,14}$"


def _cat(*parts) -> pa.StringArray:
    """The parts joined row by row; neighbouring constants go in as one (Arrow's cost is per part and row)."""
    merged: list = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return pc.binary_join_element_wise(*merged, "")


def _ascii(strings: pa.Array) -> bool:
    return _data(strings, _offsets(strings)).max(initial=0) < 128


def _control_free(strings: pa.Array) -> bool:
    return _data(strings, _offsets(strings)).min(initial=32) >= 32


def _trimmed(strings: pa.Array) -> pa.StringArray:
    """Python's str.strip() of each value (Arrow's Unicode trim strips the same characters; a test checks
    every code point). Skipped when no value starts or ends with anything but printable ASCII that is not a
    space: there is nothing to strip then, and most columns are like that."""
    offsets = _offsets(strings)
    filled = np.flatnonzero(np.diff(offsets))
    if not len(filled):
        return strings
    data, starts = _data(strings, offsets), offsets - offsets[0]
    ends = np.concatenate((data[starts[filled]], data[starts[filled + 1] - 1]))
    if ((ends > 32) & (ends < 127)).all():
        return strings
    return pc.utf8_trim_whitespace(strings)


def _escaped(strings: pa.Array) -> pa.StringArray:
    """JSON string content as orjson writes it, for text without control characters."""
    data = _data(strings, _offsets(strings))
    if not ((data == ord("\\")) | (data == ord('"'))).any():
        return strings
    return pc.replace_substring(pc.replace_substring(strings, "\\", "\\\\"), '"', '\\"')


def _members(pairs: list[tuple[str, pa.StringArray]]) -> tuple[list, bool]:
    """Parts of ',"key":"value"' for each pair, left out where the value is empty; and whether every row
    has every member. A column with no empty value goes in as it is (no per-row choice to make)."""
    parts, complete = [], True
    for key, values in pairs:
        head = f',{orjson.dumps(key).decode()}:"'
        if len(values) and np.diff(_offsets(values)).min() > 0:
            parts += [head, _escaped(values), '"']
        else:
            complete = False
            member = _cat(head, _escaped(values), '"')
            parts.append(pc.if_else(pc.greater(pc.binary_length(values), 0), member, ""))
    return parts, complete


def _object(key: str, pairs: list[tuple[str, pa.StringArray]]) -> list:
    """Parts of ',"key":{...}' over the members that are there, or nothing where none is."""
    parts, complete = _members(pairs)
    head = f",{orjson.dumps(key).decode()}:{{"
    if complete:  # every row has every member: the first one's comma gives way to the object's head
        return [head + parts[0][1:], *parts[1:], "}"]
    inner = _cat(*parts)
    nested = _cat(head, pc.utf8_slice_codeunits(inner, 1), "}")
    return [pc.if_else(pc.greater(pc.binary_length(inner), 0), nested, "")]


class ColumnarProfiles:
    """Profiles for the rows a push unit sends, built a column at a time: byte for byte what
    ProfileMapper.profile_json makes (tests compare the two). None for what only the row path handles:
    subscribe mode (consent is read row by row), control characters in a value, a non-ASCII email or phone,
    two mappings onto one attribute."""

    def __init__(self, fmt: CsvFormat, mapper: ProfileMapper, native: bool = True):
        self.native = NativeProfiles(fmt, mapper) if native else None
        self.mapper = m = mapper
        self.usable = m.one_column_per_attribute()
        used = [m.email_index, *(i for i, _ in m.top + m.location + m.properties)]
        if m.phone_index is not None:
            used.append(m.phone_index)
        self.csv = _ArrowCsv(fmt, m.width, used)

    def build_chunk(
        self, piece: bytes, records: int, chosen: np.ndarray
    ) -> tuple[list[bytes], np.ndarray, np.ndarray, int] | None:
        """(profiles, their sizes, their email keys, phone warnings) for the records at `chosen` (distinct
        indexes in order, at least one) of a piece of `records`: by the C kernels when they can, else by
        Arrow on just the records sent (a unit mostly takes the end of one chunk and the start of the next)
        when they can be found without parsing."""
        if self.native is not None and (built := self.native.build(piece, records, chosen)) is not None:
            return built
        first, end = int(chosen[0]), int(chosen[-1]) + 1
        span = records_span(piece, records, first, end)
        if span is None:
            first, end, span = 0, records, piece
        built = self.build(span, end - first, chosen - first)
        if built is None:
            return None
        made, sizes, emails, warnings = built
        return made, sizes, xxh3_64_array(emails), warnings

    def build(
        self, piece: bytes, records: int, chosen: np.ndarray
    ) -> tuple[list[bytes], np.ndarray, pa.StringArray, int] | None:
        """(profiles, their sizes, their emails, phone warnings) for the records at `chosen` of a piece of
        `records`."""
        columns = self.csv.columns(piece) if self.usable else None
        if columns is None or len(columns[self.mapper.email_index]) + len(self.csv.invalid) != records:
            return None
        if len(chosen) == 0:
            return [], np.empty(0, np.int64), pa.array([], pa.string()), 0
        if self.csv.invalid:  # records of another width (rejected in the plan) are not in the table
            left_out = np.array(sorted(i for i, _ in self.csv.invalid))
            if np.isin(chosen, left_out).any():
                return None  # not the rows that were planned
            chosen = chosen - np.searchsorted(left_out, chosen)
            records -= len(left_out)
        if len(chosen) == records:  # every record (chosen holds distinct indexes in order)
            cols = columns
        else:
            taken = pa.array(chosen)
            cols = {i: col.take(taken) for i, col in columns.items()}
        m = self.mapper
        if not all(_control_free(col) for i, col in cols.items() if i != m.email_index):
            return None
        raw_email = cols[m.email_index]
        if not _ascii(raw_email):
            return None
        emails = pc.ascii_lower(_trimmed(raw_email))
        parts: list = ['{"type":"profile","attributes":{"email":"', emails, '"']
        parts += _members([(key, _trimmed(cols[i])) for i, key in m.top])[0]
        warnings = 0
        if m.phone_index is not None:
            raw_phone = _trimmed(cols[m.phone_index])
            if not _ascii(raw_phone):
                return None
            phone = pc.replace_substring_regex(pc.replace_substring_regex(raw_phone, _PHONE_JUNK_RE2, ""), "^00", "+")
            present, valid = pc.greater(pc.binary_length(raw_phone), 0), pc.match_substring_regex(phone, _E164_RE2)
            warnings = int(pc.sum(pc.and_(present, pc.invert(valid))).as_py() or 0)
            parts.append(pc.if_else(pc.and_(present, valid), _cat(',"phone_number":"', phone, '"'), ""))
        if m.location:
            parts += _object("location", [(k, _trimmed(cols[i])) for i, k in m.location])
        if m.properties:
            parts += _object("properties", [(k, cols[i]) for i, k in m.properties])
        parts.append("}}")
        profiles = _cat(*parts).cast(pa.binary())
        return profiles.to_pylist(), np.diff(_offsets(profiles)), emails, warnings
