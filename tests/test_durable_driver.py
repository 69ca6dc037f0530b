"""The local durable driver: SDK replay engine, concurrency, retries, timers, durability, HTTP API.

Run as ``python -m tests.test_durable_driver child <store dir>`` this module is also the process the
kill-and-resume test starts and kills.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import httpx
import pytest
from azure.durable_functions.models.utils import http_utils

from localdev.durable import (
    BlobHistoryStore,
    InstanceNotFoundError,
    LocalDurableDriver,
    LocalFolderHistoryStore,
    RuntimeStatus,
    client_binding_json,
    durable_rpc_app,
    registry_from_app,
    serve_in_thread,
)
from localdev.durable.history import EventType, parse_time

REPO = Path(__file__).resolve().parents[1]
WAIT = 30  # seconds; an upper bound for waiting on conditions, never a sleep


# -- bookkeeping the test activities share with the tests (keyed by a per-test token) ----------------
class Probe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self._barriers: dict[str, threading.Barrier] = {}
        self._gates: dict[str, threading.Event] = {}

    def call(self, token: str, what: str) -> int:
        with self._lock:
            self.calls[token, what] += 1
            return self.calls[token, what]

    def enter(self, token: str) -> None:
        with self._lock:
            self.in_flight[token] += 1
            self.max_in_flight[token] = max(self.max_in_flight[token], self.in_flight[token])

    def leave(self, token: str) -> None:
        with self._lock:
            self.in_flight[token] -= 1

    def barrier(self, token: str, parties: int = 0) -> threading.Barrier:
        with self._lock:
            if token not in self._barriers:
                self._barriers[token] = threading.Barrier(parties)
            return self._barriers[token]

    def gate(self, token: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(token, threading.Event())


PROBE = Probe()

# -- the test app -------------------------------------------------------------------------------------
app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.orchestration_trigger(context_name="context")
def fan_out_fan_in(context: df.DurableOrchestrationContext):
    cfg = context.get_input()
    token, n = cfg["token"], cfg["n"]
    context.set_custom_status({"stage": "fan-out", "of": n})
    squares = yield context.task_all(
        [context.call_activity("square", {"token": token, "x": i, "barrier": cfg["barrier"]}) for i in range(n)]
    )
    context.set_custom_status({"stage": "retry", "squares": len(squares)})
    flaky = yield context.call_activity_with_retry(
        "flaky", df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=3), token
    )
    context.set_custom_status({"stage": "timer"})
    fire_at = context.current_utc_datetime + timedelta(minutes=10)
    yield context.create_timer(fire_at)
    context.set_custom_status({"stage": "done"})
    return {
        "squares": squares,
        "flaky": flaky,
        "timer_fire_at": fire_at.isoformat(),
        "after_timer": context.current_utc_datetime.isoformat(),
    }


@app.orchestration_trigger(context_name="context")
def fan_out_with_retries(context: df.DurableOrchestrationContext):
    token = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1_000, max_number_of_attempts=4)
    tasks = [
        context.call_activity_with_retry("flaky_item", options, {"token": token, "key": i, "fail_times": i % 3})
        for i in range(6)
    ]
    tasks.append(context.call_activity("square", {"token": token, "x": 9}))
    results = yield context.task_all(tasks)
    first_back = yield context.task_any(
        [
            context.call_activity_with_retry("flaky_item", options, {"token": token, "key": "any", "fail_times": 1}),
            context.create_timer(context.current_utc_datetime + timedelta(days=30)),
        ]
    )
    after = yield context.call_activity("square", {"token": token, "x": 2})
    return [*results, first_back.result if first_back.result else "timer", after]


@app.orchestration_trigger(context_name="context")
def fails_permanently(context: df.DurableOrchestrationContext):
    token = context.get_input()
    first = yield context.call_activity("square", {"token": token, "x": 3})
    yield context.call_activity("explode", f"boom-{first}")
    return "unreachable"


@app.orchestration_trigger(context_name="context")
def retries_exhausted(context: df.DurableOrchestrationContext):
    token = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1_000, max_number_of_attempts=3)
    return (yield context.call_activity_with_retry("flaky", options, token))


@app.orchestration_trigger(context_name="context")
def nondeterministic(context: df.DurableOrchestrationContext):
    token = context.get_input()
    # Wrong on purpose: a side effect decides the activity, so a replay schedules something else.
    replays = PROBE.call(token, "orchestrator-run")
    activity = "square" if replays == 1 else "cube"
    yield context.call_activity(activity, {"token": token, "x": 2})
    return "unreachable"


@app.orchestration_trigger(context_name="context")
def timer_race(context: df.DurableOrchestrationContext):
    start = context.current_utc_datetime
    late = context.create_timer(start + timedelta(minutes=30))
    early = context.create_timer(start + timedelta(minutes=5))
    winner = yield context.task_any([late, early])
    first = "early" if winner is early else "late"
    yield late
    return {"first": first, "late_passed": context.current_utc_datetime >= start + timedelta(minutes=30)}


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    token = context.get_input()["token"]
    context.set_custom_status({"state": "waiting for approval"})
    decision = yield context.wait_for_external_event("approve")
    context.set_custom_status({"state": "approved"})
    square = yield context.call_activity("square", {"token": token, "x": decision["x"]})
    return {"approved_by": decision["by"], "square": square}


@app.orchestration_trigger(context_name="context")
def gated(context: df.DurableOrchestrationContext):
    token = context.get_input()
    return (yield context.call_activity("gate", token))


@app.orchestration_trigger(context_name="context")
def countdown(context: df.DurableOrchestrationContext):
    state = context.get_input()
    if state["n"] == 0:
        return state["seen"]
    square = yield context.call_activity("square", {"token": state["token"], "x": state["n"]})
    context.continue_as_new({"token": state["token"], "n": state["n"] - 1, "seen": [*state["seen"], square]})


@app.orchestration_trigger(context_name="context")
def resumable(context: df.DurableOrchestrationContext):
    first = yield context.task_all([context.call_activity("record", i) for i in range(3)])
    second = yield context.task_all([context.call_activity("record", i) for i in range(3, 6)])
    return first + second


@app.orchestration_trigger(context_name="context")
def replay_aware(context: df.DurableOrchestrationContext):
    token = context.get_input()
    for step in range(3):
        if not context.is_replaying:  # the usual "log once" idiom relies on IsPlayed being right
            PROBE.call(token, f"live-{step}")
        yield context.call_activity("square", {"token": token, "x": step})
    if not context.is_replaying:
        PROBE.call(token, "live-end")
    return "ok"


@app.orchestration_trigger(context_name="context")
def with_timeout(context: df.DurableOrchestrationContext):
    token = context.get_input()
    work = context.call_activity("square", {"token": token, "x": 5})
    deadline = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    winner = yield context.task_any([work, deadline])
    if winner is work:
        deadline.cancel()
        return work.result
    return "timed out"


@app.orchestration_trigger(context_name="context")
def uses_sub_orchestrator(context: df.DurableOrchestrationContext):
    return (yield context.call_sub_orchestrator("gated", "x"))


@app.activity_trigger(input_name="item")
def square(item: dict) -> int:
    token = item["token"]
    PROBE.call(token, f"square-{item['x']}")
    PROBE.enter(token)
    try:
        if item.get("barrier"):
            PROBE.barrier(token).wait(timeout=WAIT)  # needs every fan-out activity in flight at once
        return item["x"] * item["x"]
    finally:
        PROBE.leave(token)


@app.activity_trigger(input_name="item")
def cube(item: dict) -> int:
    return item["x"] ** 3


@app.activity_trigger(input_name="token")
async def flaky(token: str) -> str:
    attempt = PROBE.call(token, "flaky")
    await asyncio.sleep(0)  # a real coroutine: async activities run on their own loop
    if attempt <= 2 or token.startswith("always-"):
        raise RuntimeError(f"flaky attempt {attempt} failed")
    return f"ok after {attempt} attempts"


@app.activity_trigger(input_name="item")
def flaky_item(item: dict) -> str:
    attempt = PROBE.call(item["token"], f"item-{item['key']}")
    if attempt <= item["fail_times"]:
        raise RuntimeError(f"item {item['key']} attempt {attempt} failed")
    return f"item {item['key']} after {attempt}"


@app.activity_trigger(input_name="message")
def explode(message: str) -> None:
    raise ValueError(f"permanent failure: {message}")


@app.activity_trigger(input_name="token")
def gate(token: str) -> str:
    if not PROBE.gate(token).wait(timeout=WAIT):
        raise TimeoutError("the test never opened the gate")
    return "opened"


@app.activity_trigger(input_name="i")
def record(i: int) -> int:
    with open(os.environ["DURABLE_TEST_RUNS"], "a", encoding="utf-8") as runs:
        runs.write(f"{i}\n")
        runs.flush()
        os.fsync(runs.fileno())
    if os.environ.get("DURABLE_TEST_BLOCK_AT") == str(i):
        print(f"BLOCKED {i}", flush=True)
        threading.Event().wait()  # the parent kills this process now
    return i * 10


@app.route(route="start/{name}")
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    instance_id = await client.start_new(req.route_params["name"], None, req.get_json())
    return client.create_check_status_response(req, instance_id)


# -- helpers ------------------------------------------------------------------------------------------
def token() -> str:
    return uuid.uuid4().hex


def events_of(driver: LocalDurableDriver, instance_id: str, kind: EventType) -> list[dict[str, Any]]:
    return [e for e in driver.get_history(instance_id) if e["EventType"] == kind]


@pytest.fixture
def driver():
    with LocalDurableDriver(app, activity_concurrency=4, clock_scale=0) as d:
        yield d


# -- registry -----------------------------------------------------------------------------------------
def test_registry_reads_the_apps_durable_functions():
    registry = registry_from_app(app)

    assert {"fan_out_fan_in", "approval", "resumable"} <= set(registry.orchestrators)
    assert {"square", "flaky", "explode", "record"} <= set(registry.activities)
    assert registry.clients["http_start"].parameter == "client"
    assert registry.clients["http_start"].trigger_type == "httpTrigger"
    assert registry.activities["square"].parameter == "item"
    # activities are called like the worker does: JSON in, JSON out, sync and async alike
    t = token()
    assert registry.call_activity("square", json.dumps({"token": t, "x": 7})) == "49"
    PROBE.call(t, "flaky")
    PROBE.call(t, "flaky")
    assert registry.call_activity("flaky", json.dumps(t)) == json.dumps("ok after 3 attempts")


# -- the driver ---------------------------------------------------------------------------------------
def test_fan_out_retry_timer_and_custom_status():
    t = token()
    PROBE.barrier(t, parties=4)
    with LocalDurableDriver(app, activity_concurrency=4, clock_scale=0.001) as driver:
        status = driver.run("fan_out_fan_in", {"token": t, "n": 4, "barrier": True}, timeout=WAIT)
        instance_id = status.instance_id

        assert status.runtime_status is RuntimeStatus.COMPLETED, status.output
        assert status.output["squares"] == [0, 1, 4, 9]
        assert status.output["flaky"] == "ok after 3 attempts"
        assert status.custom_status == {"stage": "done"}
        # the four activities were in flight together (the barrier needs all of them) and each ran once
        assert PROBE.max_in_flight[t] == 4
        assert [PROBE.calls[t, f"square-{i}"] for i in range(4)] == [1, 1, 1, 1]
        assert PROBE.calls[t, "flaky"] == 3
        # the durable timer: the orchestrator resumed at or after fireAt
        assert parse_time(status.output["after_timer"]) >= parse_time(status.output["timer_fire_at"])

        history = driver.get_history(instance_id)
        scheduled = [e for e in history if e["EventType"] == EventType.TASK_SCHEDULED]
        timers = [e for e in history if e["EventType"] == EventType.TIMER_CREATED]
        assert [e["Name"] for e in scheduled] == ["square"] * 4 + ["flaky"] * 3
        # one sequence of EventIds across activities and timers, as the SDK numbers its tasks
        assert sorted(e["EventId"] for e in scheduled + timers) == list(range(len(scheduled) + len(timers)))
        # each retry waits behind a TimerCreated/TimerFired pair, 5 s after the failure's episode
        failed = [e for e in history if e["EventType"] == EventType.TASK_FAILED]
        assert [e["TaskScheduledId"] for e in failed] == [e["EventId"] for e in scheduled[4:6]]
        assert "flaky attempt 1 failed" in failed[0]["Reason"]
        retry_timers = timers[:2]
        for timer in retry_timers:
            episode_start = parse_time(timer["Timestamp"])
            assert parse_time(timer["FireAt"]) - episode_start == timedelta(seconds=5)
        fired = [e["TimerId"] for e in history if e["EventType"] == EventType.TIMER_FIRED]
        assert fired == [timer["EventId"] for timer in timers]
        assert parse_time(timers[2]["FireAt"]) == parse_time(status.output["timer_fire_at"])

        # replaying the whole history through the SDK reproduces the outcome (determinism)
        replayed = driver.replay(instance_id)
        assert replayed["isDone"] is True
        assert replayed["output"] == status.output


def test_retries_inside_a_fan_out_keep_task_ids_in_step():
    t = token()
    # 1 s retries take 1 ms; the 30-day (long, split) timer racing the last retry would take 43 min
    with LocalDurableDriver(app, activity_concurrency=4, clock_scale=0.001) as driver:
        status = driver.run("fan_out_with_retries", t, timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.COMPLETED, status.output
    assert status.output == [
        *(f"item {i} after {i % 3 + 1}" for i in range(6)),
        81,
        "item any after 2",
        4,
    ]
    assert [PROBE.calls[t, f"item-{i}"] for i in range(6)] == [1, 2, 3, 1, 2, 3]


def test_activity_that_keeps_failing_fails_the_orchestration(driver):
    t = token()
    status = driver.run("fails_permanently", t, timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.FAILED
    assert "permanent failure: boom-9" in status.output
    assert "permanent failure: boom-9" in status.failure_details["errorMessage"]
    assert PROBE.calls[t, "square-3"] == 1


def test_retries_stop_after_max_attempts(driver):
    t = f"always-{token()}"
    status = driver.run("retries_exhausted", t, timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.FAILED
    assert "flaky attempt 3 failed" in status.output
    assert PROBE.calls[t, "flaky"] == 3
    # like DTFx's RetryInterceptor, the last failure is still followed by a retry timer before giving up
    assert len(events_of(driver, status.instance_id, EventType.TASK_FAILED)) == 3
    assert len(events_of(driver, status.instance_id, EventType.TIMER_FIRED)) == 3


def test_nondeterministic_orchestrator_is_detected(driver):
    t = token()
    status = driver.run("nondeterministic", t, timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.FAILED
    assert "Non-Deterministic workflow detected" in status.output
    assert "'square'" in status.output and "'cube'" in status.output


def test_timers_fire_in_fire_at_order(driver):
    status = driver.run("timer_race", timeout=WAIT)

    assert status.output == {"first": "early", "late_passed": True}
    fired = events_of(driver, status.instance_id, EventType.TIMER_FIRED)
    fire_times = [parse_time(e["FireAt"]) for e in fired]
    assert fire_times == sorted(fire_times) and len(fire_times) == 2


def test_replaying_is_flagged_only_for_past_episodes(driver):
    t = token()
    status = driver.run("replay_aware", t, timeout=WAIT)

    assert status.output == "ok"
    # four episodes replayed the code before each step many times, but each step ran "live" once
    assert [PROBE.calls[t, f"live-{step}"] for step in (0, 1, 2, "end")] == [1, 1, 1, 1]
    assert len(events_of(driver, status.instance_id, EventType.ORCHESTRATOR_STARTED)) == 4


def test_activity_beats_a_timeout_timer_which_is_then_cancelled():
    t = token()
    with LocalDurableDriver(app, clock_scale=1) as driver:  # real time: the one-hour timer cannot win
        status = driver.run("with_timeout", t, timeout=WAIT)
        history = driver.get_history(status.instance_id)

    assert status.output == 25
    assert [e["EventType"] for e in history if e["EventType"] in (EventType.TIMER_CREATED, EventType.TIMER_FIRED)] == [
        EventType.TIMER_CREATED
    ]


def test_unsupported_features_fail_with_a_clear_message(driver):
    status = driver.run("uses_sub_orchestrator", timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.FAILED
    assert "call_sub_orchestrator is not supported by the local durable driver" in status.output


def test_continue_as_new_starts_a_fresh_history(driver):
    t = token()
    status = driver.run("countdown", {"token": t, "n": 3, "seen": []}, timeout=WAIT)

    assert status.runtime_status is RuntimeStatus.COMPLETED
    assert status.output == [9, 4, 1]
    assert status.input == {"token": t, "n": 0, "seen": [9, 4, 1]}
    assert len(events_of(driver, status.instance_id, EventType.EXECUTION_STARTED)) == 1


def test_many_instances_run_at_once(driver):
    tokens = [token() for _ in range(6)]
    ids = [driver.start_new("fan_out_fan_in", None, {"token": t, "n": 3, "barrier": False}) for t in tokens]

    results = [driver.wait_for_completion(i, timeout=WAIT) for i in ids]

    assert [r.output["squares"] for r in results] == [[0, 1, 4]] * 6
    assert {r.instance_id for r in driver.list_instances(runtime_status=["Completed"])} >= set(ids)


def test_terminate_raise_event_and_purge(driver):
    waiting = driver.start_new("approval", "to-terminate", {"token": token()})
    driver.wait_for_status(waiting, lambda s: s.custom_status == {"state": "waiting for approval"}, WAIT)
    assert driver.terminate(waiting, "no longer needed") is True
    terminated = driver.wait_for_completion(waiting, WAIT)
    assert terminated.runtime_status is RuntimeStatus.TERMINATED
    assert terminated.output == "no longer needed"
    assert driver.terminate(waiting, "again") is False
    assert driver.raise_event(waiting, "approve", {"x": 1, "by": "late"}) is False

    t = token()
    approved = driver.start_new("approval", None, {"token": t})
    assert driver.raise_event(approved, "approve", {"x": 5, "by": "ops"}) is True
    assert driver.wait_for_completion(approved, WAIT).output == {"approved_by": "ops", "square": 25}

    assert driver.purge(approved) is True
    assert driver.get_status(approved) is None
    assert driver.purge(approved) is False
    with pytest.raises(InstanceNotFoundError):
        driver.raise_event(approved, "approve", {})


# -- durability ---------------------------------------------------------------------------------------
def test_local_folder_store_round_trips_odd_instance_ids(tmp_path):
    store = LocalFolderHistoryStore(tmp_path)
    store.save({"instanceId": "a/b c:ü", "history": []})

    assert store.instance_ids() == ["a/b c:ü"]
    assert store.load("a/b c:ü") == {"instanceId": "a/b c:ü", "history": []}
    assert [p.name for p in tmp_path.iterdir()] == ["a%2Fb%20c%3A%C3%BC.json"]
    assert store.delete("a/b c:ü") is True and store.load("a/b c:ü") is None


def _answered(record: dict[str, Any]) -> set[int]:
    """Activity inputs (``record``'s i) whose result is in the durable document."""
    events = record["history"] + record["pending"]
    inputs = {e["EventId"]: int(e["Input"]) for e in events if e["EventType"] == EventType.TASK_SCHEDULED}
    return {inputs[e["TaskScheduledId"]] for e in events if e["EventType"] == EventType.TASK_COMPLETED}


def test_killed_run_resumes_without_rerunning_completed_activities(tmp_path, monkeypatch):
    store_dir, runs = tmp_path / "store", tmp_path / "runs.txt"
    env = {**os.environ, "DURABLE_TEST_RUNS": str(runs), "DURABLE_TEST_BLOCK_AT": "4", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_durable_driver", "child", str(store_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child reports when activity 4 is running (and stuck)
        assert line.startswith("BLOCKED 4"), f"child said {line!r}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    store = LocalFolderHistoryStore(store_dir)
    at_kill = store.load("resume-me")
    assert at_kill is not None and at_kill["runtimeStatus"] == "Running"
    answered_at_kill = _answered(at_kill)
    assert {0, 1, 2} <= answered_at_kill and 4 not in answered_at_kill

    monkeypatch.setenv("DURABLE_TEST_RUNS", str(runs))
    monkeypatch.delenv("DURABLE_TEST_BLOCK_AT", raising=False)
    with LocalDurableDriver(app, store, activity_concurrency=4, clock_scale=0) as driver:
        assert driver.resume() == ["resume-me"]
        status = driver.wait_for_completion("resume-me", WAIT)

    assert status.runtime_status is RuntimeStatus.COMPLETED
    assert status.output == [0, 10, 20, 30, 40, 50]
    ran = Counter(int(line) for line in runs.read_text().split())
    assert all(ran[i] == 1 for i in answered_at_kill), ran  # results on disk: never run again
    assert ran[4] == 2  # scheduled but never reported back: run again (at-least-once)
    assert set(ran) == set(range(6))


def _child(store_dir: str) -> None:
    driver = LocalDurableDriver(app, LocalFolderHistoryStore(store_dir), activity_concurrency=4, clock_scale=0)
    driver.start_new("resumable", "resume-me")
    threading.Event().wait()  # keep running until killed


def test_blob_store_keeps_history_across_drivers(container):
    store = BlobHistoryStore(container)
    t = token()
    with LocalDurableDriver(app, store, clock_scale=0) as first:
        instance_id = first.start_new("approval", "blob-instance", {"token": t})
        first.wait_for_status(instance_id, lambda s: s.runtime_status is RuntimeStatus.RUNNING, WAIT)

    assert store.instance_ids() == ["blob-instance"]
    assert [b.name for b in container.list_blobs()] == ["instances/blob-instance.json"]

    with LocalDurableDriver(app, BlobHistoryStore(container), clock_scale=0) as second:
        assert second.resume() == ["blob-instance"]
        assert second.get_status(instance_id).custom_status == {"state": "waiting for approval"}
        second.raise_event(instance_id, "approve", {"x": 6, "by": "blob"})
        status = second.wait_for_completion(instance_id, WAIT)

    assert status.output == {"approved_by": "blob", "square": 36}
    assert PROBE.calls[t, "square-6"] == 1
    stored = store.load(instance_id)
    assert stored["runtimeStatus"] == "Completed"
    assert stored["history"][-1]["EventType"] == EventType.ORCHESTRATOR_COMPLETED


# -- the durable client HTTP API ----------------------------------------------------------------------
@pytest.fixture
async def rpc(driver):
    with serve_in_thread(durable_rpc_app(driver)) as base_url:
        yield driver, base_url
    await http_utils._close_session()  # the SDK keeps one aiohttp session per process; it is per-loop


def _request(base_url: str, path: str = "/api/start/approval") -> func.HttpRequest:
    return func.HttpRequest(method="POST", url=f"{base_url}{path}", body=b"{}", headers={})


async def test_sdk_client_starts_queries_and_completes(rpc):
    driver, base_url = rpc
    client = df.DurableOrchestrationClient(client_binding_json(base_url, "TestHub"))
    t = token()

    # start returns while the orchestration is still held up in its activity
    gated_id = await client.start_new("gated", None, t)
    status = await client.get_status(gated_id)
    assert status.runtime_status in (df.OrchestrationRuntimeStatus.Pending, df.OrchestrationRuntimeStatus.Running)
    PROBE.gate(t).set()
    done = await client.wait_for_completion_or_create_check_status_response(
        _request(base_url), gated_id, timeout_in_milliseconds=WAIT * 1000, retry_interval_in_milliseconds=20
    )
    assert done.status_code == 200 and done.get_body() == b"opened"  # the SDK sends a str output as is

    instance_id = await client.start_new("approval", "approve-me", {"token": t})
    assert instance_id == "approve-me"
    await asyncio.to_thread(
        driver.wait_for_status, instance_id, lambda s: s.runtime_status is RuntimeStatus.RUNNING, WAIT
    )
    status = await client.get_status(instance_id, show_input=True)
    assert status.runtime_status is df.OrchestrationRuntimeStatus.Running
    assert status.custom_status == {"state": "waiting for approval"}
    assert status.input_ == {"token": t}
    assert status.name == "approval"

    await client.raise_event(instance_id, "approve", {"x": 4, "by": "sdk"})
    done = await client.wait_for_completion_or_create_check_status_response(
        _request(base_url), instance_id, timeout_in_milliseconds=WAIT * 1000, retry_interval_in_milliseconds=20
    )
    assert done.status_code == 200
    assert json.loads(done.get_body()) == {"approved_by": "sdk", "square": 16}

    status = await client.get_status(instance_id, show_history=True)
    assert status.runtime_status is df.OrchestrationRuntimeStatus.Completed
    assert status.custom_status == {"state": "approved"}
    assert status.history[0]["EventType"] == "OrchestratorStarted"
    completed = await client.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Completed])
    assert {s.instance_id for s in completed} == {gated_id, instance_id}
    assert len(await client.get_status_all()) == 2

    with pytest.raises(Exception, match="doesn't exist or is not an orchestrator"):
        await client.start_new("no_such_orchestrator")


