"""One small interface over where exports, workspaces and reports live: a local folder or a blob container.

Reads stream (or use byte ranges), so a partition is never loaded whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from shared.platform.errors import SourceError

READ_CHUNK = 4 * 1024 * 1024


class OutsideStoreError(SourceError):
    """A name that would leave the store's root ('..'): fatal, as no retry makes it readable."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    etag: str
    modified: float = 0.0  # when it was last written (seconds since the epoch)


class ObjectStore(Protocol):
    """Names are '/'-separated paths relative to the store's root (a folder or a container)."""

    def describe(self, name: str = "") -> str: ...
    def info(self, name: str) -> ObjectInfo: ...
    def exists(self, name: str) -> bool: ...
    def read_bytes(self, name: str) -> bytes: ...
    def iter_bytes(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def write_file(self, name: str, fileobj: BinaryIO) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, name: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def create(self, name: str, data: bytes) -> bool: ...
    def copy_from(self, source: ObjectStore, source_name: str, name: str) -> None: ...
    def delete_if_unchanged(self, name: str, etag: str) -> bool: ...
    def update(self, name: str, change: Callable[[bytes | None], bytes]) -> bytes: ...


#: An update is a read-modify-write that another writer may have raced: ``change`` then runs again on what
#: that writer left. Beyond this many tries the object is too busy to be worth waiting for.
UPDATE_ATTEMPTS = 50


class UpdateConflict(Exception):
    """``update`` lost the race for an object every time it tried."""


def _copy(target, source: ObjectStore, source_name: str, name: str) -> None:
    """Stream `source_name` into `name` through a temporary file (bounded memory, and a seekable upload)."""
    with tempfile.TemporaryFile() as spool:
        for chunk in source.iter_bytes(source_name):
            spool.write(chunk)
        spool.seek(0)
        target.write_file(name, spool)


def _copy_file(source: BinaryIO, target: BinaryIO) -> None:
    """source's rest into target: in the kernel (sendfile) between files, where Python's copy reads each
    4 MB into a fresh buffer (0.7 s of a 5 M-row plan, which copies ~230 MB into its workspace)."""
    try:
        source_fd, target_fd = source.fileno(), target.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a file (BytesIO)
        shutil.copyfileobj(source, target, READ_CHUNK)
        return
    offset = start = source.tell()  # (this also flushes what is buffered for writing)
    target.flush()
    try:
        while sent := os.sendfile(target_fd, source_fd, offset, READ_CHUNK):
            offset += sent
    except OSError:
        if offset != start:
            raise
        shutil.copyfileobj(source, target, READ_CHUNK)  # no sendfile between these two
        return
    source.seek(offset)


class LocalStore:
    """A folder on disk. Writes are atomic (temp file + rename) so a killed run never leaves half a file."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._real_root = os.path.realpath(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        # Lexical, not realpath per call (that walked every folder of the path: 7% of a local run's CPU).
        path = os.path.normpath(os.path.join(self._real_root, name))
        if path != self._real_root and not path.startswith(self._real_root.rstrip(os.sep) + os.sep):
            raise OutsideStoreError(f"name escapes the store: {name[:300]!r}")
        return Path(path)

    def describe(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def info(self, name: str) -> ObjectInfo:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            raise SourceError(f"not found: {self.describe(name)}") from None
        return ObjectInfo(name, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime_ns / 1e9)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def read_bytes(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise SourceError(f"not found: {self.describe(name)}") from None

    def iter_bytes(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            f = self._path(name).open("rb")
        except FileNotFoundError:
            raise SourceError(f"not found: {self.describe(name)}") from None
        with f:
            f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                block = f.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary files the user reads
        os.replace(tmp, path)

    def write_file(self, name: str, fileobj: BinaryIO) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            _copy_file(fileobj, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        names = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and not Path(n).name.startswith("."))

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose name starts with `prefix` (a folder prefix, 'a/b/', goes with its
        folders and any half-written temporary file); returns how many objects there were."""
        names = self.list(prefix)
        if prefix.endswith("/") and prefix.strip("/"):
            shutil.rmtree(self._path(prefix), ignore_errors=True)
        else:
            for name in names:
                self.delete(name)
        return len(names)

    def create(self, name: str, data: bytes) -> bool:
        """Write only if there is no such file yet; False when there is (an exclusive create)."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    copy_from = _copy

    def update(self, name: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Atomically replace ``name`` with ``change(current bytes, or None if absent)``; returns what was
        written. Processes sharing the folder take turns on an fcntl lock on a hidden ``.<name>.lock``
        (the kernel lets go of it when a holder dies); the write itself is a rename, so a holder killed
        part way leaves the old contents whole."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                current = None
            data = change(current)
            self.write_bytes(name, data)
            return data
        finally:
            os.close(lock_fd)  # releases the lock

    def delete_if_unchanged(self, name: str, etag: str) -> bool:
        try:
            if self.info(name).etag != etag:
                return False
        except SourceError:
            return False
        self.delete(name)
        return True


class BlobStore:
    """A blob container (azure-storage-blob); connection string or account URL + DefaultAzureCredential."""

    def __init__(self, container_client):
        self.container = container_client

    @classmethod
    def from_connection_string(cls, conn_str: str, container: str) -> BlobStore:
        from azure.storage.blob import ContainerClient

        return cls(ContainerClient.from_connection_string(conn_str, container))

    @classmethod
    def from_account_url(cls, account_url: str, container: str, credential=None) -> BlobStore:
        from azure.storage.blob import ContainerClient

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return cls(ContainerClient(account_url, container, credential=credential))

    def __repr__(self) -> str:
        return f"BlobStore({self.container.url!r})"

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()

    def describe(self, name: str = "") -> str:
        return f"{self.container.url}/{name}" if name else self.container.url

    def _blob(self, name: str):
        # Blob names are not paths to the service, but a '..' segment in a URL is resolved on the way there.
        if any(part in (".", "..") for part in name.replace("\\", "/").split("/")):
            raise OutsideStoreError(f"name escapes the container: {name[:300]!r}")
        return self.container.get_blob_client(name)

    def info(self, name: str) -> ObjectInfo:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._blob(name).get_blob_properties()
        except ResourceNotFoundError:
            raise SourceError(f"not found: {self.describe(name)}") from None
        return ObjectInfo(name, props.size, props.etag.strip('"'), props.last_modified.timestamp())

    def exists(self, name: str) -> bool:
        return self._blob(name).exists()

    def read_bytes(self, name: str) -> bytes:
        return b"".join(self.iter_bytes(name))

    def iter_bytes(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        length = None if end is None else end - start
        if length == 0:
            return
        # No range for a whole-blob read: a ranged GET of an empty blob fails with 416 (InvalidRange), which
        # the SDK only handles when no range was asked for.
        offset = None if start == 0 and length is None else start
        try:
            downloader = self._blob(name).download_blob(offset=offset, length=length, max_concurrency=1)
        except ResourceNotFoundError:
            raise SourceError(f"not found: {self.describe(name)}") from None
        yield from downloader.chunks()

    def write_bytes(self, name: str, data: bytes) -> None:
        self._blob(name).upload_blob(data, overwrite=True)

    def write_file(self, name: str, fileobj: BinaryIO) -> None:
        """Streams the upload in blocks: a large file is never held in memory whole."""
        self._blob(name).upload_blob(fileobj, overwrite=True, max_concurrency=2)

    def list(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.container.list_blobs(name_starts_with=prefix or None))

    copy_from = _copy

    def create(self, name: str, data: bytes) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._blob(name).upload_blob(data, overwrite=False)
        except ResourceExistsError:
            return False
        return True

    def delete_if_unchanged(self, name: str, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self._blob(name).delete_blob(etag=f'"{etag}"', match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._blob(name).delete_blob()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose name starts with `prefix`, 256 to a batch request (the most one takes);
        a blob already gone is not an error. Returns how many blobs there were."""
        names = self.list(prefix)
        for start in range(0, len(names), 256):
            batch = names[start : start + 256]
            answers = self.container.delete_blobs(*batch, raise_on_any_failure=False)
            for name, answer in zip(batch, answers, strict=True):
                if answer.status_code not in (202, 404):
                    raise OSError(f"could not delete {self.describe(name)}: HTTP {answer.status_code}")
        return len(names)

    def update(self, name: str, change: Callable[[bytes | None], bytes]) -> bytes:
        """Replace ``name`` with ``change(current bytes, or None if absent)``, written only if nobody else
        wrote it in between (If-Match on the ETag read, or If-None-Match: * for a new blob); on a lost race
        ``change`` runs again on the newer contents. Raises ``UpdateConflict`` after UPDATE_ATTEMPTS."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        blob = self._blob(name)
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                downloader = blob.download_blob(max_concurrency=1)
                current, etag = downloader.readall(), downloader.properties.etag
            except ResourceNotFoundError:
                current, etag = None, None
            data = change(current)
            try:
                if etag is None:
                    blob.upload_blob(data, overwrite=False)
                else:
                    blob.upload_blob(data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
                return data
            except (ResourceExistsError, ResourceModifiedError):
                # Another writer won; a short random pause keeps the losers from colliding again in step.
                time.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))
        raise UpdateConflict(f"{self.describe(name)} changed under every one of {UPDATE_ATTEMPTS} updates")


def split_blob_url(url: str) -> tuple[str, str, str]:
    """'https://acct.blob.core.windows.net/container/a/b.csv' -> (account URL, container, 'a/b.csv').

    Azurite-style URLs (http://127.0.0.1:10000/devstoreaccount1/container/...) keep the account in the path.
    """
    parsed = urlparse(url)
    parts = unquote(parsed.path).lstrip("/").split("/")
    if parsed.hostname and (parsed.hostname in ("127.0.0.1", "localhost") or parsed.port):
        account, parts = parts[0], parts[1:]
        account_url = f"{parsed.scheme}://{parsed.netloc}/{account}"
    else:
        account_url = f"{parsed.scheme}://{parsed.netloc}"
    if not parts or not parts[0]:
        raise SourceError(f"blob URL names no container: {url}")
    return account_url, parts[0], "/".join(parts[1:])
