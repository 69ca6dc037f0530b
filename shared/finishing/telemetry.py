"""One structured record per finished run, for Application Insights' alerts and workbook.

Written with the standard `logging` module on the ``ci_klaviyo_sync.runs`` logger: in Azure the Functions
host forwards the worker's log records to Application Insights as ``traces`` (no extra package, nothing
to start at cold start). The host keeps only the message text of a Python record (its ``extra`` fields
do not become customDimensions), so the message is ``run_finished `` followed by the record as one JSON
object, which KQL reads with ``parse_json(substring(message, 13))`` (docs/OPERATIONS.md). The same fields
are the record's attributes too (``extra``; none is one of LogRecord's own names), so a handler that maps
attributes to dimensions (azure-monitor-opentelemetry, if ever added) gets them as they are. See
docs/ARCHITECTURE.md, "Telemetry", for why not the OpenTelemetry distro.
"""

from __future__ import annotations

import logging

import orjson

from shared.finishing.notify import COUNTS

log = logging.getLogger("ci_klaviyo_sync.runs")
# Where no logging is set up (the command line) the record is not printed; in Azure it propagates to the
# handler the Functions worker puts on the root logger.
log.addHandler(logging.NullHandler())
PREFIX = "run_finished "
EVENT = "run_finished"


def run_record(report: dict) -> dict:
    """The record's fields: what the alerts and the workbook query (no sample rows, no URLs, no key)."""
    notification = report.get("notification") or {}
    return {
        "event": EVENT,
        "export": report.get("export"),
        "run_id": report.get("run_id"),
        "status": report.get("status"),
        "mode": report.get("mode"),
        "dry_run": bool(report.get("dry_run")),
        "trigger": report.get("trigger"),
        "source": report.get("source"),
        **{name: int(report.get(name) or 0) for name in COUNTS},
        "jobs": len(report.get("jobs") or []),
        "duration_s": report.get("duration_s"),
        "started_at": report.get("started_at"),
        "ended_at": report.get("ended_at"),
        "error": report.get("error"),
        "notified": notification.get("delivered") if notification else None,
    }


def emit_run_finished(report: dict) -> dict:
    """Log the run's record (WARNING for a failed or partial run, so it survives a stricter log level)."""
    record = run_record(report)
    level = logging.INFO if record["status"] in ("succeeded", "superseded") else logging.WARNING
    log.log(level, "%s%s", PREFIX, orjson.dumps(record).decode(), extra=record)
    return record
