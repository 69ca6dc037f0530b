"""Replays an orchestrator's actions against its history, the way the Durable Functions extension does.

Each episode the Python SDK returns the *whole* list of actions the orchestrator has yielded so far
(``OrchestratorState.actions``; replay schema V2+: one flat list, ``WhenAll``/``WhenAny`` nest their
children). The host walks that list in order, awaiting one action before invoking the next, while it
replays the history: every call it makes gets the next sequence number (``EventId``), and a completion
event in the history resolves the task with that id. Tasks whose id has no ``TaskScheduled`` /
``TimerCreated`` in the history yet are the new work of this episode.

``call_activity_with_retry`` is implemented by the host too (DTFx ``RetryInterceptor``): when an attempt
fails it creates a retry timer, and when that timer fires it schedules the next attempt, each with the
next sequence number - after the final failed attempt it still creates one more timer and only then
fails. The SDK's ``RetryAbleTask`` mirrors exactly that, so the events written here are the ones it
waits for.

Where the .NET shim and the SDK disagree (``Task.WhenAll`` waits for every child, the SDK fails a
``task_all`` on the first failed child), this follows the SDK, because the SDK's sequence numbers are
the ones that have to match.

Replaying also checks determinism, like DTFx: an id the history says was scheduled as activity ``A``
must be scheduled as ``A`` again, and the actions of earlier episodes must come back unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from localdev.durable.history import Event, EventType, parse_time


class NonDeterminismError(Exception):
    """The orchestrator did something different from what its history records."""


class UnsupportedActionError(Exception):
    """The orchestrator used a Durable Functions feature the local driver does not implement."""


# OrchestratorState action types (azure.durable_functions.models.actions.ActionType)
CALL_ACTIVITY = 0
CALL_ACTIVITY_WITH_RETRY = 1
CALL_SUB_ORCHESTRATOR = 2
CALL_SUB_ORCHESTRATOR_WITH_RETRY = 3
CONTINUE_AS_NEW = 4
CREATE_TIMER = 5
WAIT_FOR_EXTERNAL_EVENT = 6
CALL_ENTITY = 7
CALL_HTTP = 8
SIGNAL_ENTITY = 9
WHEN_ANY = 11
WHEN_ALL = 12

_UNSUPPORTED = {
    CALL_SUB_ORCHESTRATOR: "call_sub_orchestrator",
    CALL_SUB_ORCHESTRATOR_WITH_RETRY: "call_sub_orchestrator_with_retry",
    CALL_ENTITY: "call_entity",
    CALL_HTTP: "call_http",
    SIGNAL_ENTITY: "signal_entity",
}


@dataclass
class Decision:
    """New work decided in this episode: an activity to schedule or a timer to create."""

    event_id: int
    kind: str  # "activity" | "timer"
    name: str | None = None
    input_json: str | None = None
    fire_at: datetime | None = None


@dataclass(eq=False)
class _Node:
    kind: str  # activity | timer | event | retry | all | any | noop
    parent: _Node | None = None
    id: int | None = None
    done: bool = False
    failed: bool = False
    children: list[_Node] = field(default_factory=list)
    # retry bookkeeping
    name: str | None = None
    input_json: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    timer: _Node | None = None


@dataclass
class ReplayResult:
    decisions: list[Decision]
    continue_as_new: bool
    continue_as_new_input: str | None
    cancelled_timers: set[int]


def _retry_delay(options: dict[str, Any], retry_count: int) -> timedelta:
    """DTFx RetryOptions: first interval * backoff^retry_count, capped by the max interval."""
    first_ms = float(options.get("firstRetryIntervalInMilliseconds", 0))
    backoff = float(options.get("backoffCoefficient", 1) or 1)
    delay_ms = first_ms * backoff**retry_count
    max_ms = options.get("maxRetryIntervalInMilliseconds")
    if max_ms:
        delay_ms = min(delay_ms, float(max_ms))
    return timedelta(milliseconds=delay_ms)


def normalise_actions(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Actions for comparison between episodes: ``isCanceled`` may legitimately flip later."""

    def strip(action: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in action.items() if k != "isCanceled"}
        if "compoundActions" in out:
            out["compoundActions"] = [strip(a) for a in out["compoundActions"]]
        return out

    return [strip(a) for a in actions]


