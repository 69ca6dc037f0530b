"""The app's HTTP API (functions/http_api.py over shared/api.py) through the local host, over real HTTP: validation,
names that could reach other blobs, body limits, runs on demand with the durable status URLs, one run at a time,
progress then report, connections whose keys are checked and never returned, and App Service roles."""

from __future__ import annotations

import base64
import http.client
import time
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from localdev.host import RouteTemplate, remove_dot_segments
from localdev.host_client import HostClient
from localdev.services import run_emulator
from shared.platform.storage import BlobStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import list_emails, new_list
from tests.test_local_host import (
    FUNCTION_KEY,
    emulator_clock,
    export_body,
    host_settings,
    in_phase,
    new_host,
    upload_export,
)

ROWS = 2_000
TERMINAL = {"Completed", "Failed", "Terminated"}


class Ctx:
    def __init__(self, host, api: HostClient, settings: dict, azurite, klaviyo_url: str, list_id: str):
        self.host, self.api, self.settings = host, api, settings
        self.azurite, self.klaviyo_url, self.list_id = azurite, klaviyo_url, list_id

    def configs(self) -> BlobStore:
        return BlobStore.from_connection_string(self.azurite.connection_string, self.settings["CONFIG_CONTAINER"])

    def add_export(self, name: str, connection: str = "shop", list_id: str | None = None, headers=None):
        body = export_body(list_id or self.list_id, self.settings, connection=connection)
        response = self.api.request("PUT", f"/api/exports/{name}", json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        return response


@pytest.fixture(scope="module")
def klaviyo():
    """Jobs take 3 s of the emulator's clock, which the tests freeze to hold a run in waiting_for_klaviyo."""
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "3") as url:
        yield url


@pytest.fixture(scope="module")
def ctx(azurite, klaviyo):
    """One host for the module, without its blob watcher (runs here start on demand), with a connection
    'shop', an export 'weekly' and a Customer Insights export in the segments container."""
    settings = host_settings(azurite, klaviyo)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        context = Ctx(host, api, settings, azurite, klaviyo, new_list(klaviyo))
        api.put_connection("shop", EMULATOR_KEY)
        context.add_export("weekly")
        upload_export(azurite, settings, ROWS)
        yield context


def principal(*roles: str, name: str = "pat@contoso.com") -> str:
    """An App Service authentication X-MS-CLIENT-PRINCIPAL header."""
    claims = [{"typ": "name", "val": name}, *({"typ": "roles", "val": role} for role in roles)]
    doc = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(orjson.dumps(doc)).decode()


