"""The fast path's C kernels (fastpath.c), loaded with ctypes: CSV records cut into fields, emails checked
and keyed and rows fingerprinted for the plan pass, profiles written as JSON for a push.

`make setup` builds the library (`make native`: a C compiler, nothing else). Where it is not built, the
app runs as before on the Arrow path (shared/planning/columnar.py) and the row path: the same results, at about
half the speed. The kernels decide only what they are certain to decide exactly as the csv module and
ProfileMapper do: row-level problems with the row path's reasons; the few records they cannot be sure of
go to the row path one by one, and None leaves a whole block to the other paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import xxhash

from shared.planning.profiles import MAX_PROFILE_BYTES, ProfileMapper
from shared.reading import arrowtext
from shared.reading.csvscan import first_record_bytes
from shared.reading.formats import CsvFormat

LIBRARY = Path(__file__).with_name("libfastpath.so")
_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
_TOP, _LOCATION, _PROPERTIES = 0, 1, 2


def _open() -> tuple[ctypes.CDLL | None, str]:
    """The library with its functions typed, or None; and one line saying which (for logs and `--check`)."""
    if not LIBRARY.exists():
        return None, f"{LIBRARY.name} is not built (`make native` builds it); the Arrow path runs"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:  # built for another platform, or a C library too old for it
        return None, f"{LIBRARY.name} cannot be loaded ({exc}); the Arrow path runs"
    lib.fastpath_source.argtypes, lib.fastpath_source.restype = [], ctypes.c_char_p
    source = hashlib.sha256(LIBRARY.with_name("fastpath.c").read_bytes()).hexdigest()
    if lib.fastpath_source().decode() != source:
        return None, f"{LIBRARY.name} was built from another fastpath.c: `make native` rebuilds it; the Arrow path runs"
    lib.xxh3_64.argtypes, lib.xxh3_64.restype = [ctypes.c_char_p, ctypes.c_size_t], ctypes.c_uint64
    lib.csv_scan.argtypes = [ctypes.c_char_p, _L, _I, _I, _I, _P, _I, _P, _P, _P, _P, _L, _L, _L, _L, _P]
    lib.plan_records.argtypes = [ctypes.c_char_p, _P, _P, _P, _P, _L, _I, _I, _L, _I, _I, _P, _I, *[_P] * 8]
    lib.build_profiles.argtypes = [ctypes.c_char_p, _P, _P, _I, _P, _L, _I, _I, _P, _P, _P, _P, _I]
    lib.build_profiles.argtypes += [_P, _P, _P, _P, _P]
    lib.bucket_records.argtypes, lib.bucket_records.restype = [_L, _I, *[_P] * 11], None
    lib.email_lines.argtypes = [_P, _P, _P, _L, _P]
    for name in ("csv_scan", "plan_records", "build_profiles", "email_lines"):
        getattr(lib, name).restype = _L
    return lib, f"C kernels loaded: {LIBRARY.name} built from fastpath.c (sha256 {source[:12]}…)"


def _load() -> tuple[ctypes.CDLL | None, str]:
    lib, status = _open()
    if lib is None and LIBRARY.exists():  # built, yet refused: worth a warning (not building it is a choice)
        logging.getLogger(__name__).warning("%s", status)
    return lib, status


lib, status = _load()
available = lib is not None


def xxh3_64(data: bytes) -> int:
    """XXH3-64 of up to 240 bytes (for tests: the kernels hash inline)."""
    return int(lib.xxh3_64(data, len(data)))


def _text(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (rebased to 0) and bytes."""
    offsets = arrowtext.offsets(strings)
    return np.ascontiguousarray(offsets - offsets[0]), arrowtext.data(strings, offsets)


def bucket_records(bits: int, ekeys, ckeys, gids, emails: pa.StringArray):
    """A block's spill records grouped by bucket (top `bits` bits of the email key, row order within each):
    (records as (n, 3) uint64 rows, email bytes, email lengths, records per bucket, email bytes per bucket)."""
    n = len(ekeys)
    ekeys, ckeys, gids = (np.ascontiguousarray(a, np.uint64) for a in (ekeys, ckeys, gids))
    offsets, data = _text(emails)
    counts, byte_counts, cursors = (
        np.empty(1 << bits, np.int64),
        np.empty(1 << bits, np.int64),
        np.empty(2 << bits, np.int64),
    )
    rec, text, lengths = np.empty((n, 3), np.uint64), np.empty(int(offsets[-1]), np.uint8), np.empty(n, np.int32)
    lib.bucket_records(
        n, bits, ekeys.ctypes.data, ckeys.ctypes.data, gids.ctypes.data, data.ctypes.data, offsets.ctypes.data,
        counts.ctypes.data, byte_counts.ctypes.data, cursors.ctypes.data, rec.ctypes.data, text.ctypes.data,
        lengths.ctypes.data,
    )  # fmt: skip
    return rec, text, lengths, counts, byte_counts


