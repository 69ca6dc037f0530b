"""HTTP bindings (function-level keys, never anonymous): thin adapters over shared.api.

Every HTTP function is declared with `@route(...)`, which names who may call each of its methods
(`shared.api.Access`) and checks it before the function runs; the function gets the caller from `caller()`
for the per-connection checks in shared.api. tests/test_http_roles.py fails for an HTTP function of the app
that was not declared here.

Routes that only touch storage are plain `def` (the worker runs them on its thread pool); the ones that need
the durable client are `async def` on the worker's event loop and keep blocking calls off it (shared.api).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from contextvars import ContextVar
from urllib.parse import quote, urlsplit

import azure.durable_functions as df
import azure.functions as func
import orjson

from shared.api import Access, Api, Caller, HttpError, error
from shared.platform.config import ConfigStore
from shared.platform.runtime import blob_store, open_store
from shared.platform.secrets import get_secret_provider
from shared.platform.settings import get_settings

bp = df.Blueprint(http_auth_level=func.AuthLevel.FUNCTION)
PRINCIPAL = "x-ms-client-principal"
# Route -> HTTP method -> who may call it: the one table every HTTP function is in.
ACCESS: dict[str, dict[str, Access]] = {}
_CALLER: ContextVar[Caller] = ContextVar("caller")


def route(route: str, *, auth_level: func.AuthLevel | None = None, **access: Access):
    """`bp.route` for `route` with the methods given, each with who may call it, e.g.
    ``@route("exports/{name}", GET=Access.READ, DELETE=Access.CONTRIBUTE)``. Goes right above the function
    (under `bp.durable_client_input`, which then wraps the checked function)."""

    def register(fn):
        ACCESS[route] = access

        def check(req: func.HttpRequest) -> Caller | func.HttpResponse:
            try:
                who = Caller.from_request(req.headers.get(PRINCIPAL), get_settings().auth_require_principal)
                who.check(access[req.method.upper()])
            except HttpError as exc:  # 401 (no or unreadable principal) or 403, with a one-line reason
                return _reply(*error(exc.status, str(exc)))
            return who

        # The check keeps the function's kind: a plain function stays plain (the worker runs it on its thread
        # pool), a coroutine function stays one (the worker's event loop).
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def checked(req: func.HttpRequest, **bindings):
                who = check(req)
                if not isinstance(who, Caller):
                    return who
                token = _CALLER.set(who)
                try:
                    return await fn(req, **bindings)
                finally:
                    _CALLER.reset(token)

        else:

            @functools.wraps(fn)
            def checked(req: func.HttpRequest, **bindings):
                who = check(req)
                if not isinstance(who, Caller):
                    return who
                token = _CALLER.set(who)
                try:
                    return fn(req, **bindings)
                finally:
                    _CALLER.reset(token)

        return checked

    def decorate(fn):
        options = {} if auth_level is None else {"auth_level": auth_level}
        return bp.route(route=route, methods=list(access), **options)(register(fn))

    return decorate


def caller() -> Caller:
    """The caller of the HTTP function running now, checked by `route`."""
    return _CALLER.get()


def _api() -> Api:
    settings = get_settings()
    configs = ConfigStore(open_store(blob_store("app", settings.config_container), settings))
    return Api(settings, configs, get_secret_provider())


def _reply(status: int, body) -> func.HttpResponse:
    return func.HttpResponse(orjson.dumps(body), status_code=status, mimetype="application/json")


def _guarded(api: Api, fn) -> func.HttpResponse:
    return _reply(*api.call(fn))


def _flag(req: func.HttpRequest, name: str) -> bool | None:
    value = req.params.get(name)
    return None if value is None else value.lower() in ("1", "true", "yes")


@route("exports", GET=Access.READ)
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    api = _api()
    return _guarded(api, lambda: api.list_exports(caller()))


@route("exports/{name}", GET=Access.READ, PUT=Access.CONTRIBUTE, DELETE=Access.CONTRIBUTE)
def export_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return _guarded(api, lambda: api.get_export(name, who))
    if req.method == "DELETE":
        return _guarded(api, lambda: api.delete_export(name, who))
    return _guarded(api, lambda: api.put_export(name, req.get_body(), who))


@bp.durable_client_input(client_name="client")
@route("exports/{name}/runs", POST=Access.CONTRIBUTE, GET=Access.READ)
async def export_runs(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return await asyncio.to_thread(_guarded, api, lambda: api.list_runs(name, who))

    async def start():
        return await api.start_run(client, name, bool(_flag(req, "dry_run")), _flag(req, "full"), who)

    if req.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        # A browser posting from another site (the console's buttons are same-origin): refuse, so a page
        # elsewhere cannot start runs with a signed-in operator's cookies.
        return _reply(403, {"error": "runs are not started from other sites"})
    status, body = await api.call_async(start)
    if status != 202:
        return _reply(status, body)
    if req.params.get("from") == "console":  # the console's buttons: on to the run's page
        location = f"/api/history/{quote(body['id'], safe='.-_')}{_key_query(req)}"
        return func.HttpResponse(status_code=303, headers={"Location": location})
    return _run_started(req, client, body["id"])


def _run_started(req: func.HttpRequest, client: df.DurableOrchestrationClient, run_id: str) -> func.HttpResponse:
    """202 with the app's own status URL (``GET /api/runs/{id}``: progress, then the report; the caller's function
    key, which is not repeated here) beside the durable extension's management URLs, as
    ``create_check_status_response`` answers."""
    links = client.get_client_response_links(req, run_id)
    parts = urlsplit(req.url)
    api_root = parts.path[: parts.path.rfind("/exports/")]  # the route prefix ("/api"), as the request came in
    run_url = f"{parts.scheme}://{parts.netloc}{api_root}/runs/{quote(run_id, safe='')}"
    body = {"id": run_id, "runStatusUri": run_url, **links}
    headers = {"Location": links["statusQueryGetUri"], "Retry-After": "10"}
    return func.HttpResponse(orjson.dumps(body), status_code=202, mimetype="application/json", headers=headers)


@bp.durable_client_input(client_name="client")
@route("runs/{instance_id}", GET=Access.READ)
async def get_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = _api()
    return _reply(*await api.call_async(api.get_run, client, req.route_params["instance_id"], caller()))


@route("connections/{name}", GET=Access.READ, PUT=Access.ADMIN)
def connection_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return _guarded(api, lambda: api.get_connection(name, who))
    return _guarded(api, lambda: api.put_connection(name, req.get_body(), who))


def _key_query(req: func.HttpRequest) -> str:
    """A function key given in the URL (a browser cannot send the header), carried on to the page's links."""
    code = req.params.get("code")
    return f"?code={quote(code, safe='')}" if code else ""


