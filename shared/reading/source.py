"""Resolve what Customer Insights wrote (a CDM folder: model.json + CSV partitions) or a plain CSV
into a list of partitions with their columns and CSV format.

model.json is the commit point: only the partitions it names are read. Column names and order come from
the entity's attributes; where fileFormatSettings leaves a field out, the CDM defaults hold (no header
row, ',' delimiter, '"' quoting, UTF-8).

A model.json is read as untrusted input, and refused with one line (a SourceError: fatal, never retried) when
it is over MAX_MODEL_BYTES, names more than MAX_PARTITIONS partitions (Customer Insights writes one to a few
dozen per table), names one location twice, or names a location outside the export's folder ('.' or '..'
segments, on every store); its fileFormatSettings must be an object of the documented types.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import orjson

from shared.platform.errors import SourceError
from shared.platform.storage import BlobStore, LocalStore, ObjectStore, split_blob_url
from shared.reading.csvscan import read_header
from shared.reading.formats import CsvFormat, Partition

# A model.json of MAX_PARTITIONS partitions is under 1 MB; parsing JSON peaks at ~16 times its size.
MAX_MODEL_BYTES = 4 * 1024 * 1024
MAX_PARTITIONS = 5_000


@dataclass
class ExportSource:
    store: ObjectStore
    kind: str  # "cdm" | "csv"
    entity: str
    columns: list[str]
    partitions: list[Partition]
    identity: str  # path + ETag of what was read (model.json or the CSV): names the run
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind} export {self.entity!r} ({len(self.partitions)} partition(s), {len(self.columns)} columns)"


def _format_from_cdm(settings) -> CsvFormat:
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise SourceError(f"fileFormatSettings in model.json must be an object, not {type(settings).__name__}")
    delimiter = settings.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise SourceError(f"unsupported CSV delimiter in model.json: {str(delimiter)[:20]!r}")
    header, quote_style, encoding = (
        settings.get("columnHeaders", False),
        settings.get("quoteStyle", "QuoteStyle.Csv"),
        settings.get("encoding", "UTF-8"),
    )
    if not isinstance(header, bool) or not isinstance(quote_style, str) or not isinstance(encoding, str):
        raise SourceError(
            "fileFormatSettings in model.json: columnHeaders must be true or false, quoteStyle and encoding text"
        )
    try:
        "".encode(encoding)
    except LookupError:
        raise SourceError(f"unsupported encoding in model.json: {encoding[:40]!r}") from None
    return CsvFormat(
        header=header, delimiter=delimiter, quoting=quote_style != "QuoteStyle.None", encoding=encoding.lower()
    )


def map_location(location: str, anchor: list[str]) -> str:
    """Map a partition's absolute URL (written for Customer Insights' own account) onto a path relative to
    the folder holding model.json. `anchor` is the path of that folder as parts (container first for blobs,
    the absolute folder for local copies): the longest tail of it found in the URL marks where the model's
    folder sits, and what follows is the partition's path below it."""
    parsed = urlparse(location)
    parts = [p for p in unquote(parsed.path).split("/") if p]
    if any(p in (".", "..") or "\\" in p for p in parts):
        raise SourceError(f"partition location leaves the export's folder ('.' or '..'): {location[:300]}")
    if not parsed.scheme and not parsed.netloc:  # a relative location: already below the model's folder
        return "/".join(parts)
    for width in range(len(anchor), 0, -1):
        tail = anchor[-width:]
        for start in range(len(parts) - width, -1, -1):
            if parts[start : start + width] == tail:
                rest = parts[start + width :]
                if rest:
                    return "/".join(rest)
    raise SourceError(f"cannot map partition location onto the export's folder: {location}")


