"""Durable Functions keeps every run's history (inputs, activity results, the report) in the task hub
for ever; this purges the finished runs (completed, failed, terminated) created before the retention
(RUN_RETENTION_DAYS, the same as run reports). Runs still going are never touched.

The durable client is passed in, with the SDK's runtime status values, so this module stays free of
azure.functions (functions/maintenance.py is the timer that calls it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)
FINISHED = ("Completed", "Failed", "Terminated")
# The purge API wants a lower bound on creation time: before any instance of this app existed.
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


async def purge_finished_runs(
    client: Any,
    retention_days: int,
    status_of: Callable[[str], Any],
    now: datetime | None = None,
) -> dict:
    """Purge finished instances created more than `retention_days` before `now`. `status_of` turns a
    status name into the client's runtime status (df.OrchestrationRuntimeStatus). Returns what it did."""
    if retention_days < 1:
        raise ValueError(f"the retention must be at least 1 day, not {retention_days}")
    before = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    statuses: Iterable[Any] = [status_of(name) for name in FINISHED]
    result = await client.purge_instance_history_by(
        created_time_from=EPOCH, created_time_to=before, runtime_status=list(statuses)
    )
    purged = int(result.instances_deleted or 0)
    log.info("purged the durable history of %d finished runs created before %s", purged, before.isoformat())
    return {"purged": purged, "created_before": before.isoformat()}
