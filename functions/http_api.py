"""HTTP bindings (function-level keys, never anonymous): thin adapters over shared.api.

Every HTTP function is declared with `@route(...)`, which names who may call each of its methods
(`shared.api.Access`) and checks it before the function runs; the function gets the caller from `caller()`
for the per-connection checks in shared.api. tests/test_http_roles.py fails for an HTTP function of the app
that was not declared here."""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar

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

        @functools.wraps(fn)
        async def checked(req: func.HttpRequest, **bindings):
            try:
                who = Caller.from_request(req.headers.get(PRINCIPAL), get_settings().auth_require_principal)
                who.check(access[req.method.upper()])
            except HttpError as exc:  # 401 (no or unreadable principal) or 403, with a one-line reason
                return _reply(*error(exc.status, str(exc)))
            token = _CALLER.set(who)
            try:
                result = fn(req, **bindings)
                return await result if inspect.isawaitable(result) else result
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


async def _guarded(api: Api, fn) -> func.HttpResponse:
    async def handler():
        return await fn()

    return _reply(*await api.call(handler))


def _flag(req: func.HttpRequest, name: str) -> bool | None:
    value = req.params.get(name)
    return None if value is None else value.lower() in ("1", "true", "yes")


@route("exports", GET=Access.READ)
async def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    api = _api()
    return await _guarded(api, lambda: api.list_exports(caller()))


@route("exports/{name}", GET=Access.READ, PUT=Access.CONTRIBUTE, DELETE=Access.CONTRIBUTE)
async def export_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return await _guarded(api, lambda: api.get_export(name, who))
    if req.method == "DELETE":
        return await _guarded(api, lambda: api.delete_export(name, who))
    return await _guarded(api, lambda: api.put_export(name, req.get_body(), who))


@bp.durable_client_input(client_name="client")
@route("exports/{name}/runs", POST=Access.CONTRIBUTE, GET=Access.READ)
async def export_runs(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return await _guarded(api, lambda: api.list_runs(name, who))

    async def start():
        return await api.start_run(client, name, bool(_flag(req, "dry_run")), _flag(req, "full"), who)

    status, body = await api.call(start)
    if status != 202:
        return _reply(status, body)
    return client.create_check_status_response(req, body["id"])


@bp.durable_client_input(client_name="client")
@route("runs/{instance_id}", GET=Access.READ)
async def get_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = _api()
    return await _guarded(api, lambda: api.get_run(client, req.route_params["instance_id"], caller()))


@route("connections/{name}", GET=Access.READ, PUT=Access.ADMIN)
async def connection_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name, who = _api(), req.route_params["name"], caller()
    if req.method == "GET":
        return await _guarded(api, lambda: api.get_connection(name, who))
    return await _guarded(api, lambda: api.put_connection(name, req.get_body(), who))


@route("history", GET=Access.READ)
async def run_history(req: func.HttpRequest) -> func.HttpResponse:
    """An HTML page of recent runs of the exports the caller may see."""
    return func.HttpResponse(await _api().history_page(caller()), mimetype="text/html", charset="utf-8")