def email_lines(emails: pa.StringArray, order: np.ndarray) -> bytes:
    """The emails at `order`, each followed by a newline."""
    offsets, data = _text(emails)
    order = np.ascontiguousarray(order, np.int64)
    out = np.empty(int(offsets[-1]) + len(order), np.uint8)
    n = lib.email_lines(data.ctypes.data, offsets.ctypes.data, order.ctypes.data, len(order), out.ctypes.data)
    return out[:n].tobytes()


class _Scanner:
    """Records of a piece cut into the fields of some columns (csv_scan in fastpath.c)."""

    def __init__(self, fmt: CsvFormat, width: int, columns: list[int]):
        # (The csv module ends a record at \r or \n whatever the delimiter: such a delimiter stays with it.)
        self.usable = available and fmt.utf8 and len(fmt.delimiter.encode()) == 1 and fmt.delimiter not in "\r\n"
        self.delimiter, self.quoting, self.width = ord(fmt.delimiter), int(fmt.quoting), width
        self.slots = list(dict.fromkeys(columns))
        slot_of = np.full(width, -1, np.int32)
        slot_of[self.slots] = np.arange(len(self.slots), dtype=np.int32)
        self.slot_of = slot_of
        self.stats = np.zeros(3, np.int64)
        self.capacity = 0
        self.bounds, self.escaped = np.empty(0, np.int32), np.empty(0, np.uint8)
        self.fields, self.starts = np.empty(0, np.int32), np.empty(1, np.int32)

    def slot(self, column: int) -> int:
        return self.slots.index(column)

    def scan(self, piece: bytes, skip: int = 0, stop: int = -1, begin: int = 0, capacity: int = 0) -> int | None:
        """Records [skip, stop) of the piece from byte `begin` recorded (in self.bounds, escaped, fields and
        starts): their number, or None when the grammar does not take them (stats[1:3] say where)."""
        if not capacity:  # every record but the last ends at a \n
            capacity = piece.count(b"\n", begin) + 1 if stop < 0 else max(stop - skip, 0)
        if capacity > self.capacity:  # kept between blocks: its pages are touched only as far as used
            self.capacity = capacity
            self.bounds = np.empty(capacity * len(self.slots) * 2, np.int32)
            self.escaped = np.empty(capacity * len(self.slots), np.uint8)
            self.fields, self.starts = np.empty(capacity, np.int32), np.empty(capacity + 1, np.int32)
        n = lib.csv_scan(
            piece, len(piece), self.delimiter, self.quoting, self.width, self.slot_of.ctypes.data,
            len(self.slots), self.bounds.ctypes.data, self.escaped.ctypes.data, self.fields.ctypes.data,
            self.starts.ctypes.data, capacity, begin, skip, stop, self.stats.ctypes.data,
        )  # fmt: skip
        return None if n < 0 else n


# plan_records' codes (fastpath.c) for what the row path decides of a record
ROW_OK, ROW_BLANK, ROW_WIDTH, ROW_BAD_BYTES, ROW_MISSING_EMAIL, ROW_INVALID_EMAIL, ROW_DEFER = range(7)


@dataclass
class PlanRead:
    """A block as the plan pass reads it: every record's status (the ROW_ codes), and the email keys,
    fingerprints and emails of the ROW_OK ones; `fields` of the ROW_WIDTH ones (for the reason), and the
    bytes of the records to leave to the row path (ROW_DEFER), by record index."""

    status: np.ndarray
    ekeys: np.ndarray
    ckeys: np.ndarray
    emails: pa.StringArray
    fields: dict[int, int]
    deferred: dict[int, bytes]


