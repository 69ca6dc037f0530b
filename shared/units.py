"""Reading back one push unit: the rows the plan marked to send, from the chunks' byte ranges alone."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson

from shared.csvscan import iter_blocks
from shared.errors import SourceError
from shared.source import CsvFormat, Partition
from shared.storage import ObjectStore


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

    def check_unchanged(self, source: ObjectStore) -> None:
        """Byte ranges are only valid for the files that were planned: refuse a source rewritten since."""
        for part in self.partitions:
            if source.info(part.name).etag != part.etag:
                raise SourceError(f"{part.label} changed after this run was planned; start a new run")

    def iter_unit(self, source: ObjectStore, unit: list[int]) -> Iterator[tuple[str, list[str], str]]:
        """(locator, row, normalised email) for each row of the unit, in file order."""
        first_chunk, skip, take = unit
        chunks = self.plan["chunks"]
        for ci in range(first_chunk, len(chunks)):
            pidx, start, end, first_row, first_gid, records = chunks[ci]
            wanted = self.send[first_gid : first_gid + records]
            marked = int(wanted.sum())
            if skip >= marked:
                skip -= marked
                continue
            part = self.partitions[pidx]
            offset = 0
            for block in iter_blocks(source, part, start=start, end=end, first_row=first_row):
                for i, row in enumerate(block.rows):
                    if wanted[offset + i]:
                        if skip:
                            skip -= 1
                            continue
                        email = row[self.email_index].strip().lower()
                        yield f"{part.label}:{block.first_row + i}", row, email
                        take -= 1
                        if take == 0:
                            return
                offset += len(block.rows)
            if offset != records:
                raise SourceError(f"{part.label}: chunk {ci} read {offset} records, planned {records}")
