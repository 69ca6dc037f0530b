"""Resolve what Customer Insights wrote (a CDM folder: model.json + CSV partitions) or a plain CSV
into a list of partitions with their columns and CSV format.

model.json is the commit point: only the partitions it names are read. Column names and order come from
the entity's attributes; where fileFormatSettings leaves a field out, the CDM defaults hold (no header
row, ',' delimiter, '"' quoting, UTF-8).
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


def _format_from_cdm(settings: dict | None) -> CsvFormat:
    settings = settings or {}
    delimiter = settings.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise SourceError(f"unsupported CSV delimiter in model.json: {delimiter!r}")
    quote_style = str(settings.get("quoteStyle", "QuoteStyle.Csv"))
    encoding = str(settings.get("encoding", "UTF-8"))
    try:
        "".encode(encoding)
    except LookupError:
        raise SourceError(f"unsupported encoding in model.json: {encoding!r}") from None
    return CsvFormat(
        header=bool(settings.get("columnHeaders", False)),
        delimiter=delimiter,
        quoting=quote_style != "QuoteStyle.None",
        encoding=encoding.lower(),
    )


def map_location(location: str, anchor: list[str]) -> str:
    """Map a partition's absolute URL (written for Customer Insights' own account) onto a path relative to
    the folder holding model.json. `anchor` is the path of that folder as parts (container first for blobs,
    the absolute folder for local copies): the longest tail of it found in the URL marks where the model's
    folder sits, and what follows is the partition's path below it."""
    parsed = urlparse(location)
    parts = [p for p in unquote(parsed.path).split("/") if p]
    if not parsed.scheme and not parsed.netloc:  # a relative location: already below the model's folder
        return posixpath.normpath("/".join(parts))
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
    partitions = []
    for p in chosen.get("partitions") or []:
        location = p.get("location") if isinstance(p, dict) else None
        if not isinstance(location, str) or not location:
            raise SourceError(f"a partition of entity {chosen.get('name')!r} has no location")
        name = posixpath.join(model_dir, map_location(location, anchor))
        try:
            pinfo = store.info(name)
        except SourceError:
            raise SourceError(
                f"partition {p.get('name', name)!r} named in model.json cannot be read: {store.describe(name)}"
            ) from None
        partitions.append(Partition(name, pinfo.size, pinfo.etag, _format_from_cdm(p.get("fileFormatSettings"))))
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
