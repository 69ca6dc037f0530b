"""The Durable Functions extension's HTTP API over a :class:`LocalDurableDriver`.

``df.DurableOrchestrationClient(binding_json)`` talks HTTP to the host: to ``rpcBaseUrl`` for its own
calls (``POST orchestrators/{name}[/{id}]``, ``GET/DELETE instances/[{id}]``, ``POST
instances/{id}/terminate|raiseEvent/{event}|restart``), and it hands out the ``managementUrls`` of the
binding (under ``/runtime/webhooks/durabletask``) to callers. Both route sets are served here, with the
status codes the SDK expects. The webhook URLs are rebased onto the origin of the triggering request by
``create_check_status_response``, so the local host should serve this app on the same origin as its
HTTP-triggered functions (mount it at ``/``, or add :func:`durable_routes` to its own router).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from localdev.durable.driver import (
    InstanceExistsError,
    InstanceNotFoundError,
    InstanceStatus,
    LocalDurableDriver,
    RuntimeStatus,
)
from localdev.durable.history import parse_time
from localdev.durable.registry import FunctionNotFoundError

RPC_PREFIX = "/durabletask"
WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"
INSTANCE_PLACEHOLDER = "INSTANCEID"


def _query(task_hub: str, connection: str) -> str:
    return f"taskHub={quote(task_hub)}&connection={quote(connection)}"


def management_urls(webhook_base: str, instance_id: str, task_hub: str, connection: str = "Storage") -> dict:
    """The ``managementUrls`` payload (``id``, ``statusQueryGetUri``, ``sendEventPostUri``, ...)."""
    base = f"{webhook_base.rstrip('/')}/instances/{instance_id}"
    query = _query(task_hub, connection)
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{base}?{query}",
        "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{base}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{base}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{base}?{query}",
        "restartPostUri": f"{base}/restart?{query}",
        "suspendPostUri": f"{base}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{base}/resume?reason={{text}}&{query}",
    }


def client_binding_json(base_url: str, task_hub: str = "LocalHub", connection: str = "Storage") -> str:
    """The JSON string the host passes to a ``durableClient`` binding, for a server at ``base_url``
    (e.g. ``http://127.0.0.1:7071``) serving :func:`durable_rpc_app`."""
    origin = base_url.rstrip("/")
    webhook = f"{origin}{WEBHOOK_PREFIX}"
    query = _query(task_hub, connection)
    return json.dumps(
        {
            "taskHubName": task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{webhook}/orchestrators/{{functionName}}[/{{instanceId}}]?{query}",
                "createAndWaitOnNewInstancePostUri": (
                    f"{webhook}/orchestrators/{{functionName}}[/{{instanceId}}]"
                    f"?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{query}"
                ),
            },
            "managementUrls": management_urls(webhook, INSTANCE_PLACEHOLDER, task_hub, connection),
            "baseUrl": webhook,
            "requiredQueryStringParameters": query,
            "rpcBaseUrl": f"{origin}{RPC_PREFIX}/",
            "httpBaseUrl": "",
            "maxGrpcMessageSizeInBytes": 0,
            "grpcHttpClientTimeout": "00:01:40",
        }
    )


def _body_to_json(raw: bytes) -> str | None:
    """Request body -> the JSON text of the value. The SDK client posts ``json=df_dumps(value)``, i.e.
    a JSON *string* holding the JSON text; other clients post the value itself."""
    if not raw.strip():
        return None
    value = json.loads(raw)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return json.dumps(value)
        return value
    return json.dumps(value)


def _flag(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.strip().lower() == "true"


def _time_param(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    return parse_time(value) if value else None


def _statuses_param(request: Request) -> list[str] | None:
    value = request.query_params.get("runtimeStatus")
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"Message": message, "ExceptionMessage": message}, status_code=status_code)


