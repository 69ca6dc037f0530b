"""Blob events for the local host, delivered as Event Grid would deliver them to an EventGrid-sourced blob trigger.

In Azure, a ``BlobCreated`` event goes through the Event Grid subscription's filter (infra: a ``model.json``
anywhere, a ``.csv`` under ``CSV_PREFIX``) to the Functions host, which calls the ``blobTrigger`` function
with the blob bound as the parameter's type. Locally, :class:`BlobWatcher` lists the trigger's container
every poll interval and treats a blob whose (name, ETag) it has not delivered before as a new event.

What was delivered is recorded in a small blob (``_seen-blobs.json`` in the host's history container), so a
restarted host does not deliver old blobs again; a blob uploaded while no host ran is delivered at the next
start, as Event Grid would (it retries for hours). A delivery that fails is retried at the next polls, up
to ``max_attempts`` times, then recorded and logged as dead-lettered. Delivering a blob twice is harmless
anyway: the app derives the run's instance id from the blob's path and ETag.

:func:`blob_binding_value` builds what the Python worker passes for the trigger parameter, by its type
annotation: an SDK type (``azurefunctions.extensions.bindings.blob.BlobClient`` ...) through the extension's
own converter from the ``model_binding_data`` the host sends (the function receives an
``azure.storage.blob.BlobClient``), ``func.InputStream``, ``bytes`` or ``str``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("localdev.host")

EVENT_GRID = "EventGrid"
SEEN_BLOB = "_seen-blobs.json"
_PATTERN_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def event_grid_delivers(blob_name: str, csv_prefix: str) -> bool:
    """The Event Grid subscriptions' filters (infra/modules/eventgrid-subscriptions.bicep): a blob named
    ``model.json`` anywhere (case-sensitive), or a ``.csv`` under the CSV prefix (case-insensitive)."""
    if blob_name == "model.json" or blob_name.endswith("/model.json"):
        return True
    lower = blob_name.lower()
    return lower.startswith(csv_prefix.lower()) and lower.endswith(".csv")


@dataclass(frozen=True)
class BlobWatch:
    """One blobTrigger function: which container of which connection it watches, and how."""

    function: str
    parameter: str
    connection: str  # the app setting naming the storage account
    container: str
    name_pattern: re.Pattern[str]  # the trigger path below the container, as a regex with named groups
    source: str

    def matches(self, blob_name: str) -> dict[str, str] | None:
        found = self.name_pattern.fullmatch(blob_name)
        return found.groupdict() if found else None


def compile_blob_path(path: str) -> tuple[str, re.Pattern[str]]:
    """``container/{name}`` (settings already resolved) -> (container, pattern of the blob name).
    A ``{param}`` matches any run of characters, '/' included, like the Functions host's blob paths."""
    container, sep, rest = path.partition("/")
    if not container or not sep or not rest:
        raise ValueError(f"blob trigger path {path!r} must be 'container/pattern'")
    pieces, pos = [], 0
    for m in _PATTERN_PARAM.finditer(rest):
        pieces.append(re.escape(rest[pos : m.start()]))
        pieces.append(f"(?P<{m.group(1)}>.+?)")
        pos = m.end()
    pieces.append(re.escape(rest[pos:]))
    return container, re.compile("".join(pieces), re.DOTALL)


@dataclass(frozen=True)
class _ModelBindingData:
    """The fields of the worker's ``ModelBindingData`` message that the extension reads."""

    content: bytes
    version: str = "1.0"
    source: str = "AzureStorageBlobs"
    content_type: str = "application/json"


def connection_string(environ: Mapping[str, str], connection: str) -> str:
    value = environ.get(connection, "")
    if not value:
        raise ValueError(f"app setting {connection!r} (the blob trigger's connection) is not set")
    return value


def blob_binding_value(annotation: Any, connection: str, container: str, blob_name: str, environ: Mapping[str, str]):
    """The value the Python worker hands a blob trigger parameter annotated ``annotation``."""
    import azure.functions as func
    from azurefunctions.extensions.base import Datum, SdkType, get_binding_registry

    if isinstance(annotation, type) and issubclass(annotation, SdkType):
        converter = get_binding_registry().get("blobTrigger")
        if converter is None or not converter.check_input_type_annotation(annotation):
            raise TypeError(f"no converter registered for a blobTrigger bound to {annotation.__name__}")
        content = json.dumps({"Connection": connection, "ContainerName": container, "BlobName": blob_name})
        datum = Datum(_ModelBindingData(content.encode()), "model_binding_data")
        metadata = {"BlobTrigger": f"{container}/{blob_name}", "name": blob_name}
        return converter.decode(datum, trigger_metadata=metadata, pytype=annotation)

    from azure.storage.blob import BlobClient

    client = BlobClient.from_connection_string(connection_string(environ, connection), container, blob_name)
    if annotation is func.InputStream or (isinstance(annotation, type) and issubclass(annotation, func.InputStream)):
        props = client.get_blob_properties()
        data = client.download_blob().readall()
        return func.blob.InputStream(
            data=data,
            name=f"{container}/{blob_name}",
            uri=client.url,
            length=len(data),
            blob_properties={
                "ETag": props.etag,
                "Length": props.size,
                "ContentType": props.content_settings.content_type,
            },
            metadata=dict(props.metadata or {}),
        )
    if annotation is bytes:
        return client.download_blob().readall()
    if annotation is str:
        return client.download_blob().readall().decode("utf-8")
    raise TypeError(f"the local host cannot bind a blob trigger to {annotation!r}")