async def test_sdk_client_terminates_and_purges(rpc):
    driver, base_url = rpc
    client = df.DurableOrchestrationClient(client_binding_json(base_url))

    instance_id = await client.start_new("approval", None, {"token": token()})
    await asyncio.to_thread(
        driver.wait_for_status, instance_id, lambda s: s.runtime_status is RuntimeStatus.RUNNING, WAIT
    )
    await client.terminate(instance_id, "cancelled by test")
    status = await asyncio.to_thread(driver.wait_for_completion, instance_id, WAIT)
    assert status.runtime_status is RuntimeStatus.TERMINATED
    status = await client.get_status(instance_id)
    assert status.runtime_status is df.OrchestrationRuntimeStatus.Terminated
    assert status.output == "cancelled by test"
    with pytest.raises(Exception, match="is gone"):
        await client.raise_event(instance_id, "approve", {"x": 1, "by": "late"})

    purged = await client.purge_instance_history(instance_id)
    assert purged.instances_deleted == 1
    assert not await client.get_status(instance_id)  # a falsy status: not found
    assert (await client.purge_instance_history(instance_id)).instances_deleted == 0


async def test_check_status_response_urls_resolve(rpc):
    driver, base_url = rpc
    client = df.DurableOrchestrationClient(client_binding_json(base_url))
    instance_id = await client.start_new("approval", None, {"token": token()})
    await asyncio.to_thread(
        driver.wait_for_status, instance_id, lambda s: s.runtime_status is RuntimeStatus.RUNNING, WAIT
    )

    response = client.create_check_status_response(_request(base_url), instance_id)
    assert response.status_code == 202
    links = json.loads(response.get_body())
    assert links["id"] == instance_id
    assert response.headers["Location"] == links["statusQueryGetUri"]
    assert all(v.startswith(f"{base_url}/runtime/webhooks/durabletask/") for k, v in links.items() if k != "id")

    async with httpx.AsyncClient() as http:
        running = await http.get(links["statusQueryGetUri"])
        assert running.status_code == 202
        assert running.json()["runtimeStatus"] == "Running"
        send = links["sendEventPostUri"].replace("{eventName}", "approve")
        assert (await http.post(send, json={"x": 3, "by": "webhook"})).status_code == 202
        await asyncio.to_thread(driver.wait_for_completion, instance_id, WAIT)
        completed = await http.get(links["statusQueryGetUri"])
        assert completed.status_code == 200
        assert completed.json()["output"] == {"approved_by": "webhook", "square": 9}
        terminate = links["terminatePostUri"].replace("{text}", "too-late")
        assert (await http.post(terminate)).status_code == 410
        assert (await http.delete(links["purgeHistoryDeleteUri"])).status_code == 200
        assert (await http.get(links["statusQueryGetUri"])).status_code == 404


