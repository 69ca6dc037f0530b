"""A sync state's keys.bin and emails.txt (the same profiles in the same order) rewritten without some
rows, streamed: memory stays flat however many profiles the state holds. (Reading both whole and splitting
the emails into a list of lines took 1.6 GB at 5 M profiles: a finish that left out one unfinished job's
profiles, or an erasure, would not have fitted an instance beside anything else; bench/RESULTS.md.)"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator

import numpy as np

from shared.planning.plan import KEYS_DTYPE
from shared.platform.errors import ExportError
from shared.platform.storage import ObjectStore


def _records(store: ObjectStore, name: str) -> Iterator[np.ndarray]:
    """keys.bin in blocks of whole KEYS_DTYPE records, as the store streams it."""
    size, rest = KEYS_DTYPE.itemsize, b""
    for piece in store.iter_bytes(name):
        data = rest + piece if rest else piece
        whole = len(data) - len(data) % size
        if whole:
            yield np.frombuffer(data, KEYS_DTYPE, whole // size)
        rest = data[whole:]
    if rest:
        raise ExportError(f"{store.describe(name)} does not hold whole records")


def rows_with_keys(store: ObjectStore, name: str, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers, their email keys) of the records of keys.bin whose email key is in `wanted`."""
    rows, keys, base = [np.empty(0, np.int64)], [np.empty(0, np.uint64)], 0
    for block in _records(store, name):
        hit = np.flatnonzero(np.isin(block["e"], wanted))
        rows.append(hit + base)
        keys.append(block["e"][hit])
        base += len(block)
    return np.concatenate(rows), np.concatenate(keys)


def _lines_without(pieces: Iterable[bytes], drop: np.ndarray, out) -> int:
    """Write the newline-ended lines of the stream to `out`, except the lines numbered in `drop` (sorted);
    returns how many lines there were."""
    line, rest, j = 0, b"", 0
    for piece in pieces:
        data = rest + piece if rest else piece  # `rest` is the start of a line cut by the last piece
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        if not len(ends):
            rest = data
            continue
        view, pos = memoryview(data), 0
        while j < len(drop) and drop[j] < line + len(ends):
            k = int(drop[j]) - line
            out.write(view[pos : 0 if k == 0 else int(ends[k - 1]) + 1])
            pos, j = int(ends[k]) + 1, j + 1
        complete = int(ends[-1]) + 1
        out.write(view[pos:complete])
        rest, line = data[complete:], line + len(ends)
    if rest:
        raise ExportError("emails.txt does not end with a line break")
    return line


def copy_without(source: ObjectStore, source_prefix: str, target: ObjectStore, target_prefix: str, drop) -> int:
    """keys.bin and emails.txt from `source_prefix` to `target_prefix` (the same place is fine: both are read
    whole into temporary files before either is written) without the rows numbered in `drop`. Emails are
    written first, then keys; the caller writes meta.json last. Returns how many rows are left."""
    drop = np.unique(np.asarray(drop, np.int64))
    with tempfile.TemporaryFile() as emails, tempfile.TemporaryFile() as keys:
        lines = _lines_without(source.iter_bytes(f"{source_prefix}emails.txt"), drop, emails)
        rows = 0
        for block in _records(source, f"{source_prefix}keys.bin"):
            inside = drop[(drop >= rows) & (drop < rows + len(block))] - rows
            keys.write(np.delete(block, inside).tobytes())
            rows += len(block)
        if lines != rows:
            raise ExportError(f"the sync state {source_prefix} is inconsistent: {rows} keys, {lines} emails")
        emails.seek(0)
        keys.seek(0)
        target.write_file(f"{target_prefix}emails.txt", emails)
        target.write_file(f"{target_prefix}keys.bin", keys)
    return rows - len(drop)


def lines_at(store: ObjectStore, name: str, rows) -> list[str]:
    """The lines numbered `rows` of a newline-ended text file (emails.txt), in row order, streamed; a row
    past the end is not there."""
    rows = np.unique(np.asarray(rows, np.int64))
    out: list[str] = []
    line, rest, j = 0, b"", 0
    for piece in store.iter_bytes(name):
        data = rest + piece if rest else piece
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
        if not len(ends):
            rest = data
            continue
        while j < len(rows) and rows[j] < line + len(ends):
            k = int(rows[j]) - line
            out.append(data[0 if k == 0 else int(ends[k - 1]) + 1 : int(ends[k])].decode())
            j += 1
        complete = int(ends[-1]) + 1
        rest, line = data[complete:], line + len(ends)
    return out
