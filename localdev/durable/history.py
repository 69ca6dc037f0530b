"""History events in the JSON shape the Durable Task framework hands to out-of-process SDKs.

Field names and event-type numbers follow DurableTask.Core's history events as the Durable Functions
extension serialises them for the Python worker; ``azure.durable_functions.models.history`` reads them
(``EventType``, ``EventId``, ``IsPlayed``, ``Timestamp`` plus type-specific fields such as
``TaskScheduledId``, ``TimerId``, ``Result``, ``Reason``/``Details``, ``Name``/``Input``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

Event = dict[str, Any]


class EventType(IntEnum):
    """Same numbering as ``azure.durable_functions.models.history.HistoryEventType``."""

    EXECUTION_STARTED = 0
    EXECUTION_COMPLETED = 1
    EXECUTION_FAILED = 2
    EXECUTION_TERMINATED = 3
    TASK_SCHEDULED = 4
    TASK_COMPLETED = 5
    TASK_FAILED = 6
    SUB_ORCHESTRATION_INSTANCE_CREATED = 7
    SUB_ORCHESTRATION_INSTANCE_COMPLETED = 8
    SUB_ORCHESTRATION_INSTANCE_FAILED = 9
    TIMER_CREATED = 10
    TIMER_FIRED = 11
    ORCHESTRATOR_STARTED = 12
    ORCHESTRATOR_COMPLETED = 13
    EVENT_SENT = 14
    EVENT_RAISED = 15
    CONTINUE_AS_NEW = 16
    GENERIC_EVENT = 17
    HISTORY_STATE = 18
    EXECUTION_SUSPENDED = 19
    EXECUTION_RESUMED = 20


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z`` suffix (what the host sends)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _event(kind: EventType, at: datetime, event_id: int = -1, **fields: Any) -> Event:
    return {"EventType": int(kind), "EventId": event_id, "IsPlayed": False, "Timestamp": format_time(at), **fields}


def orchestrator_started(at: datetime) -> Event:
    return _event(EventType.ORCHESTRATOR_STARTED, at)


def orchestrator_completed(at: datetime) -> Event:
    return _event(EventType.ORCHESTRATOR_COMPLETED, at)


def execution_started(at: datetime, name: str, instance_id: str, execution_id: str, input_json: str | None) -> Event:
    return _event(
        EventType.EXECUTION_STARTED,
        at,
        Name=name,
        Version="",
        Input=input_json,
        OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution_id},
        ParentInstance=None,
        Tags=None,
    )


def execution_completed(at: datetime, status: str, result_json: str | None, failure: dict | None) -> Event:
    return _event(
        EventType.EXECUTION_COMPLETED, at, OrchestrationStatus=status, Result=result_json, FailureDetails=failure
    )


def execution_terminated(at: datetime, reason: str | None) -> Event:
    return _event(EventType.EXECUTION_TERMINATED, at, Input=reason)


def continue_as_new(at: datetime, input_json: str | None) -> Event:
    return _event(EventType.CONTINUE_AS_NEW, at, Result=input_json)


def task_scheduled(at: datetime, event_id: int, name: str, input_json: str | None) -> Event:
    return _event(EventType.TASK_SCHEDULED, at, event_id, Name=name, Version="", Input=input_json)


def task_completed(at: datetime, scheduled_id: int, result_json: str | None) -> Event:
    return _event(EventType.TASK_COMPLETED, at, TaskScheduledId=scheduled_id, Result=result_json)


def task_failed(at: datetime, scheduled_id: int, reason: str, details: str | None) -> Event:
    return _event(EventType.TASK_FAILED, at, TaskScheduledId=scheduled_id, Reason=reason, Details=details)


def timer_created(at: datetime, event_id: int, fire_at: datetime) -> Event:
    return _event(EventType.TIMER_CREATED, at, event_id, FireAt=format_time(fire_at))


def timer_fired(at: datetime, timer_id: int, fire_at: datetime) -> Event:
    return _event(EventType.TIMER_FIRED, at, TimerId=timer_id, FireAt=format_time(fire_at))


def event_raised(at: datetime, name: str, input_json: str | None) -> Event:
    return _event(EventType.EVENT_RAISED, at, Name=name, Input=input_json)


def describe(event: Event) -> dict[str, Any]:
    """A readable copy of an event (event type by name), as ``showHistory`` returns it."""
    out = dict(event)
    if event.get("EventType") in EventType._value2member_map_:
        out["EventType"] = EventType(event["EventType"]).name.title().replace("_", "")
    return out
