"""Reading back one push unit: the rows the plan marked to send, from the chunks' byte ranges alone."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from shared.platform.errors import SourceError
from shared.platform.storage import ObjectStore
from shared.reading.csvscan import iter_blocks
from shared.reading.formats import CsvFormat, Partition


def rows_of(chunks: list[list[int]], starts: np.ndarray, gids: np.ndarray) -> list[tuple[int, int]]:
    """(partition index, row number) of each row id, from the plan's chunks and their first row ids
    (`starts`). A row number is the record's 1-based position in its partition file (a header is record 1)."""
    found = np.searchsorted(starts, gids, side="right") - 1
    return [
        (chunks[ci][0], chunks[ci][3] + gid - chunks[ci][4])
        for gid, ci in zip(gids.tolist(), found.tolist(), strict=True)
    ]


class PlanReader:
    """A run's plan (plan.json + send.bits from its workspace), over the export's source store."""

    def __init__(self, workspace: ObjectStore, prefix: str):
        self.plan = orjson.loads(workspace.read_bytes(f"{prefix}plan.json"))
        packed = np.frombuffer(workspace.read_bytes(f"{prefix}send.bits"), np.uint8)
        self.send = np.unpackbits(packed, count=self.plan["rows"]).astype(bool)
        self.partitions = [
            Partition(
                p["name"],
                p["size"],
                p["etag"],
                CsvFormat(p["header"], p["delimiter"], p["quoting"], p["encoding"]),
            )
            for p in self.plan["partitions"]
        ]
        self.email_index = self.plan["columns"].index(self.plan["email_field"])
        self._chunk_starts = np.array([c[4] for c in self.plan["chunks"]], np.int64)

    def where(self, locator: int | str) -> dict:
        """{"partition", "row"} of a locator: a row id of this plan (a push's locators are row ids, cheap
        to build and store), as written now (an int) or before (its digits), or "partition:row" as written
        before row ids were used."""
        if isinstance(locator, str) and not locator.isdigit():
            partition, _, row = locator.rpartition(":")
            return {"partition": partition, "row": int(row) if row.isdigit() else row}
        [(pidx, row)] = rows_of(self.plan["chunks"], self._chunk_starts, np.array([int(locator)]))
        return {"partition": self.partitions[pidx].label, "row": row}

    def check_unchanged(self, source: ObjectStore) -> None:
        """Byte ranges are only valid for the files that were planned: refuse a source rewritten since."""
        for part in self.partitions:
            if source.info(part.name).etag != part.etag:
                raise SourceError(f"{part.label} changed after this run was planned; start a new run")

    def unit_chunks(self, unit: list[int]) -> Iterator[UnitChunk]:
        """The chunks a unit covers, each with the records of it that the unit sends."""
        first_chunk, skip, take = unit
        for pidx, start, end, first_row, first_gid, records in self.plan["chunks"][first_chunk:]:
            marked = np.flatnonzero(self.send[first_gid : first_gid + records])
            if skip >= len(marked):
                skip -= len(marked)
                continue
            chosen = marked[skip : skip + take]
            skip, take = 0, take - len(chosen)
            yield UnitChunk(self.partitions[pidx], start, end, first_row, first_gid, records, chosen)
            if take == 0:
                return

    def iter_rows(self, source: ObjectStore, chunk: UnitChunk) -> Iterator[tuple[int, list[str], str]]:
        """(locator, row, normalised email) for each record of the chunk the unit sends, in file order; the
        locator is the row id (see `where`)."""
        part, wanted = chunk.part, set(chunk.chosen.tolist())
        offset = 0
        for block in iter_blocks(source, part, start=chunk.start, end=chunk.end, first_row=chunk.first_row):
            for i, row in enumerate(block.rows):
                if offset + i in wanted:
                    yield chunk.first_gid + offset + i, row, row[self.email_index].strip().lower()
            offset += len(block.rows)
        if offset != chunk.records:
            raise SourceError(
                f"{part.label}: bytes {chunk.start}-{chunk.end} read {offset} records, planned {chunk.records}"
            )

    def iter_unit(self, source: ObjectStore, unit: list[int]) -> Iterator[tuple[int, list[str], str]]:
        """(locator, row, normalised email) for each row of the unit, in file order."""
        for chunk in self.unit_chunks(unit):
            yield from self.iter_rows(source, chunk)


@dataclass(frozen=True)
class UnitChunk:
    part: Partition
    start: int
    end: int
    first_row: int
    first_gid: int  # row id of the chunk's first record
    records: int
    chosen: np.ndarray  # indexes of the records to send, within the chunk

    def read(self, source: ObjectStore) -> bytes:
        return b"".join(source.iter_bytes(self.part.name, self.start, self.end))
