"""Who may call what, over real HTTP through the local host on Azurite: every HTTP function of the app declares
who may call each of its methods (functions/http_api.py `route`), and each route is walked with each App
Service role, a principal with no role and no principal at all, on an export of an administrators-only
connection and one of a connection open to contributors; with AUTH_REQUIRE_PRINCIPAL on and off."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import azure.durable_functions as df
import azure.functions as func
import orjson
import pytest

import function_app
from functions import http_api
from functions.http_api import ACCESS
from localdev.host import describe_functions
from localdev.host_client import HostClient
from shared.api import Access
from tests.test_http_api import raw_request
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host

# Who may do what: role -> access -> (on an administrators-only connection, on one open to contributors).
# "key" is a function key holder without a principal (trusted as an administrator unless the app requires one).
MAY = {
    "admin": {Access.READ: (True, True), Access.CONTRIBUTE: (True, True), Access.ADMIN: (True, True)},
    "key": {Access.READ: (True, True), Access.CONTRIBUTE: (True, True), Access.ADMIN: (True, True)},
    "contributor": {Access.READ: (False, True), Access.CONTRIBUTE: (False, True), Access.ADMIN: (False, False)},
    "reader": {Access.READ: (False, True), Access.CONTRIBUTE: (False, False), Access.ADMIN: (False, False)},
    "no role": {Access.READ: (False, False), Access.CONTRIBUTE: (False, False), Access.ADMIN: (False, False)},
}
# The rules of the routes this file knows (a route added later must declare its own, and is walked with it).
DECLARED = {
    ("exports", "GET"): Access.READ,
    ("exports/{name}", "GET"): Access.READ,
    ("exports/{name}", "PUT"): Access.CONTRIBUTE,
    ("exports/{name}", "DELETE"): Access.CONTRIBUTE,
    ("exports/{name}/runs", "GET"): Access.READ,
    ("exports/{name}/runs", "POST"): Access.CONTRIBUTE,
    ("runs/{instance_id}", "GET"): Access.READ,
    ("connections/{name}", "GET"): Access.READ,
    ("connections/{name}", "PUT"): Access.ADMIN,
    ("history", "GET"): Access.READ,
    ("erasure", "POST"): Access.ADMIN,
}
CLOSED, OPEN = "vip", "team"  # connections: administrators only / open to contributors
EXPORTS = {CLOSED: "vip-weekly", OPEN: "team-weekly"}


def principal(*roles: str, name: str = "pat@contoso.com") -> str:
    """An App Service authentication X-MS-CLIENT-PRINCIPAL header."""
    claims = [{"typ": "name", "val": name}, *({"typ": "roles", "val": role} for role in roles)]
    doc = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles", "claims": claims}
    return base64.b64encode(orjson.dumps(doc)).decode()


CALLERS = {
    "admin": {"x-ms-client-principal": principal("admin", name="ada@contoso.com")},
    "contributor": {"x-ms-client-principal": principal("contributor", name="cory@contoso.com")},
    "reader": {"x-ms-client-principal": principal("reader", name="rita@contoso.com")},
    "no role": {"x-ms-client-principal": principal(name="nora@contoso.com")},
    "key": {},
}
ADMIN = CALLERS["admin"]


def http_routes(app=function_app.app) -> list[tuple[str, str, str]]:
    """(function name, route, method) for every HTTP function in the app's function metadata."""
    out = []
    for info in describe_functions(app):
        trigger = info.trigger or {}
        if trigger.get("type") == "httpTrigger":
            for method in trigger.get("methods") or ["GET", "POST", "PUT", "DELETE", "PATCH"]:
                out.append((info.name, trigger.get("route") or info.name, method.upper()))
    return out


def undeclared(app) -> list[tuple[str, str, str]]:
    return [(fn, route, m) for fn, route, m in http_routes(app) if m not in ACCESS.get(route, {})]


