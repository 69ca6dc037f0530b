"""The local Functions host (localdev/host.py) in this process, on Azurite and the Klaviyo emulator: function
metadata, function keys, a run from a blob landing in the segments container to the members of a Klaviyo list,
a host stopped mid-run and started again, and the demo."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from contextlib import ExitStack

import azure.functions as func
import httpx
import orjson
import pytest

import function_app
from localdev.host import HostError, LocalHost, app_setting_defaults, check_function_metadata
from localdev.host_client import HostClient, app_settings
from localdev.host_services import start_local_services
from localdev.sample import email_for, write_ci_export
from localdev.services import Azurite, run_emulator
from shared.platform.storage import BlobStore
from shared.runs import instance_id
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import ROOT, list_emails, new_list

FUNCTION_KEY = "test-function-key-0123456789"
PREFIX = "CustomerInsights_demo/klaviyo-export/"
MAPPINGS = {"FirstName": "first_name", "City": "location.city", "CustomerId": "external_id"}
BULK_JOBS = "POST /api/profile-bulk-import-jobs"


# -- helpers shared by the host tests (test_blob_trigger.py and test_http_api.py import them) -----------------


def host_settings(azurite: Azurite, klaviyo_url: str, **extra: str) -> dict[str, str]:
    """App settings with containers of their own, so tests sharing one Azurite never meet."""
    return app_settings(
        azurite.connection_string,
        klaviyo_url,
        EMULATOR_KEY,
        suffix=uuid.uuid4().hex[:10],
        function_key=FUNCTION_KEY,
        **extra,
    )


def new_host(settings: dict[str, str], **kwargs) -> LocalHost:
    history = "durable-history-" + settings["SEGMENTS_CONTAINER"].rsplit("-", 1)[-1]
    return LocalHost(port=0, settings=settings, settings_file=None, history_container=history, **kwargs)


def export_body(list_id: str, settings: dict[str, str], connection: str = "shop", prefix: str = PREFIX) -> dict:
    return {
        "connection": connection,
        "list_id": list_id,
        "source": {"container": settings["SEGMENTS_CONTAINER"], "kind": "cdm", "path_prefix": prefix},
        "email_field": "Email",
        "field_mappings": MAPPINGS,
    }


def upload_export(azurite: Azurite, settings: dict[str, str], rows: int, **kwargs) -> tuple[str, str]:
    """A generated Customer Insights export (partitions, then model.json) in the segments container;
    returns (model.json's name, its ETag)."""
    container = settings["SEGMENTS_CONTAINER"]
    store = BlobStore.from_connection_string(azurite.connection_string, container)
    model = write_ci_export(store, rows, account_url=f"https://contosoci.blob.core.windows.net/{container}", **kwargs)
    return model, store.info(model).etag


def run_id_for(export: str, settings: dict[str, str], model: str, etag: str) -> str:
    return instance_id(export, f"{settings['SEGMENTS_CONTAINER']}/{model}", etag)


def emulator_clock(url: str, **body) -> None:
    httpx.post(f"{url}/__emulator/clock", json=body).raise_for_status()


def bulk_jobs_accepted(url: str) -> int:
    stats = httpx.get(f"{url}/__emulator/stats").json()
    return int(stats["endpoints"].get(BULK_JOBS, {}).get("responses", {}).get("202", 0))


def in_phase(phase: str):
    return lambda status: (status.get("progress") or {}).get("phase") == phase


@pytest.fixture(scope="module")
def slow_emulator():
    """Klaviyo's jobs take 3 s (of the emulator's clock, which a test can freeze); rate limits off."""
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "3") as url:
        yield url


# -- function metadata ---------------------------------------------------------------------------------------


def test_the_apps_function_metadata_passes_the_hosts_checks():
    environ = {**app_setting_defaults(), "SEGMENTS_STORAGE": "UseDevelopmentStorage=true"}
    assert check_function_metadata(function_app.app, environ) == []
    # The app settings a binding names must exist, as the host resolves them when it indexes.
    assert any("SEGMENTS_CONTAINER" in p for p in check_function_metadata(function_app.app, {}))


