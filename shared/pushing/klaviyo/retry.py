"""Retry policy as data, run by tenacity.

What is retried: 429 (after ``Retry-After``), 5xx, timeouts and dropped/refused connections (a connection
that cannot be made at all only ``connect_attempts`` times).
Nothing else: any other 4xx is about the request and fails at once.

How long: 429 waits exactly ``Retry-After`` (or ``throttle_wait`` when the header is missing);
the rest back off exponentially with jitter (``backoff_initial * backoff_base**(n-1)`` plus up to
``jitter`` seconds, capped at ``backoff_max``). At most ``max_attempts`` attempts in all; a 429
whose ``Retry-After`` exceeds ``max_retry_after`` is not waited out but raised (``KlaviyoThrottled``
with ``retry_after``) so the caller can reschedule instead of holding a function instance idle.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_exponential_jitter

from .errors import KlaviyoServerError, KlaviyoThrottled

__all__ = ["RETRYABLE_TRANSPORT_ERRORS", "RetryPolicy", "parse_retry_after"]

#: httpx errors worth another attempt: timeouts, refused/reset connections, a peer that hung up.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds (Klaviyo's form) or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (KlaviyoThrottled, KlaviyoServerError, *RETRYABLE_TRANSPORT_ERRORS))


class _stop_on_long_retry_after(stop_base):
    def __init__(self, max_retry_after: float) -> None:
        self.max_retry_after = max_retry_after

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return (
            isinstance(exc, KlaviyoThrottled) and exc.retry_after is not None and exc.retry_after > self.max_retry_after
        )


class _stop_on_refused_connection(stop_base):
    """A connection that cannot be made (refused, no such host) is tried only a few times: it is a wrong URL,
    a proxy or no network far more often than a blip, and the caller should hear about it in seconds."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return isinstance(exc, httpx.ConnectError) and retry_state.attempt_number >= self.attempts


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_base: float = 2.0
    backoff_max: float = 30.0
    jitter: float = 0.5
    throttle_wait: float = 1.0  # a 429 without Retry-After (Klaviyo's burst window is 1 s)
    max_retry_after: float = 90.0
    connect_attempts: int = 3  # attempts when the connection itself cannot be made (refused, DNS)
    sleep: Callable[[float], Awaitable[object]] = field(default=asyncio.sleep, compare=False)

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def is_retryable(self, exc: BaseException) -> bool:
        return _is_retryable(exc)

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, KlaviyoThrottled):
            return exc.retry_after if exc.retry_after is not None else self.throttle_wait
        return self._backoff(retry_state)

    @property
    def _backoff(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(
            multiplier=self.backoff_initial, max=self.backoff_max, exp_base=self.backoff_base, jitter=self.jitter
        )

    def retrying(self, before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None) -> AsyncRetrying:
        """A fresh tenacity controller for one logical call. Exhaustion re-raises the last error."""
        return AsyncRetrying(
            sleep=self.sleep,
            stop=stop_after_attempt(max(1, self.max_attempts))
            | _stop_on_long_retry_after(self.max_retry_after)
            | _stop_on_refused_connection(max(1, self.connect_attempts)),
            wait=self.wait_seconds,
            retry=retry_if_exception(_is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
