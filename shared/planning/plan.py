"""The plan pass: one streaming read of the export that validates every row, drops repeats of an email (the
later row wins), fingerprints each profile, diffs against the last committed sync state, and splits what
must be sent into units of work that push activities can do on their own.

Bulk results go to the run's workspace (an ObjectStore prefix); the function returns a small summary that
fits in durable history:
- plan.json   partitions, columns, chunks (partition, byte range, first record number, first row id)
- send.bits   one bit per row id: send this row (numpy packbits)
- keys.bin    email key, content fingerprint of every unique valid profile, sorted by key (for sync state)
- emails.txt  their emails, one a line in the same order (mirror mode looks up profile ids by email)
- rejects.ndjson  every rejected or duplicate row with its partition, row number and reason
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from shared.planning import native
from shared.planning.columnar import ColumnarReader, lines_of
from shared.planning.native import (
    ROW_BAD_BYTES,
    ROW_BLANK,
    ROW_DEFER,
    ROW_INVALID_EMAIL,
    ROW_MISSING_EMAIL,
    ROW_OK,
    ROW_WIDTH,
    PlanRead,
)
from shared.planning.profiles import MAX_PROFILE_BYTES, ProfileMapper, clean_emails, email_ok, email_problem
from shared.platform.errors import ExportError, SourceError
from shared.platform.storage import ObjectStore
from shared.reading import arrowtext
from shared.reading.csvscan import Block, header_end, iter_pieces, parse_block, row_has_bad_bytes
from shared.reading.formats import CsvFormat, Partition
from shared.reading.source import ExportSource

REJECTS_SAMPLE = 20
PROFILE_SIZE_CHECK = MAX_PROFILE_BYTES // 2  # rows whose fields add up to less cannot make a 100 KB profile
PLAN_BLOCK_BYTES = 1024 * 1024  # large enough that Arrow's per-call cost vanishes, small enough to stay flat


# The spill's records: rows of (email key, content fingerprint, row id), uint64. A plain 2-D array rather than a
# structured one: numpy moves whole rows of it 15x faster (np.take along axis 0).
E, C, G = 0, 1, 2
KEYS_DTYPE = np.dtype([("e", "<u8"), ("c", "<u8")])  # email key, content fingerprint; sorted by email key


@dataclass
class SyncState:
    """What Klaviyo confirmed in earlier runs (KEYS_DTYPE records sorted by email key), and the mapping it
    was made under: a changed mapping resends everyone."""

    keys: np.ndarray
    mapping_key: str


@dataclass
class PlanOptions:
    chunk_rows: int = 10_000
    unit_profiles: int = 10_000  # profiles per push unit: one bulk import job's worth
    max_profiles: int | None = None
    full_resync: bool = False
    state: SyncState | None = None
    mirror_share: float | None = None  # mirror mode: refuse removing more than this share of managed profiles
    allow_mass_removal: bool = False
    # Refuse a run whose rejected rows are more than this share of the rows read (a wrong encoding, delimiter
    # or a compressed partition rejects nearly every row); None: no limit.
    max_reject_share: float | None = None


def _locator(part: Partition, row: int) -> dict:
    return {"partition": part.label, "row": row}


class _Rejects:
    """The rejects file's lines, written to a temporary file as they come (orjson keeps a 4 KB allocation
    per result: 60,000 rejected rows held as bytes cost 230 MB), and a sample of the first ones."""

    def __init__(self, file) -> None:
        self.file = file
        self.sample: list[dict] = []
        self.rejected = 0
        self.reasons: Counter[str] = Counter()  # for the error line of a run with too many rejects
        self._json: dict[str, str] = {}  # a reason or a label as JSON text: a few distinct ones, many times

    def _text(self, value: str) -> str:
        if (text := self._json.get(value)) is None:
            text = orjson.dumps(value).decode()
            if len(self._json) < 1_000:
                self._json[value] = text
        return text

    def add(self, part: Partition, row: int, reason: str, kind: str = "rejected") -> None:
        self.add_many(part, [row], [reason], kind)

    def add_many(self, part: Partition, rows: list[int], reasons: list[str], kind: str = "rejected") -> None:
        """Rows of one partition, in order: each line is what orjson makes of {partition, row, reason, kind}."""
        if not rows:
            return
        head = '{"partition":' + self._text(part.label) + ',"row":'
        tail = ',"kind":' + self._text(kind) + "}"
        texts = pa.array([self._text(r) for r in reasons], pa.string())
        numbers = pc.cast(pa.array(rows, pa.int64()), pa.string())
        self.file.write(lines_of(pc.binary_join_element_wise(head, numbers, ',"reason":', texts, tail, "")))
        if kind == "rejected":
            self.rejected += len(rows)
            for reason in reasons:
                # A few kinds of reason in practice; the cap keeps a pathological source from growing it.
                self.reasons[reason if reason in self.reasons or len(self.reasons) < 100 else "other reasons"] += 1
            for row, reason in zip(rows[: REJECTS_SAMPLE - len(self.sample)], reasons, strict=False):
                self.sample.append({**_locator(part, row), "reason": reason, "kind": kind})


def plan_export(
    source: ExportSource,
    mapper: ProfileMapper,
    workspace: ObjectStore,
    prefix: str,
    options: PlanOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    return _plan(source, mapper, workspace, prefix, options or PlanOptions(), progress)


def _plan(source, mapper, workspace, prefix, opts: PlanOptions, progress) -> dict:
    started = time.monotonic()
    total_bytes = sum(p.size for p in source.partitions)
    spill = _Spill(total_bytes)
    rejects = _Rejects(spill.temporary_file())
    done_bytes = 0
    content = mapper._content  # the itemgetter itself: a method call per row costs 10% of the pass
    xxh = xxhash.xxh3_64_intdigest

    chunks: list[list[int]] = []  # [partition index, start, end, first record number, first row id, records]
    next_gid = 0
    rows_read = 0

    readers: dict[CsvFormat, ColumnarReader] = {}  # one per format, not per partition
    for pidx, part in enumerate(source.partitions):
        start, row_no = 0, 1
        if part.fmt.header:
            start, row_no = header_end(source.store, part), 2
        columnar = readers.get(part.fmt) or readers.setdefault(part.fmt, ColumnarReader(part.fmt, mapper))
        chunk: list[int] | None = None
        for offset, piece in iter_pieces(source.store, part, start=start, block_bytes=PLAN_BLOCK_BYTES):
            if chunk is None:
                chunk = [pidx, offset, 0, row_no, next_gid, 0]
                chunks.append(chunk)
            base = next_gid
            fast = columnar.read(piece)
            if fast is not None:  # read by the C kernels or Arrow, row-level problems decided in place
                records = len(fast.status)
                if len(fast.emails) == records:  # every record well-formed with a valid email
                    rows_read_here = records
                    spill.add(np.arange(base, base + records, dtype=np.uint64), fast.ekeys, fast.ckeys, fast.emails)
                else:
                    rows_read_here = _plan_read(fast, part, base, row_no, mapper, spill, rejects, content, xxh)
            else:
                block = parse_block(offset, piece, row_no, part.fmt)
                records = len(block.rows)
                rows_read_here = _plan_rows(block, part, base, mapper, spill, rejects, content, xxh)
            rows_read += rows_read_here
            next_gid += records
            row_no += records
            chunk[2] = offset + len(piece)
            chunk[5] += records
            if chunk[5] >= opts.chunk_rows:
                chunk = None
            if progress:
                progress(done_bytes + offset + len(piece), total_bytes)
        done_bytes += part.size
        if progress:
            progress(done_bytes, total_bytes)

    _check_reject_share(opts, rejects, rows_read)
    # Per bucket of email keys (all rows of one email share a bucket): the later row wins, then the diff
    # against the last committed state. Buckets keep memory bounded whatever the row count, and their
    # sorted outputs concatenate into globally sorted keys.
    bits = np.zeros(next_gid, bool)
    state = opts.state
    use_state = not opts.full_resync and state is not None and state.mapping_key == mapper.mapping_key
    unique = duplicates = to_send = 0
    keys_file, emails_file = spill.temporary_file(), spill.temporary_file()
    starts = np.array([c[4] for c in chunks], np.uint64)
    beaten_rows: list[np.ndarray] = []  # row ids of duplicates, listed once all buckets are done (in row order)
    for lo, hi, rec, emails in spill.buckets():
        n = len(rec)
        # Equal keys end up side by side; the latest row of each email (the highest position: a bucket's
        # records are in row order) wins, and the others are duplicates.
        order = np.argsort(rec[:, E])
        keys = rec[order, E]
        run_starts = np.ones(n, bool)
        run_starts[1:] = keys[1:] != keys[:-1]
        runs = np.flatnonzero(run_starts)
        by_key = order if len(runs) == n else np.maximum.reduceat(order, runs)
        if len(by_key) != n:
            beaten = np.ones(n, bool)
            beaten[by_key] = False
            beaten_rows.append(rec[beaten, G])
            duplicates += n - len(by_key)
        kept = np.take(rec, by_key, axis=0)
        unique += len(kept)
        send = np.ones(len(kept), bool)
        if use_state and len(state.keys):
            old = state.keys[np.searchsorted(state.keys["e"], lo) : np.searchsorted(state.keys["e"], hi, side="right")]
            if len(old):
                pos = np.minimum(np.searchsorted(old["e"], kept[:, E]), len(old) - 1)
                send = (old["e"][pos] != kept[:, E]) | (old["c"][pos] != kept[:, C])
        bits[kept[send, G].astype(np.int64)] = True
        to_send += int(send.sum())
        keys_file.write(np.ascontiguousarray(kept[:, [E, C]], "<u8"))  # KEYS_DTYPE records
        if native.available:
            emails_file.write(native.email_lines(emails, by_key))
        else:
            emails_file.write(lines_of(emails.take(pa.array(by_key))))

    if beaten_rows:
        _record_duplicates(np.concatenate(beaten_rows), starts, chunks, source.partitions, rejects)
    if opts.max_profiles is not None and unique > opts.max_profiles:
        raise ExportError(
            f"the segment has {unique:,} profiles, over this export's max_profiles of {opts.max_profiles:,}; "
            "nothing was sent"
        )
    units = _units(bits, starts, opts.unit_profiles)
    to_remove = _mirror_removals(opts, state, keys_file, unique) if opts.mirror_share is not None else None
    _write_workspace(workspace, prefix, source, mapper, chunks, bits, keys_file, emails_file, rejects)
    if to_remove is not None:
        workspace.write_bytes(f"{prefix}remove.bin", to_remove.astype("<u8").tobytes())
    spill.close()

    return {
        "source": source.identity,
        "entity": source.entity,
        "rows_read": rows_read,
        "rows_rejected": rejects.rejected,
        "duplicate_rows": duplicates,
        "unique_profiles": unique,
        "profiles_to_send": to_send,
        "profiles_unchanged": unique - to_send,
        "chunks": len(chunks),
        "units": units,
        "profiles_to_remove": 0 if to_remove is None else len(to_remove),
        "rejects_sample": rejects.sample,
        "rejects_file": f"{prefix}rejects.ndjson",
        "mapping_key": mapper.mapping_key,
        "plan_s": round(time.monotonic() - started, 3),
    }


def _plan_rows(block: Block, part: Partition, base: int, mapper, spill, rejects, content, xxh) -> int:
    """The row-by-row path for a block the columnar path did not take; returns the rows it read."""
    width, email_index = mapper.width, mapper.email_index
    rows, row_no = block.rows, block.first_row
    check_size = block.longest_record > PROFILE_SIZE_CHECK
    emails = None
    if not block.bad_utf8 and not check_size and set(map(len, rows)) == {width}:
        emails = clean_emails([r[email_index] for r in rows])
    if emails is not None:  # every row is well-formed with a valid email
        rows_read = len(rows)
        gids = range(base, base + len(rows))
        ekeys = [xxh(e) for e in emails]
        ckeys = [xxh("\x1f".join(content(r))) for r in rows]
    else:
        rows_read = 0
        gids, ekeys, ckeys, emails = [], [], [], []
        for offset, row in enumerate(rows):
            if not row:  # a blank line is not a row
                continue
            rows_read += 1
            problem, email = _row_decision(row, block.bad_utf8, check_size, part, mapper)
            if problem:
                rejects.add(part, row_no + offset, problem)
                continue
            gids.append(base + offset)
            emails.append(email)
            ekeys.append(xxh(email))
            ckeys.append(xxh("\x1f".join(content(row))))
    if ekeys:
        spill.add(gids, ekeys, ckeys, pa.array(emails, pa.string()))
    return rows_read


def _row_decision(row: list[str], bad_utf8: bool, check_size: bool, part: Partition, mapper) -> tuple:
    """(the reason a row is rejected, None) or (None, its normalised email): the row path's decision."""
    if len(row) != mapper.width:
        return f"expected {mapper.width} fields, found {len(row)}", None
    email = row[mapper.email_index].strip().lower()
    if not email_ok(email) or bad_utf8 or check_size:
        problem = _row_problem(row, email, bad_utf8, check_size, part, mapper)
        if problem:
            return problem, None
    return None, email


