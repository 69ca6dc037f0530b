"""One Klaviyo rate budget per account, shared by every process and instance through the app's storage.

Klaviyo counts requests per account and endpoint. Each process paces itself (``limits.RateLimiter``), but
on several instances each one would believe it has the whole budget (four exports at once in four
processes: 50-62% of bulk imports answered 429). So the slots themselves are handed out from storage: one
small object per account and endpoint, ``klaviyo-budget/<account>/<operationId>.json``, holds the slots
given out in the last minute (wall-clock times) and a ``blocked_until`` after a 429. A process reserves its
next slots with a read-modify-write that only lands if nobody wrote in between (an ETag ``If-Match`` on a
blob; an fcntl lock on a local folder, ``ObjectStore.update``), by the same sliding-log rule as the
per-process limiter: at most ``limit`` slots in any window of the tier's length (+ padding), so at most
``limit`` in every fixed window Klaviyo may use, whoever sends them; and spaced evenly across the burst
window rather than sent ten at once (see SHARED_PADDING).

- One write reserves a slot for every caller of the process waiting on that endpoint at the time (up to
  the burst): storage round trips stay near one per request at worst and drop as traffic grows.
- A slot reserved but not used before its time (its caller went away) is given back with the next write;
  a refused (429) request's slot is given back at once, and its Retry-After is shared with every process.
- A holder that dies mid-write leaves the object as it was (blob writes are conditional; local ones are a
  rename under a lock the kernel releases); the slots it had reserved pass with their time.
- Storage that cannot be reached is not a reason to fail a run: the process falls back to its own limiter
  (today's behaviour) with one warning, and tries storage again after ``RETRY_STORE_S``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import quote

import orjson

from shared.platform.storage import ObjectStore

from .limits import KLAVIYO_TIERS, RateLimiter, Tier, _Bucket, _Window

__all__ = ["BUDGET_PREFIX", "RETRY_STORE_S", "SharedBudget", "account_limiter", "key_ident"]

log = logging.getLogger("shared.pushing.klaviyo.budget")

BUDGET_PREFIX = "klaviyo-budget/"
RETRY_STORE_S = 60.0  # after a storage failure, pace on our own this long before asking storage again
#: Klaviyo opens its windows when a request arrives, and a slot taken in one process arrives later than
#: planned by whatever stands between (the GIL of a process building other bodies, a busy server, a pause
#: of its GC), the more so the busier the machine. Four exports in four processes on two shared cores met
#: 429 on 28% of their bulk imports with bursts of ten and 0.05 s per window (one process's figure); with
#: slots spaced evenly, 0-3% (0.25 s) and none (0.1 s) (bench/RESULTS.md). 0.1 s costs a tenth of the 1 s
#: burst rate, which four such exports took back in 429s they no longer meet, and nothing that counts of
#: the 60 s window, which is what bounds a long run.
SHARED_PADDING = 0.1
STALE_S = 0.05  # a reserved slot this late is not used (it would crowd the next window) but given back
_T = TypeVar("_T")

# Giving back and deferring are not on any request's path: one background writer per process.
_BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klaviyo-budget")


def key_ident(base_url: str, api_key: str) -> str:
    """What a key is known by, in memory and in storage: SHA-256 of the API's URL and the key (keys are long
    random strings, so this cannot be turned back into one). The key itself is never stored."""
    return hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()


class SharedBudget:
    """The shared slots of one Klaviyo account in ``store``. Thread-safe; ``draw`` blocks on storage, so
    async callers run it in a thread (``RateLimiter.take`` does)."""

    def __init__(
        self,
        store: ObjectStore,
        account: str,
        tiers: Mapping[str, Tier] = KLAVIYO_TIERS,
        *,
        padding: float = SHARED_PADDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.account = account
        self.tiers = dict(tiers)
        self.padding = padding
        self.clock = clock
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._waiting: Counter[str] = Counter()
        self._cache: dict[str, deque[float]] = {}
        self._unused: dict[str, list[float]] = {}
        self._down_until = float("-inf")
        #: counters for benches and tests
        self.round_trips = 0  # successful reservations written to storage
        self.slots = 0  # slots handed out from storage
        self.fallbacks = 0  # slots handed out while storage could not be reached (process limiter only)

    def __repr__(self) -> str:
        return f"SharedBudget({self.store!r}, account={self.account!r})"

    def name(self, key: str) -> str:
        return f"{BUDGET_PREFIX}{quote(self.account, safe='')}/{quote(key, safe='')}.json"

    @property
    def where(self) -> str:
        """The budget's folder or container URL, for messages: without a query (a SAS token would be in it)."""
        return self.store.describe(BUDGET_PREFIX).split("?", 1)[0]

    @property
    def reachable(self) -> bool:
        return self.clock() >= self._down_until

    # -- drawing -----------------------------------------------------------------------------------

    def draw(self, tier: str, key: str, then: Callable[[float | None], _T]) -> _T:
        """Take the next shared slot of ``key`` (an endpoint) and call ``then(wall time)`` with it, or
        ``then(None)`` when storage cannot be reached. ``then`` runs under the endpoint's lock, so the
        process's own limiter records its slots in the order the budget gave them out."""
        with self._guard:
            self._waiting[key] += 1
            lock = self._locks.setdefault(key, threading.Lock())
        try:
            with lock:
                return then(self._next(tier, key))
        finally:
            with self._guard:
                self._waiting[key] -= 1

    def _next(self, tier: str, key: str) -> float | None:
        now = self.clock()
        cache = self._cache.setdefault(key, deque())
        while cache and cache[0] < now - STALE_S:  # its moment passed unused: give it back
            self._unused.setdefault(key, []).append(cache.popleft())
        if cache:
            return cache.popleft()
        if now < self._down_until:
            self.fallbacks += 1
            return None
        with self._guard:
            wanted = max(1, min(self._waiting[key], self.tiers[tier].burst))
        give_back = self._unused.pop(key, [])
        try:
            slots = self._reserve(tier, key, wanted, give_back)
        except Exception as exc:  # any storage failure: pace on our own rather than fail the run
            self._unused.setdefault(key, []).extend(give_back)
            self._went_down(exc)
            self.fallbacks += 1
            return None
        cache.extend(slots[1:])
        return slots[0]

    def _windows(self, tier: str) -> tuple[_Window, ...]:
        lim = self.tiers[tier]
        burst = 1.0 + self.padding
        # Evenly spaced within the burst (one per 1.1 s / limit), not ten at once: a stall anywhere between
        # here and Klaviyo bunches a burst that went out together into the next window (see SHARED_PADDING).
        return _Window(1, burst / lim.burst), _Window(lim.burst, burst), _Window(lim.steady, 60.0 + self.padding)

    def _reserve(self, tier: str, key: str, count: int, give_back: list[float]) -> list[float]:
        taken: list[float] = []

        def change(current: bytes | None) -> bytes:
            state = _load(current)
            now = self.clock()
            for slot in give_back:
                _remove(state["times"], slot)
            windows = self._windows(tier)
            times = [t for t in state["times"] if t > now - windows[-1].seconds]
            bucket = _Bucket(windows)
            for window in windows:
                window.times.extend(times)
            bucket.blocked_until = state["blocked_until"]
            bucket.last = times[-1] if times else float("-inf")
            taken[:] = [bucket.reserve(now) for _ in range(count)]
            return _dump(tier, [*times, *taken], state["blocked_until"])

        self.store.update(self.name(key), change)
        self.round_trips += 1
        self.slots += len(taken)
        if self._down_until != float("-inf"):
            log.warning("the shared Klaviyo rate budget (%s) is back", self.where)
            self._down_until = float("-inf")
        return taken

    def _went_down(self, exc: Exception) -> None:
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__
        self._down_until = self.clock() + RETRY_STORE_S
        log.warning(
            "the shared Klaviyo rate budget (%s) cannot be reached (%s); this process paces account %s on its "
            "own, as if alone, and tries again in %.0f s",
            self.where, " ".join(what.split())[:300], self.account, RETRY_STORE_S,
        )  # fmt: skip

    # -- after a 429 -------------------------------------------------------------------------------

    def give_back(self, key: str, wall: float) -> Future:
        """A slot Klaviyo refused (429): it did not count there, so it must not count here (in the
        background; a failure only costs that slot)."""
        return self._later(key, lambda state: _remove(state["times"], wall))

    def defer(self, key: str, seconds: float) -> Future:
        """Klaviyo said Retry-After: hold every process back that long on this endpoint."""
        until = self.clock() + seconds

        def change(state: dict) -> None:
            state["blocked_until"] = max(state["blocked_until"], until)

        return self._later(key, change)

    def _later(self, key: str, edit: Callable[[dict], object]) -> Future:
        def change(current: bytes | None) -> bytes:
            state = _load(current)
            edit(state)
            return _dump(state.get("tier"), state["times"], state["blocked_until"])

        def run() -> None:
            if not self.reachable:
                return
            try:
                self.store.update(self.name(key), change)
            except Exception as exc:
                self._went_down(exc)

        return _BACKGROUND.submit(run)


