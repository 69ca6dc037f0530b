"""What runs leave behind: the purge of finished runs' durable history, through the durable SDK's own client
talking to the local durable driver's HTTP API (the same API the Functions host serves), and a run whose
workspace clean-up fails. (That a finished run leaves no workspace: test_pipeline_cli, test_local_host.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import azure.durable_functions as df
import azure.functions as func
import pytest
from azure.durable_functions.models.utils import http_utils
from azure.functions.timer import TimerRequest

import function_app
from localdev.cli import build_parser
from localdev.durable import LocalDurableDriver, RuntimeStatus, client_binding_json, durable_rpc_app, serve_in_thread
from localdev.durable.registry import registry_from_app
from localdev.runner import run_export
from localdev.sample import write_ci_export
from shared import pipeline
from shared.finishing.purge import purge_finished_runs
from shared.platform.storage import LocalStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list

WAIT = 30  # seconds: an upper bound on waiting for a condition, never a sleep

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.orchestration_trigger(context_name="context")
def finishes(context: df.DurableOrchestrationContext):
    return "done"
    yield  # a generator, as orchestrators are


@app.orchestration_trigger(context_name="context")
def fails(context: df.DurableOrchestrationContext):
    raise ValueError("this run fails")
    yield


@app.orchestration_trigger(context_name="context")
def waits(context: df.DurableOrchestrationContext):
    yield context.wait_for_external_event("go")
    return "went"


def _is_running(status) -> bool:
    return status.runtime_status is RuntimeStatus.RUNNING


@pytest.fixture
async def hub():
    """A driver with one run of each outcome: completed, failed, terminated, and one still running."""
    with LocalDurableDriver(app, clock_scale=0) as driver, serve_in_thread(durable_rpc_app(driver)) as base_url:
        ids = {
            "completed": driver.start_new("finishes", "run-completed"),
            "failed": driver.start_new("fails", "run-failed"),
            "terminated": driver.start_new("waits", "run-terminated"),
            "running": driver.start_new("waits", "run-running"),
        }
        for name in ("completed", "failed"):
            await asyncio.to_thread(driver.wait_for_completion, ids[name], WAIT)
        for name in ("terminated", "running"):
            await asyncio.to_thread(driver.wait_for_status, ids[name], _is_running, WAIT)
        driver.terminate(ids["terminated"], "stopped by an operator")
        await asyncio.to_thread(driver.wait_for_completion, ids["terminated"], WAIT)
        yield driver, base_url, ids
    await http_utils._close_session()  # the SDK keeps one aiohttp session per event loop


def _left(driver: LocalDurableDriver) -> set[str]:
    return {s.instance_id for s in driver.list_instances()}


async def test_finished_runs_older_than_the_retention_are_purged_and_running_ones_kept(hub):
    driver, base_url, ids = hub
    client = df.DurableOrchestrationClient(client_binding_json(base_url))

    # Today every run is younger than 90 days: nothing goes.
    kept = await purge_finished_runs(client, 90, df.OrchestrationRuntimeStatus)
    assert kept["purged"] == 0
    assert _left(driver) == set(ids.values())

    # 91 days on, the finished ones (whatever their outcome) go; the running one stays.
    later = datetime.now(UTC) + timedelta(days=91)
    purged = await purge_finished_runs(client, 90, df.OrchestrationRuntimeStatus, now=later)
    assert purged["purged"] == 3
    assert purged["created_before"] == (later - timedelta(days=90)).isoformat()
    assert _left(driver) == {ids["running"]}
    assert driver.get_status(ids["running"]).runtime_status is RuntimeStatus.RUNNING


async def test_a_retention_under_a_day_is_refused(hub):
    _, base_url, _ = hub
    client = df.DurableOrchestrationClient(client_binding_json(base_url))
    with pytest.raises(ValueError, match="at least 1 day"):
        await purge_finished_runs(client, 0, df.OrchestrationRuntimeStatus)


async def test_the_daily_timer_purges_through_its_durable_client_binding(hub, monkeypatch, caplog):
    """The app's own timer function, called as the worker calls it (a timer and the client binding JSON):
    with the default 90 days nothing of today goes, and the purge went through the durable API."""
    driver, base_url, ids = hub
    registry = registry_from_app(function_app.app)
    timer = registry.get("purge_durable_history")
    assert timer is not None and timer.trigger_type == "timerTrigger"
    trigger = next(b for b in timer.bindings if b["type"] == "timerTrigger")
    assert trigger["schedule"] == "0 30 3 * * *"
    caplog.set_level("INFO", logger="shared.finishing.purge")

    await timer.fn(timer=TimerRequest(past_due=False), **{timer.parameter: client_binding_json(base_url)})

    assert _left(driver) == set(ids.values())
    assert "purged the durable history of 0 finished runs created before" in caplog.text


@pytest.fixture
def settings_read_afresh():
    """The process-wide settings and secret provider are cached: read them again from this test's environment,
    and again after it."""
    from shared.platform.secrets import get_secret_provider
    from shared.platform.settings import get_settings

    for cached in (get_settings, get_secret_provider):
        cached.cache_clear()
    yield
    for cached in (get_settings, get_secret_provider):
        cached.cache_clear()


def test_a_run_whose_workspace_clean_up_fails_still_ends_with_its_report(
    tmp_path, emulator_url, monkeypatch, settings_read_afresh
):
    """The clean-up is the run's last step, after its report: if storage refuses it (after the retries) the
    run still ends as it went, and the workspace is left for the Blob lifecycle rule."""

    def storage_down(run: dict) -> dict:
        raise OSError("storage is down")

    monkeypatch.setattr(pipeline, "clean_up", storage_down)
    monkeypatch.setenv("KLAVIYO_API_KEY", EMULATOR_KEY)
    monkeypatch.setenv("KEY_VAULT_URL", "")
    model = tmp_path / "src" / write_ci_export(LocalStore(tmp_path / "src"), 500, partitions=1)
    args = build_parser().parse_args(
        ["export", str(model), "--list-id", new_list(emulator_url), "--email-field", "Email",
         "--klaviyo-url", emulator_url, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")]
    )  # fmt: skip

    report = run_export(args)

    assert (report["status"], report["profiles_imported"]) == ("succeeded", 500)
    assert LocalStore(tmp_path / "work" / "work").list("runs/") != []
