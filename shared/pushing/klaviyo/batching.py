"""Split pre-serialised profiles into bulk import jobs, and assemble request bodies by concatenation.

The pipeline hands over ``(locator, profile_bytes)`` per row, where ``profile_bytes`` is the orjson
encoding of ``{"type": "profile", "attributes": {...}}``. Nothing is re-encoded here: a job body is
``PREFIX + b",".join(profiles) + suffix``.

When to close a batch is the ``FlushPolicy``'s call (a small strategy object); ``BatchBuilder``
only keeps the running count and byte size and asks it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .models import Locator, RejectedProfile

__all__ = [
    "ENVELOPE_RESERVE",
    "MAX_REQUEST_BYTES",
    "BatchBuilder",
    "FlushPolicy",
    "ImportBatch",
    "build_batches",
    "import_body",
    "serialize_profile",
]

#: Klaviyo's request body limit (5 MB), taken as decimal megabytes to be safe either way.
MAX_REQUEST_BYTES = 5_000_000
#: Bytes kept free for the JSON:API envelope around the profiles (list relationship included).
ENVELOPE_RESERVE = 1_000
_MAX_LIST_ID_BYTES = 512

_PREFIX = b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['
_SUFFIX = b"]}}}}"
_SUFFIX_LIST_HEAD = b']}},"relationships":{"lists":{"data":[{"type":"list","id":'
_SUFFIX_LIST_TAIL = b"}]}}}}"


def serialize_profile(attributes: Mapping[str, Any]) -> bytes:
    """The bytes the pipeline is expected to produce for one row."""
    return orjson.dumps({"type": "profile", "attributes": attributes})


def import_body(profiles: Sequence[bytes], list_id: str | None = None) -> bytes:
    """``profile-bulk-import-job`` request body around already-serialised profiles."""
    if list_id is None:
        return b"".join((_PREFIX, b",".join(profiles), _SUFFIX))
    lid = orjson.dumps(list_id)
    if len(lid) > _MAX_LIST_ID_BYTES:
        raise ValueError("list id is implausibly long")
    return b"".join((_PREFIX, b",".join(profiles), _SUFFIX_LIST_HEAD, lid, _SUFFIX_LIST_TAIL))


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When a batch is full. ``max_body_bytes`` bounds the profiles array content (profiles plus
    separating commas); with ``ENVELOPE_RESERVE`` for the envelope a body stays within 5 MB."""

    max_profiles: int = 10_000
    max_body_bytes: int = MAX_REQUEST_BYTES - ENVELOPE_RESERVE
    max_profile_bytes: int = 100_000

    def __post_init__(self) -> None:
        if self.max_profiles < 1 or self.max_profile_bytes < 1:
            raise ValueError("limits must be positive")
        if self.max_profile_bytes > self.max_body_bytes:
            raise ValueError("max_profile_bytes must not exceed max_body_bytes")

    def reject_reason(self, size: int) -> str | None:
        """Why a single profile can never be sent, or None."""
        if size > self.max_profile_bytes:
            return (
                f"profile is {size:,} bytes serialised; Klaviyo accepts at most "
                f"{self.max_profile_bytes:,} bytes per profile"
            )
        if size == 0:
            return "profile is empty"
        return None

    def would_overflow(self, count: int, used_bytes: int, next_bytes: int) -> bool:
        """True when adding a profile of ``next_bytes`` to a batch of ``count``/``used_bytes`` would
        break a limit, i.e. the batch must be flushed first."""
        if count == 0:
            return False
        return count >= self.max_profiles or used_bytes + 1 + next_bytes > self.max_body_bytes


@dataclass(slots=True)
class ImportBatch:
    """Profiles for one job, with each profile's locator at the same index."""

    locators: list[Locator] = field(default_factory=list)
    profiles: list[bytes] = field(default_factory=list)
    payload_bytes: int = 0  # sum of profile sizes plus separators

    def __len__(self) -> int:
        return len(self.profiles)

    def body(self, list_id: str | None = None) -> bytes:
        return import_body(self.profiles, list_id)

    def select(self, keep: Iterable[int]) -> ImportBatch:
        """A batch of the profiles at ``keep`` (in that order)."""
        idx = list(keep)
        profiles = [self.profiles[i] for i in idx]
        size = sum(map(len, profiles)) + max(0, len(profiles) - 1)
        return ImportBatch([self.locators[i] for i in idx], profiles, size)

    @classmethod
    def of(cls, items: Iterable[tuple[str, bytes]]) -> ImportBatch:
        """A batch of the given items as-is (no limits applied)."""
        batch = cls()
        for locator, profile in items:
            batch.payload_bytes += len(profile) + (1 if batch.profiles else 0)
            batch.locators.append(locator)
            batch.profiles.append(profile)
        return batch


