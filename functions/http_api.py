"""HTTP bindings (function-level keys, never anonymous): thin adapters over shared.api.

Routes that only touch storage are plain `def` (the worker runs them on its thread pool); the ones that need
the durable client are `async def` on the worker's event loop and keep blocking calls off it (shared.api).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote, urlsplit

import azure.durable_functions as df
import azure.functions as func
import orjson

from shared.api import Api, principal_name, principal_roles
from shared.platform.config import ConfigStore
from shared.platform.runtime import blob_store, open_store
from shared.platform.secrets import get_secret_provider
from shared.platform.settings import get_settings

bp = df.Blueprint(http_auth_level=func.AuthLevel.FUNCTION)
PRINCIPAL = "x-ms-client-principal"


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


@bp.route(route="exports", methods=["GET"])
def list_exports(req: func.HttpRequest) -> func.HttpResponse:
    api = _api()
    return _guarded(api, api.list_exports)


@bp.route(route="exports/{name}", methods=["GET", "PUT", "DELETE"])
def export_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name = _api(), req.route_params["name"]
    if req.method == "GET":
        return _guarded(api, lambda: api.get_export(name))
    if req.method == "DELETE":
        return _guarded(api, lambda: api.delete_export(name))
    return _guarded(api, lambda: api.put_export(name, req.get_body(), principal_roles(req.headers.get(PRINCIPAL))))


@bp.route(route="exports/{name}/runs", methods=["POST", "GET"])
@bp.durable_client_input(client_name="client")
async def export_runs(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api, name = _api(), req.route_params["name"]
    if req.method == "GET":
        return await asyncio.to_thread(_guarded, api, lambda: api.list_runs(name))

    async def start():
        roles = principal_roles(req.headers.get(PRINCIPAL))
        return await api.start_run(client, name, bool(_flag(req, "dry_run")), _flag(req, "full"), roles)

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


@bp.route(route="runs/{instance_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def get_run(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = _api()
    return _reply(*await api.call_async(api.get_run, client, req.route_params["instance_id"]))


@bp.route(route="connections/{name}", methods=["GET", "PUT"])
def connection_item(req: func.HttpRequest) -> func.HttpResponse:
    api, name = _api(), req.route_params["name"]
    if req.method == "GET":
        return _guarded(api, lambda: api.get_connection(name))
    header = req.headers.get(PRINCIPAL)
    return _guarded(
        api, lambda: api.put_connection(name, req.get_body(), principal_roles(header), principal_name(header))
    )


def _key_query(req: func.HttpRequest) -> str:
    """A function key given in the URL (a browser cannot send the header), carried on to the page's links."""
    code = req.params.get("code")
    return f"?code={quote(code, safe='')}" if code else ""


def _html(status: int, body) -> func.HttpResponse:
    if isinstance(body, str):
        return func.HttpResponse(body, status_code=status, mimetype="text/html", charset="utf-8")
    return _reply(status, body)


@bp.route(route="history", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def run_history(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """The run console: runs in progress and recent runs per export (function key, like every route here)."""
    api = _api()

    async def page():
        roles = principal_roles(req.headers.get(PRINCIPAL))
        return 200, await api.history_page(client, roles, _key_query(req))

    return _html(*await api.call_async(page))


@bp.route(route="history/{instance_id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def run_detail(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """One run's page: report, Klaviyo jobs, rejected rows by reason (or its live progress)."""
    api, instance = _api(), req.route_params["instance_id"]

    async def page():
        roles = principal_roles(req.headers.get(PRINCIPAL))
        return await api.run_page(client, instance, roles, _key_query(req))

    return _html(*await api.call_async(page))


@bp.route(route="runs/{instance_id}/rejects", methods=["GET"])
def run_rejects(req: func.HttpRequest) -> func.HttpResponse:
    """The run's rejects file (NDJSON), as a download."""
    api, instance = _api(), req.route_params["instance_id"]
    status, body = api.call(lambda: api.rejects_file(instance, principal_roles(req.headers.get(PRINCIPAL))))
    if status != 200:
        return _reply(status, body)
    disposition = f'attachment; filename="{instance}.rejects.ndjson"'  # the id was checked: [a-z0-9._-] only
    return func.HttpResponse(
        body, status_code=200, mimetype="application/x-ndjson", headers={"Content-Disposition": disposition}
    )


@bp.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Version, fast path (kernels or arrow), storage and Key Vault reachable: 200 when healthy, else 503."""
    api = _api()
    return _guarded(api, api.health)