class SeenBlobs:
    """``{"container/name": etag}`` of delivered blobs, kept in one blob (rewritten whole, atomically)."""

    def __init__(self, container_client: Any, blob_name: str = SEEN_BLOB):
        self._container = container_client
        self._name = blob_name
        self._lock = threading.Lock()
        self.entries: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            raw = self._container.download_blob(self._name).readall()
        except ResourceNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON: starting with no delivered blobs", self._name)
            return {}
        blobs = doc.get("blobs") if isinstance(doc, dict) else None
        return {str(k): str(v) for k, v in blobs.items()} if isinstance(blobs, dict) else {}

    def get(self, key: str) -> str | None:
        with self._lock:
            return self.entries.get(key)

    def record(self, key: str, etag: str) -> None:
        with self._lock:
            self.entries[key] = etag
            self._save()

    def forget_missing(self, container: str, present: Iterable[str]) -> None:
        """Drop entries of blobs that no longer exist, so the record stays as small as the container."""
        keep = {f"{container}/{name}" for name in present}
        with self._lock:
            gone = [k for k in self.entries if k.startswith(f"{container}/") and k not in keep]
            for key in gone:
                del self.entries[key]
            if gone:
                self._save()

    def _save(self) -> None:
        body = json.dumps({"version": 1, "blobs": self.entries}, indent=1, sort_keys=True).encode()
        self._container.upload_blob(self._name, body, overwrite=True)


@dataclass(frozen=True)
class BlobEvent:
    function: str
    container: str
    name: str
    etag: str


class BlobWatcher:
    """Polls the watched containers every ``interval`` seconds on its own thread and calls ``deliver(watch,
    name)`` (which runs the function and raises if it failed) for each new or changed blob."""

    def __init__(
        self,
        watches: list[BlobWatch],
        environ: Mapping[str, str],
        seen: SeenBlobs,
        deliver: Callable[[BlobWatch, str], None],
        *,
        interval: float = 1.0,
        csv_prefix: str = "csv/",
        max_attempts: int = 5,
    ):
        from azure.storage.blob import ContainerClient

        self.watches = watches
        self.seen = seen
        self.interval = interval
        self.csv_prefix = csv_prefix
        self.max_attempts = max_attempts
        self._deliver = deliver
        self._clients = {
            w.function: ContainerClient.from_connection_string(connection_string(environ, w.connection), w.container)
            for w in watches
        }
        self._attempts: dict[tuple[str, str], int] = {}  # failed deliveries of (blob, ETag)
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.polls = 0
        self.delivered: list[BlobEvent] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="blob-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait_for_polls(self, count: int, timeout: float = 30.0) -> int:
        """Block until at least ``count`` polls have completed since this watcher started."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.polls >= count, timeout):
                raise TimeoutError(f"the blob watcher did not complete {count} polls within {timeout} s")
            return self.polls

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a poll that failed (storage unreachable...) is retried at the next interval
                log.exception("polling for blob events failed")
            with self._cond:
                self.polls += 1
                self._cond.notify_all()
            self._stop.wait(self.interval)

    # -- one poll ----------------------------------------------------------------------------------
    def poll_once(self) -> list[BlobEvent]:
        fired: list[BlobEvent] = []
        for watch in self.watches:
            if self._stop.is_set():
                break
            fired += self._poll(watch)
        return fired

    def _poll(self, watch: BlobWatch) -> list[BlobEvent]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            blobs = list(self._clients[watch.function].list_blobs())
        except ResourceNotFoundError:  # the container does not exist (yet): no events
            return []
        self.seen.forget_missing(watch.container, (b.name for b in blobs))
        blobs.sort(key=lambda b: (b.last_modified, b.name))
        fired = []
        for blob in blobs:
            if self._stop.is_set():
                break
            etag = str(blob.etag).strip('"')
            key = f"{watch.container}/{blob.name}"
            if self.seen.get(key) == etag:
                continue
            if watch.source == EVENT_GRID and not event_grid_delivers(blob.name, self.csv_prefix):
                continue
            if watch.matches(blob.name) is None:
                continue
            event = BlobEvent(watch.function, watch.container, blob.name, etag)
            if self._try_deliver(watch, event):
                self.seen.record(key, etag)
                fired.append(event)
                with self._cond:
                    self.delivered.append(event)
                    self._cond.notify_all()
        return fired

    def _try_deliver(self, watch: BlobWatch, event: BlobEvent) -> bool:
        attempt_key = (f"{event.container}/{event.name}", event.etag)
        try:
            self._deliver(watch, event.name)
        except Exception as exc:
            attempts = self._attempts.get(attempt_key, 0) + 1
            self._attempts[attempt_key] = attempts
            if attempts >= self.max_attempts:
                log.error(
                    "blob event %s (ETag %s) dead-lettered after %d failed deliveries: %s",
                    attempt_key[0],
                    event.etag,
                    attempts,
                    exc,
                )
                self.seen.record(*attempt_key)
            else:
                log.warning("delivering blob event %s failed (attempt %d): %s", attempt_key[0], attempts, exc)
            return False
        self._attempts.pop(attempt_key, None)
        return True