def flat_actions(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The top-level action list of an ``OrchestratorState`` JSON (replay schema V2 or later)."""
    if state.get("schemaVersion", 0) < 1:
        raise UnsupportedActionError("replay schema V1 (nested action sets) is not supported")
    actions = state.get("actions") or [[]]
    if len(actions) != 1:
        raise UnsupportedActionError(f"expected one action list with schema V2+, got {len(actions)}")
    return list(actions[0])


def check_prefix(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
    """The actions of earlier episodes must come back, in the same order, with the same inputs."""
    old, new = normalise_actions(previous), normalise_actions(current)
    for index, before in enumerate(old):
        if index >= len(new):
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: action #{index} ({_summary(before)}) was scheduled "
                "in an earlier replay but is missing now"
            )
        if new[index] != before:
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: action #{index} was {_summary(before)} in an earlier "
                f"replay but is {_summary(new[index])} now"
            )


def _summary(action: dict[str, Any]) -> str:
    kind = action.get("actionType")
    if kind in (WHEN_ALL, WHEN_ANY):
        label = "WhenAll" if kind == WHEN_ALL else "WhenAny"
        return f"{label}[{', '.join(_summary(a) for a in action.get('compoundActions', []))}]"
    if kind == CREATE_TIMER:
        return f"CreateTimer(fireAt={action.get('fireAt')})"
    if kind == WAIT_FOR_EXTERNAL_EVENT:
        return f"WaitForExternalEvent({action.get('externalEventName')!r})"
    name = action.get("functionName")
    return f"action type {kind} {name!r} input={action.get('input')}"


class ActionReplayer:
    """Runs one replay: history events in order, actions invoked one after another as they complete."""

    def __init__(self, actions: list[dict[str, Any]]):
        self._actions = actions
        self._cursor = 0
        self._current: _Node | None = None
        self._counter = 0
        self._open: dict[int, _Node] = {}
        self._scheduled: dict[int, Decision] = {}
        self._recorded: set[int] = set()
        self._waiting: dict[str, list[_Node]] = defaultdict(list)
        self._buffered: set[str] = set()
        self._timers: dict[int, _Node] = {}
        self._cancelled: set[int] = set()
        self._now: datetime | None = None
        self._continue_as_new = False
        self._continue_input: str | None = None

    # -- history -------------------------------------------------------------------------------------
    def run(self, history: list[Event]) -> ReplayResult:
        for event in history:
            self._process(event)
        decisions = [d for i, d in sorted(self._scheduled.items()) if i not in self._recorded]
        return ReplayResult(decisions, self._continue_as_new, self._continue_input, self._cancelled)

    def _process(self, event: Event) -> None:
        kind = event["EventType"]
        if kind == EventType.ORCHESTRATOR_STARTED:
            self._now = parse_time(event["Timestamp"])
        elif kind == EventType.EXECUTION_STARTED:
            self._advance()
        elif kind == EventType.TASK_SCHEDULED:
            self._record(event["EventId"], "activity", event.get("Name"))
        elif kind == EventType.TIMER_CREATED:
            self._record(event["EventId"], "timer", None)
        elif kind in (EventType.TASK_COMPLETED, EventType.TASK_FAILED):
            self._complete(event["TaskScheduledId"], failed=kind == EventType.TASK_FAILED)
        elif kind == EventType.TIMER_FIRED:
            self._complete(event["TimerId"], failed=False)
        elif kind == EventType.EVENT_RAISED:
            self._raise(event.get("Name") or "")

    def _record(self, event_id: int, kind: str, name: str | None) -> None:
        decision = self._scheduled.get(event_id)
        if decision is None:
            what = f"activity {name!r}" if kind == "activity" else "a timer"
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: the history schedules {what} as task #{event_id}, "
                "but the orchestrator did not schedule it when replayed"
            )
        if decision.kind != kind or (kind == "activity" and decision.name != name):
            was = f"activity {name!r}" if kind == "activity" else "a timer"
            now = f"activity {decision.name!r}" if decision.kind == "activity" else "a timer"
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: task #{event_id} was {was} in the history, "
                f"but the orchestrator now schedules {now}"
            )
        self._recorded.add(event_id)

    def _complete(self, task_id: int, failed: bool) -> None:
        node = self._open.pop(task_id, None)
        if node is None or node.done:
            return
        node.done, node.failed = True, failed
        self._propagate(node)

    def _raise(self, name: str) -> None:
        waiters = self._waiting.get(name)
        if waiters:
            node = waiters.pop()  # the SDK resolves the most recent waiter first
            node.done = True
            self._propagate(node)
        else:
            self._buffered.add(name)  # the SDK keeps it and hands it to later waiters

    # -- program -------------------------------------------------------------------------------------
    def _advance(self) -> None:
        while self._current is None or self._current.done:
            if self._cursor >= len(self._actions):
                self._current = None
                return
            action = self._actions[self._cursor]
            self._cursor += 1
            self._current = self._invoke(action, None)

    def _next_id(self) -> int:
        value = self._counter
        self._counter += 1
        return value

    def _schedule_activity(self, parent: _Node | None, name: str, input_json: str | None) -> _Node:
        node = _Node("activity", parent=parent, id=self._next_id(), name=name, input_json=input_json)
        self._open[node.id] = node
        self._scheduled[node.id] = Decision(node.id, "activity", name=name, input_json=input_json)
        return node

    def _schedule_timer(self, parent: _Node | None, fire_at: datetime, cancelled: bool = False) -> _Node:
        node = _Node("timer", parent=parent, id=self._next_id())
        self._open[node.id] = node
        self._timers[node.id] = node
        self._scheduled[node.id] = Decision(node.id, "timer", fire_at=fire_at)
        if cancelled:
            self._cancelled.add(node.id)
        return node

    def _invoke(self, action: dict[str, Any], parent: _Node | None) -> _Node:
        kind = action.get("actionType")
        if kind == CALL_ACTIVITY:
            return self._schedule_activity(parent, action["functionName"], action.get("input"))
        if kind == CALL_ACTIVITY_WITH_RETRY:
            node = _Node(
                "retry",
                parent=parent,
                name=action["functionName"],
                input_json=action.get("input"),
                options=action.get("retryOptions") or {},
                attempts=1,
            )
            node.children.append(self._schedule_activity(node, node.name or "", node.input_json))
            return node
        if kind == CREATE_TIMER:
            return self._schedule_timer(parent, parse_time(action["fireAt"]), bool(action.get("isCanceled")))
        if kind == WAIT_FOR_EXTERNAL_EVENT:
            name = action.get("externalEventName") or ""
            node = _Node("event", parent=parent, name=name)
            if name in self._buffered:
                node.done = True
            else:
                self._waiting[name].append(node)
            return node
        if kind in (WHEN_ALL, WHEN_ANY):
            node = _Node("all" if kind == WHEN_ALL else "any", parent=parent)
            node.children = [self._invoke(child, node) for child in action.get("compoundActions") or []]
            self._settle_compound(node)
            return node
        if kind == CONTINUE_AS_NEW:
            self._next_id()  # the SDK spends a sequence number on it
            self._continue_as_new = True
            self._continue_input = action.get("input")
            return _Node("noop", parent=parent, done=True)
        if kind in _UNSUPPORTED:
            raise UnsupportedActionError(f"{_UNSUPPORTED[kind]} is not supported by the local durable driver")
        raise UnsupportedActionError(f"unknown orchestrator action type {kind!r}")

    def _settle_compound(self, node: _Node) -> bool:
        if node.done:
            return False
        if node.kind == "all":
            if any(c.done and c.failed for c in node.children):
                node.done, node.failed = True, True
            elif all(c.done for c in node.children):
                node.done = True
        elif any(c.done for c in node.children):
            node.done = True
        return node.done

    def _propagate(self, node: _Node) -> None:
        parent = node.parent
        if parent is None:
            if node is self._current:
                self._advance()
            return
        if parent.done:
            return
        if parent.kind in ("all", "any"):
            if self._settle_compound(parent):
                self._propagate(parent)
            return
        # retry
        if node is parent.timer:
            parent.timer = None
            if parent.attempts >= int(parent.options.get("maxNumberOfAttempts", 1)):
                parent.done, parent.failed = True, True
                self._propagate(parent)
            else:
                parent.attempts += 1
                parent.children.append(self._schedule_activity(parent, parent.name or "", parent.input_json))
        elif node.failed:
            if self._now is None:  # pragma: no cover - every history starts with OrchestratorStarted
                raise NonDeterminismError("history has no OrchestratorStarted event")
            fire_at = self._now + _retry_delay(parent.options, parent.attempts - 1)
            parent.timer = self._schedule_timer(parent, fire_at)
        else:
            parent.done = True
            self._propagate(parent)