async def test_http_starter_function_runs_with_the_client_binding(rpc):
    driver, base_url = rpc
    starter = registry_from_app(app).clients["http_start"]
    request = func.HttpRequest(
        method="POST",
        url=f"{base_url}/api/start/approval",
        body=json.dumps({"token": token()}).encode(),
        route_params={"name": "approval"},
        headers={"Content-Type": "application/json"},
    )

    response = await starter.fn(req=request, **{starter.parameter: client_binding_json(base_url)})

    assert response.status_code == 202
    instance_id = json.loads(response.get_body())["id"]
    status = await asyncio.to_thread(
        driver.wait_for_status, instance_id, lambda s: s.runtime_status is RuntimeStatus.RUNNING, WAIT
    )
    assert status.name == "approval"
    assert driver.terminate(instance_id, "done")


def test_binding_json_is_accepted_by_the_sdk():
    binding = json.loads(client_binding_json("http://127.0.0.1:7071", "Hub"))
    client = df.DurableOrchestrationClient(json.dumps(binding))

    assert client._orchestration_bindings.rpc_base_url == "http://127.0.0.1:7071/durabletask/"
    links = client.create_http_management_payload("abc")
    assert links["statusQueryGetUri"] == (
        "http://127.0.0.1:7071/runtime/webhooks/durabletask/instances/abc?taskHub=Hub&connection=Storage"
    )


def test_status_times_are_recorded(driver):
    before = datetime.now(UTC)
    status = driver.run("timer_race", timeout=WAIT)

    assert status.created_time >= before
    assert status.last_updated_time >= status.created_time


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child(sys.argv[2])
