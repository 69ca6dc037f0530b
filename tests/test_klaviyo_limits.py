"""The rate limiter on a fake clock: never more than N acquisitions in any window, and no slower."""

from __future__ import annotations

import asyncio
import bisect

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.pushing.klaviyo import KLAVIYO_TIERS, KlaviyoClient, RateLimiter, RetryPolicy, Tier


class FakeClock:
    """``clock()`` reads fake time; ``sleep(s)`` advances it (and yields to the loop)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def max_in_any_window(times: list[float], width: float) -> int:
    """Most acquisitions in any half-open window [t, t + width), whatever its alignment."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width - 1e-9) - i for i, t in enumerate(times)), default=0)


async def test_never_more_than_n_per_window_under_contention():
    clock = FakeClock()
    limiter = RateLimiter({"M": Tier(10, 150)}, clock=clock, sleep=clock.sleep, padding=0.0)
    times: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            # The slot a request gets: concurrent sleepers each advance this fake clock, so reading it after
            # waking could overshoot; the moment asked for plus the wait is when the request may go out.
            asked = clock()
            times.append(asked + await limiter.acquire("M", "bulk_import_profiles"))

    await asyncio.gather(*(worker(40) for _ in range(10)))  # 400 requests from 10 tasks
    assert len(times) == 400
    assert max_in_any_window(times, 1.0) == 10
    assert max_in_any_window(times, 60.0) == 150
    # as fast as allowed: 150 in the first minute, 150 in the next, 100 in the third
    start = 1000.0
    assert sum(t < start + 60 for t in times) == 150
    assert sum(start + 60 <= t < start + 120 for t in times) == 150
    assert limiter.acquired == 400


async def test_first_slots_are_immediate_then_paced_by_the_burst_window():
    clock = FakeClock(0.0)
    limiter = RateLimiter({"S": Tier(3, 10)}, clock=clock, sleep=clock.sleep, padding=0.0)
    times = []
    for _ in range(14):
        async with limiter.slot("S"):
            times.append(clock())
    assert times == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 60, 60, 60, 61]


async def test_padding_widens_each_window():
    clock = FakeClock(0.0)
    limiter = RateLimiter({"XS": Tier(1, 15)}, clock=clock, sleep=clock.sleep, padding=0.05)
    times = []
    for _ in range(3):
        await limiter.acquire("XS")
        times.append(clock())
    assert times == pytest.approx([0.0, 1.05, 2.10])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=120),
    st.integers(1, 6),
    st.integers(1, 25),
)
def test_windows_hold_for_any_arrival_pattern(gaps, burst, steady):
    async def run() -> list[float]:
        clock = FakeClock()
        limiter = RateLimiter({"X": Tier(burst, steady)}, clock=clock, sleep=clock.sleep, padding=0.0)
        times = []
        for gap in gaps:
            clock.now += gap  # the caller's own pace
            await limiter.acquire("X")
            times.append(clock())
        return times

    times = asyncio.run(run())
    assert max_in_any_window(times, 1.0) <= burst
    assert max_in_any_window(times, 60.0) <= steady


async def test_off_never_waits():
    clock = FakeClock()
    limiter = RateLimiter.off()
    for _ in range(1000):
        await limiter.acquire("XS")
    assert clock.sleeps == [] and limiter.waits == 0


async def test_endpoints_have_their_own_buckets_unless_shared():
    clock = FakeClock(0.0)
    per_endpoint = RateLimiter({"M": Tier(2, 100)}, clock=clock, sleep=clock.sleep, padding=0.0)
    for op in ("a", "a", "b", "b"):
        await per_endpoint.acquire("M", op)
    assert clock.sleeps == []
    shared = RateLimiter({"M": Tier(2, 100)}, clock=clock, sleep=clock.sleep, padding=0.0, per_endpoint=False)
    for op in ("a", "a", "b"):
        await shared.acquire("M", op)
    assert clock.sleeps == [1.0]


async def test_defer_holds_the_bucket_back():
    clock = FakeClock(0.0)
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    limiter.defer("M", "op", 5.0)
    assert await limiter.acquire("M", "op") == 5.0
    assert await limiter.acquire("M", "other") == 0.0


async def test_a_refunded_slot_is_free_again():
    """A request Klaviyo refused (429) did not count there; giving its slot back lets the next request take
    it instead of waiting for the next window."""
    clock = FakeClock(0.0)
    limiter = RateLimiter({"T": Tier(100, 3)}, padding=0.0, clock=clock, sleep=clock.sleep)
    slots = [(await limiter.take("T", "op"))[0] for _ in range(3)]
    limiter.refund("T", "op", slots[1])
    assert await limiter.acquire("T", "op") == 0.0  # the refunded slot: no wait
    assert await limiter.acquire("T", "op") == pytest.approx(60.0)  # the window is full again
    limiter.refund("T", "op", None)  # an unlimited client's slot: nothing to do


def test_share_scales_limits_for_concurrent_workers():
    assert RateLimiter(share=0.5).limits("M") == Tier(5, 75)
    assert RateLimiter(share=0.01).limits("XS") == Tier(1, 1)
    with pytest.raises(ValueError):
        RateLimiter(share=0)


def test_tiers_match_klaviyo():
    assert dict(KLAVIYO_TIERS) == {
        "XS": Tier(1, 15),
        "S": Tier(3, 60),
        "M": Tier(10, 150),
        "L": Tier(75, 700),
        "XL": Tier(350, 3500),
    }


async def test_client_paces_account_checks_at_the_xs_tier():
    clock = FakeClock(0.0)
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock())
        return httpx.Response(200, json={"data": [{"type": "account", "id": "A", "attributes": {}}]})

    limiter = RateLimiter(clock=clock, sleep=clock.sleep, padding=0.0)
    async with KlaviyoClient(
        "pk_test", transport=httpx.MockTransport(handler), limiter=limiter, retry=RetryPolicy.none()
    ) as client:
        for _ in range(20):
            await client.check_key()
    assert len(sent) == 20
    assert max_in_any_window(sent, 1.0) == 1  # XS: 1/s
    assert max_in_any_window(sent, 60.0) == 15  # XS: 15/m
    assert sent[15] == 60.0
