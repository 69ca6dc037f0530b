"""What a partition is and how its CSV is written: the small values every reader passes around.
Its own module so the readers (csvscan, columnar, the kernels) and the source resolver import it one way."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True)
class CsvFormat:
    header: bool = False
    delimiter: str = ","
    quoting: bool = True  # RFC 4180 quoting with '"' (CDM QuoteStyle.Csv); False for QuoteStyle.None
    encoding: str = "utf-8"

    @property
    def utf8(self) -> bool:
        return self.encoding.lower() in {"utf-8", "utf8", "utf_8"}


@dataclass(frozen=True)
class Partition:
    name: str  # path inside the store
    size: int
    etag: str
    fmt: CsvFormat

    @property
    def label(self) -> str:
        return posixpath.basename(self.name)
