"""Faults on demand: planned ones (admin endpoint) and a seeded random fraction of requests.

Kinds:
  throttle  answer 429 with Klaviyo's throttle body and `Retry-After: retry_after` (nothing is done)
  error     answer `status` (500/502/503/504) with a Klaviyo error body (nothing is done)
  drop      do the work (the change is applied), then close the connection without answering
  slow      wait `delay` seconds, then answer normally
"""

from __future__ import annotations

import fnmatch
import itertools
import random
from dataclasses import asdict, dataclass, field

KINDS = ("throttle", "error", "drop", "slow")
ALIASES = {"429": "throttle", "5xx": "error", "500": "error", "503": "error", "disconnect": "drop", "delay": "slow"}
ERROR_STATUSES = (500, 502, 503, 504)


@dataclass
class Fault:
    kind: str
    retry_after: int = 1
    status: int = 503
    delay: float = 1.0
    rule_id: int | None = None


@dataclass
class FaultRule:
    id: int
    kind: str
    path: str = "*"  # fnmatch pattern on the request path, e.g. /api/lists/*/relationships/profiles
    method: str | None = None
    count: int = 1  # how many matching requests get the fault
    after: int = 0  # let this many matching requests through first
    retry_after: int = 1
    status: int = 503
    delay: float = 1.0
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.remaining = self.count

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and fnmatch.fnmatchcase(path, self.path)


class PlanError(ValueError):
    pass


def parse_rule(raw: dict, rule_id: int) -> FaultRule:
    if not isinstance(raw, dict):
        raise PlanError("each fault must be a JSON object")
    allowed = {"kind", "fault", "path", "method", "count", "after", "retry_after", "status", "delay"}
    unknown = set(raw) - allowed
    if unknown:
        raise PlanError(f"unknown fault field(s): {sorted(unknown)}; allowed: {sorted(allowed)}")
    kind = str(raw.get("kind", raw.get("fault", "")))
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise PlanError(f"fault kind must be one of {list(KINDS)} (or {sorted(ALIASES)}), not {kind!r}")
    try:
        rule = FaultRule(
            id=rule_id,
            kind=kind,
            path=str(raw.get("path", "*")),
            method=str(raw["method"]).upper() if raw.get("method") else None,
            count=int(raw.get("count", 1)),
            after=int(raw.get("after", 0)),
            retry_after=int(raw.get("retry_after", 1)),
            status=int(raw.get("status", 503)),
            delay=float(raw.get("delay", 1.0)),
        )
    except (TypeError, ValueError) as exc:
        raise PlanError(f"bad fault field: {exc}") from exc
    if rule.count < 1 or rule.after < 0 or rule.retry_after < 0 or rule.delay < 0:
        raise PlanError("count must be >= 1; after, retry_after and delay must be >= 0")
    if rule.kind == "error" and not 500 <= rule.status <= 599:
        raise PlanError("status of an error fault must be 5xx")
    return rule


class Faults:
    def __init__(self, rate: float = 0.0, seed: int | None = None, kinds: tuple[str, ...] = KINDS, delay: float = 1.0):
        self.rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self.configure_random(rate, seed, kinds, delay)

    def configure_random(
        self, rate: float, seed: int | None, kinds: tuple[str, ...] = KINDS, delay: float = 1.0
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise PlanError("fault rate must be between 0 and 1")
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise PlanError(f"random fault kinds must be among {list(KINDS)}")
        self.rate, self.seed, self.kinds, self.delay = rate, seed, tuple(kinds), delay
        self.rng = random.Random(seed)

    def add(self, raw_rules: list[dict]) -> list[FaultRule]:
        rules = [parse_rule(raw, next(self._ids)) for raw in raw_rules]
        self.rules.extend(rules)
        return rules

    def clear(self) -> None:
        self.rules.clear()

    def pick(self, method: str, path: str) -> Fault | None:
        for rule in self.rules:
            if not rule.matches(method, path):
                continue
            if rule.after > 0:
                rule.after -= 1
                continue
            rule.remaining -= 1
            if rule.remaining <= 0:
                self.rules.remove(rule)
            return Fault(rule.kind, rule.retry_after, rule.status, rule.delay, rule.id)
        if self.rate > 0 and self.rng.random() < self.rate:
            kind = self.rng.choice(self.kinds)
            return Fault(kind, retry_after=1, status=self.rng.choice(ERROR_STATUSES), delay=self.delay)
        return None

    def describe(self) -> dict:
        return {
            "rules": [asdict(r) for r in self.rules],
            "random": {"rate": self.rate, "seed": self.seed, "kinds": list(self.kinds), "delay": self.delay},
        }
