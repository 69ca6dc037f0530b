"""A local stand-in of the Azure Key Vault *secrets* endpoint, good enough for the real SDK.

It speaks the part of the data-plane REST API the app uses (api-version is required but not checked):

    GET /secrets/{name}[/{version}]?api-version=...   -> 200 SecretBundle | 404 SecretNotFound | 403 (disabled)
    PUT /secrets/{name}?api-version=...                -> 200 SecretBundle (a new version)

and Key Vault's challenge authentication: a request without a valid bearer token gets
401 + ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
resource="https://vault.azure.net"``. The SDK only sends tokens over HTTPS, so `serve()` serves TLS
(a test CA made with `trustme`; point the SDK at it with ``connection_verify=<ca file>``) and the client
must pass ``verify_challenge_resource=False`` because the host is 127.0.0.1, not *.vault.azure.net.

The stand-in never logs secret values (uvicorn's access log is off; it would only show paths anyway).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

VAULT_RESOURCE = "https://vault.azure.net"
DEFAULT_TENANT = "00000000-0000-0000-0000-00000000cafe"
DEFAULT_TOKEN = "standin-access-token"
_NAME_RE = re.compile(r"[0-9A-Za-z-]{1,127}")


@dataclass
class _Version:
    version: str
    value: str = field(repr=False)
    enabled: bool
    content_type: str | None
    tags: dict[str, str]
    created: int


@dataclass
class Call:
    """One authorized request the stand-in served (challenge round trips are counted separately)."""

    method: str
    name: str
    version: str
    status: int


@dataclass
class KeyVaultStandin:
    """In-memory vault state plus the ASGI app. Thread-safe: the server thread and the test share it."""

    tenant_id: str = DEFAULT_TENANT
    tokens: frozenset[str] = frozenset({DEFAULT_TOKEN})
    calls: list[Call] = field(default_factory=list)
    challenges: int = 0
    _secrets: dict[str, list[_Version]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- direct access for tests (no HTTP) ---

    def put(self, name: str, value: str, *, enabled: bool = True) -> str:
        """Store a new version (like a rotation done elsewhere); returns the version id."""
        version = _Version(uuid.uuid4().hex, value, enabled, None, {}, int(time.time()))
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(version)
        return version.version

    def value(self, name: str) -> str | None:
        with self._lock:
            versions = self._secrets.get(name.lower())
            return versions[-1].value if versions else None

    def calls_for(self, name: str, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for c in self.calls if c.method == method and c.name.lower() == name.lower())

    def reset(self) -> None:
        with self._lock:
            self._secrets.clear()
            self.calls.clear()
            self.challenges = 0

    # --- HTTP ---

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/secrets/{name}", self._secret, methods=["GET", "PUT"]),
                Route("/secrets/{name}/", self._secret, methods=["GET"]),
                Route("/secrets/{name}/{version}", self._secret, methods=["GET"]),
            ]
        )

    def _challenge(self) -> JSONResponse:
        with self._lock:
            self.challenges += 1
        header = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", resource="{VAULT_RESOURCE}"'
        )
        return JSONResponse(
            _error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
            status_code=401,
            headers={"WWW-Authenticate": header},
        )

    async def _secret(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return self._challenge()
        if "api-version" not in request.query_params:
            return JSONResponse(
                _error("MissingApiVersionParameter", "The api-version query parameter is required."), 400
            )
        name = request.path_params["name"]
        version = request.path_params.get("version", "")
        if request.method == "PUT":
            response = await self._set(request, name)
        else:
            response = self._get(request, name, version)
        with self._lock:
            self.calls.append(Call(request.method, name, version, response.status_code))
        return response

    def _get(self, request: Request, name: str, version: str) -> JSONResponse:
        if not _NAME_RE.fullmatch(name):
            return JSONResponse(_error("BadParameter", f"The request URI contains an invalid name: {name}"), 400)
        with self._lock:
            versions = list(self._secrets.get(name.lower(), ()))
        found = [v for v in versions if v.version == version] if version else versions[-1:]
        if not found:
            what = f"{name}/{version}" if version else name
            return JSONResponse(
                _error(
                    "SecretNotFound",
                    f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted "
                    "this secret you may be able to recover it using the correct recovery command.",
                ),
                404,
            )
        if not found[0].enabled:
            return JSONResponse(_error("Forbidden", "Operation get is not allowed on a disabled secret."), 403)
        return JSONResponse(_bundle(request, name, found[0]))

    async def _set(self, request: Request, name: str) -> JSONResponse:
        if not _NAME_RE.fullmatch(name):
            return JSONResponse(_error("BadParameter", f"The request URI contains an invalid name: {name}"), 400)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            return JSONResponse(_error("BadParameter", "Property value is required."), 400)
        attributes = body.get("attributes") or {}
        version = _Version(
            uuid.uuid4().hex,
            body["value"],
            attributes.get("enabled", True) is not False,
            body.get("contentType"),
            dict(body.get("tags") or {}),
            int(time.time()),
        )
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(version)
        return JSONResponse(_bundle(request, name, version))


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _bundle(request: Request, name: str, v: _Version) -> dict:
    base = str(request.base_url).rstrip("/")
    bundle = {
        "value": v.value,
        "id": f"{base}/secrets/{name}/{v.version}",
        "attributes": {
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.created,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        },
        "tags": v.tags,
    }
    if v.content_type:
        bundle["contentType"] = v.content_type
    return bundle


@contextmanager
def serve(standin: KeyVaultStandin, certfile: str, keyfile: str | None = None) -> Iterator[str]:
    """Serve the stand-in over HTTPS on a free loopback port in a background thread; yields its URL.

    The listening socket is bound and listening before the thread starts, so a client can connect at once
    (the kernel queues the connection until the server accepts it): no readiness polling needed.
    `certfile` holds the server certificate chain (and the key, unless `keyfile` is given).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        standin.app(),
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="keyvault-standin", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
