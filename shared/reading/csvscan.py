"""Streaming CSV reading with record boundaries.

A partition is read in blocks that end on a record boundary (a newline outside quotes), so that a block
can be parsed on its own by the csv module and a byte range recorded while planning can later be read and
parsed alone by a push activity. With RFC 4180 quoting a newline ends a record exactly when the number of
quote characters before it (since the previous boundary) is even: doubled quotes inside a field add two.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shared.platform.errors import SourceError
from shared.platform.storage import ObjectStore
from shared.reading.formats import CsvFormat, Partition

BLOCK_BYTES = 256 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # a profile over 100 KB is rejected anyway; past 1 MB the file is broken
# The csv module fails a whole read on a field over 128 K characters, where Arrow and the C kernels read it:
# one long notes column would fail a run on one path and not on another. Every path takes fields up to the
# record limit instead; a profile that comes out over Klaviyo's 100 KB is still rejected row by row.
csv.field_size_limit(MAX_RECORD_BYTES)
BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Block:
    start: int  # byte offset of the block's first record in the partition
    end: int  # byte offset just past its last record
    first_row: int  # 1-based record number of the first record (the header, if any, is record 1)
    rows: list[list[str]]
    bad_utf8: bool  # some row holds bytes that are not valid in the encoding (marked by surrogates)
    longest_record: int  # bytes: an upper bound on the longest record (lets callers skip per-row size checks)


def row_has_bad_bytes(row: list[str]) -> bool:
    return any(_SURROGATE.search(field) for field in row)


def _cut(buf: bytes | bytearray, quoting: bool, limit: int | None = None) -> int:
    """Index just past the last complete record in buf[:limit] (buf starts on a boundary); 0 if none.
    Quotes are counted once and then adjusted while stepping back, so a broken file (an unbalanced quote
    early on) costs linear time, not quadratic."""
    pos = buf.rfind(b"\n", 0, len(buf) if limit is None else limit)
    if not quoting or pos < 0:
        return pos + 1
    quotes = _count_quotes(buf, pos)
    while pos >= 0:
        if quotes % 2 == 0:
            return pos + 1
        previous = buf.rfind(b"\n", 0, pos)
        quotes -= buf.count(b'"', previous + 1, pos)
        pos = previous
    return 0


def _count_quotes(buf: bytes | bytearray, end: int) -> int:
    """Quote characters in buf[:end]: numpy counts a block's 1 MB 6x faster than bytes.count."""
    with memoryview(buf) as view:  # released at once: a bytearray cannot be resized while a view is out
        return int(np.count_nonzero(np.frombuffer(view, np.uint8, count=end) == ord('"')))


def _first_cut(buf: bytes | bytearray, quoting: bool) -> int:
    """Index just past the first complete record in buf; 0 if none."""
    pos = buf.find(b"\n")
    while pos >= 0:
        if not quoting or buf.count(b'"', 0, pos) % 2 == 0:
            return pos + 1
        pos = buf.find(b"\n", pos + 1)
    return 0


def _longest_record(piece: bytes, records: int) -> int:
    """Longest line when every record is one line (vectorised); else the block's size, a safe bound."""
    newlines = np.flatnonzero(np.frombuffer(piece, np.uint8) == 10)
    if len(newlines) != records or not records:
        return len(piece)
    return int(max(newlines[0] + 1, np.diff(newlines).max(initial=0)))


def _csv_rows(text: str, fmt: CsvFormat) -> list[list[str]]:
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=fmt.delimiter,
        quoting=csv.QUOTE_MINIMAL if fmt.quoting else csv.QUOTE_NONE,
        strict=False,
    )
    try:
        return list(reader)
    except csv.Error as exc:
        raise SourceError(f"CSV cannot be parsed: {exc}") from None


def first_record_bytes(data: bytes, fmt: CsvFormat, start: int = 0) -> int:
    """The length in bytes of the record at `start` (a record boundary) as the csv module reads it: the
    fast paths leave a record they cannot frame to the csv module and go on after it. Reads a window that
    grows until the record ends inside it."""
    window = 4096
    while True:
        stop = min(len(data), start + window)
        text = bytes(data[start:stop]).decode(fmt.encoding, errors="surrogateescape")
        consumed: list[str] = []

        def lines(text=text, consumed=consumed):
            for line in io.StringIO(text, newline=""):
                consumed.append(line)
                yield line

        reader = csv.reader(
            lines(),
            delimiter=fmt.delimiter,
            quoting=csv.QUOTE_MINIMAL if fmt.quoting else csv.QUOTE_NONE,
            strict=False,
        )
        try:
            next(reader, None)
        except csv.Error as exc:
            raise SourceError(f"CSV cannot be parsed: {exc}") from None
        length = len("".join(consumed).encode(fmt.encoding, errors="surrogateescape"))
        if stop == len(data) or start + length < stop:
            return length
        window *= 4


def _parse(data: bytes, fmt: CsvFormat) -> tuple[list[list[str]], bool]:
    try:
        text = data.decode(fmt.encoding)
        bad = False
    except UnicodeDecodeError:
        text = data.decode(fmt.encoding, errors="surrogateescape")
        bad = True
    return _csv_rows(text, fmt), bad