def durable_routes(driver: LocalDurableDriver, connection: str = "Storage") -> list[BaseRoute]:
    """Routes relative to the extension's base path (mount them under ``/durabletask`` and
    ``/runtime/webhooks/durabletask``)."""

    def webhook_base(request: Request) -> str:
        return f"{str(request.base_url).rstrip('/')}{WEBHOOK_PREFIX}"

    def accepted(request: Request, instance_id: str) -> JSONResponse:
        payload = management_urls(webhook_base(request), instance_id, driver.task_hub, connection)
        headers = {"Location": payload["statusQueryGetUri"], "Retry-After": "10"}
        return JSONResponse(payload, status_code=202, headers=headers)

    async def start(request: Request) -> Response:
        name = request.path_params["function_name"]
        try:
            input_json = _body_to_json(await request.body())
        except json.JSONDecodeError:
            return _error(400, "Only application/json request content is supported")
        try:
            instance_id = await run_in_threadpool(
                driver.start_new, name, request.path_params.get("instance_id"), input_json=input_json
            )
        except FunctionNotFoundError as exc:
            return _error(400, str(exc))
        except InstanceExistsError as exc:
            return _error(409, str(exc))
        return accepted(request, instance_id)

    def status_response(request: Request, status: InstanceStatus) -> Response:
        body = status.to_json(show_input=_flag(request, "showInput", default=True))
        if status.runtime_status is RuntimeStatus.FAILED and _flag(request, "returnInternalServerErrorOnFailure"):
            return JSONResponse(body, status_code=500)
        if status.is_terminal:
            return JSONResponse(body, status_code=200)
        location = management_urls(webhook_base(request), status.instance_id, driver.task_hub, connection)
        return JSONResponse(body, status_code=202, headers={"Location": location["statusQueryGetUri"]})

    async def get_instance(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        status = await run_in_threadpool(
            driver.get_status,
            instance_id,
            _flag(request, "showHistory"),
            _flag(request, "showHistoryOutput"),
        )
        if status is None:
            return JSONResponse(f"No instance with ID '{instance_id}' found.", status_code=404)
        return status_response(request, status)

    async def list_instances(request: Request) -> Response:
        statuses = await run_in_threadpool(
            lambda: driver.list_instances(
                runtime_status=_statuses_param(request),
                created_from=_time_param(request, "createdTimeFrom"),
                created_to=_time_param(request, "createdTimeTo"),
                instance_id_prefix=request.query_params.get("instanceIdPrefix"),
            )
        )
        show_input = _flag(request, "showInput", default=True)
        return JSONResponse([s.to_json(show_input=show_input) for s in statuses])

    async def purge_instance(request: Request) -> Response:
        deleted = await run_in_threadpool(driver.purge, request.path_params["instance_id"])
        return JSONResponse({"instancesDeleted": int(deleted)}, status_code=200 if deleted else 404)

    async def purge_many(request: Request) -> Response:
        count = await run_in_threadpool(
            lambda: driver.purge_by(
                created_from=_time_param(request, "createdTimeFrom"),
                created_to=_time_param(request, "createdTimeTo"),
                runtime_status=_statuses_param(request),
            )
        )
        return JSONResponse({"instancesDeleted": count}, status_code=200 if count else 404)

    async def terminate(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        try:
            done = await run_in_threadpool(driver.terminate, instance_id, request.query_params.get("reason"))
        except InstanceNotFoundError as exc:
            return _error(404, str(exc))
        return Response(status_code=202) if done else _error(410, f"Instance {instance_id} already finished")

    async def raise_event(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        try:
            data_json = _body_to_json(await request.body())
        except json.JSONDecodeError:
            return _error(400, "Only application/json request content is supported")
        try:
            done = await run_in_threadpool(
                lambda: driver.raise_event(instance_id, request.path_params["event_name"], data_json=data_json)
            )
        except InstanceNotFoundError as exc:
            return _error(404, str(exc))
        return Response(status_code=202) if done else _error(410, f"Instance {instance_id} already finished")

    async def restart(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        status = await run_in_threadpool(driver.get_status, instance_id)
        if status is None:
            return _error(404, f"No instance with ID '{instance_id}' found.")
        new_id = None if _flag(request, "restartWithNewInstanceId", default=True) else instance_id
        input_json = json.dumps(status.input) if status.input is not None else None
        try:
            started = await run_in_threadpool(lambda: driver.start_new(status.name, new_id, input_json=input_json))
        except InstanceExistsError as exc:
            return _error(409, str(exc))
        return JSONResponse(started, status_code=202)

    async def not_supported(request: Request) -> Response:
        operation = request.url.path.rsplit("/", 1)[-1]
        return _error(501, f"'{operation}' is not supported by the local durable driver")

    return [
        Route("/orchestrators/{function_name}", start, methods=["POST"]),
        Route("/orchestrators/{function_name}/{instance_id}", start, methods=["POST"]),
        Route("/instances", list_instances, methods=["GET"]),
        Route("/instances/", list_instances, methods=["GET"]),
        Route("/instances", purge_many, methods=["DELETE"]),
        Route("/instances/", purge_many, methods=["DELETE"]),
        Route("/instances/{instance_id}", get_instance, methods=["GET"]),
        Route("/instances/{instance_id}", purge_instance, methods=["DELETE"]),
        Route("/instances/{instance_id}/terminate", terminate, methods=["POST"]),
        Route("/instances/{instance_id}/raiseEvent/{event_name}", raise_event, methods=["POST"]),
        Route("/instances/{instance_id}/restart", restart, methods=["POST"]),
        Route("/instances/{instance_id}/rewind", not_supported, methods=["POST"]),
        Route("/instances/{instance_id}/suspend", not_supported, methods=["POST"]),
        Route("/instances/{instance_id}/resume", not_supported, methods=["POST"]),
    ]


def durable_rpc_app(driver: LocalDurableDriver, connection: str = "Storage") -> Starlette:
    """A Starlette app serving the API at ``/durabletask/...`` (rpcBaseUrl) and
    ``/runtime/webhooks/durabletask/...`` (the management URLs)."""
    routes = durable_routes(driver, connection)
    return Starlette(routes=[Mount(RPC_PREFIX, routes=routes), Mount(WEBHOOK_PREFIX, routes=routes)])


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a background thread; yields its base URL.

    The listening socket is bound before the thread starts, so the URL accepts connections at once.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="durable-rpc", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
