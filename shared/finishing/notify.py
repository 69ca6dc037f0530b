"""Run notifications: one POST to an export's webhook for a finished run that matches its `notify.on`.

The body is JSON with a one-line ``text`` (what Slack and Teams incoming webhooks display) and the run's
fields: export, run id, status, counts, error, and where the report and the rejects file are. It holds
nothing secret (a report never holds the Klaviyo key). 5xx answers, timeouts and dropped or refused
connections are retried with exponential backoff (tenacity); anything else is final. Delivery never
raises: its outcome is logged and recorded in the report (`notification`), and the run's status stays
what it was. The URL may carry a token in its query (Teams' ``sig=``): logs and reports show it redacted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger(__name__)

COUNTS = (
    "rows_read",
    "rows_rejected",
    "duplicate_rows",
    "profiles_submitted",
    "profiles_unchanged",
    "profiles_imported",
    "profiles_failed",
    "profiles_removed",
    "profiles_subscribed",
    "profiles_not_consented",
    "warnings",
)
RETRYABLE = (httpx.TimeoutException, httpx.TransportError)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    attempts: int = 4
    backoff_initial: float = 0.5  # 0.5 s, 1 s, 2 s (+ jitter): a receiver that restarts gets ~4 s
    backoff_max: float = 8.0
    timeout_s: float = 10.0


class _ServerError(Exception):
    def __init__(self, status: int):
        super().__init__(f"the receiver answered {status}")
        self.status = status


def rejected_share(report: dict) -> float:
    """Rejected rows over rows read (0 for a run that read nothing)."""
    read = report.get("rows_read") or 0
    return (report.get("rows_rejected") or 0) / read if read else 0.0


def wanted(notify: dict | None, report: dict) -> bool:
    """Does this run's report match the export's `notify.on`?"""
    if not notify:
        return False
    on = notify.get("on") or ["failed", "partially_succeeded"]
    if report.get("status") in on:
        return True
    share = notify.get("rejects_over")
    return "rejects_over" in on and share is not None and rejected_share(report) > share


def redact(url: str) -> str:
    """The URL as logs and reports may show it: every query value replaced (tokens often ride there)."""
    try:
        parts = urlsplit(url)
        query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))
    except ValueError:
        return "(unreadable URL)"


def message(report: dict) -> dict:
    """The POST body: a one-line `text` plus the report's fields a receiver may act on."""
    status = report.get("status", "")
    verb = "would send" if report.get("dry_run") else "sent"
    text = (
        f"Klaviyo sync '{report.get('export')}' {status}"
        f"{' (dry run)' if report.get('dry_run') else ''}: {report.get('rows_read') or 0:,} rows read, "
        f"{report.get('rows_rejected') or 0:,} rejected, {verb} {report.get('profiles_submitted') or 0:,}, "
        f"imported {report.get('profiles_imported') or 0:,}, failed {report.get('profiles_failed') or 0:,}"
    )
    if report.get("profiles_removed"):
        text += f", removed {report['profiles_removed']:,}"
    if report.get("duration_s") is not None:
        text += f" in {report['duration_s']:,.1f} s"
    if report.get("error"):
        text += f". Error: {report['error']}"
    return {
        "text": " ".join(text.split()),
        "export": report.get("export"),
        "run_id": report.get("run_id"),
        "status": status,
        "dry_run": bool(report.get("dry_run")),
        "mode": report.get("mode"),
        "trigger": report.get("trigger"),
        **{name: report.get(name, 0) for name in COUNTS},
        "rejected_share": round(rejected_share(report), 6),
        "duration_s": report.get("duration_s"),
        "started_at": report.get("started_at"),
        "ended_at": report.get("ended_at"),
        "error": report.get("error"),
        "report": report.get("report_location"),
        "rejects_file": report.get("rejects_location") or report.get("rejects_file"),
    }


def deliver(url: str, body: dict, policy: DeliveryPolicy = DeliveryPolicy()) -> dict:
    """POST `body` (retrying 5xx and transport failures); never raises. Returns what happened:
    {"url" (redacted), "delivered", "attempts", "status_code", "error", "at"}."""
    outcome: dict = {"url": redact(url), "delivered": False, "attempts": 0, "status_code": None, "error": None}
    retrying = Retrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=wait_exponential_jitter(multiplier=policy.backoff_initial, max=policy.backoff_max, jitter=0.25),
        retry=retry_if_exception(lambda exc: isinstance(exc, (_ServerError, *RETRYABLE))),
    )
    try:
        with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
            for attempt in retrying:
                with attempt:
                    outcome["attempts"] += 1
                    answer = client.post(url, json=body, headers={"User-Agent": "ci-klaviyo-sync"})
                    outcome["status_code"] = answer.status_code
                    if answer.status_code >= 500:
                        raise _ServerError(answer.status_code)
        code = outcome["status_code"]
        outcome["delivered"] = code is not None and 200 <= code < 300
        if not outcome["delivered"]:
            outcome["error"] = f"the receiver answered {code}"
    except RetryError as exc:  # every attempt failed on something worth retrying
        outcome["error"] = _one_line(exc.last_attempt.exception())
    except Exception as exc:  # a notification must never fail the run
        outcome["error"] = _one_line(exc)
    outcome["at"] = datetime.now(UTC).isoformat()
    return outcome


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, _ServerError):
        return str(exc)
    # httpx puts the URL in some messages: name the failure by its type and keep the text URL-free.
    text = " ".join(str(exc).split())
    return type(exc).__name__ + (f": {text}" if text and "://" not in text else "")


def notify_run(notify: dict | None, report: dict, policy: DeliveryPolicy = DeliveryPolicy()) -> dict | None:
    """Post the run's notification if the export wants one; the delivery record, or None when not wanted."""
    if not wanted(notify, report):
        return None
    outcome = deliver(notify["webhook_url"], message(report), policy)
    if outcome["delivered"]:
        log.info("run %s: notification delivered to %s", report.get("run_id"), outcome["url"])
    else:
        log.warning(
            "run %s: notification to %s not delivered after %d attempt(s): %s",
            report.get("run_id"),
            outcome["url"],
            outcome["attempts"],
            outcome["error"],
        )
    return outcome