class NativePlanReader:
    """The plan pass's reading of a block in C: a PlanRead, or None when the block is not for this path.

    Row-level problems (a wrong field count, a blank line, bad bytes, a missing or invalid email) are
    decided here as the row path decides them; the few records only the row path can be sure of are
    handed back as bytes: a record with a non-ASCII email or a long one (see plan_records), and a record
    the scan cannot frame (a bare \r, a quote inside a plain field...), whose end the csv module finds."""

    def __init__(self, fmt: CsvFormat, mapper: ProfileMapper):
        self.fmt = fmt
        self.width = mapper.width
        self.scanner = _Scanner(fmt, mapper.width, [mapper.email_index, *mapper.content_indexes])
        self.email_slot = self.scanner.slot(mapper.email_index)
        self.content_slots = np.array([self.scanner.slot(i) for i in mapper.content_indexes], np.int32)
        # A record longer than this could make a profile over 100 KB (escaping: at most 6 bytes a byte).
        self.max_record = max(0, (MAX_PROFILE_BYTES - mapper.skeleton_bytes()) // 6)

    def read(self, piece: bytes, check_utf8: bool = False) -> PlanRead | None:
        if not self.scanner.usable or not piece:
            return None
        # Records of the right width have at least width - 1 delimiters; short ones and blank lines can make
        # more records than that, and every record but the last ends at a \n.
        capacity = len(piece) // max(1, self.width - 1) + 1
        parts, deferred, begin, done = [], {}, 0, 0
        while begin < len(piece):
            n = self.scanner.scan(piece, begin=begin, capacity=capacity)
            if n is None and self.scanner.stats[2] == -2:
                capacity = piece.count(b"\n", begin) + 1
                n = self.scanner.scan(piece, begin=begin, capacity=capacity)
            unframed = n is None
            if unframed:
                n, start = int(self.scanner.stats[1]), int(self.scanner.stats[2])
                if start < 0:
                    return None  # a NUL byte: the row path reads the block
            if n:
                parts.append(self._records(piece, n, check_utf8))
                done += n
            if not unframed:
                break
            end = start + first_record_bytes(piece, self.fmt, start)
            deferred[done] = piece[start:end]
            parts.append(_deferred_record())
            done += 1
            begin = end
        if not parts:
            return None
        status = np.concatenate([p[0] for p in parts])
        ekeys, ckeys = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        emails = pa.concat_arrays([p[3] for p in parts]) if len(parts) > 1 else parts[0][3]
        fields, at = {}, 0
        for part in parts:
            fields.update({at + r: f for r, f in part[4].items()})
            deferred.update({at + r: b for r, b in part[5].items()})
            at += len(part[0])
        return PlanRead(status, ekeys, ckeys, emails, fields, deferred)

    def _records(self, piece: bytes, n: int, check_utf8: bool):
        """(status, ekeys, ckeys of the OK records, their emails, fields of the wrong-width ones, deferred
        records' bytes) of the n records just scanned."""
        scanner, nslots = self.scanner, len(self.scanner.slots)
        bounds, escaped, fields, starts = scanner.bounds, scanner.escaped, scanner.fields, scanner.starts
        status = np.empty(n, np.uint8)
        ekeys, ckeys = np.empty(n, np.uint64), np.empty(n, np.uint64)
        emails, offsets = np.empty(len(piece), np.uint8), np.empty(n + 1, np.int32)
        scratch = np.empty(len(piece) + 512, np.uint8)
        long_rows, nlong = np.empty(n, np.int64), np.zeros(1, np.int64)
        written = lib.plan_records(
            piece, bounds.ctypes.data, escaped.ctypes.data, fields.ctypes.data, starts.ctypes.data, n, self.width,
            int(check_utf8), self.max_record, nslots, self.email_slot, self.content_slots.ctypes.data,
            len(self.content_slots), status.ctypes.data, ekeys.ctypes.data, ckeys.ctypes.data, emails.ctypes.data,
            offsets.ctypes.data, scratch.ctypes.data, long_rows.ctypes.data, nlong.ctypes.data,
        )  # fmt: skip
        for row in long_rows[: int(nlong[0])].tolist():  # fingerprinted text over 240 bytes: xxhash's long path
            ckeys[row] = xxhash.xxh3_64_intdigest(b"\x1f".join(self._content(piece, bounds, escaped, row)))
        ok = status == ROW_OK
        count = int(ok.sum())
        text = pa.StringArray.from_buffers(
            count, pa.py_buffer(offsets[: count + 1].copy()), pa.py_buffer(emails[:written].tobytes())
        )
        if count != n:
            ekeys, ckeys = ekeys[ok], ckeys[ok]
        wrong = np.flatnonzero(status == ROW_WIDTH).tolist()
        late = np.flatnonzero(status == ROW_DEFER).tolist()
        return (
            status,
            ekeys,
            ckeys,
            text,
            dict(zip(wrong, fields[wrong].tolist(), strict=True)),
            {r: piece[starts[r] : starts[r + 1]] for r in late},
        )

    def _content(self, piece: bytes, bounds: np.ndarray, escaped: np.ndarray, row: int) -> list[bytes]:
        values = []
        for slot in self.content_slots.tolist():
            at = row * len(self.scanner.slots) + slot
            value = piece[bounds[2 * at] : bounds[2 * at + 1]]
            values.append(value.replace(b'""', b'"') if escaped[at] else value)
        return values


def _deferred_record():
    """One record left to the row path, as _records would give it."""
    empty = np.empty(0, np.uint64)
    return np.array([ROW_DEFER], np.uint8), empty, empty, pa.array([], pa.string()), {}, {}


class NativeProfiles:
    """A push's profiles in C, byte for byte what ProfileMapper.profile_json makes, or None where only the
    other paths apply (subscribe mode reads consent row by row and never comes here)."""

    def __init__(self, fmt: CsvFormat, mapper: ProfileMapper):
        m = mapper
        members = [(i, k, _TOP) for i, k in m.top] + [(i, k, _LOCATION) for i, k in m.location]
        members += [(i, k, _PROPERTIES) for i, k in m.properties]
        columns = [m.email_index, *(i for i, _, _ in members)]
        if m.phone_index is not None:
            columns.append(m.phone_index)
        self.scanner = _Scanner(fmt, m.width, columns)
        # Two mappings onto one attribute, or one onto a key the profile sets itself: the row path.
        self.usable = self.scanner.usable and m.one_column_per_attribute()
        self.email_slot = self.scanner.slot(m.email_index)
        self.phone_slot = -1 if m.phone_index is None else self.scanner.slot(m.phone_index)
        self.member_slot = np.array([self.scanner.slot(i) for i, _, _ in members], np.int32)
        self.member_group = np.array([g for _, _, g in members], np.int32)
        heads = [orjson.dumps(k) + b':"' for _, k, _ in members]
        self.keys = np.frombuffer(b"".join(heads) or b"\0", np.uint8)
        self.key_offsets = np.concatenate([[0], np.cumsum([len(h) for h in heads])]).astype(np.int32)
        self.fixed_bytes = 160 + sum(len(h) + 2 for h in heads)  # a profile's bytes besides its values
        self.warnings = np.zeros(1, np.int64)

    def build(
        self, piece: bytes, records: int, chosen: np.ndarray
    ) -> tuple[list[bytes], np.ndarray, np.ndarray, int] | None:
        """(profiles, their sizes, their email keys, phone warnings) for the records at `chosen` (distinct
        indexes in order) of a piece of `records` records; None when this path does not apply."""
        if not self.usable:
            return None
        if len(chosen) > 1 and (np.diff(chosen) <= 0).any():
            return None  # the kernel's sizes and indexes count on distinct indexes in order
        first, end = int(chosen[0]), int(chosen[-1]) + 1
        if self.scanner.scan(piece, first, end) != end - first:
            return None
        bounds, escaped = self.scanner.bounds, self.scanner.escaped
        picked = (chosen - first).astype(np.int64)
        if (self.scanner.fields[picked] != self.scanner.width).any():
            return None  # a row the plan rejected cannot be sent: the source is not what was planned
        n = len(picked)
        out = np.empty(n * self.fixed_bytes + 6 * len(piece), np.uint8)  # escaping: at most 6 bytes a byte
        offsets, ekeys = np.empty(n + 1, np.int64), np.empty(n, np.uint64)
        scratch = np.empty(len(piece) + 64, np.uint8)
        self.warnings[0] = 0
        written = lib.build_profiles(
            piece, bounds.ctypes.data, escaped.ctypes.data, len(self.scanner.slots), picked.ctypes.data, n,
            self.email_slot, self.phone_slot, self.member_slot.ctypes.data, self.member_group.ctypes.data,
            self.key_offsets.ctypes.data, self.keys.ctypes.data, len(self.member_slot), out.ctypes.data,
            offsets.ctypes.data, ekeys.ctypes.data, self.warnings.ctypes.data, scratch.ctypes.data,
        )  # fmt: skip
        if written < 0:
            return None
        profiles = pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
        return profiles.to_pylist(), np.diff(offsets), ekeys, int(self.warnings[0])