def _load(current: bytes | None) -> dict:
    state = orjson.loads(current) if current else {}
    return {
        "tier": state.get("tier"),
        "times": [float(t) for t in state.get("times") or ()],
        "blocked_until": float(state.get("blocked_until") or 0.0),
    }


def _dump(tier: str | None, times: list[float], blocked_until: float) -> bytes:
    return orjson.dumps({"tier": tier, "times": times, "blocked_until": blocked_until})


def _remove(times: list[float], slot: float) -> None:
    if slot in times:
        times.remove(slot)


# -- one limiter per account in a process --------------------------------------------------------------

UNKNOWN_ACCOUNT = "unknown-account"  # the budget of the one call made before the account is known

_ACCOUNTS: dict[str, str] = {}  # key ident -> account id
_LIMITERS: dict[tuple[str, str, str], RateLimiter] = {}
_REGISTRY = threading.Lock()


def _limiter(base_url: str, account: str, store: ObjectStore | None) -> RateLimiter:
    where = store.describe(BUDGET_PREFIX) if store is not None else ""
    with _REGISTRY:
        limiter = _LIMITERS.get((base_url, account, where))
        if limiter is None:
            budget = SharedBudget(store, account) if store is not None else None
            limiter = _LIMITERS[(base_url, account, where)] = RateLimiter(budget=budget)
        return limiter