def _plan_read(read: PlanRead, part: Partition, base: int, row_no: int, mapper, spill, rejects, content, xxh) -> int:
    """A block the fast paths read with some rows that are not sent: each one rejected with the row path's
    reason, and the few records they left to the row path decided by it; returns the rows read."""
    status = read.status
    reasons = {
        ROW_BAD_BYTES: f"bytes that are not valid {part.fmt.encoding}",
        ROW_MISSING_EMAIL: "missing email",
        ROW_INVALID_EMAIL: "invalid email address",
    }
    rows_read = len(status) - int(np.count_nonzero(status == ROW_BLANK))
    late: list[tuple[int, str, int, int]] = []  # rows the row path took: (record, email, key, fingerprint)
    rows: list[int] = []
    problems: list[str] = []
    for r in np.flatnonzero((status != ROW_OK) & (status != ROW_BLANK)).tolist():
        code = int(status[r])
        if code == ROW_DEFER:
            block = parse_block(0, read.deferred[r], row_no + r, part.fmt)
            row = block.rows[0] if block.rows else []
            if not row:  # a blank line after all
                rows_read -= 1
                continue
            check_size = block.longest_record > PROFILE_SIZE_CHECK
            problem, email = _row_decision(row, block.bad_utf8, check_size, part, mapper)
            if problem is None:
                late.append((r, email, xxh(email), xxh("\x1f".join(content(row)))))
                continue
        elif code == ROW_WIDTH:
            problem = f"expected {mapper.width} fields, found {read.fields[r]}"
        else:
            problem = reasons[code]
        rows.append(row_no + r)
        problems.append(problem)
    rejects.add_many(part, rows, problems)
    records = np.flatnonzero(status == ROW_OK)
    ekeys, ckeys, emails = read.ekeys, read.ckeys, read.emails
    if late:  # merged in row order: the spill's de-duplication counts on it
        records = np.concatenate([records, [r for r, _, _, _ in late]])
        order = np.argsort(records, kind="stable")
        records = records[order]
        ekeys = np.concatenate([ekeys, np.array([k for _, _, k, _ in late], np.uint64)])[order]
        ckeys = np.concatenate([ckeys, np.array([c for _, _, _, c in late], np.uint64)])[order]
        emails = pa.concat_arrays([emails, pa.array([e for _, e, _, _ in late], pa.string())]).take(pa.array(order))
    if len(records):
        spill.add(records.astype(np.uint64) + np.uint64(base), ekeys, ckeys, emails)
    return rows_read


