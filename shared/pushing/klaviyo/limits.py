"""Client-side rate limiter for Klaviyo's per-tier burst (1 s) and steady (1 min) windows.

Klaviyo counts requests per account and endpoint in *fixed* windows whose boundaries the client
cannot see. To stay under them for any alignment, each window is enforced here as a sliding log:
a request is let through only if fewer than ``limit`` requests were let through in the last
``seconds`` (+ ``padding``). That implies at most ``limit`` in every fixed window Klaviyo may use,
wherever its boundaries fall, so a run paces itself instead of bouncing off 429s.

- ``await limiter.acquire("M", "bulk_import_profiles")`` or ``async with limiter.slot("M"): ...``
- buckets are per (tier, endpoint) by default (Klaviyo's limits are per endpoint); pass
  ``per_endpoint=False`` to make every endpoint of a tier share one budget.
- ``share`` scales every limit down when several processes use the same account at once.
- ``defer(tier, endpoint, seconds)``: after a 429, hold back every caller of that bucket; ``refund`` gives
  the refused request's slot back (Klaviyo does not count a throttled request).
- ``clock``/``sleep`` are injectable, so tests run on a fake clock without waiting.
- Thread-safe and usable from several event loops at once: a caller *reserves* its slot under a
  ``threading.Lock`` (slots are handed out in arrival order) and then sleeps until it. So one limiter
  per account can pace every push activity of a worker process (``budget.account_limiter``).
- ``RateLimiter.off()`` lets everything through (the emulator with its limits switched off).
- ``budget``: the account's budget shared with other processes and instances (``budget.SharedBudget``).
  Each slot is then first drawn from it and this limiter stays the inner guard: it records the slot and
  still holds the process to the limits on its own if storage cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .budget import SharedBudget

__all__ = ["KLAVIYO_TIERS", "RateLimiter", "SharedSlot", "Tier"]

_EPS = 1e-9  # float slack so that sleeping exactly the computed wait always frees the slot


@dataclass(frozen=True, slots=True)
class Tier:
    burst: int  # requests per 1 s window
    steady: int  # requests per 60 s window


#: Klaviyo's documented tiers (API-NOTES.md; developers.klaviyo.com rate limits page).
#: The 2026-07-15 spec lists 750/m for some L endpoints; 700/m is the documented, safer figure.
KLAVIYO_TIERS: Mapping[str, Tier] = {
    "XS": Tier(1, 15),
    "S": Tier(3, 60),
    "M": Tier(10, 150),
    "L": Tier(75, 700),
    "XL": Tier(350, 3500),
}


class _Window:
    __slots__ = ("limit", "seconds", "times")

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.times: deque[float] = deque()

    def wait_needed(self, now: float) -> float:
        times = self.times
        horizon = now - self.seconds + _EPS
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.seconds - now


class _Bucket:
    __slots__ = ("blocked_until", "last", "windows")

    def __init__(self, windows: tuple[_Window, ...]) -> None:
        self.windows = windows
        self.blocked_until = float("-inf")
        self.last = float("-inf")  # the latest slot handed out: slots never go back in time (FIFO)

    def reserve(self, now: float) -> float:
        """The earliest moment, not before ``now`` nor before earlier reservations, that fits every window;
        recorded as taken."""
        at = max(now, self.blocked_until, self.last)
        while True:
            wait = max(window.wait_needed(at) for window in self.windows)
            if wait <= 0:
                break
            at += wait
        for window in self.windows:
            window.times.append(at)
        self.last = at
        return at


@dataclass(frozen=True, slots=True)
class SharedSlot:
    """A slot drawn from a shared budget: ``at`` on this process's clock, ``wall`` as the budget stores it."""

    at: float
    wall: float


