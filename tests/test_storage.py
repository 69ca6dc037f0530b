"""The ObjectStore interface on a folder and on Azurite: streamed copies, exclusive creates, conditional deletes."""

from __future__ import annotations

import io
import os
import tempfile

import pytest

from shared.platform.errors import SourceError
from shared.platform.storage import BlobStore, LocalStore


def test_copies_stream_between_a_folder_and_blob_storage(tmp_path, container):
    data = os.urandom(9 * 1024 * 1024 + 7)  # over two 4 MB read chunks, not a multiple of them
    local, blob = LocalStore(tmp_path), BlobStore(container)
    local.write_bytes("a/src.bin", data)
    blob.copy_from(local, "a/src.bin", "b/copy.bin")
    local.copy_from(blob, "b/copy.bin", "c/back.bin")
    assert blob.read_bytes("b/copy.bin") == data
    assert local.read_bytes("c/back.bin") == data
    local.write_bytes("empty", b"")
    blob.copy_from(local, "empty", "empty")
    assert blob.read_bytes("empty") == b""


def test_exclusive_create_and_conditional_delete(tmp_path, container):
    for store in (LocalStore(tmp_path), BlobStore(container)):
        assert store.create("lock", b"one") is True
        assert store.create("lock", b"two") is False
        assert store.read_bytes("lock") == b"one"
        etag = store.info("lock").etag
        store.write_bytes("lock", b"changed")
        assert store.delete_if_unchanged("lock", etag) is False
        assert store.delete_if_unchanged("lock", store.info("lock").etag) is True
        assert not store.exists("lock")


def test_deleting_a_prefix_removes_everything_under_it_and_nothing_else(tmp_path, container):
    for store in (LocalStore(tmp_path), BlobStore(container)):
        names = [f"runs/x/r1/push/{i:06d}.json" for i in range(300)] + ["runs/x/r1/keys.bin"]
        for name in names:
            store.write_bytes(name, b"1")
        store.write_bytes("runs/x/r10/keys.bin", b"other run")
        store.write_bytes("state/c/l/keys.bin", b"state")
        assert store.delete_prefix("runs/x/r1/") == len(names)
        assert store.list() == ["runs/x/r10/keys.bin", "state/c/l/keys.bin"]
        assert store.delete_prefix("runs/x/r1/") == 0  # again: nothing left, no error
    assert not (tmp_path / "runs" / "x" / "r1").exists()  # no empty folders left behind


def test_local_store_names_cannot_leave_its_folder(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.write_bytes("a/b.txt", b"x")
    assert store.read_bytes("a/../a/b.txt") == b"x"
    for name in ("../outside.txt", "a/../../outside.txt", "/etc/passwd"):
        with pytest.raises(SourceError, match="escapes the store"):
            store.write_bytes(name, b"y")
    assert not (tmp_path / "outside.txt").exists()


def test_a_local_file_is_written_from_where_the_source_stands(tmp_path):
    """From a temporary file (copied in the kernel) or from memory: the rest of the source, whole."""
    data = os.urandom(9 * 1024 * 1024 + 7)
    store = LocalStore(tmp_path)
    with tempfile.TemporaryFile() as spool:
        spool.write(data)
        spool.seek(5)
        store.write_file("from-file", spool)
        assert spool.tell() == len(data)
        spool.write(b"more")  # written after what was copied: the source's position moved past it
    memory = io.BytesIO(data)
    memory.seek(5)
    store.write_file("from-memory", memory)
    assert store.read_bytes("from-file") == store.read_bytes("from-memory") == data[5:]