def test_broken_function_metadata_is_reported():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="open", auth_level=func.AuthLevel.ANONYMOUS)
    def open_door(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("hi")

    @app.route(route="typo")
    def renamed(request: func.HttpRequest) -> func.HttpResponse:  # the binding is 'req'
        return func.HttpResponse("hi")

    @app.blob_trigger(arg_name="blob", path="segments/{name}", connection="")
    def polled(blob: func.InputStream) -> None:
        return None

    @app.route(route="open", methods=["GET"])
    def open_twice(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("hi")

    problems = check_function_metadata(app, {})
    joined = "\n".join(problems)
    assert "function 'open_door'" in joined and "anonymous" in joined
    assert "binding 'req' has no Python parameter" in joined
    assert "Python parameter 'request' has no binding" in joined
    assert "function 'polled'" in joined and "no 'connection'" in joined
    assert "'source' must be \"EventGrid\"" in joined
    assert "both serve route 'open'" in joined

    class Unreadable:
        """A function whose JSON the host could not parse."""

        def __init__(self, inner):
            self.inner = inner

        def get_function_name(self):
            return "unreadable"

        def get_function_json(self):
            return '{"bindings": [ {"type": "httpTrigger", '

        def get_user_function(self):
            return self.inner.get_user_function()

    class FakeApp:
        functions_bindings = None

        def get_functions(self):
            return [Unreadable(app.get_functions()[0])]

    problems = check_function_metadata(FakeApp(), {})
    assert len(problems) == 1
    assert problems[0].startswith("function 'unreadable': its function JSON does not parse")


# -- keys ----------------------------------------------------------------------------------------------------


def test_api_routes_need_the_function_key(azurite, emulator_url):
    with new_host(host_settings(azurite, emulator_url), poll_interval=None) as host:
        url = host.url("/api/exports")
        refused = httpx.get(url)
        assert refused.status_code == 401
        assert refused.json()["error"].startswith("this route needs a function key: add ?code=KEY or the header")
        assert httpx.get(url, params={"code": "not-the-key"}).status_code == 401
        assert httpx.get(url, headers={"x-functions-key": "not-the-key"}).status_code == 401
        assert httpx.get(url, params={"code": FUNCTION_KEY}).status_code == 200
        assert httpx.get(url, headers={"x-functions-key": FUNCTION_KEY}).json() == []
        assert httpx.get(host.url("/api/no-such-route"), params={"code": FUNCTION_KEY}).status_code == 404
        assert httpx.delete(host.url("/api/runs/x"), params={"code": FUNCTION_KEY}).status_code == 404


def test_a_random_key_is_made_when_none_is_set(azurite, emulator_url, monkeypatch):
    monkeypatch.delenv("LOCAL_FUNCTION_KEY", raising=False)
    settings = host_settings(azurite, emulator_url)
    del settings["LOCAL_FUNCTION_KEY"]
    with new_host(settings, poll_interval=None) as host:
        assert len(host.function_key) >= 32
        assert httpx.get(host.url("/api/exports"), params={"code": host.function_key}).status_code == 200
    assert "LOCAL_FUNCTION_KEY" not in os.environ  # the environment is put back on stop


def test_settings_come_from_local_settings_json_under_the_environment(tmp_path, azurite, emulator_url, monkeypatch):
    path = tmp_path / "local.settings.json"
    values = {**host_settings(azurite, emulator_url), "CSV_PREFIX": "drops/", "PUSH_WAVE_WIDTH": "3"}
    path.write_text(orjson.dumps({"IsEncrypted": False, "Values": values}).decode())
    monkeypatch.setenv("PUSH_WAVE_WIDTH", "5")  # the environment wins over the file, as with Core Tools
    monkeypatch.delenv("CSV_PREFIX", raising=False)
    monkeypatch.delenv("CHUNK_ROWS", raising=False)
    explicit = {"LOCAL_FUNCTION_KEY": "explicit-key"}
    history = "durable-history-" + values["SEGMENTS_CONTAINER"].rsplit("-", 1)[-1]
    with LocalHost(
        port=0, settings=explicit, settings_file=path, history_container=history, poll_interval=None
    ) as host:
        from shared.platform.settings import get_settings

        applied = get_settings()
        assert (applied.csv_prefix, applied.push_wave_width) == ("drops/", 5)
        assert applied.chunk_rows == 10_000 and os.environ["CHUNK_ROWS"] == "10000"  # the app's own default
        assert applied.reports_container == values["REPORTS_CONTAINER"]
        assert host.function_key == "explicit-key"
    assert "CSV_PREFIX" not in os.environ and "CHUNK_ROWS" not in os.environ  # put back on stop
    # A missing local.settings.json is no settings at all.
    with new_host(host_settings(azurite, emulator_url), poll_interval=None) as host:
        assert host.running


# -- blob to list --------------------------------------------------------------------------------------------


def test_an_export_landing_in_the_segments_container_ends_up_in_the_klaviyo_list(azurite, emulator_url):
    settings = host_settings(azurite, emulator_url)
    list_id = new_list(emulator_url)
    with new_host(settings, poll_interval=0.2) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(list_id, settings))
        model, etag = upload_export(azurite, settings, 5_000, partitions=3)
        run_id = run_id_for("weekly", settings, model, etag)

        status = api.wait_for_run(run_id, timeout=120)

        assert [e.name for e in host.watcher.delivered] == [model]  # partitions are not events, model.json is
    report = status["report"]
    assert (status["runtime_status"], report["status"]) == ("Completed", "succeeded")
    assert (report["rows_read"], report["profiles_submitted"], report["profiles_imported"]) == (5_000, 5_000, 5_000)
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(5_000)}
    reports = BlobStore.from_connection_string(azurite.connection_string, settings["REPORTS_CONTAINER"])
    stored = orjson.loads(reports.read_bytes(f"runs/weekly/{run_id}.json"))
    assert (stored["run_id"], stored["profiles_imported"]) == (run_id, 5_000)