def test_every_http_function_declares_who_may_call_each_method():
    assert http_routes(), "the app has no HTTP functions?"
    assert undeclared(function_app.app) == [], "declare who may call them: functions.http_api.route(..., GET=...)"
    for (route, method), access in DECLARED.items():
        assert ACCESS[route][method] is access, (route, method)


def test_a_route_added_without_declaring_who_may_call_it_is_found():
    app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="forget-everyone", methods=["POST"])
    async def forget(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("gone")

    app.register_functions(http_api.bp)
    assert undeclared(app) == [("forget", "forget-everyone", "POST")]


@pytest.fixture(scope="module", params=[False, True], ids=["keys-trusted", "principal-required"])
def host(request, azurite):
    """A host per setting of AUTH_REQUIRE_PRINCIPAL, with a connection of each kind and an export on each
    whose source folder is empty (a run that passes the role checks ends in 400, having started nothing)."""
    settings = host_settings(azurite, "http://127.0.0.1:9", AUTH_REQUIRE_PRINCIPAL=str(request.param).lower())
    with new_host(settings, poll_interval=None) as running, HostClient(running.base_url, FUNCTION_KEY) as api:
        for conn, allowed in ((CLOSED, "admins"), (OPEN, "contributors")):
            body = {"allowed_roles": allowed, "accept_privacy_terms": True}
            assert api.request("PUT", f"/api/connections/{conn}", json=body, headers=ADMIN).status_code == 200
            put_export(api, settings, conn)
        yield SimpleNamespace(base_url=running.base_url, api=api, settings=settings, required=request.param)


def put_export(api: HostClient, settings: dict, conn: str, headers=ADMIN):
    body = export_body("LIST01", settings, connection=conn, prefix="nothing-here/")
    return api.request("PUT", f"/api/exports/{EXPORTS[conn]}", json=body, headers=headers)


def fill(route: str, conn: str) -> str:
    """The route with its parameters naming the objects on connection `conn`."""

    def value(match: re.Match) -> str:
        param = match.group(1).lstrip("*").split(":")[0].rstrip("?")
        if route.startswith("connections/"):
            return conn
        if param in ("instance_id", "id", "run_id"):
            return f"{EXPORTS[conn]}.0123456789abcdef01234567"
        return EXPORTS[conn]

    return re.sub(r"\{([^}]+)\}", value, route)


def body_for(route: str, method: str, conn: str, settings: dict) -> dict | None:
    if method not in ("PUT", "POST"):
        return None
    if route == "exports/{name}":  # the export as it is: an allowed caller changes nothing
        return export_body("LIST01", settings, connection=conn, prefix="nothing-here/")
    if route == "connections/{name}":
        return {"allowed_roles": "admins" if conn == CLOSED else "contributors", "accept_privacy_terms": True}
    return {}


def test_every_route_with_every_role(host):
    api, settings, required = host.api, host.settings, host.required
    walked = 0
    for _fn, route, method in http_routes():
        access = ACCESS[route][method]
        targets = (CLOSED, OPEN) if "{" in route else (OPEN,)
        for conn in targets:
            url = "/api/" + fill(route, conn)
            for who, headers in CALLERS.items():
                body = body_for(route, method, conn, settings)
                params = {"dry_run": "true"} if method == "POST" else None
                response = api.request(method, url, headers=headers, json=body, params=params)
                label = (who, method, url, response.status_code, response.text[:200])
                if who == "key" and required:
                    assert response.status_code == 401, label
                elif access is not Access.ANYONE and not MAY[who][access][conn == OPEN]:
                    assert response.status_code == 403, label
                    assert "may not" in response.json()["error"], label
                else:
                    assert response.status_code not in (401, 403), label
                if method == "DELETE" and response.status_code == 200:
                    assert put_export(api, settings, conn).status_code == 201  # back for the next caller
                walked += 1
    assert walked >= len(DECLARED) * len(CALLERS)


def test_lists_and_the_history_page_show_only_what_the_caller_may_see(host):
    api = host.api
    for who, seen in (("admin", set(EXPORTS.values())), ("contributor", {EXPORTS[OPEN]}), ("reader", {EXPORTS[OPEN]})):
        listed = api.request("GET", "/api/exports", headers=CALLERS[who])
        assert {e["name"] for e in listed.json()} == seen, who
        page = api.request("GET", "/api/history", headers=CALLERS[who]).text
        assert (EXPORTS[CLOSED] in page, EXPORTS[OPEN] in page) == (who == "admin", True), who
        assert ("Run now" in page) == (who != "reader"), who  # a reader may not start runs


def test_a_principal_without_roles_cannot_delete_and_a_contributor_cannot_take_an_export_over(host):
    api, settings = host.api, host.settings
    closed = f"/api/exports/{EXPORTS[CLOSED]}"
    before = api.request("GET", closed, headers=ADMIN).json()

    assert api.request("DELETE", closed, headers=CALLERS["no role"]).status_code == 403
    assert api.request("DELETE", closed, headers=CALLERS["contributor"]).status_code == 403
    # Moving the administrators' export onto the contributors' connection is changing that export.
    takeover = {**export_body("TAKEN1", settings, connection=OPEN, prefix="elsewhere/")}
    assert api.request("PUT", closed, json=takeover, headers=CALLERS["contributor"]).status_code == 403
    # And the other way: a contributor may not move an export of theirs onto the administrators' connection.
    move = export_body("LIST01", settings, connection=CLOSED, prefix="nothing-here/")
    moved = api.request("PUT", f"/api/exports/{EXPORTS[OPEN]}", json=move, headers=CALLERS["contributor"])
    assert moved.status_code == 403
    assert api.request("GET", closed, headers=ADMIN).json() == before
    assert api.request("GET", f"/api/exports/{EXPORTS[OPEN]}", headers=ADMIN).json()["connection"] == OPEN


def test_privacy_terms_acceptance_is_recorded_by_the_server(host):
    api = host.api
    started = datetime.now(UTC)
    forged = {
        "accept_privacy_terms": True,
        "privacy_acceptance": {"accepted_by": "ceo", "accepted_at": "2020-01-01T00:00:00Z"},
    }
    refused = api.request("PUT", "/api/connections/forged", json=forged, headers=ADMIN)
    assert refused.status_code == 400
    assert [e["field"] for e in refused.json()["errors"]] == ["privacy_acceptance"]
    assert api.request("GET", "/api/connections/forged", headers=ADMIN).status_code == 404

    made = api.request("PUT", "/api/connections/accepted", json={"accept_privacy_terms": True}, headers=ADMIN)
    acceptance = made.json()["privacy_acceptance"]
    assert acceptance["accepted_by"] == "ada@contoso.com"
    assert datetime.fromisoformat(acceptance["accepted_at"]) >= started.replace(microsecond=0)
    # An edit without accepting again keeps what was recorded.
    edited = api.request("PUT", "/api/connections/accepted", json={"display_name": "Shop"}, headers=ADMIN)
    assert edited.json()["privacy_acceptance"] == acceptance
    if not host.required:
        by_key = api.request("PUT", "/api/connections/keyed", json={"accept_privacy_terms": True})
        assert by_key.json()["privacy_acceptance"]["accepted_by"] == "function key"


def test_run_ids_that_are_not_run_ids_are_400(host):
    for target in (
        "/api/runs/..%2F..%2Fx",
        "/api/runs/a%2Fb.c",
        "/api/runs/..",
        "/api/runs/vip-weekly.%2E%2E",
        "/api/runs/team-weekly.ab%5Ccd",
        "/api/runs/nodot",
    ):
        status = raw_request(host.base_url, "GET", target, headers=ADMIN)
        assert status in (400, 404), (target, status)
        if "%2F" in target or target.endswith("nodot") or "%5C" in target or "%2E" in target:
            assert status == 400, (target, status)