async def account_limiter(base_url: str, api_key: str, store: ObjectStore | None) -> RateLimiter:
    """The limiter of the Klaviyo account ``api_key`` belongs to, one per process, drawing on the account's
    budget in ``store`` (the app's storage; None: this process's limits only). Every push of every run on
    that account, with any of its keys, in every process sharing ``store``, draws on one budget.

    The account comes from ``GET /api/accounts``, asked once per key: the answer is kept in memory and in
    ``store`` (``klaviyo-budget/keys/<key_ident>.json``), so other processes and later runs need not ask."""
    account = await account_of(base_url, api_key, store)
    return _limiter(base_url, account, store)


async def account_of(base_url: str, api_key: str, store: ObjectStore | None) -> str:
    from .client import KlaviyoClient

    ident = key_ident(base_url, api_key)
    if (account := _ACCOUNTS.get(ident)) is not None:
        return account
    name = f"{BUDGET_PREFIX}keys/{ident}.json"
    if (account := _stored_account(store, name)) is None:
        # Processes that start together all miss: they queue on the shared budget of this call (Klaviyo's
        # XS tier, one a second), and whoever's turn comes after the first answer reads it instead of asking.
        limiter = _limiter(base_url, UNKNOWN_ACCOUNT, store)
        async with KlaviyoClient(api_key, base_url, limiter=RateLimiter.off()) as client:  # slot taken here:
            slot, _ = await limiter.take("XS", "get_accounts")
            if (account := _stored_account(store, name)) is not None:
                limiter.refund("XS", "get_accounts", slot)
            else:
                account = str((await client.check_key())["id"])
                _keep_account(store, name, account)
    _ACCOUNTS[ident] = account
    return account


def _keep_account(store: ObjectStore | None, name: str, account: str) -> None:
    if store is None:
        return
    try:
        store.write_bytes(name, orjson.dumps({"account": account}))
    except Exception as exc:
        log.warning("cannot keep the Klaviyo account of a key in storage (%s)", type(exc).__name__)


def _stored_account(store: ObjectStore | None, name: str) -> str | None:
    from shared.platform.errors import SourceError

    if store is None:
        return None
    try:
        return str(orjson.loads(store.read_bytes(name))["account"])
    except SourceError:
        return None  # not asked yet
    except Exception as exc:  # storage down, or a damaged record: ask Klaviyo
        log.warning("cannot read the Klaviyo account of a key from storage (%s); asking Klaviyo", type(exc).__name__)
        return None