def test_a_host_stopped_while_the_run_waits_on_klaviyo_resumes_it_without_pushing_again(azurite, slow_emulator):
    url = slow_emulator
    settings = host_settings(azurite, url)
    list_id = new_list(url)
    jobs_at_start = bulk_jobs_accepted(url)
    emulator_clock(url, freeze=True)  # Klaviyo's jobs do not finish until the clock moves on
    try:
        with new_host(settings, poll_interval=0.2) as first, HostClient(first.base_url, FUNCTION_KEY) as api:
            api.put_connection("shop", EMULATOR_KEY)
            api.put_export("weekly", export_body(list_id, settings))
            model, etag = upload_export(azurite, settings, 5_000, partitions=2)
            run_id = run_id_for("weekly", settings, model, etag)
            waiting = api.wait_for_run(run_id, timeout=120, until=in_phase("waiting_for_klaviyo"))
        assert waiting["runtime_status"] == "Running"
        # What the rest of the run needs (the plan, the push records) is kept while it is unfinished.
        workspace = BlobStore.from_connection_string(azurite.connection_string, settings["WORKSPACE_CONTAINER"])
        kept = workspace.list(f"runs/weekly/{run_id}/")
        assert f"runs/weekly/{run_id}/plan.json" in kept and any("/push/" in name for name in kept)
        jobs_pushed = bulk_jobs_accepted(url) - jobs_at_start
        assert jobs_pushed == waiting["progress"]["jobs"] >= 1

        with new_host(settings, poll_interval=0.2) as second, HostClient(second.base_url, FUNCTION_KEY) as api:
            assert second.resumed == [run_id]
            emulator_clock(url, freeze=False, advance=10)
            final = api.wait_for_run(run_id, timeout=120)
            second.watcher.wait_for_polls(1)
            assert second.watcher.delivered == []  # the model.json was delivered before: not again
    finally:
        emulator_clock(url, freeze=False)

    report = final["report"]
    assert (final["runtime_status"], report["status"], report["profiles_imported"]) == ("Completed", "succeeded", 5_000)
    assert bulk_jobs_accepted(url) - jobs_at_start == jobs_pushed  # no push activity ran again
    assert len(report["jobs"]) == jobs_pushed
    assert list_emails(url, list_id) == {email_for(i) for i in range(5_000)}
    # Finished: the workspace is gone; the sync state stays in the same container.
    assert workspace.list("runs/") == []
    assert workspace.list("state/") != []


