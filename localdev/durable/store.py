"""Durable storage for orchestration instances: one JSON document per instance.

A document holds the instance's metadata, its committed history (complete episodes), and the events
that arrived since the last episode (``pending``: activity results, fired timers, raised events,
termination requests) - the equivalent of the Durable Task framework's history table plus its
control queue. Writes replace the whole document atomically, so a process killed at any point leaves
either the previous or the new version behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

Record = dict[str, Any]


def _encode_id(instance_id: str) -> str:
    return quote(instance_id, safe="-_.")


class HistoryStore(ABC):
    """Where the driver keeps instance documents."""

    @abstractmethod
    def save(self, record: Record) -> None:
        """Write (create or replace) the document of ``record["instanceId"]`` atomically."""

    @abstractmethod
    def load(self, instance_id: str) -> Record | None: ...

    @abstractmethod
    def delete(self, instance_id: str) -> bool: ...

    @abstractmethod
    def instance_ids(self) -> list[str]: ...

    def load_all(self) -> Iterator[Record]:
        for instance_id in self.instance_ids():
            record = self.load(instance_id)
            if record is not None:
                yield record

    def lease(
        self, instance_id: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None
    ) -> Lease | None:
        """The right to drive ``instance_id`` across processes; None where the store cannot share one
        between processes (then one process per store, as the local host runs)."""
        return None


class MemoryHistoryStore(HistoryStore):
    """Not durable; for tests and throwaway runs."""

    def __init__(self) -> None:
        self._docs: dict[str, str] = {}
        self._lock = threading.Lock()

    def save(self, record: Record) -> None:
        text = json.dumps(record)
        with self._lock:
            self._docs[record["instanceId"]] = text

    def load(self, instance_id: str) -> Record | None:
        with self._lock:
            text = self._docs.get(instance_id)
        return json.loads(text) if text is not None else None

    def delete(self, instance_id: str) -> bool:
        with self._lock:
            return self._docs.pop(instance_id, None) is not None

    def instance_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._docs)


class LocalFolderHistoryStore(HistoryStore):
    """``<root>/<instance id, URL-quoted>.json``, written to a temporary file, fsynced, then renamed."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, instance_id: str) -> Path:
        return self.root / f"{_encode_id(instance_id)}.json"

    def save(self, record: Record) -> None:
        target = self.path_of(record["instanceId"])
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record))  # dumps is C; dump to a file runs the pure-Python encoder
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, instance_id: str) -> Record | None:
        try:
            return json.loads(self.path_of(instance_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def delete(self, instance_id: str) -> bool:
        try:
            self.path_of(instance_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def instance_ids(self) -> list[str]:
        return sorted(unquote(p.stem) for p in self.root.glob("*.json") if not p.name.startswith(".tmp-"))

    def lease(self, instance_id: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Lease:
        return take_lease(self.root / f"{_encode_id(instance_id)}.lease", instance_id, wait=wait, on_wait=on_wait)


class BlobHistoryStore(HistoryStore):
    """One block blob per instance in an Azure Blob container (Azurite locally).

    A single-shot upload replaces a blob atomically, so readers see the old or the new document.
    """

    def __init__(self, container: Any, prefix: str = "instances/"):
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        self._container = container
        self._prefix = prefix
        self._not_found = ResourceNotFoundError
        with contextlib.suppress(ResourceExistsError):
            container.create_container()

    @classmethod
    def from_connection_string(cls, connection_string: str, container: str, prefix: str = "instances/"):
        from azure.storage.blob import ContainerClient

        return cls(ContainerClient.from_connection_string(connection_string, container), prefix)

    def blob_name(self, instance_id: str) -> str:
        return f"{self._prefix}{_encode_id(instance_id)}.json"

    def save(self, record: Record) -> None:
        from azure.storage.blob import ContentSettings

        self._container.upload_blob(
            self.blob_name(record["instanceId"]),
            json.dumps(record).encode("utf-8"),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )

    def load(self, instance_id: str) -> Record | None:
        try:
            data = self._container.download_blob(self.blob_name(instance_id)).readall()
        except self._not_found:
            return None
        return json.loads(data)

    def delete(self, instance_id: str) -> bool:
        try:
            self._container.delete_blob(self.blob_name(instance_id))
        except self._not_found:
            return False
        return True

    def instance_ids(self) -> list[str]:
        ids = []
        for blob in self._container.list_blobs(name_starts_with=self._prefix):
            name: str = blob.name[len(self._prefix) :]
            if name.endswith(".json") and "/" not in name:
                ids.append(unquote(name[: -len(".json")]))
        return sorted(ids)


class LeaseHeld(Exception):
    """Another process drives the instance now (``holder`` says which, as it wrote it)."""

    def __init__(self, instance_id: str, holder: str):
        self.instance_id = instance_id
        self.holder = holder
        super().__init__(f"run {instance_id} is being driven by {holder}")


class Lease:
    """The right to drive one instance, held by this process until :meth:`release` or its exit.

    An OS file lock (``fcntl.flock``) on ``<instance>.lease`` beside the history: the kernel releases it when
    the holder's process ends however it ends (kill -9 included), so there are no timestamps to expire and a
    dead holder is taken over at once. The file holds who took it (pid, command), for the waiting side.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_lease(
    path: Path, instance_id: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> Lease:
    """Take the lease file's lock; if another process holds it: raise :class:`LeaseHeld` (``wait=False``), or
    tell ``on_wait`` who holds it and block until it is released."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lease_holder(fd)
            if not wait:
                raise LeaseHeld(instance_id, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # Who holds it, for the waiting side: the pid and when (never the command line: it may hold a URL
        # with a token in it).
        me = f"process {os.getpid()} (since {time.strftime('%H:%M:%S')})".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
    except BaseException:
        os.close(fd)
        raise
    return Lease(path, fd)


def _lease_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return text or "another process"
