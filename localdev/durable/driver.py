"""A local durable host: drives orchestrators through the azure-functions-durable SDK's own replay engine.

Per orchestration instance the driver keeps what the Durable Task framework keeps: the history (complete
episodes) and the events that arrived since the last episode. An *episode* is one orchestrator call:

1. ``OrchestratorStarted`` plus the new events (``ExecutionStarted`` at first, later ``TaskCompleted`` /
   ``TaskFailed`` / ``TimerFired`` / ``EventRaised``) are appended to the history, the earlier events
   marked ``IsPlayed``, and the orchestrator (``Orchestrator.create``'s handle, via the registry) is called
   with that history, exactly as the Python worker would call it.
2. The returned ``OrchestratorState`` is replayed against the history (``replay.ActionReplayer``) to find
   the new work and its sequence numbers, and to check determinism.
3. ``TaskScheduled`` / ``TimerCreated`` (or ``ExecutionCompleted``) and ``OrchestratorCompleted`` are
   appended and the instance document is written to the :class:`HistoryStore` - only then are the new
   activities submitted to the thread pool and the timers armed.

Activity results and fired timers are written to the store as soon as they arrive, then the next episode
runs. A driver started on the same store and asked to :meth:`LocalDurableDriver.resume` carries on: the
history already says which activities completed (they are not run again) and which were scheduled but
never reported back (they are run again - at-least-once, like Azure).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.functions import _durable_functions as func_durable

from localdev.durable import history as H
from localdev.durable.history import Event, EventType
from localdev.durable.registry import Registry, registry_from_app
from localdev.durable.replay import (
    ActionReplayer,
    Decision,
    NonDeterminismError,
    UnsupportedActionError,
    check_prefix,
    flat_actions,
)
from localdev.durable.store import HistoryStore, Lease, MemoryHistoryStore, Record

log = logging.getLogger("localdev.durable")

OUT_OF_PROC_MARKER = "\n\n$OutOfProcData$:"


class RuntimeStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"


TERMINAL = frozenset({RuntimeStatus.COMPLETED, RuntimeStatus.FAILED, RuntimeStatus.TERMINATED})


class InstanceNotFoundError(LookupError):
    pass


class InstanceExistsError(Exception):
    pass


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    name: str
    runtime_status: RuntimeStatus
    input: Any
    output: Any
    custom_status: Any
    created_time: datetime
    last_updated_time: datetime
    failure_details: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.runtime_status in TERMINAL

    def to_json(self, show_input: bool = True) -> dict[str, Any]:
        """The body of ``GET instances/{id}`` (what ``DurableOrchestrationStatus.from_json`` reads)."""
        body: dict[str, Any] = {
            "name": self.name,
            "instanceId": self.instance_id,
            "runtimeStatus": str(self.runtime_status),
            "customStatus": self.custom_status,
            "output": self.output,
            "createdTime": H.format_time(self.created_time),
            "lastUpdatedTime": H.format_time(self.last_updated_time),
        }
        if show_input:
            body["input"] = self.input
        if self.failure_details is not None:
            body["failureDetails"] = self.failure_details
        if self.history is not None:
            body["history"] = self.history
        return body


def _status_of(record: Record, show_history: bool = False, show_history_output: bool = True) -> InstanceStatus:
    history = None
    if show_history:
        history = []
        for event in record["history"]:
            described = H.describe(event)
            if not show_history_output:
                described.pop("Result", None)
                described.pop("Input", None)
            history.append(described)
    return InstanceStatus(
        instance_id=record["instanceId"],
        name=record["name"],
        runtime_status=RuntimeStatus(record["runtimeStatus"]),
        input=_json_or_none(record.get("input")),
        output=record.get("output"),
        custom_status=record.get("customStatus"),
        created_time=H.parse_time(record["createdTime"]),
        last_updated_time=H.parse_time(record["lastUpdatedTime"]),
        failure_details=record.get("failureDetails"),
        history=history,
    )


class Clock:
    """Orchestration time: wall-clock UTC plus an offset that jumps forward when a timer fires early.

    ``scale`` shrinks timer waits: a timer due in ``d`` fires after ``d * scale`` real seconds (0 = as
    soon as it is the earliest pending timer), and the clock then moves forward to its ``fireAt``, so
    the orchestrator sees ``current_utc_datetime >= fireAt`` after a timer, as in Azure.
    """

    def __init__(self, scale: float = 1.0):
        if scale < 0:
            raise ValueError("clock scale must be >= 0")
        self.scale = scale
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def real_delay(self, until: datetime) -> float:
        return max(0.0, (until - self.now()).total_seconds() * self.scale)

    def advance_to(self, moment: datetime) -> None:
        with self._lock:
            behind = moment - (datetime.now(UTC) + self._offset)
            if behind > timedelta(0):
                self._offset += behind


@dataclass(order=True)
class _TimerItem:
    fire_at: datetime
    seq: int
    instance_id: str = field(compare=False)
    execution_id: str = field(compare=False)
    timer_id: int = field(compare=False)


class _TimerQueue:
    """One thread firing timers strictly in ``fireAt`` order (all instances of a driver share it)."""

    def __init__(self, clock: Clock, fire: Callable[[_TimerItem], None]):
        self._clock = clock
        self._fire = fire
        self._heap: list[_TimerItem] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="durable-timers", daemon=True)
        self._thread.start()

    def add(self, fire_at: datetime, instance_id: str, execution_id: str, timer_id: int) -> None:
        with self._cond:
            heapq.heappush(self._heap, _TimerItem(fire_at, next(self._seq), instance_id, execution_id, timer_id))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _loop(self) -> None:
        head: _TimerItem | None = None
        deadline = 0.0
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    if self._heap[0] is not head:  # a new earliest timer: its real deadline starts now
                        head = self._heap[0]
                        deadline = time.monotonic() + self._clock.real_delay(head.fire_at)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                item = heapq.heappop(self._heap)
                head = None
            self._clock.advance_to(item.fire_at)
            try:
                self._fire(item)
            except Exception:  # keep the timer thread alive whatever a delivery does
                log.exception("delivering timer %s of %s failed", item.timer_id, item.instance_id)


@dataclass
class _Work:
    """What an episode (or a resume) decided must run next, dispatched after the document is saved."""

    instance_id: str
    execution_id: str
    activities: list[Decision] = field(default_factory=list)
    timers: list[Decision] = field(default_factory=list)
    episode: bool = False


class _Instance:
    def __init__(self, instance_id: str, record: Record | None = None):
        self.instance_id = instance_id
        self.record = record
        self.lock = threading.RLock()
        self.queued = False
        self.loaded = record is not None


def _timespan(value: timedelta) -> str:
    """.NET ``TimeSpan.ToString("c")``: ``[d.]hh:mm:ss``."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _state_from_exception(exc: BaseException) -> dict[str, Any]:
    """An orchestrator that raised: the SDK puts its state JSON after ``$OutOfProcData$:`` in the message."""
    head, marker, tail = str(exc).rpartition(OUT_OF_PROC_MARKER)
    if marker:
        try:
            state = json.loads(tail)
        except json.JSONDecodeError:
            state = None
        if isinstance(state, dict):
            state.setdefault("error", head)
            return state
    return {"isDone": False, "error": f"{type(exc).__name__}: {exc}", "internal": True}