NOTIFICATION = {"aeg-event-type": "Notification", "Content-Type": "application/json"}


def azurite_blob_url(azurite: Azurite) -> str:
    return f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"


def documented_blob_event(operations: str) -> tuple[str, str]:
    """The blob trigger's webhook URL (path and query) and Event Grid event from OPERATIONS.md's Core Tools steps."""
    url = re.search(r'curl -sS -X POST "http://localhost:7071(/runtime/webhooks/blobs\?[^"]+)"', operations)[1]
    event = re.search(r"--data @- <<EOF\n(.*?)\n\s*EOF\n", operations, re.DOTALL)[1]
    return url, event


def test_the_event_grid_event_operations_md_documents_fires_the_blob_trigger(azurite, emulator_url):
    url, event = documented_blob_event((ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8"))
    settings = host_settings(azurite, emulator_url)
    container = settings["SEGMENTS_CONTAINER"]
    list_id = new_list(emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(list_id, settings))
        model, etag = upload_export(azurite, settings, 800, partitions=2)
        # The shell's substitutions, and this test's container and Azurite instead of the defaults.
        body = (
            event.replace("$(uuidgen)", str(uuid.uuid4()))
            .replace("$(date -u +%FT%TZ)", "2026-12-04T22:00:00Z")
            .replace("$MODEL", model)
            .replace("http://127.0.0.1:10000/devstoreaccount1/segments/", f"{azurite_blob_url(azurite)}/{container}/")
            .replace("/containers/segments/", f"/containers/{container}/")
        )
        endpoint = host.url(url)

        assert httpx.post(endpoint, content=body).status_code == 400  # without aeg-event-type: Notification
        wrong = httpx.post(endpoint.replace("on_segment_export", "nope"), content=body, headers=NOTIFICATION)
        assert wrong.status_code == 404 and "Host.Functions.on_segment_export" in wrong.json()["error"]
        fired = httpx.post(endpoint, content=body, headers=NOTIFICATION)
        assert (fired.status_code, fired.json()) == (202, {"delivered": [model]})
        status = api.wait_for_run(run_id_for("weekly", settings, model, etag), timeout=120)

        validation = [
            {"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {"validationCode": "c0de"}}
        ]
        answer = httpx.post(endpoint, json=validation, headers={"aeg-event-type": "SubscriptionValidation"})
        assert answer.json() == {"validationResponse": "c0de"}
    report = status["report"]
    assert (status["runtime_status"], report["status"], report["profiles_imported"]) == ("Completed", "succeeded", 800)
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(800)}


# -- the demo ------------------------------------------------------------------------------------------------


def test_the_demo_runs_an_export_end_to_end_and_with_keep_running_its_links_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_VAULT_URL", "AzureWebJobsStorage")}
    env.update(COLUMNS="200", PYTHONUNBUFFERED="1")
    stderr = open(tmp_path / "demo.stderr", "w+b")  # closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "localdev", "demo", "--rows", "3000", "--port", "0", "--keep-running"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:  # until the demo waits for Ctrl+C (EOF if it ended instead)
            lines.append(line)
            if "press Ctrl+C to stop them" in line:
                break
        out = "".join(lines)
        assert "list members      3,000 (read back from the emulator" in out, out
        assert '"status": "succeeded"' in out
        where = out[out.index("where to look") :]
        assert "These links work until you press Ctrl+C (--keep-running)." in where

        history = re.search(r"run history\s+(http\S+)", where)[1]
        page = httpx.get(history)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "demo" in page.text and "3,000" in page.text
        run = httpx.get(re.search(r"run status \(API\)\s+(http\S+)", where)[1]).json()
        assert (run["runtime_status"], run["report"]["profiles_imported"]) == ("Completed", 3_000)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        proc.stdout.close()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
        stderr.close()
    assert code == 0, errors


def test_the_demo_says_where_to_look_and_how_long_the_links_work():
    from types import SimpleNamespace

    from rich.console import Console

    from localdev.demo import _summary

    host = SimpleNamespace(base_url="http://127.0.0.1:7071", task_hub="LocalHub", function_key="k3y")
    status = {"instance_id": "demo.abc", "runtime_status": "Completed", "report": {"status": "succeeded"}}
    extra = {"reports_container": "run-reports", "list_id": "L1", "klaviyo_url": "http://127.0.0.1:9", "members": 3}
    extra.update(rows=3, wall_s=1.0)
    for keep_running, says in [
        (False, "These links stop working when the demo ends: run it with --keep-running to keep them alive."),
        (True, "These links work until you press Ctrl+C (--keep-running)."),
    ]:
        console = Console(record=True, width=200)
        _summary(
            console, host, "http://127.0.0.1:10000/devstoreaccount1", status, {**extra, "keep_running": keep_running}
        )
        where = console.export_text()
        assert "  run history       http://127.0.0.1:7071/api/history?code=k3y" in where
        assert says in where


# -- `python -m localdev host` on its own ----------------------------------------------------------------------

HOST_ENV_SETTINGS = (
    "AzureWebJobsStorage",
    "SEGMENTS_STORAGE",
    "KLAVIYO_BASE_URL",
    "KLAVIYO_API_KEY",
    "KEY_VAULT_URL",
    "LOCALDEV_STORAGE",
    "LOCAL_FUNCTION_KEY",
)


class HostProcess:
    """``python -m localdev host`` in a child process (in ``cwd``, where it looks for local.settings.json), with
    the lines it prints at start parsed; stopped with SIGTERM, as a service manager would."""

    def __init__(self, cwd, *args: str):
        env = {k: v for k, v in os.environ.items() if k not in HOST_ENV_SETTINGS}
        env["PYTHONPATH"] = str(ROOT)
        self.stderr = open(cwd / "host.stderr", "w+b")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localdev", "host", "--port", "0", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: list[str] = []
        for line in self.proc.stdout:  # the banner ends with this line; EOF if the host failed to start
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl+C to stop."):
                break
        else:
            self.stop()
            raise AssertionError("the host did not start: " + self.stderr_text())

    def line(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix))

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.proc.stdout.close()
        self.stderr.close()
        return code


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("settings", ["none", "the example settings"])
def test_localdev_host_needs_nothing_set_up_and_runs_on_its_own_azurite_and_emulator(tmp_path, settings):
    if settings != "none":  # as a new user does: cp local.settings.example.json local.settings.json
        shutil.copy(ROOT / "local.settings.example.json", tmp_path / "local.settings.json")
    host = HostProcess(tmp_path)
    try:
        base_url = re.search(r"^Local host: (\S+)", host.line("Local host:")).group(1)
        key = host.line("Function key:").split()[2]
        storage = host.line("Storage:")
        own_azurite = re.search(r"Azurite started by this host, blob endpoint http://127\.0\.0\.1:(\d+)/", storage)
        blob_port = int(own_azurite[1])
        klaviyo = re.search(r"^Klaviyo: the emulator at (\S+) .*API key (\S+)", host.line("Klaviyo:"))
        assert klaviyo, host.lines  # never the real Klaviyo unless KLAVIYO_BASE_URL says so
        emulator_url, emulator_key = klaviyo[1], klaviyo[2]
        if settings != "none":  # UseDevelopmentStorage=true in the file is not attached to silently
            assert "AzureWebJobsStorage and SEGMENTS_STORAGE from the settings not used" in storage

        unauthorized = httpx.get(f"{base_url}/api/exports")
        assert unauthorized.status_code == 401 and "function key" in unauthorized.json()["error"]
        added = httpx.put(
            f"{base_url}/api/connections/local",
            json={"api_key": emulator_key, "accept_privacy_terms": True},
            headers={"x-functions-key": key},
        )
        assert added.status_code == 200, added.text  # the key was checked against the emulator
        list_id = new_list(emulator_url, key=emulator_key)
        body = {
            "connection": "local",
            "list_id": list_id,
            "source": {"kind": "cdm", "path_prefix": PREFIX},
            "email_field": "Email",
        }
        assert httpx.put(f"{base_url}/api/exports/first", json=body, params={"code": key}).status_code == 201

        # The configuration is in the host's own Azurite (the printed endpoint, Azurite's well-known account).
        own = Azurite(blob_port, 0, 0).connection_string
        configs = BlobStore.from_connection_string(own, "export-config")
        assert configs.exists("connections/local.json") and configs.exists("exports/first.json")
    finally:
        code = host.stop()
    assert code == 0, host.stderr_text()
    assert not _port_open(blob_port)  # the host stopped the Azurite it started
    if settings != "none":
        return

    again = HostProcess(tmp_path)  # its Azurite keeps its data in .localdev/azurite: the export is still there
    try:
        base_url = re.search(r"^Local host: (\S+)", again.line("Local host:")).group(1)
        key = again.line("Function key:").split()[2]
        assert [e["name"] for e in httpx.get(f"{base_url}/api/exports", params={"code": key}).json()] == ["first"]
    finally:
        assert again.stop() == 0, again.stderr_text()


def test_storage_the_settings_name_is_used_only_when_said_so_and_the_host_says_which(tmp_path, azurite, emulator_url):
    values = {
        "AzureWebJobsStorage": azurite.connection_string,
        "SEGMENTS_STORAGE": azurite.connection_string,
        "KLAVIYO_BASE_URL": emulator_url,
    }
    with ExitStack() as stack:
        services = start_local_services(stack, {**values, "LOCALDEV_STORAGE": "settings"}, azurite_dir=tmp_path)
    assert not services.azurite_started and not services.emulator_started
    assert "AzureWebJobsStorage" not in services.settings  # the host keeps what the settings say...
    storage = services.notes[0]
    assert storage.startswith("Storage: as the settings say (LOCALDEV_STORAGE=settings)")
    assert f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1" in storage  # ...and says which one
    assert "AccountKey" not in storage and azurite.connection_string not in "\n".join(services.notes)
    assert services.notes[1] == f"Klaviyo: {emulator_url} (KLAVIYO_BASE_URL)"

    with ExitStack() as stack, pytest.raises(HostError, match="LOCALDEV_STORAGE=settings but SEGMENTS_STORAGE"):
        start_local_services(stack, {"LOCALDEV_STORAGE": "settings", "AzureWebJobsStorage": "x"})
    with ExitStack() as stack, pytest.raises(HostError, match="LOCALDEV_STORAGE must be one of azurite, settings"):
        start_local_services(stack, {"LOCALDEV_STORAGE": "existing"})


def test_two_hosts_never_share_one_azurite_folder(tmp_path, emulator_url):
    with ExitStack() as first:
        started = start_local_services(first, {"KLAVIYO_BASE_URL": emulator_url}, azurite_dir=tmp_path)
        assert started.azurite_started
        with ExitStack() as second, pytest.raises(HostError, match="another local host keeps its Azurite data in"):
            start_local_services(second, {"KLAVIYO_BASE_URL": emulator_url}, azurite_dir=tmp_path)
    with ExitStack() as after:  # free again once the first has stopped
        assert start_local_services(after, {"KLAVIYO_BASE_URL": emulator_url}, azurite_dir=tmp_path).azurite_started