def _check_reject_share(opts: PlanOptions, rejects: _Rejects, rows_read: int) -> None:
    """A source that rejects most of its rows is read wrongly (encoding, delimiter, compression), not a
    segment of bad emails: fail before anything is sent, with the most common reasons."""
    if opts.max_reject_share is None or not rows_read:
        return
    share = rejects.rejected / rows_read
    if share > opts.max_reject_share:
        top = "; ".join(f"{reason} ({n:,})" for reason, n in rejects.reasons.most_common(3))
        raise SourceError(
            f"{rejects.rejected:,} of {rows_read:,} rows were rejected ({share:.0%}, over the limit of "
            f"{opts.max_reject_share:.0%}): {top}; nothing was sent. Check the export's encoding, delimiter and "
            "files, or raise max_reject_share (--max-reject-share) if these rows are expected"
        )


def _mirror_removals(opts: PlanOptions, state: SyncState | None, keys_file, unique: int) -> np.ndarray:
    """Email keys this app put in the list earlier that are not in the segment any more; refused as a whole
    when they are more than the allowed share of what the app manages in the list (a broken or truncated
    export must not empty a list)."""
    if state is None or len(state.keys) == 0:
        return np.empty(0, np.uint64)
    current = np.frombuffer(_read_all(keys_file), KEYS_DTYPE)["e"]
    gone = state.keys["e"][~np.isin(state.keys["e"], current, assume_unique=True)]
    share = len(gone) / len(state.keys)
    if share > opts.mirror_share and not opts.allow_mass_removal:
        raise ExportError(
            f"mirror run refused: it would remove {len(gone):,} of the {len(state.keys):,} profiles this app "
            f"manages in the list ({share:.0%}, over the limit of {opts.mirror_share:.0%}); nothing was changed. "
            "If the segment really shrank, run again with the mass-removal override"
        )
    return gone


