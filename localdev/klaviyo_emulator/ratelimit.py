"""Klaviyo's rate limits: per account and per endpoint, a burst (1 s) and a steady (1 min) fixed window
(plus a daily one where the spec gives it, e.g. create_list 150/d).

A window opens with the first request that finds no open window and lasts exactly its length, so the
11th request within a second of the first of a burst is throttled however the burst lines up with the
wall clock (this keeps tests deterministic). A throttled request does not count against any window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import RateLimit


@dataclass
class Decision:
    allowed: bool
    retry_after: int = 0  # whole seconds, for 429
    limit: int = 0  # steady window, for RateLimit-* headers on success
    remaining: int = 0
    reset: int = 0


class RateLimiter:
    def __init__(self) -> None:
        self.windows: dict[tuple[str, str, int], list[float]] = {}  # (account, endpoint, len) -> [start, count]

    def reset(self) -> None:
        self.windows.clear()

    def check(self, account: str, endpoint: str, limits: tuple[RateLimit, ...], now: float) -> Decision:
        states = []
        retry_after = 0.0
        for rl in limits:
            key = (account, endpoint, rl.window)
            state = self.windows.get(key)
            if state is None or now >= state[0] + rl.window:
                state = [now, 0]
                self.windows[key] = state
            states.append((rl, state))
            if state[1] >= rl.limit:
                retry_after = max(retry_after, state[0] + rl.window - now)
        if retry_after > 0:
            return Decision(False, retry_after=max(1, math.ceil(retry_after)))
        for _rl, state in states:
            state[1] += 1
        steady = next((s for s in states if s[0].name == "steady"), states[-1] if states else None)
        if steady is None:
            return Decision(True)
        rl, state = steady
        return Decision(
            True,
            limit=rl.limit,
            remaining=max(0, rl.limit - int(state[1])),
            reset=max(0, math.ceil(state[0] + rl.window - now)),
        )
