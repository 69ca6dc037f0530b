"""What the deployed app does for operators and for its own worker: it logs which fast path runs and answers
GET /api/health; no function blocks the worker's event loop with a blocking storage call; the Azure SDK's
per-request records stay out of the logs while the app's own records pass."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

import function_app
from localdev.host import describe_functions
from localdev.host_client import HostClient
from shared.api import Api, startup_line
from shared.planning import native
from shared.platform.config import ConfigStore
from shared.platform.storage import BlobStore
from tests.fixtures.keyvault import StaticTokenCredential
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host, upload_export

# -- which fast path, and health ---------------------------------------------------------------------------------


def test_the_app_logs_its_version_and_fast_path_when_the_worker_loads_it(caplog):
    with caplog.at_level(logging.INFO, logger="function_app"):
        source = function_app.__spec__.loader.get_source("function_app")
        exec(compile(source, function_app.__file__, "exec"), {"__name__": "function_app"})  # as the worker loads it
    lines = [r.getMessage() for r in caplog.records if r.name == "function_app"]
    assert lines == [startup_line()]
    assert lines[0].startswith("ci-klaviyo-sync dev: fast path kernels (C kernels loaded: libfastpath.so")


@pytest.fixture
def host(azurite, emulator_url):
    with new_host(host_settings(azurite, emulator_url), poll_interval=None) as running:
        yield running


def test_health_says_version_fast_path_and_storage_and_needs_a_function_key(host):
    answer = httpx.get(f"{host.base_url}/api/health", headers={"x-functions-key": FUNCTION_KEY}, timeout=60)
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "healthy",
        "version": "dev",  # `make package` writes the version and commit into the package
        "fast_path": "kernels",
        "fast_path_detail": native.status,
        "storage": {"reachable": True},
        "key_vault": {"configured": False},
    }
    assert httpx.get(f"{host.base_url}/api/health", timeout=60).status_code == 401


def _configs(azurite) -> ConfigStore:
    return ConfigStore(BlobStore.from_connection_string(azurite.connection_string, f"config-{uuid.uuid4().hex[:8]}"))


def test_health_reports_a_key_vault_that_refuses_the_identity_without_any_secret(azurite, keyvault):
    keyvault.standin.put("klaviyo-shop", "pk_secret_value_123")
    reachable = Api(None, _configs(azurite), keyvault.provider()).health()
    assert reachable[0] == 200
    assert reachable[1]["key_vault"] == {"configured": True, "reachable": True}

    refused = Api(None, _configs(azurite), keyvault.provider(credential=StaticTokenCredential("another-token")))
    status, body = refused.health()
    assert (status, body["status"], body["key_vault"]["reachable"]) == (503, "unhealthy", False)
    assert body["key_vault"]["error"].startswith(f"cannot read secret 'health-probe' in Key Vault {keyvault.url}")
    text = orjson.dumps(body).decode()
    assert "pk_secret_value_123" not in text and "another-token" not in text


# -- the worker's event loop -------------------------------------------------------------------------------------


def test_only_functions_that_need_the_durable_client_are_async():
    """The worker runs `async def` functions on its one event loop and plain ones on its thread pool: a function
    that is async only to make blocking SDK calls would hold up every other invocation of the worker."""
    for function in describe_functions(function_app.app):
        uses_durable_client = any(b["type"] == "durableClient" for b in function.bindings)
        assert inspect.iscoroutinefunction(function.fn) == uses_durable_client, function.name


class Gate:
    """A TCP relay to Azurite's blob port that, once closed, holds every request until it is opened again."""

    def __init__(self, port: int):
        self.target = port
        self.open, self.holding = threading.Event(), threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        with src, dst:
            try:
                while data := src.recv(65536):
                    if gated and not self.open.is_set():
                        self.holding.set()
                        self.open.wait()
                    dst.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.open.set()
        self.listener.close()


@pytest.fixture
def gated(azurite, emulator_url):
    """A host whose segments account is reached through a Gate; a connection and an export through the API."""
    gate = Gate(azurite.blob_port)
    segments = dataclasses.replace(azurite, blob_port=gate.port).connection_string
    settings = host_settings(azurite, emulator_url, SEGMENTS_STORAGE=segments)
    with new_host(settings, poll_interval=None) as running, HostClient(running.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(new_list(emulator_url), settings))
        model, _ = upload_export(azurite, settings, 50)
        yield running, api, gate, model
    gate.close()


def _answered_while_storage_is_held(api: HostClient, gate: Gate, held_call) -> object:
    """Runs `held_call` while the gate holds storage requests; another request must still be answered."""
    with ThreadPoolExecutor(1) as pool:
        gate.open.clear()
        pending = pool.submit(held_call)
        try:
            assert gate.holding.wait(60), "the call never reached storage"
            # Served by the worker's event loop (the durable client): answered only if nothing blocks the loop.
            other = api.http.get("/api/runs/weekly.nothing", timeout=30)
            assert other.status_code == 404
        finally:
            gate.open.set()
        return pending.result(timeout=120)


def test_a_blob_event_waiting_for_storage_does_not_hold_up_other_invocations(gated):
    host, api, gate, model = gated
    client_blob = host.blob_value("on_segment_export", model)
    _answered_while_storage_is_held(api, gate, lambda: host.call_function("on_segment_export", client_blob=client_blob))
    assert [s.instance_id.split(".")[0] for s in host.driver.list_instances()] == ["weekly"]


def test_a_run_request_waiting_for_storage_does_not_hold_up_other_requests(gated):
    _, api, gate, _ = gated
    started = _answered_while_storage_is_held(api, gate, lambda: api.http.post("/api/exports/weekly/runs?dry_run=true"))
    assert started.status_code == 202


# -- the Azure SDK's log records -----------------------------------------------------------------------------------


def test_storage_calls_log_no_sdk_records_and_the_apps_records_pass(azurite, caplog):
    """The SDK's HTTP logging policy writes an Information record per request; after the app is loaded only
    its warnings would pass, and the app's own Information records still do."""
    assert function_app.app  # loaded as the worker loads it
    store = BlobStore.from_connection_string(azurite.connection_string, f"logs-{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.INFO):
        assert store.exists("nothing-here") is False
        logging.getLogger("shared.pipeline").info("the app's own record")
    assert [r.getMessage() for r in caplog.records] == ["the app's own record"]