def _row_problem(row, email, bad_utf8, check_size, part, mapper) -> str | None:
    """The slow path of row checks, taken only when the fast check failed or a block needs a closer look."""
    problem = f"bytes that are not valid {part.fmt.encoding}" if bad_utf8 and row_has_bad_bytes(row) else None
    problem = problem or email_problem(email)
    if problem is None and check_size and sum(map(len, row)) > PROFILE_SIZE_CHECK:
        size = len(mapper.profile_json(row, email)[0])
        if size > MAX_PROFILE_BYTES:
            problem = f"profile is {size // 1000} KB, over Klaviyo's 100 KB limit"
    return problem


def _record_duplicates(dup_gids: np.ndarray, starts: np.ndarray, chunks, parts, rejects: _Rejects) -> None:
    """Duplicates are listed in the rejects file too (kind "duplicate"), so no row disappears unexplained."""
    gids = np.sort(dup_gids).astype(np.int64)
    table = np.array(chunks, np.int64).reshape(-1, 6)
    found = np.searchsorted(starts, gids, side="right") - 1
    pidx, rows = table[found, 0], table[found, 3] + gids - table[found, 4]  # as units.rows_of
    reason = "duplicate email: a later row wins"
    cuts = np.flatnonzero(np.diff(pidx)) + 1
    for first, these in zip(np.concatenate([[0], cuts]).tolist(), np.split(rows, cuts), strict=True):
        rejects.add_many(parts[int(pidx[first])], these.tolist(), [reason] * len(these), kind="duplicate")