def iter_pieces(
    store: ObjectStore,
    part: Partition,
    start: int = 0,
    end: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes) of consecutive runs of whole records from byte `start` (a record boundary) up
    to `end` (one too, or EOF), about `block_bytes` each."""
    quoting = part.fmt.quoting
    buf = bytearray()
    offset = start  # file offset of buf[0]
    chunks = store.iter_bytes(part.name, start, end)
    strip_bom = start == 0
    eof = False
    while not eof:
        data = next(chunks, None)
        if data is None:
            eof = True
        else:
            buf += data
        if strip_bom and (len(buf) >= 3 or eof):
            strip_bom = False
            if buf.startswith(BOM):
                del buf[:3]
                offset += 3
        while buf and (len(buf) >= block_bytes or eof):
            cut = _cut(buf, quoting, block_bytes) or _cut(buf, quoting)
            if cut == 0:
                if eof:
                    cut = len(buf)  # the last record, with no newline after it
                elif len(buf) > MAX_RECORD_BYTES:
                    raise SourceError(
                        f"{part.label}: a record starting at byte {offset} is longer than "
                        f"{MAX_RECORD_BYTES // 1024} KB (an unbalanced quote, or the wrong delimiter?)"
                    )
                else:
                    break
            with memoryview(buf) as view:
                piece = view[:cut].tobytes()  # one copy (bytes(buf[:cut]) makes two)
            del buf[:cut]
            yield offset, piece
            offset += cut


def parse_block(offset: int, piece: bytes, first_row: int, fmt: CsvFormat) -> Block:
    """A piece of whole records parsed row by row with the csv module."""
    rows, bad = _parse(piece, fmt)
    return Block(offset, offset + len(piece), first_row, rows, bad, _longest_record(piece, len(rows)))


def records_span(piece: bytes, records: int, first: int, end: int) -> bytes | None:
    """The bytes of records [first, end) of a piece of `records` whole records, found without parsing when
    every record ends at a \\n: as many \\n as terminated records (so none is inside quotes) and no bare \\r
    (the other terminator). None when that does not hold: the piece must then be parsed whole."""
    if first == 0 and end == records:
        return piece
    if first >= end:
        return b""
    data = np.frombuffer(piece, np.uint8)
    newline = data == ord("\n")
    ends = np.flatnonzero(newline)
    if len(ends) != (records if piece.endswith(b"\n") else records - 1):
        return None
    returns = data == ord("\r")
    if returns.any() and np.count_nonzero(returns) != np.count_nonzero(returns[:-1] & newline[1:]):
        return None  # a \r that is not followed by \n
    start = int(ends[first - 1]) + 1 if first else 0
    stop = int(ends[end - 1]) + 1 if end <= len(ends) else len(piece)
    return piece[start:stop]


def iter_blocks(
    store: ObjectStore,
    part: Partition,
    start: int = 0,
    end: int | None = None,
    first_row: int = 1,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Block]:
    """Blocks of whole records from byte `start` (a record boundary) up to `end` (one too, or EOF).

    Blank lines yield an empty row (csv does the same), so record numbers stay the lines a person sees
    in the file for single-line records.
    """
    row_no = first_row
    for offset, piece in iter_pieces(store, part, start, end, block_bytes):
        block = parse_block(offset, piece, row_no, part.fmt)
        yield block
        row_no += len(block.rows)


def read_header(store: ObjectStore, name: str, fmt: CsvFormat) -> list[str]:
    """The first record of a CSV with a header row (BOM stripped); clear errors for empty/odd files."""
    info = store.info(name)
    if info.size == 0:
        raise SourceError(f"CSV file is empty: {store.describe(name)}")
    part = Partition(name, info.size, info.etag, fmt)
    for block in iter_blocks(store, part, block_bytes=64 * 1024):
        for row in block.rows:
            if not row:
                continue
            header = [c.strip() for c in row]
            if row_has_bad_bytes(header):
                raise SourceError(f"CSV header is not valid {fmt.encoding}: {store.describe(name)}")
            if any(ord(ch) < 32 for col in header for ch in col):
                raise SourceError(f"CSV header holds control characters (binary data?): {store.describe(name)}")
            if any(not c for c in header) or len(set(header)) != len(header):
                raise SourceError(f"CSV header has empty or repeated column names: {store.describe(name)}")
            return header
        break
    raise SourceError(f"CSV file has no header row: {store.describe(name)}")


def header_end(store: ObjectStore, part: Partition) -> int:
    """Byte offset just past the header record (after a BOM, if any)."""
    buf = bytearray()
    for data in store.iter_bytes(part.name):
        buf += data
        skip = 3 if buf.startswith(BOM) else 0
        cut = _first_cut(memoryview(buf)[skip:].tobytes(), part.fmt.quoting)
        if cut:
            return skip + cut
        if len(buf) > MAX_RECORD_BYTES:
            raise SourceError(f"{part.label}: the header record is longer than {MAX_RECORD_BYTES // 1024} KB")
    return len(buf)
