"""A sync state rewritten without some rows, streamed (shared/finishing/statefiles.py), on a folder and on
Azurite: the same files as cutting the rows out of the whole files, whichever rows go, including rows
whose line is cut between two read pieces (the folder's are 4 MB)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.finishing.statefiles import copy_without, lines_at, rows_with_keys
from shared.planning.plan import KEYS_DTYPE
from shared.platform.errors import ExportError
from shared.platform.storage import READ_CHUNK, BlobStore, LocalStore

ROWS = 200_000  # ~6 MB of emails: two read pieces and more


def write_state(store, prefix: str, rows: int) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(7)
    emails = [f"person{i:07d}.{'x' * int(rng.integers(0, 12))}@example.com".encode() for i in range(rows)]
    keys = np.zeros(rows, KEYS_DTYPE)
    keys["e"] = np.arange(rows, dtype=np.uint64) * np.uint64(2_654_435_761) + np.uint64(17)  # sorted, unique
    keys["c"] = rng.integers(0, 2**63, rows, dtype=np.uint64)
    store.write_bytes(f"{prefix}emails.txt", b"".join(e + b"\n" for e in emails))
    store.write_bytes(f"{prefix}keys.bin", keys.tobytes())
    return emails, keys


def straddling_rows(emails: list[bytes]) -> list[int]:
    """Rows whose line starts before a READ_CHUNK boundary and ends after it."""
    out, pos = [], 0
    for i, e in enumerate(emails):
        end = pos + len(e) + 1
        if pos // READ_CHUNK != (end - 1) // READ_CHUNK:
            out.append(i)
        pos = end
    return out


@pytest.fixture(params=["folder", "azurite"])
def store(request, tmp_path):
    if request.param == "folder":
        return LocalStore(tmp_path)
    return BlobStore(request.getfixturevalue("container"))


def test_rows_go_from_both_files_in_step_wherever_they_fall(store):
    emails, keys = write_state(store, "a/", ROWS)
    boundary = straddling_rows(emails)
    assert boundary, "the test needs a line cut between two read pieces"
    drop = sorted({0, 1, ROWS - 1, *boundary, *(b + 1 for b in boundary), *range(5_000, 5_010), 123_456})

    found, found_keys = rows_with_keys(store, "a/keys.bin", keys["e"][drop][::-1].copy())
    assert found.tolist() == drop and found_keys.tolist() == keys["e"][drop].tolist()
    left = copy_without(store, "a/", store, "b/", found)

    keep = np.ones(ROWS, bool)
    keep[drop] = False
    assert left == ROWS - len(drop)
    assert store.read_bytes("b/emails.txt") == b"".join(e + b"\n" for e, k in zip(emails, keep, strict=True) if k)
    assert store.read_bytes("b/keys.bin") == keys[keep].tobytes()
    # In place (what an erasure does): the same result.
    assert copy_without(store, "a/", store, "a/", found) == left
    assert store.read_bytes("a/emails.txt") == store.read_bytes("b/emails.txt")
    assert store.read_bytes("a/keys.bin") == store.read_bytes("b/keys.bin")


def test_nothing_to_drop_copies_and_an_empty_state_stays_empty(store):
    write_state(store, "a/", 1_000)
    assert copy_without(store, "a/", store, "b/", []) == 1_000
    assert store.read_bytes("b/emails.txt") == store.read_bytes("a/emails.txt")
    store.write_bytes("e/emails.txt", b"")
    store.write_bytes("e/keys.bin", b"")
    assert copy_without(store, "e/", store, "f/", []) == 0
    assert store.read_bytes("f/emails.txt") == store.read_bytes("f/keys.bin") == b""


def test_a_state_whose_files_disagree_is_refused_before_anything_is_written(store):
    write_state(store, "a/", 1_000)
    store.write_bytes("a/emails.txt", store.read_bytes("a/emails.txt") + b"one@more.com\n")
    with pytest.raises(ExportError, match="inconsistent: 1000 keys, 1001 emails"):
        copy_without(store, "a/", store, "b/", [3])
    assert store.list("b/") == []


def test_the_lines_of_some_rows_are_read_without_the_rest(store):
    """What mirror mode's removal reads: the departed rows' emails only."""
    emails, _ = write_state(store, "a/", ROWS)
    rows = [ROWS - 1, 0, *straddling_rows(emails), 77_777, ROWS + 5]  # any order; one past the end
    wanted = sorted(r for r in set(rows) if r < ROWS)
    assert lines_at(store, "a/emails.txt", rows) == [emails[r].decode() for r in wanted]
    assert lines_at(store, "a/emails.txt", []) == []