class BatchBuilder:
    """Incremental batching: ``add`` returns a full batch when the next profile does not fit,
    ``flush`` returns what is left. Oversize profiles go to ``rejects`` (and ``on_reject``)."""

    def __init__(
        self,
        policy: FlushPolicy | None = None,
        on_reject: Callable[[RejectedProfile], object] | None = None,
    ) -> None:
        self.policy = policy or FlushPolicy()
        self.rejects: list[RejectedProfile] = []
        self._on_reject = on_reject
        self._locators: list[Locator] = []
        self._profiles: list[bytes] = []
        self._bytes = 0

    def add(self, locator: Locator, profile: bytes) -> ImportBatch | None:
        size = len(profile)
        reason = self.policy.reject_reason(size)
        if reason is not None:
            rejected = RejectedProfile(locator, reason, "profile_too_large" if size else "empty_profile")
            self.rejects.append(rejected)
            if self._on_reject is not None:
                self._on_reject(rejected)
            return None
        full = None
        if self.policy.would_overflow(len(self._profiles), self._bytes, size):
            full = self.flush()
        if self._profiles:
            self._bytes += 1
        self._bytes += size
        self._locators.append(locator)
        self._profiles.append(profile)
        return full

    def add_many(
        self, locators: Sequence[Locator], profiles: Sequence[bytes], sizes: np.ndarray | None = None
    ) -> list[ImportBatch]:
        """``add`` for many profiles at once: the same batches, cut with cumulative sizes instead of a
        Python step per profile. Returns the batches that filled up. `sizes` (the profiles' lengths) saves
        measuring them when the caller knows them."""
        if sizes is None:
            sizes = np.fromiter(map(len, profiles), np.int64, len(profiles))
        sizes = sizes.astype(np.int64)
        if len(sizes) and (sizes.min() == 0 or sizes.max() > self.policy.max_profile_bytes):
            return [full for pair in zip(locators, profiles, strict=True) if (full := self.add(*pair)) is not None]
        ends = np.cumsum(sizes + 1)  # each profile with the comma before it
        full, i, n = [], 0, len(profiles)
        while i < n:
            room_count = self.policy.max_profiles - len(self._profiles)
            # The first profile of a batch has no comma before it.
            room_bytes = self.policy.max_body_bytes - self._bytes + (0 if self._profiles else 1)
            base = ends[i - 1] if i else 0
            take = min(room_count, int(np.searchsorted(ends, base + room_bytes, side="right")) - i)
            if take <= 0:  # the next profile does not fit (a batch always takes its first one)
                full.append(self.flush())
                continue
            self._bytes += int(ends[i + take - 1] - base) - (0 if self._profiles else 1)
            self._locators.extend(locators[i : i + take])
            self._profiles.extend(profiles[i : i + take])
            i += take
        return full

    def flush(self) -> ImportBatch | None:
        if not self._profiles:
            return None
        batch = ImportBatch(self._locators, self._profiles, self._bytes)
        self._locators, self._profiles, self._bytes = [], [], 0
        return batch

    def build(self, items: Iterable[tuple[str, bytes]]) -> Iterator[ImportBatch]:
        for locator, profile in items:
            full = self.add(locator, profile)
            if full is not None:
                yield full
        last = self.flush()
        if last is not None:
            yield last


def build_batches(
    items: Iterable[tuple[str, bytes]],
    policy: FlushPolicy | None = None,
    rejects: list[RejectedProfile] | None = None,
) -> Iterator[ImportBatch]:
    """Batches in input order. Oversize profiles are appended to ``rejects`` (if given) as they are
    met, so every input lands in exactly one batch or in ``rejects``."""
    on_reject = rejects.append if rejects is not None else None
    yield from BatchBuilder(policy, on_reject).build(items)