class LocalDurableDriver:
    """Runs Durable Functions orchestrations of a ``df.DFApp`` on this machine. Thread-safe.

    ``activity_concurrency`` is the width of the activity thread pool (activities scheduled together run
    concurrently up to it); ``orchestrator_concurrency`` how many instances can replay at once.
    ``clock_scale`` shrinks durable timers (see :class:`Clock`). ``max_short_timer`` /
    ``long_timer_interval`` are the Azure Storage provider's long-timer settings handed to the SDK (set
    both to ``None`` to disable splitting long timers).
    """

    def __init__(
        self,
        app_or_registry: Any,
        store: HistoryStore | None = None,
        *,
        activity_concurrency: int = 8,
        orchestrator_concurrency: int = 4,
        clock_scale: float = 1.0,
        task_hub: str = "LocalHub",
        max_short_timer: timedelta | None = timedelta(days=6),
        long_timer_interval: timedelta | None = timedelta(days=3),
    ):
        self.registry = app_or_registry if isinstance(app_or_registry, Registry) else registry_from_app(app_or_registry)
        self.store = store if store is not None else MemoryHistoryStore()
        self.task_hub = task_hub
        self.clock = Clock(clock_scale)
        self._max_short_timer = max_short_timer
        self._long_timer_interval = long_timer_interval
        self._activities = ThreadPoolExecutor(activity_concurrency, thread_name_prefix="durable-activity")
        self._orchestrations = ThreadPoolExecutor(orchestrator_concurrency, thread_name_prefix="durable-orch")
        self._timers = _TimerQueue(self.clock, self._fire_timer)
        self._instances: dict[str, _Instance] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._snapshots: dict[str, InstanceStatus] = {}
        self._leases: list[Lease] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> LocalDurableDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop: timers stop firing, queued work is dropped (the store keeps it for :meth:`resume`), running
        activities finish and their results are saved."""
        self._closed = True
        self._timers.close()
        self._activities.shutdown(wait=True, cancel_futures=True)
        self._orchestrations.shutdown(wait=True, cancel_futures=True)
        for lease in self._leases:
            lease.release()
        self._leases.clear()

    def lease(self, instance_id: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the store's lease on an instance before driving it (held until :meth:`close` or this process
        ends), so two processes sharing a store never drive one instance at once. Waits for the holder
        (telling ``on_wait`` who it is) or raises ``LeaseHeld`` with ``wait=False``. Take it before the
        instance is first used (start_new, resume, wait_for_completion), which loads it from the store."""
        lease = self.store.lease(instance_id, wait=wait, on_wait=on_wait)
        if lease is not None:
            self._leases.append(lease)

    # -- public API ------------------------------------------------------------------------------------
    def start_new(
        self,
        name: str,
        instance_id: str | None = None,
        input: Any = None,
        *,
        input_json: str | None = None,
    ) -> str:
        """Create an instance and return its id at once; the orchestration runs in the background.

        ``input`` is JSON-encoded like the SDK client does (``df_dumps``); pass ``input_json`` to hand over
        already-encoded JSON. Reusing the id of a finished instance replaces it; of a running one, raises
        :class:`InstanceExistsError`.
        """
        self.registry.orchestrator(name)  # FunctionNotFoundError for unknown names
        instance_id = instance_id or uuid.uuid4().hex
        if input_json is None and input is not None:
            input_json = func_durable.df_dumps(input)
        inst = self._instance(instance_id, create=True)
        assert inst is not None
        with inst.lock:
            existing = inst.record
            if existing is not None and RuntimeStatus(existing["runtimeStatus"]) not in TERMINAL:
                raise InstanceExistsError(
                    f"An orchestration instance with the ID '{instance_id}' already exists and is "
                    f"{existing['runtimeStatus']}."
                )
            now = self.clock.now()
            execution_id = uuid.uuid4().hex
            inst.record = {
                "schema": 1,
                "instanceId": instance_id,
                "name": name,
                "executionId": execution_id,
                "input": input_json,
                "runtimeStatus": str(RuntimeStatus.PENDING),
                "createdTime": H.format_time(now),
                "lastUpdatedTime": H.format_time(now),
                "customStatus": None,
                "output": None,
                "failureDetails": None,
                "history": [],
                "pending": [H.execution_started(now, name, instance_id, execution_id, input_json)],
                "actions": [],
                "cancelledTimers": [],
                "episodes": 0,
            }
            self._save(inst)
            self._queue_episode(inst)
        return instance_id

    def run(self, name: str, input: Any = None, instance_id: str | None = None, timeout: float = 60) -> InstanceStatus:
        """Start an instance and wait until it is Completed, Failed or Terminated."""
        return self.wait_for_completion(self.start_new(name, instance_id, input), timeout)

    def resume(self, instance_ids: Iterable[str] | None = None) -> list[str]:
        """Pick up every unfinished instance in the store (or just ``instance_ids``): re-run activities that
        were scheduled but never reported back, re-arm timers, and run pending episodes. Returns the ids of
        those instances. Where the store shares it between processes, take :meth:`lease` first."""
        resumed = []
        for instance_id in self.store.instance_ids() if instance_ids is None else instance_ids:
            inst = self._instance(instance_id)
            if inst is None:
                continue
            with inst.lock:
                record = inst.record
                if record is not None and RuntimeStatus(record["runtimeStatus"]) not in TERMINAL:
                    resumed.append(instance_id)
        return resumed

    def get_status(
        self, instance_id: str, show_history: bool = False, show_history_output: bool = True
    ) -> InstanceStatus | None:
        with self._lock:
            inst = self._instances.get(instance_id)
        if inst is not None:
            with inst.lock:
                if inst.record is not None:
                    return _status_of(inst.record, show_history, show_history_output)
            return None
        record = self.store.load(instance_id)
        return _status_of(record, show_history, show_history_output) if record is not None else None

    def get_history(self, instance_id: str) -> list[Event]:
        """The raw history events (a copy), as the orchestrator receives them."""
        with self._lock:
            inst = self._instances.get(instance_id)
        if inst is not None:
            with inst.lock:
                record = inst.record
                return json.loads(json.dumps(record["history"])) if record is not None else []
        record = self.store.load(instance_id)
        return record["history"] if record is not None else []

    def list_instances(
        self,
        *,
        runtime_status: Iterable[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        instance_id_prefix: str | None = None,
    ) -> list[InstanceStatus]:
        wanted = {str(RuntimeStatus(s)) for s in runtime_status} if runtime_status else None
        ids = set(self.store.instance_ids())
        with self._lock:
            ids.update(i for i, inst in self._instances.items() if inst.record is not None)
        statuses = []
        for instance_id in sorted(ids):
            if instance_id_prefix and not instance_id.startswith(instance_id_prefix):
                continue
            status = self.get_status(instance_id)
            if status is None:
                continue
            if wanted is not None and str(status.runtime_status) not in wanted:
                continue
            if created_from is not None and status.created_time < created_from:
                continue
            if created_to is not None and status.created_time > created_to:
                continue
            statuses.append(status)
        return statuses

    def wait_for_status(
        self, instance_id: str, predicate: Callable[[InstanceStatus], bool], timeout: float | None = 60
    ) -> InstanceStatus:
        """Block until the instance's status satisfies ``predicate`` (checked on every change)."""

        def satisfied() -> bool:
            snapshot = self._snapshots.get(instance_id)
            return snapshot is not None and predicate(snapshot)

        with self._cond:
            if not self._cond.wait_for(satisfied, timeout):
                current = self._snapshots.get(instance_id)
                raise TimeoutError(
                    f"instance {instance_id!r} did not reach the expected state within {timeout} s "
                    f"(now {current.runtime_status if current else 'unknown'})"
                )
            return self._snapshots[instance_id]

    def wait_for_completion(self, instance_id: str, timeout: float | None = 60) -> InstanceStatus:
        self._instance(instance_id)  # make sure it is known (and snapshotted)
        return self.wait_for_status(instance_id, lambda s: s.is_terminal, timeout)

    def raise_event(self, instance_id: str, name: str, data: Any = None, *, data_json: str | None = None) -> bool:
        """Deliver an external event. False if the instance already finished."""
        if data_json is None:
            data_json = func_durable.df_dumps(data)
        return self._append_event(instance_id, lambda now: H.event_raised(now, name, data_json))

    def terminate(self, instance_id: str, reason: str | None = None) -> bool:
        """Terminate a running instance. False if it already finished."""
        return self._append_event(instance_id, lambda now: H.execution_terminated(now, reason))

    def purge(self, instance_id: str) -> bool:
        """Delete an instance and its history (in-flight work of it is dropped)."""
        with self._lock:
            inst = self._instances.pop(instance_id, None)
        existed = False
        if inst is not None:
            with inst.lock:
                existed = inst.record is not None
                inst.record = None
        existed = self.store.delete(instance_id) or existed
        with self._cond:
            self._snapshots.pop(instance_id, None)
            self._cond.notify_all()
        return existed

    def purge_by(
        self,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        runtime_status: Iterable[str] | None = None,
    ) -> int:
        statuses = self.list_instances(runtime_status=runtime_status, created_from=created_from, created_to=created_to)
        return sum(1 for s in statuses if self.purge(s.instance_id))

    def replay(self, instance_id: str) -> dict[str, Any]:
        """Call the orchestrator once more over its whole recorded history (every event played) and return
        the ``OrchestratorState`` it produces - for a finished instance it must reproduce the outcome."""
        with self._lock:
            inst = self._instances.get(instance_id)
        record = inst.record if inst is not None else self.store.load(instance_id)
        if record is None:
            raise InstanceNotFoundError(instance_id)
        history = [dict(e, IsPlayed=True) for e in record["history"]]
        try:
            state = json.loads(self.registry.call_orchestrator(record["name"], self._body(record, history)))
        except Exception as exc:
            state = _state_from_exception(exc)
        check_prefix(record.get("actions") or [], flat_actions(state))
        return state

    # -- instances -------------------------------------------------------------------------------------
    def _instance(self, instance_id: str, create: bool = False) -> _Instance | None:
        """The in-memory instance; loaded from the store (and its unfinished work resumed) on first use.
        ``None`` if it exists nowhere, unless ``create`` (then the caller fills in the record)."""
        with self._lock:
            inst = self._instances.get(instance_id)
            if inst is None:
                inst = self._instances[instance_id] = _Instance(instance_id)
        work = None
        with inst.lock:
            if not inst.loaded:
                record = self.store.load(instance_id)
                if record is not None:
                    inst.record, inst.loaded = record, True
                    if record["history"]:  # orchestration time never runs backwards across restarts
                        self.clock.advance_to(H.parse_time(record["history"][-1]["Timestamp"]))
                    self._snapshot(record)
                    work = self._outstanding_work(inst)
                elif create:
                    inst.loaded = True
            found = inst.record is not None or create
        if work is not None:
            self._dispatch(work)
        return inst if found else None

    def _outstanding_work(self, inst: _Instance) -> _Work | None:
        """After loading an unfinished instance: what was decided but never reported back."""
        record = inst.record
        assert record is not None
        if RuntimeStatus(record["runtimeStatus"]) in TERMINAL:
            return None
        events = [*record["history"], *record["pending"]]
        answered = {
            e["TaskScheduledId"] for e in events if e["EventType"] in (EventType.TASK_COMPLETED, EventType.TASK_FAILED)
        }
        fired = {e["TimerId"] for e in events if e["EventType"] == EventType.TIMER_FIRED}
        cancelled = set(record.get("cancelledTimers") or [])
        work = _Work(record["instanceId"], record["executionId"], episode=bool(record["pending"]))
        for e in record["history"]:
            if e["EventType"] == EventType.TASK_SCHEDULED and e["EventId"] not in answered:
                work.activities.append(Decision(e["EventId"], "activity", name=e["Name"], input_json=e.get("Input")))
            elif e["EventType"] == EventType.TIMER_CREATED and e["EventId"] not in fired | cancelled:
                work.timers.append(Decision(e["EventId"], "timer", fire_at=H.parse_time(e["FireAt"])))
        if work.activities:
            log.info(
                "resuming %s: re-running %d activities that never reported back",
                record["instanceId"],
                len(work.activities),
            )
        return work

    def _append_event(self, instance_id: str, make: Callable[[datetime], Event]) -> bool:
        inst = self._instance(instance_id)
        if inst is None:
            raise InstanceNotFoundError(f"No instance with ID '{instance_id}' found.")
        with inst.lock:
            record = inst.record
            if record is None:
                raise InstanceNotFoundError(f"No instance with ID '{instance_id}' found.")
            if RuntimeStatus(record["runtimeStatus"]) in TERMINAL:
                return False
            record["pending"].append(make(self.clock.now()))
            self._save(inst)
            self._queue_episode(inst)
        return True

    def _save(self, inst: _Instance) -> None:
        record = inst.record
        assert record is not None
        self.store.save(record)
        self._snapshot(record)

    def _snapshot(self, record: Record) -> None:
        status = _status_of(record)
        with self._cond:
            self._snapshots[record["instanceId"]] = status
            self._cond.notify_all()

    # -- episodes --------------------------------------------------------------------------------------
    def _queue_episode(self, inst: _Instance) -> None:
        with inst.lock:
            if inst.queued or self._closed:
                return
            inst.queued = True
            try:
                self._orchestrations.submit(self._episode, inst)
            except RuntimeError:  # shutting down: the pending events stay in the store for resume()
                inst.queued = False

    def _episode(self, inst: _Instance) -> None:
        work = None
        with inst.lock:
            inst.queued = False
            record = inst.record
            if record is None or not record["pending"] or RuntimeStatus(record["runtimeStatus"]) in TERMINAL:
                return
            try:
                work = self._run_episode(inst, record)
            except Exception as exc:
                log.exception("episode of %s failed inside the driver", inst.instance_id)
                try:
                    now = self.clock.now()
                    error = f"local durable driver error: {type(exc).__name__}: {exc}"
                    self._finish(record, now, RuntimeStatus.FAILED, error=error)
                    self._save(inst)
                except Exception:  # the store itself failed: logged; the instance resumes from its last save
                    log.exception("could not record the failure of %s", inst.instance_id)
                return
        if work is not None:
            self._dispatch(work)

    def _body(self, record: Record, history: list[Event]) -> str:
        body: dict[str, Any] = {
            "history": history,
            "instanceId": record["instanceId"],
            "isReplaying": any(e.get("IsPlayed") for e in history),
            "parentInstanceId": None,
            "input": record.get("input"),
            "upperSchemaVersion": 1,  # ReplaySchema.V2: one flat action list
            "upperSchemaVersionNew": 2,  # ReplaySchema.V3: long timers
            "defaultVersion": "",
        }
        if self._max_short_timer is not None and self._long_timer_interval is not None:
            body["maximumShortTimerDuration"] = _timespan(self._max_short_timer)
            body["longRunningTimerIntervalDuration"] = _timespan(self._long_timer_interval)
        return json.dumps(body)

    def _run_episode(self, inst: _Instance, record: Record) -> _Work | None:
        now = self.clock.now()
        new_events: list[Event] = record["pending"]
        started = H.orchestrator_started(now)
        episode = [started, *new_events]
        record["pending"] = []
        record["episodes"] = record.get("episodes", 0) + 1

        terminate = next((e for e in new_events if e["EventType"] == EventType.EXECUTION_TERMINATED), None)
        if terminate is not None:  # DTFx does not run the orchestrator for a termination
            record["history"].extend(episode)
            self._finish(record, now, RuntimeStatus.TERMINATED, output=terminate.get("Input"))
            self._save(inst)
            return None

        played = [dict(e, IsPlayed=True) for e in record["history"]]
        replay_history = [*played, *episode]
        try:
            state = json.loads(self.registry.call_orchestrator(record["name"], self._body(record, replay_history)))
        except Exception as exc:
            state = _state_from_exception(exc)
            if not state.get("internal"):
                log.info("orchestrator %s (%s) raised: %s", record["name"], inst.instance_id, state.get("error"))
            else:
                log.error("calling orchestrator %s failed", record["name"], exc_info=exc)
        record["customStatus"] = state.get("customStatus")

        if state.get("error"):
            record["history"].extend(episode)
            self._finish(record, now, RuntimeStatus.FAILED, error=state["error"])
            self._save(inst)
            return None

        try:
            actions = flat_actions(state)
            check_prefix(record.get("actions") or [], actions)
            replayed = ActionReplayer(actions).run(replay_history)
        except (NonDeterminismError, UnsupportedActionError) as exc:
            record["history"].extend(episode)
            self._finish(record, now, RuntimeStatus.FAILED, error=str(exc))
            self._save(inst)
            return None

        record["actions"] = actions
        record["cancelledTimers"] = sorted(replayed.cancelled_timers)

        if state.get("isDone"):
            if replayed.continue_as_new:
                return self._continue_as_new(inst, record, now, replayed.continue_as_new_input)
            record["history"].extend(episode)
            self._finish(record, now, RuntimeStatus.COMPLETED, output=state.get("output"))
            self._save(inst)
            return None

        work = _Work(record["instanceId"], record["executionId"])
        for decision in replayed.decisions:
            if decision.kind == "activity":
                episode.append(H.task_scheduled(now, decision.event_id, decision.name or "", decision.input_json))
                work.activities.append(decision)
            else:
                assert decision.fire_at is not None
                episode.append(H.timer_created(now, decision.event_id, decision.fire_at))
                if decision.event_id not in replayed.cancelled_timers:
                    work.timers.append(decision)
        episode.append(H.orchestrator_completed(now))
        record["history"].extend(episode)
        record["runtimeStatus"] = str(RuntimeStatus.RUNNING)
        record["lastUpdatedTime"] = H.format_time(now)
        self._save(inst)  # durable before any of the new work runs
        return work

    def _continue_as_new(self, inst: _Instance, record: Record, now: datetime, input_json: str | None) -> _Work:
        execution_id = uuid.uuid4().hex
        record.update(
            executionId=execution_id,
            input=input_json,
            history=[],
            pending=[H.execution_started(now, record["name"], record["instanceId"], execution_id, input_json)],
            actions=[],
            cancelledTimers=[],
            runtimeStatus=str(RuntimeStatus.RUNNING),
            lastUpdatedTime=H.format_time(now),
        )
        self._save(inst)
        return _Work(record["instanceId"], execution_id, episode=True)

    def _finish(
        self,
        record: Record,
        now: datetime,
        status: RuntimeStatus,
        *,
        output: Any = None,
        error: str | None = None,
    ) -> None:
        """Mark the instance finished and close its history with ``ExecutionCompleted``."""
        failure = None
        if status is RuntimeStatus.FAILED:
            failure = {"errorType": "OrchestrationFailure", "errorMessage": error}
            output = f"Orchestrator function '{record['name']}' failed: {error}"
        record["runtimeStatus"] = str(status)
        record["output"] = output
        record["failureDetails"] = failure
        result = json.dumps(output) if status is not RuntimeStatus.FAILED else None
        record["history"].extend(
            [H.execution_completed(now, str(status), result, failure), H.orchestrator_completed(now)]
        )
        record["lastUpdatedTime"] = H.format_time(now)

    # -- work ------------------------------------------------------------------------------------------
    def _dispatch(self, work: _Work) -> None:
        if self._closed:
            return
        for decision in work.activities:
            try:
                self._activities.submit(self._run_activity, work.instance_id, work.execution_id, decision)
            except RuntimeError:  # shutting down; resume() re-runs it
                return
        for decision in work.timers:
            assert decision.fire_at is not None
            self._timers.add(decision.fire_at, work.instance_id, work.execution_id, decision.event_id)
        if work.episode:
            inst = self._instance(work.instance_id)
            if inst is not None:
                self._queue_episode(inst)

    def _run_activity(self, instance_id: str, execution_id: str, decision: Decision) -> None:
        name = decision.name or ""
        try:
            result_json = self.registry.call_activity(name, decision.input_json)
            event = H.task_completed(self.clock.now(), decision.event_id, result_json)
        except BaseException as exc:  # SystemExit from an activity too: report it, keep the worker
            # The retry policy decides what happens next; the failure itself is detail (--debug shows it).
            log.info("activity %s of %s failed", name, instance_id, exc_info=exc)
            reason = f"Activity function '{name}' failed: {type(exc).__name__}: {exc}"
            details = "".join(traceback.format_exception_only(exc)).strip()
            event = H.task_failed(self.clock.now(), decision.event_id, reason, details)
        self._deliver(instance_id, execution_id, event, "TaskScheduledId", decision.event_id)

    def _fire_timer(self, item: _TimerItem) -> None:
        event = H.timer_fired(self.clock.now(), item.timer_id, item.fire_at)
        self._deliver(item.instance_id, item.execution_id, event, "TimerId", item.timer_id)

    def _deliver(self, instance_id: str, execution_id: str, event: Event, key: str, task_id: int) -> None:
        with self._lock:
            inst = self._instances.get(instance_id)
        if inst is None:
            return
        with inst.lock:
            record = inst.record
            if (
                record is None
                or record["executionId"] != execution_id
                or RuntimeStatus(record["runtimeStatus"]) in TERMINAL
            ):
                return
            if key == "TimerId" and task_id in (record.get("cancelledTimers") or []):
                return
            kind = event["EventType"]
            kinds = (EventType.TASK_COMPLETED, EventType.TASK_FAILED) if key == "TaskScheduledId" else (kind,)
            for seen in (*record["history"], *record["pending"]):
                if seen["EventType"] in kinds and seen.get(key) == task_id:
                    return  # already answered (a re-run after resume raced an earlier result)
            record["pending"].append(event)
            self._save(inst)
            self._queue_episode(inst)