def _html(status: int, body) -> func.HttpResponse:
    if isinstance(body, str):
        return func.HttpResponse(body, status_code=status, mimetype="text/html", charset="utf-8")
    return _reply(status, body)


@bp.durable_client_input(client_name="client")
@route("history", GET=Access.READ)
async def run_history(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """The run console: runs in progress and recent runs of the exports the caller may see."""
    api, who = _api(), caller()

    async def page():
        return 200, await api.history_page(client, who, _key_query(req))

    return _html(*await api.call_async(page))


@bp.durable_client_input(client_name="client")
@route("history/{instance_id}", GET=Access.READ)
async def run_detail(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """One run's page: report, Klaviyo jobs, rejected rows by reason (or its live progress)."""
    api, instance, who = _api(), req.route_params["instance_id"], caller()

    async def page():
        return await api.run_page(client, instance, who, _key_query(req))

    return _html(*await api.call_async(page))


@route("runs/{instance_id}/rejects", GET=Access.READ)
def run_rejects(req: func.HttpRequest) -> func.HttpResponse:
    """The run's rejects file (NDJSON), as a download."""
    api, instance, who = _api(), req.route_params["instance_id"], caller()
    status, body = api.call(lambda: api.rejects_file(instance, who))
    if status != 200:
        return _reply(status, body)
    disposition = f'attachment; filename="{instance}.rejects.ndjson"'  # the id was checked: [a-z0-9._-] only
    return func.HttpResponse(
        body, status_code=200, mimetype="application/x-ndjson", headers={"Content-Disposition": disposition}
    )


@route("health", GET=Access.ANYONE)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Version, fast path (kernels or arrow), storage and Key Vault reachable: 200 when healthy, else 503."""
    api = _api()
    return _guarded(api, api.health)


@route("erasure", POST=Access.ADMIN)
def erasure(req: func.HttpRequest) -> func.HttpResponse:
    """Erase people's emails from every export's sync state (administrators only: it spans every connection)."""
    api = _api()
    return _guarded(api, lambda: api.erase(req.get_body()))