def load_cdm(store: ObjectStore, model_name: str, root_parts: list[str], entity: str | None) -> ExportSource:
    """`root_parts`: where the store's root sits (the container name for blobs, the folder's absolute path
    for a local copy), so partition URLs written for another account can be mapped onto it."""
    info = store.info(model_name)
    if info.size > MAX_MODEL_BYTES:
        raise SourceError(
            f"model.json is {info.size:,} bytes, over the limit of {MAX_MODEL_BYTES // 2**20} MB: "
            f"{store.describe(model_name)}"
        )
    raw = store.read_bytes(model_name)
    try:
        model = orjson.loads(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw)
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"model.json is not valid JSON ({exc}): {store.describe(model_name)}") from None
    entities = model.get("entities") if isinstance(model, dict) else None
    if not isinstance(entities, list) or not entities:
        raise SourceError(f"model.json describes no entities: {store.describe(model_name)}")
    names = [e.get("name") for e in entities if isinstance(e, dict)]
    if entity is None:
        if len(entities) != 1:
            raise SourceError(f"model.json holds {len(entities)} entities ({', '.join(map(str, names))}); name one")
        chosen = entities[0]
    else:
        matches = [e for e in entities if isinstance(e, dict) and e.get("name") == entity]
        if not matches:
            raise SourceError(f"entity {entity!r} not in model.json (it has: {', '.join(map(str, names))})")
        chosen = matches[0]
    columns = [a.get("name") for a in chosen.get("attributes") or [] if isinstance(a, dict)]
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise SourceError(f"entity {chosen.get('name')!r} in model.json lists no usable attributes")
    model_dir = posixpath.dirname(model_name)
    anchor = [*root_parts, *(model_dir.split("/") if model_dir else [])]
    listed = chosen.get("partitions") or []
    if not isinstance(listed, list):
        raise SourceError(f"partitions of entity {chosen.get('name')!r} in model.json must be a list")
    if len(listed) > MAX_PARTITIONS:
        raise SourceError(
            f"model.json names {len(listed):,} partitions for entity {chosen.get('name')!r}, over the limit of "
            f"{MAX_PARTITIONS:,}: {store.describe(model_name)}"
        )
    partitions, seen, formats = [], set(), {}
    for p in listed:
        location = p.get("location") if isinstance(p, dict) else None
        if not isinstance(location, str) or not location:
            raise SourceError(f"a partition of entity {chosen.get('name')!r} has no location")
        name = posixpath.join(model_dir, map_location(location, anchor))
        if name in seen:
            raise SourceError(f"model.json names the partition location {location[:300]} more than once")
        seen.add(name)
        fmt = _format_from_cdm(p.get("fileFormatSettings"))
        fmt = formats.setdefault(fmt, fmt)  # one object per format, however many partitions share it
        try:
            pinfo = store.info(name)
        except SourceError:
            raise SourceError(
                f"partition {str(p.get('name', name))[:200]!r} named in model.json cannot be read: "
                f"{store.describe(name)}"
            ) from None
        partitions.append(Partition(name, pinfo.size, pinfo.etag, fmt))
    if not partitions:
        raise SourceError(f"entity {chosen.get('name')!r} in model.json names no partitions")
    return ExportSource(
        store=store,
        kind="cdm",
        entity=str(chosen.get("name")),
        columns=columns,
        partitions=partitions,
        identity=f"{store.describe(model_name)}@{info.etag}",
    )


def load_csv(store: ObjectStore, name: str, delimiter: str = ",", encoding: str = "utf-8") -> ExportSource:
    """A plain CSV with a header row: the header names the columns."""

    info = store.info(name)
    fmt = CsvFormat(header=True, delimiter=delimiter, quoting=True, encoding=encoding)
    columns = read_header(store, name, fmt)
    return ExportSource(
        store=store,
        kind="csv",
        entity=posixpath.splitext(posixpath.basename(name))[0],
        columns=columns,
        partitions=[Partition(name, info.size, info.etag, fmt)],
        identity=f"{store.describe(name)}@{info.etag}",
    )


def open_source(
    store: ObjectStore, name: str, root_parts: list[str], entity: str | None = None, delimiter: str = ","
) -> ExportSource:
    """`name` is a model.json or a .csv inside `store`."""
    if posixpath.basename(name).lower() == "model.json":
        return load_cdm(store, name, root_parts, entity)
    if name.lower().endswith(".csv"):
        return load_csv(store, name, delimiter=delimiter)
    raise SourceError(f"not a model.json or a .csv file: {store.describe(name)}")


def resolve_source_arg(
    source: str, entity: str | None = None, blob_credential=None, delimiter: str = ","
) -> ExportSource:
    """The command line's SOURCE: a model.json path, a folder holding one, a CSV file, or a blob URL
    (https://account.blob.core.windows.net/container/path; Azurite URLs too). Blob URLs use
    AZURE_STORAGE_CONNECTION_STRING when set, else DefaultAzureCredential."""
    import os

    if source.startswith(("http://", "https://")):
        account_url, container, path = split_blob_url(source)
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn:
            store: ObjectStore = BlobStore.from_connection_string(conn, container)
        else:
            store = BlobStore.from_account_url(account_url, container, credential=blob_credential)
        if not path.lower().endswith((".json", ".csv")):
            path = posixpath.join(path, "model.json")
        return open_source(store, path, [container], entity, delimiter)
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        path = path / "model.json"
        if not path.is_file():
            raise SourceError(f"no model.json in folder: {source}")
    if not path.exists():
        raise SourceError(f"no such source: {source}")
    store = LocalStore(path.parent)
    return open_source(store, path.name, list(path.parent.parts[1:]), entity, delimiter)
