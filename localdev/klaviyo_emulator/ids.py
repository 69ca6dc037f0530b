"""Klaviyo-looking identifiers: 26-character ULID-style ids for profiles/jobs, 6-character ids for lists."""

from __future__ import annotations

import hashlib
import random
import string

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SHORT_ALPHABET = string.ascii_letters + string.digits


def _time_prefix(ms: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(CROCKFORD[ms & 31])
        ms >>= 5
    return "".join(reversed(chars))


class IdFactory:
    """26-character ULID-style ids: 10 characters of millisecond time, then 16 upper-case hex digits.

    Profile ids end in `profile_base + n` where n counts the profiles created in this process, so the
    store finds a profile by id arithmetically (no hash table to maintain on the bulk path). Other ids
    (jobs, import errors) end in an independent monotonic counter.
    """

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._counter = rng.getrandbits(62)
        self.profile_base = rng.getrandbits(62)
        self._last_ms = -1
        self._prefix = ""
        self._key: tuple[str, int] | None = None

    def _prefix_at(self, now: float) -> str:
        ms = int(now * 1000)
        if ms != self._last_ms:
            self._last_ms, self._prefix = ms, _time_prefix(ms)
        return self._prefix

    def ulid(self, now: float) -> str:
        self._counter += 1
        return f"{self._prefix_at(now)}{self._counter:016X}"

    def profile_key(self, now: float) -> tuple[str, int]:
        """What a profile created now keeps to spell its id: `prefix + f"{base + number:016X}"` (see
        Profile.id). Shared by every profile of a batch, so ids cost nothing until someone reads them."""
        prefix = self._prefix_at(now)
        if self._key is None or self._key[0] != prefix:
            self._key = (prefix, self.profile_base)
        return self._key

    def profile_number(self, pid: str) -> int | None:
        if len(pid) != 26:
            return None
        try:
            return int(pid[10:], 16) - self.profile_base
        except ValueError:
            return None

    def short(self) -> str:
        return "".join(self._rng.choices(_SHORT_ALPHABET, k=6))


def account_id_for(key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return "".join(_SHORT_ALPHABET[b % len(_SHORT_ALPHABET)] for b in digest[:6])