def _units(bits: np.ndarray, starts: np.ndarray, unit_profiles: int) -> list[list[int]]:
    """Split the rows to send into units of `unit_profiles` (one bulk import job each):
    [first chunk, rows to send in it to skip, rows to send to take]."""
    if len(starts) == 0:
        return []
    per_chunk = np.add.reduceat(bits, starts.astype(np.int64)) if len(bits) else np.zeros(len(starts), np.int64)
    before = np.concatenate([[0], np.cumsum(per_chunk)])  # rows to send before each chunk
    total = int(before[-1])
    units = []
    for begin in range(0, total, unit_profiles):
        ci = int(np.searchsorted(before, begin, side="right") - 1)
        units.append([ci, begin - int(before[ci]), min(unit_profiles, total - begin)])
    return units


class _Spill:
    """Valid rows' (email key, fingerprint, row id) and emails (their bytes, and their lengths), spread over
    temporary files by the top bits of the email key: about 32 MB of source per bucket, so one bucket at a
    time fits in memory whatever the export's size."""

    BUCKET_SOURCE_BYTES = 32 * 1024 * 1024

    def __init__(self, total_bytes: int):
        buckets = max(1, -(-total_bytes // self.BUCKET_SOURCE_BYTES))
        self.bits = max(0, int(np.ceil(np.log2(buckets))))
        self._stack = ExitStack()
        count = 1 << self.bits if self.bits else 0
        self.files = [(self.temporary_file(), self.temporary_file()) for _ in range(count)]
        self.lengths = [self.temporary_file() for _ in range(count)]  # each email's length in bytes (int32)
        self.memory: list[tuple[np.ndarray, pa.StringArray]] = []

    def temporary_file(self):
        return self._stack.enter_context(tempfile.TemporaryFile())

    def add(self, gids, ekeys, ckeys, emails: pa.StringArray) -> None:
        if self.bits and native.available:  # grouped by bucket with a counting sort in C
            rec, text, lengths, counts, byte_counts = native.bucket_records(self.bits, ekeys, ckeys, gids, emails)
            bounds, byte_bounds = np.cumsum([0, *counts]), np.cumsum([0, *byte_counts])
        else:
            rec = np.empty((len(ekeys), 3), np.uint64)
            rec[:, E], rec[:, C], rec[:, G] = ekeys, ckeys, gids
            if not self.bits:
                self.memory.append((rec, emails))
                if len(self.memory) >= 256:  # many small partitions: one array, not an object per block
                    self.memory = [self._joined()]
                return
            bucket = rec[:, E] >> np.uint64(64 - self.bits)
            order = np.argsort(bucket.astype(np.uint16), kind="stable")  # a radix sort on 16-bit values
            rec, bucket = np.take(rec, order, axis=0), bucket[order]
            emails = emails.take(pa.array(order))
            offsets = arrowtext.offsets(emails)
            text = arrowtext.data(emails, offsets)
            lengths = np.diff(offsets)
            bounds = np.searchsorted(bucket, np.arange(len(self.files) + 1, dtype=np.uint64))
            byte_bounds = (offsets - offsets[0])[bounds]
        bounds, byte_bounds = bounds.tolist(), byte_bounds.tolist()
        for b, (recs, texts) in enumerate(self.files):
            lo, hi = bounds[b], bounds[b + 1]
            if lo < hi:
                # Files take the arrays' memory as it is (no copies when it is little-endian already).
                recs.write(np.ascontiguousarray(rec[lo:hi], "<u8"))
                texts.write(text[byte_bounds[b] : byte_bounds[b + 1]])
                self.lengths[b].write(np.ascontiguousarray(lengths[lo:hi], "<i4"))

    def _joined(self) -> tuple[np.ndarray, pa.StringArray]:
        if not self.memory:
            return np.empty((0, 3), np.uint64), pa.array([], pa.string())
        return np.concatenate([r for r, _ in self.memory]), pa.concat_arrays([e for _, e in self.memory])

    def buckets(self):
        """(lowest key, highest key, records in row order, their emails) per bucket."""
        if not self.bits:
            rec, emails = self._joined()
            self.memory = []
            yield np.uint64(0), np.uint64(2**64 - 1), rec, emails
            return
        width = 1 << (64 - self.bits)
        for b, (recs, texts) in enumerate(self.files):
            rec = np.frombuffer(_read_all(recs), "<u8").reshape(-1, 3)
            offsets = np.zeros(len(rec) + 1, np.int32)
            np.cumsum(np.frombuffer(_read_all(self.lengths[b]), np.int32), out=offsets[1:])
            emails = pa.StringArray.from_buffers(len(rec), pa.py_buffer(offsets), pa.py_buffer(_read_all(texts)))
            yield np.uint64(b * width), np.uint64(b * width + width - 1), rec, emails

    def close(self) -> None:
        self._stack.close()


def _read_all(file) -> bytes:
    file.seek(0)
    return file.read()


def _write_workspace(workspace, prefix, source, mapper, chunks, bits, keys_file, emails_file, rejects) -> None:
    plan = {
        "kind": source.kind,
        "entity": source.entity,
        "columns": source.columns,
        "email_field": mapper.email_field,
        "field_mappings": mapper.field_mappings,
        "partitions": [
            {
                "name": p.name,
                "size": p.size,
                "etag": p.etag,
                "header": p.fmt.header,
                "delimiter": p.fmt.delimiter,
                "quoting": p.fmt.quoting,
                "encoding": p.fmt.encoding,
            }
            for p in source.partitions
        ],
        "chunks": chunks,
        "rows": len(bits),
    }
    workspace.write_bytes(f"{prefix}plan.json", orjson.dumps(plan))
    workspace.write_bytes(f"{prefix}send.bits", np.packbits(bits).tobytes())
    keys_file.seek(0)
    workspace.write_file(f"{prefix}keys.bin", keys_file)
    emails_file.seek(0)
    workspace.write_file(f"{prefix}emails.txt", emails_file)
    rejects.file.seek(0)
    workspace.write_file(f"{prefix}rejects.ndjson", rejects.file)