class RateLimiter:
    def __init__(
        self,
        tiers: Mapping[str, Tier] = KLAVIYO_TIERS,
        *,
        enabled: bool = True,
        per_endpoint: bool = True,
        share: float = 1.0,
        padding: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        budget: SharedBudget | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.tiers = dict(tiers)
        self.enabled = enabled
        self.per_endpoint = per_endpoint
        self.share = share
        self.padding = padding
        self._clock = clock
        self._sleep = sleep
        self.budget = budget
        self._buckets: dict[tuple[str, str | None], _Bucket] = {}
        self._lock = threading.Lock()
        #: counters for reports
        self.acquired = 0
        self.waits = 0
        self.waited_seconds = 0.0

    @classmethod
    def off(cls) -> RateLimiter:
        return cls(enabled=False)

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        shared = f", budget={self.budget!r}" if self.budget is not None else ""
        return f"RateLimiter({state}, per_endpoint={self.per_endpoint}, share={self.share}{shared})"

    def limits(self, tier: str) -> Tier:
        base = self.tiers[tier]
        return Tier(max(1, int(base.burst * self.share)), max(1, int(base.steady * self.share)))

    def _bucket(self, tier: str, endpoint: str | None) -> _Bucket:
        key = (tier, endpoint if self.per_endpoint else None)
        bucket = self._buckets.get(key)
        if bucket is None:
            lim = self.limits(tier)  # KeyError on an unknown tier: a programming error
            bucket = _Bucket((_Window(lim.burst, 1.0 + self.padding), _Window(lim.steady, 60.0 + self.padding)))
            self._buckets[key] = bucket
        return bucket

    async def acquire(self, tier: str, endpoint: str | None = None) -> float:
        """Wait until a request on ``tier``/``endpoint`` fits both windows; returns seconds waited."""
        return (await self.take(tier, endpoint))[1]

    def _key(self, tier: str, endpoint: str | None) -> str:
        return endpoint if self.per_endpoint and endpoint else tier

    async def take(self, tier: str, endpoint: str | None = None) -> tuple[float | SharedSlot | None, float]:
        """``acquire`` that also returns the slot it took (None when off), for ``refund``."""
        if not self.enabled:
            return None, 0.0
        now = self._clock()
        if self.budget is not None:
            # Storage is blocking I/O: in a thread, so the loop's other requests keep going meanwhile.
            slot = await asyncio.to_thread(
                self.budget.draw, tier, self._key(tier, endpoint), self._shared(tier, endpoint)
            )
            at = slot.at if isinstance(slot, SharedSlot) else slot
        else:
            with self._lock:  # held only to hand out the slot, never across an await
                at = slot = self._bucket(tier, endpoint).reserve(now)
        waited = max(0.0, at - now)
        while (left := at - self._clock()) > 0:
            await self._sleep(left)
        self.acquired += 1
        if waited:
            self.waits += 1
            self.waited_seconds += waited
        return slot, waited

    def _shared(self, tier: str, endpoint: str | None) -> Callable[[float | None], float | SharedSlot]:
        """What to do with the budget's slot (a wall-clock time, or None when storage is down): record it
        here at the same moment on this process's clock, the inner guard."""

        def record(wall: float | None) -> float | SharedSlot:
            with self._lock:
                now = self._clock()
                start = now if wall is None else now + max(0.0, wall - self.budget.clock())
                at = self._bucket(tier, endpoint).reserve(start)
            return at if wall is None else SharedSlot(at, wall)

        return record

    def refund(self, tier: str, endpoint: str | None, slot: float | SharedSlot | None) -> None:
        """Give back a slot whose request Klaviyo refused with 429: a throttled request does not count
        against Klaviyo's windows, so it must not count here either. (Kept, every 429 pushed the run's last
        slot a window later: one 429 cost a 3 M-row run ~30 s.) A shared slot goes back to the budget too."""
        if slot is None or not self.enabled:
            return
        if isinstance(slot, SharedSlot):
            if self.budget is not None:
                self.budget.give_back(self._key(tier, endpoint), slot.wall)
            slot = slot.at
        with self._lock:
            for window in self._bucket(tier, endpoint).windows:
                with contextlib.suppress(ValueError):  # already out of the window: nothing to give back
                    window.times.remove(slot)

    @asynccontextmanager
    async def slot(self, tier: str, endpoint: str | None = None) -> AsyncIterator[None]:
        await self.acquire(tier, endpoint)
        yield

    def defer(self, tier: str, endpoint: str | None, seconds: float) -> None:
        """Hold every caller of this bucket back for ``seconds`` (Klaviyo answered 429)."""
        if not self.enabled or seconds <= 0:
            return
        with self._lock:
            bucket = self._bucket(tier, endpoint)
            bucket.blocked_until = max(bucket.blocked_until, self._clock() + seconds)
        if self.budget is not None:
            self.budget.defer(self._key(tier, endpoint), seconds)