def poll(fetch, until, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        time.sleep(0.1)  # polling a status URL: the condition is checked above


def raw_request(base_url: str, method: str, target: str, body: bytes = b"", headers: dict | None = None) -> int:
    """Send the request target exactly as given (no client-side normalisation of '..' or escapes)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"x-functions-key": FUNCTION_KEY, "content-type": "application/json", **(headers or {})}
        conn.request(method, target, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


# -- exports ---------------------------------------------------------------------------------------------------


def test_put_export_answers_400_with_field_errors_for_a_bad_body(ctx):
    bad = {
        "connection": "shop",
        "list_id": "not a list id!",
        "source": {"kind": "cdm", "path_prefix": "../up"},
        "email_field": " ",
        "field_mappings": {"Phone": "telephone"},
    }
    response = ctx.api.request("PUT", "/api/exports/fresh", json=bad)
    assert response.status_code == 400
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"list_id", "source.path_prefix", "email_field", "field_mappings.Phone"} <= fields

    no_connection = export_body(ctx.list_id, ctx.settings, connection="nobody")
    response = ctx.api.request("PUT", "/api/exports/fresh", json=no_connection)
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["connection"]

    for malformed in (b'{"connection": ', b"[1, 2]", b"", b"\xff\xfe"):
        response = ctx.api.request("PUT", "/api/exports/fresh", content=malformed)
        assert response.status_code == 400, malformed
        assert "JSON" in response.json()["error"]
    assert ctx.api.request("GET", "/api/exports/fresh").status_code == 404  # nothing was stored


def test_names_with_path_characters_never_reach_another_blob(ctx):
    configs = ctx.configs()
    before = {name: configs.info(name).etag for name in configs.list()}
    body = orjson.dumps(export_body(ctx.list_id, ctx.settings))
    targets = [
        "/api/exports/../x",
        "/api/exports/..%2Fconnections%2Fshop",
        "/api/exports/a%2Fb",
        "/api/exports/a%5Cb",
        "/api/exports/a\\b",
        "/api/exports/%2E%2E",
        "/api/exports/.%2E%2Fweekly",
        "/api/exports/weekly%00",
        "/api/connections/..%2Fexports%2Fweekly",
    ]
    for target in targets:
        for method in ("PUT", "GET", "DELETE"):
            status = raw_request(ctx.host.base_url, method, target, body if method == "PUT" else b"")
            assert status in (400, 404), (method, target, status)
    for name in ("../x", "a/b", "a\\b"):  # and as a client library sends them
        assert ctx.api.request("PUT", f"/api/exports/{name}", content=body).status_code in (400, 404)
    after = {name: configs.info(name).etag for name in configs.list()}
    assert after == before


def test_an_oversize_body_is_refused_with_413(ctx):
    body = orjson.dumps({**export_body(ctx.list_id, ctx.settings), "padding": "x" * 300_000})
    assert ctx.api.request("PUT", "/api/exports/big", content=body).status_code == 413
    assert ctx.api.request("PUT", "/api/connections/big", content=body).status_code == 413
    assert ctx.api.request("GET", "/api/exports/big").status_code == 404


def test_an_unknown_export_is_404(ctx):
    assert ctx.api.request("GET", "/api/exports/nope").status_code == 404
    assert ctx.api.request("POST", "/api/exports/nope/runs").status_code == 404
    assert ctx.api.request("GET", "/api/exports/nope/runs").status_code == 404
    assert ctx.api.request("DELETE", "/api/exports/nope").status_code == 404
    assert ctx.api.request("GET", "/api/runs/nope.0123").status_code == 404


# -- runs ------------------------------------------------------------------------------------------------------


def test_a_dry_run_answers_202_with_the_durable_status_urls(ctx):
    ctx.add_export("rehearsal")
    response = ctx.api.request("POST", "/api/exports/rehearsal/runs", params={"dry_run": "true"})
    assert response.status_code == 202, response.text
    urls = response.json()
    run_id = urls["id"]
    assert run_id.startswith("rehearsal.")
    assert response.headers["location"] == urls["statusQueryGetUri"]
    for key in ("statusQueryGetUri", "sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"):
        assert urls[key].startswith(f"{ctx.host.base_url}/runtime/webhooks/durabletask/instances/{run_id}"), key
    # The app's own status URL beside them: the run's progress, then its report, with the caller's function key.
    assert urls["runStatusUri"] == f"{ctx.host.base_url}/api/runs/{run_id}"
    assert FUNCTION_KEY not in response.text
    own = ctx.api.request("GET", urls["runStatusUri"])
    assert own.status_code == 200 and own.json()["instance_id"] == run_id

    status = poll(lambda: httpx.get(urls["statusQueryGetUri"]).json(), lambda s: s["runtimeStatus"] in TERMINAL)
    assert status["runtimeStatus"] == "Completed"
    report = status["output"]
    assert (report["dry_run"], report["rows_read"], report["profiles_submitted"]) == (True, ROWS, ROWS)
    assert report["profiles_imported"] == 0
    assert list_emails(ctx.klaviyo_url, ctx.list_id) == set()  # a dry run sends nothing


def test_one_run_at_a_time_and_the_status_shows_progress_then_the_report(ctx):
    ctx.add_export("busy")
    emulator_clock(ctx.klaviyo_url, freeze=True)  # the run's import jobs wait until the clock moves on
    try:
        started = ctx.api.request("POST", "/api/exports/busy/runs")
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        waiting = ctx.api.wait_for_run(run_id, timeout=120, until=in_phase("waiting_for_klaviyo"))
        assert waiting["runtime_status"] == "Running"
        assert "report" not in waiting
        assert waiting["progress"]["profiles_submitted"] == ROWS
        assert waiting["progress"]["jobs"] >= 1

        again = ctx.api.request("POST", "/api/exports/busy/runs", params={"dry_run": "true"})
        assert again.status_code == 409
        assert run_id in again.json()["error"]

        emulator_clock(ctx.klaviyo_url, freeze=False, advance=10)
        done = ctx.api.wait_for_run(run_id, timeout=120)
    finally:
        emulator_clock(ctx.klaviyo_url, freeze=False)
    assert done["runtime_status"] == "Completed"
    assert (done["report"]["status"], done["report"]["profiles_imported"]) == ("succeeded", ROWS)
    assert done["progress"]["phase"] == "succeeded"

    listed = ctx.api.request("GET", "/api/exports/busy/runs")
    assert listed.status_code == 200
    assert [r["run_id"] for r in listed.json()] == [run_id]
    # Once it finished, the export can run again.
    after = ctx.api.request("POST", "/api/exports/busy/runs", params={"dry_run": "true"})
    assert after.status_code == 202
    ctx.api.wait_for_run(after.json()["id"], timeout=120)


# -- connections -----------------------------------------------------------------------------------------------


def test_a_connection_key_is_checked_with_klaviyo_and_never_returned(ctx):
    wrong = "pk_wrong_key_00112233445566"
    response = ctx.api.request("PUT", "/api/connections/acct", json={"api_key": wrong, "accept_privacy_terms": True})
    assert response.status_code == 400
    assert wrong not in response.text
    assert ctx.api.request("GET", "/api/connections/acct").status_code == 404

    no_terms = ctx.api.request("PUT", "/api/connections/acct", json={"api_key": EMULATOR_KEY})
    assert no_terms.status_code == 400
    assert [e["field"] for e in no_terms.json()["errors"]] == ["privacy_acceptance"]
    assert EMULATOR_KEY not in no_terms.text

    saved = ctx.api.request(
        "PUT", "/api/connections/acct", json={"api_key": EMULATOR_KEY, "accept_privacy_terms": True}
    )
    assert saved.status_code == 200
    fetched = ctx.api.request("GET", "/api/connections/acct")
    for answer in (saved, fetched):
        assert EMULATOR_KEY not in answer.text
        assert "api_key" not in answer.json()
        assert answer.json()["secret_name"] == "klaviyo-acct"
        assert answer.json()["privacy_acceptance"]["accepted_by"] == "function key"
    assert EMULATOR_KEY.encode() not in ctx.configs().read_bytes("connections/acct.json")


def test_a_contributor_cannot_use_an_administrators_only_connection(ctx):
    admin, contributor = principal("admin", name="ada@contoso.com"), principal("contributor")
    as_admin, as_contributor = {"x-ms-client-principal": admin}, {"x-ms-client-principal": contributor}
    body = {"api_key": EMULATOR_KEY, "accept_privacy_terms": True}
    assert ctx.api.request("PUT", "/api/connections/vip", json=body, headers=as_contributor).status_code == 403
    made = ctx.api.request("PUT", "/api/connections/vip", json=body, headers=as_admin)
    assert made.status_code == 200
    assert made.json()["allowed_roles"] == "admins"
    assert made.json()["privacy_acceptance"]["accepted_by"] == "ada@contoso.com"
    ctx.add_export("vip-weekly", connection="vip", headers=as_admin)

    run = ctx.api.request("POST", "/api/exports/vip-weekly/runs", params={"dry_run": "true"}, headers=as_contributor)
    assert run.status_code == 403
    edit = export_body(ctx.list_id, ctx.settings, connection="vip")
    assert ctx.api.request("PUT", "/api/exports/vip-weekly", json=edit, headers=as_contributor).status_code == 403
    garbled = {"x-ms-client-principal": "not base64 json"}
    assert ctx.api.request("POST", "/api/exports/vip-weekly/runs", headers=garbled).status_code == 401

    shared = {**body, "allowed_roles": "contributors"}
    assert ctx.api.request("PUT", "/api/connections/team", json=shared, headers=as_admin).status_code == 200
    ctx.add_export("team-weekly", connection="team", headers=as_contributor)
    allowed = ctx.api.request(
        "POST", "/api/exports/team-weekly/runs", params={"dry_run": "true"}, headers=as_contributor
    )
    assert allowed.status_code == 202
    ctx.api.wait_for_run(allowed.json()["id"], timeout=120)
    by_admin = ctx.api.request("POST", "/api/exports/vip-weekly/runs", params={"dry_run": "true"}, headers=as_admin)
    assert by_admin.status_code == 202
    ctx.api.wait_for_run(by_admin.json()["id"], timeout=120)


# -- routing ---------------------------------------------------------------------------------------------------


def test_route_templates_match_as_the_functions_host_does():
    runs = RouteTemplate.parse("exports/{name}/runs")
    assert runs.match("exports/weekly/runs") == {"name": "weekly"}
    assert runs.match("EXPORTS/weekly/runs/") == {"name": "weekly"}  # literals ignore case, a trailing '/' too
    assert runs.match("exports/a%20b/runs") == {"name": "a b"}
    assert runs.match("exports/a%2Fb/runs") == {"name": "a%2Fb"}  # an encoded '/' stays encoded, as in Kestrel
    assert runs.match("exports/a/b/runs") is None
    assert RouteTemplate.parse("items/{id:int}").match("items/x") is None
    assert RouteTemplate.parse("items/{id:int}").match("items/42") == {"id": "42"}
    assert RouteTemplate.parse("files/{*rest}").match("files/a/b") == {"rest": "a/b"}
    assert RouteTemplate.parse("files/{name?}").match("files") == {}
    literal, param = RouteTemplate.parse("exports/latest"), RouteTemplate.parse("exports/{name}")
    assert literal.precedence < param.precedence
    assert remove_dot_segments("/api/exports/../connections/x") == "/api/connections/x"
    assert remove_dot_segments("/api/./exports/..") == "/api/"
