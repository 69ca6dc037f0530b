"""``python -m localdev host``: the Functions app on one machine, without Azure Functions Core Tools.

:class:`LocalHost` does what the Functions host and the Python worker do for this app, with the same code:

* **Indexing.** ``app.get_functions()`` and each function's JSON, checked first by
  :func:`check_function_metadata` (what the real host would reject fails here too).
* **HTTP functions.** Every ``httpTrigger`` function is served under the route prefix of ``host.json``
  (``api``) with its route template and methods. The handler gets a real ``func.HttpRequest`` (method,
  URL, headers, query parameters, route parameters, body) and its ``func.HttpResponse`` is sent back.
  ``/api/*`` needs a function key, as in Azure: ``?code=KEY`` or the ``x-functions-key`` header (401
  otherwise). The key is the ``LOCAL_FUNCTION_KEY`` setting, or a random one shown at start.
* **Durable client bindings.** A ``durableClient`` parameter receives the binding JSON string that the
  host passes (:func:`localdev.durable.client_binding_json` for this host's origin); the SDK's
  ``DFApp.durable_client_input`` wrapper turns it into a ``DurableOrchestrationClient``, as in Azure.
* **The durable extension.** Its HTTP API is served on the same origin (``/durabletask/...`` for the
  client, ``/runtime/webhooks/durabletask/...`` for the status URLs), over a
  :class:`~localdev.durable.LocalDurableDriver` whose history lives in Azurite (``durable-history``), so a
  host that was stopped or killed resumes its runs when it starts again (``driver.resume()``). In Azure
  those webhooks take the host's system key; here they are open, on loopback only.
* **Blob events.** :mod:`localdev.host_blobs` polls the blob trigger's container and delivers new or changed
  blobs that Event Grid's subscription filter would deliver, binding the trigger parameter to the type it is
  annotated with (an ``azure.storage.blob.BlobClient`` for the SDK type, through the extension's converter).
  The blob extension's webhook (``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>`` with an
  Event Grid ``BlobCreated`` event) delivers a blob on demand, as under Core Tools.

Function code runs on one event loop of its own (the "worker"), apart from the HTTP server's loop, as in the
Functions host, where the worker is a separate process; synchronous functions run on a thread pool.
Settings come from the ``settings`` passed to :class:`LocalHost`, then the environment, then
``local.settings.json``'s ``Values`` (the environment wins over the file, as with Core Tools), then the app's own
defaults (``shared.platform.settings``); the process environment is restored on stop.
The containers the app uses (created by Bicep in Azure) are created in Azurite if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from localdev.host_blobs import BlobWatch, BlobWatcher, SeenBlobs, blob_binding_value, compile_blob_path

log = logging.getLogger("localdev.host")

ROOT = Path(__file__).resolve().parent.parent
HOST_JSON = ROOT / "host.json"
LOCAL_SETTINGS = ROOT / "local.settings.json"
DEFAULT_PORT = 7071
HISTORY_CONTAINER = "durable-history"
DEFAULT_TASK_HUB = "LocalHub"
KEY_SETTING = "LOCAL_FUNCTION_KEY"
BLOBS_WEBHOOK = "/runtime/webhooks/blobs"  # the blob extension's Event Grid endpoint
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the Functions host's default limit on a request body
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
DIRECTIONS = {"in", "out", "inout"}
_FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")
_BINDING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\$return")
_SETTING_REF = re.compile(r"%([^%]+)%")
# Azure's own 401 has no body; here the answer says what is missing (the key is printed when the host starts).
UNAUTHORIZED = (
    "this route needs a function key: add ?code=KEY or the header x-functions-key: KEY "
    "(the local host prints its key when it starts; LOCAL_FUNCTION_KEY sets it)"
)


class HostError(RuntimeError):
    """The host cannot start (bad settings, bad function metadata, port in use...)."""


# ---------------------------------------------------------------------------------------------- settings


def load_local_settings(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """``Values`` of a ``local.settings.json``; a missing file is no settings."""
    doc = _read_json_file(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise HostError(f"{path} must hold a JSON object")
    if doc.get("IsEncrypted"):
        raise HostError(f"{path} is encrypted; the local host reads plain values only")
    values = doc.get("Values") or {}
    if not isinstance(values, dict):
        raise HostError(f"{path}: 'Values' must be an object")
    return {str(k): "" if v is None else str(v) for k, v in values.items()}


def read_host_json(path: str | os.PathLike[str] | None) -> dict:
    doc = _read_json_file(path)
    return doc if isinstance(doc, dict) else {}


def _read_json_file(path: str | os.PathLike[str] | None):
    """The JSON in a file (BOM allowed), None when there is no such file; HostError when it cannot be read."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise HostError(f"{path} cannot be read: {exc}") from None


def setting_refs(value: str) -> list[str]:
    return _SETTING_REF.findall(value)


def resolve_refs(value: str, environ: Mapping[str, str]) -> str:
    """``%NAME%`` -> the app setting ``NAME`` (binding expressions, as the host resolves them)."""
    missing = [name for name in setting_refs(value) if name not in environ]
    if missing:
        raise HostError(f"app setting {', '.join(missing)} (used in {value!r}) is not set")
    return _SETTING_REF.sub(lambda m: environ[m.group(1)], value)


def app_setting_defaults() -> dict[str, str]:
    """The app's own defaults (``shared.platform.settings.AppSettings``) by setting name. The host sets those not set
    otherwise, so binding expressions such as ``%SEGMENTS_CONTAINER%`` resolve as they do in Azure, where the
    deployment sets every one of them."""
    from shared.platform.settings import AppSettings

    defaults = {}
    for field in AppSettings.model_fields.values():
        if field.alias and field.default not in (None, "") and not callable(field.default):
            defaults[field.alias] = str(field.default)
    return defaults


def _clear_setting_caches() -> None:
    """The app reads its settings once per process (lru_cache); a host (re)configuring it must clear them."""
    from shared.platform.secrets import get_secret_provider
    from shared.platform.settings import get_settings

    get_settings.cache_clear()
    get_secret_provider.cache_clear()


# ---------------------------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class FunctionInfo:
    """One indexed function: what the host knows from its JSON and what the worker knows from Python."""

    name: str
    fn: Callable[..., Any]
    bindings: tuple[dict[str, Any], ...]
    parameters: tuple[str, ...]
    hints: dict[str, Any]

    @property
    def trigger(self) -> dict[str, Any] | None:
        return next((b for b in self.bindings if str(b.get("type", "")).endswith("Trigger")), None)

    @property
    def trigger_type(self) -> str | None:
        trigger = self.trigger
        return trigger.get("type") if trigger else None

    @property
    def durable_clients(self) -> list[dict[str, Any]]:
        return [b for b in self.bindings if b.get("type") == "durableClient"]


def _app_functions(app: Any) -> list[Any]:
    from localdev.durable.registry import _app_functions as app_functions

    return app_functions(app)


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def _parameters(fn: Callable[..., Any]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds)


def describe_functions(app: Any) -> list[FunctionInfo]:
    """The app's functions as the host indexes them (call :func:`check_function_metadata` first)."""
    out = []
    for function in _app_functions(app):
        doc = json.loads(function.get_function_json())
        fn = function.get_user_function()
        out.append(
            FunctionInfo(
                name=function.get_function_name(),
                fn=fn,
                bindings=tuple(doc["bindings"]),
                parameters=_parameters(fn),
                hints=_type_hints(fn),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- routes

_ROUTE_PARAM = re.compile(r"\{(\*{0,2})([A-Za-z_][A-Za-z0-9_]*)((?::[^{}?=]+)*)(\?)?(?:=([^{}]*))?\}")
_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "guid": r"\{?[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}?",
}


@dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET Core route template as the Functions host reads ``route``: literal segments (matched
    without regard to case), ``{name}``, ``{name:int}`` and other constraints, ``{name?}``, ``{*rest}``."""

    template: str
    pattern: re.Pattern[str]
    params: tuple[str, ...]
    precedence: tuple[int, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        text = template.strip().strip("/")
        pieces: list[str] = []
        params: list[str] = []
        precedence: list[int] = []
        for segment in text.split("/") if text else []:
            if not segment:
                raise ValueError(f"route {template!r} has an empty segment")
            whole = _ROUTE_PARAM.fullmatch(segment)
            if whole and (whole.group(1) or whole.group(4) is not None or whole.group(5) is not None):
                name = whole.group(2)
                params.append(name)
                inner = ".*" if whole.group(1) else cls._constraint(whole.group(3))
                pieces.append(f"(?:/(?P<{name}>{inner}))?")
                precedence.append(5 if whole.group(1) else 4)
                continue
            regex, literal, pos, kinds = [], [], 0, set()
            for m in _ROUTE_PARAM.finditer(segment):
                if m.group(1) or m.group(4) is not None:
                    raise ValueError(f"route {template!r}: catch-all and optional parameters must be whole segments")
                literal.append(segment[pos : m.start()])
                regex += [re.escape(literal[-1]), f"(?P<{m.group(2)}>{cls._constraint(m.group(3))})"]
                params.append(m.group(2))
                kinds.add(2 if m.group(3) else 3)
                pos = m.end()
            literal.append(segment[pos:])
            if "{" in literal[-1] or "}" in literal[-1]:
                raise ValueError(f"route {template!r}: cannot read segment {segment!r}")
            regex.append(re.escape(literal[-1]))
            pieces.append("/" + "".join(regex))
            # ASP.NET's order: literal segments first, then mixed ones, constrained parameters, plain parameters.
            precedence.append(0 if not kinds else (1 if "".join(literal) else min(kinds)))
        if len(set(params)) != len(params):
            raise ValueError(f"route {template!r} names a parameter twice")
        pattern = re.compile("^" + "".join(pieces) + "/?$", re.IGNORECASE | re.DOTALL)
        return cls(template, pattern, tuple(params), tuple(precedence))

    @staticmethod
    def _constraint(spec: str) -> str:
        for item in (s for s in spec.split(":") if s):
            base = item.split("(", 1)[0].lower()
            if base in _CONSTRAINTS:
                return _CONSTRAINTS[base]
        return "[^/]+"

    def match(self, path: str) -> dict[str, str] | None:
        """``path``: the raw (percent-encoded) request path below the route prefix. Route values are
        percent-decoded except ``%2F``, as Kestrel leaves an encoded '/' in a path segment."""
        found = self.pattern.fullmatch("/" + path.strip("/") if path.strip("/") else "")
        if found is None:
            return None
        return {k: _decode_segment(v) for k, v in found.groupdict().items() if v is not None}


def _decode_segment(value: str) -> str:
    return unquote(re.sub(r"%2[Ff]", "%252F", value))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, as the server normalises a request path before routing."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return "/".join(out) or "/"


# ---------------------------------------------------------------------------------------------- metadata


def check_function_metadata(app: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """Problems the Functions host (or the Python worker) would have with the app's functions: every function's
    JSON parses, has one trigger, binding names match the Python parameters and are unique, HTTP triggers are
    not anonymous and have a readable route and methods, blob triggers have ``path``, ``connection`` and
    ``source: "EventGrid"`` and a parameter type the worker can bind. With ``environ``, the app settings the
    bindings name (``%NAME%``, connections) must be set. Returns a list of problems (empty: all is well)."""
    try:
        functions = _app_functions(app)
    except Exception as exc:
        return [f"indexing the app failed: {type(exc).__name__}: {exc}"]
    problems: list[str] = []
    seen_names: set[str] = set()
    routes: list[tuple[str, RouteTemplate, set[str]]] = []
    for function in functions:
        try:
            name = str(function.get_function_name())
        except Exception as exc:
            problems.append(f"a function has no readable name: {exc}")
            continue
        where = f"function '{name}'"
        if not _FUNCTION_NAME.fullmatch(name):
            problems.append(f"{where}: the name must be a letter then letters, digits, '_' or '-' (128 at most)")
        if name.lower() in seen_names:
            problems.append(f"{where}: the name is used twice (function names are case-insensitive)")
        seen_names.add(name.lower())
        try:
            doc = json.loads(function.get_function_json())
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: its function JSON does not parse: {exc}")
            continue
        problems += _check_function(where, name, doc, function.get_user_function(), environ, routes)
    problems += _route_conflicts(routes)
    return problems


def _check_function(
    where: str,
    name: str,
    doc: Any,
    fn: Callable[..., Any],
    environ: Mapping[str, str] | None,
    routes: list[tuple[str, RouteTemplate, set[str]]],
) -> list[str]:
    problems: list[str] = []
    bindings = doc.get("bindings") if isinstance(doc, dict) else None
    if not isinstance(bindings, list) or not bindings or not all(isinstance(b, dict) for b in bindings):
        return [f"{where}: 'bindings' must be a non-empty list of objects"]
    names: list[str] = []
    for b in bindings:
        label = f"{where}, binding {b.get('name')!r}"
        if not isinstance(b.get("type"), str) or not b["type"]:
            problems.append(f"{label}: no 'type'")
        if not isinstance(b.get("name"), str) or not _BINDING_NAME.fullmatch(b["name"]):
            problems.append(f"{label}: 'name' must be a Python identifier or '$return'")
        if str(b.get("direction", "")).lower() not in DIRECTIONS:
            problems.append(f"{label}: 'direction' must be IN, OUT or INOUT")
        names.append(str(b.get("name")))
    if len(set(names)) != len(names):
        problems.append(f"{where}: two bindings share a name")
    triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
    if len(triggers) != 1:
        problems.append(f"{where}: needs exactly one trigger binding, has {len(triggers)}")

    try:
        params = set(_parameters(fn))
    except (TypeError, ValueError) as exc:
        return [*problems, f"{where}: its Python signature cannot be read: {exc}"]
    try:
        hints = _type_hints(fn)
    except Exception as exc:
        problems.append(f"{where}: its parameter annotations cannot be resolved: {type(exc).__name__}: {exc}")
        hints = {}
    bound = {n for n in names if n != "$return"}
    for missing in sorted(bound - params):
        problems.append(f"{where}: binding '{missing}' has no Python parameter of that name")
    for unbound in sorted(params - bound - {"context"}):
        problems.append(f"{where}: Python parameter '{unbound}' has no binding")

    for b in bindings:
        kind = b.get("type")
        label = f"{where}, {kind} '{b.get('name')}'"
        if kind == "httpTrigger":
            problems += _check_http(label, name, b, bindings, routes)
        elif kind == "blobTrigger":
            problems += _check_blob(label, b, hints.get(str(b.get("name"))), environ)
        elif kind == "activityTrigger" and not (b.get("activity") or b.get("name")):
            problems.append(f"{label}: no activity name")
        elif kind == "orchestrationTrigger" and not (b.get("orchestration") or b.get("name")):
            problems.append(f"{label}: no orchestration name")
        if environ is not None:
            for key, value in b.items():
                for ref in setting_refs(value) if isinstance(value, str) else []:
                    if ref not in environ:
                        problems.append(f"{label}: app setting '{ref}' (in '{key}') is not set")
    return problems


def _check_http(
    label: str, name: str, b: dict, bindings: list[dict], routes: list[tuple[str, RouteTemplate, set[str]]]
) -> list[str]:
    problems = []
    auth = str(b.get("authLevel", "")).lower()
    if auth not in ("function", "admin", "anonymous"):
        problems.append(f"{label}: 'authLevel' must be function or admin (is {b.get('authLevel')!r})")
    elif auth == "anonymous":
        problems.append(f"{label}: anonymous HTTP functions are not allowed here (use function-level keys)")
    methods = b.get("methods")
    wanted = set(HTTP_METHODS)
    if methods is not None:
        if not isinstance(methods, list) or not methods:
            problems.append(f"{label}: 'methods' must be a non-empty list")
        else:
            wanted = {str(m).upper() for m in methods}
            unknown = sorted(wanted - set(HTTP_METHODS) - {"TRACE"})
            if unknown:
                problems.append(f"{label}: unknown HTTP methods {', '.join(unknown)}")
    try:
        template = RouteTemplate.parse(str(b.get("route") or name))
    except ValueError as exc:
        problems.append(f"{label}: {exc}")
    else:
        routes.append((name, template, wanted))
    if not any(x.get("type") == "http" and str(x.get("direction", "")).lower() == "out" for x in bindings):
        problems.append(f"{label}: no 'http' output binding for the response")
    return problems


def _check_blob(label: str, b: dict, annotation: Any, environ: Mapping[str, str] | None) -> list[str]:
    problems = []
    path, connection = b.get("path"), b.get("connection")
    if not isinstance(path, str) or "/" not in path.strip("/"):
        problems.append(f"{label}: 'path' must be 'container/pattern'")
    if not isinstance(connection, str) or not connection:
        problems.append(f"{label}: no 'connection' (the app setting naming the storage account)")
    elif environ is not None and not any(
        environ.get(connection + suffix) for suffix in ("", "__blobServiceUri", "__serviceUri", "__accountName")
    ):
        problems.append(f"{label}: app setting '{connection}' (or '{connection}__blobServiceUri') is not set")
    if b.get("source") != "EventGrid":
        problems.append(f"{label}: 'source' must be \"EventGrid\" (Flex Consumption has no polling blob trigger)")
    if annotation is not None and not _blob_type_bindable(annotation):
        problems.append(
            f"{label}: the worker cannot bind a blob trigger to {getattr(annotation, '__name__', annotation)}"
        )
    return problems


def _blob_type_bindable(annotation: Any) -> bool:
    import azure.functions as func
    from azurefunctions.extensions.base import SdkType, get_binding_registry

    if isinstance(annotation, type) and issubclass(annotation, SdkType):
        converter = get_binding_registry().get("blobTrigger")
        return converter is not None and converter.check_input_type_annotation(annotation)
    return annotation in (bytes, str) or (isinstance(annotation, type) and issubclass(annotation, func.InputStream))


def _route_conflicts(routes: list[tuple[str, RouteTemplate, set[str]]]) -> list[str]:
    problems = []
    for i, (name_a, a, methods_a) in enumerate(routes):
        for name_b, b, methods_b in routes[i + 1 :]:
            if a.pattern.pattern == b.pattern.pattern and methods_a & methods_b:
                both = ", ".join(sorted(methods_a & methods_b))
                problems.append(f"functions '{name_a}' and '{name_b}' both serve route '{a.template}' for {both}")
    return problems


# ---------------------------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class InvocationContext:
    """What a function declaring a ``context`` parameter receives (the fields of ``func.Context`` used)."""

    invocation_id: str
    function_name: str
    function_directory: str
    trace_context: Any = None
    retry_context: Any = None


class _Worker:
    """One event loop on its own thread for function code (the Python worker's), plus a thread pool for
    synchronous functions."""

    def __init__(self, threads: int = 4):
        self.loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="functions-sync")
        self._thread = threading.Thread(target=self._run, name="functions-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        result = await self.loop.run_in_executor(self._pool, functools.partial(fn, **kwargs))
        return await result if inspect.isawaitable(result) else result

    def close(self) -> None:
        from azure.durable_functions.models.utils import http_utils

        async def shutdown() -> None:
            # The SDK keeps one aiohttp session per process, bound to the loop that made it: close it with this
            # loop, and give the next host a fresh lock (the SDK's module-level lock binds to a loop once used).
            await http_utils._close_session()
            http_utils._session_lock = asyncio.Lock()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self.submit(shutdown()).result(timeout=30)
        except Exception:  # stopping anyway: logged, and the loop is stopped below
            log.exception("shutting the functions worker down failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- the host


class LocalHost:
    """The app's Functions host in this process. ``start()``/``stop()`` or use it as a context manager.

    ``port=0`` picks a free port. ``poll_interval=None`` switches the blob watcher off (events can still be
    delivered with :meth:`deliver_blob`). ``settings`` override everything else; ``settings_file`` is a
    ``local.settings.json`` (None: none). ``clock_scale`` shrinks durable timers (see the driver).
    """

    def __init__(
        self,
        app: Any = None,
        *,
        port: int = DEFAULT_PORT,
        bind: str = "127.0.0.1",
        poll_interval: float | None = 1.0,
        settings: Mapping[str, str] | None = None,
        settings_file: str | os.PathLike[str] | None = LOCAL_SETTINGS,
        host_json: str | os.PathLike[str] | None = HOST_JSON,
        history_container: str = HISTORY_CONTAINER,
        clock_scale: float = 1.0,
    ):
        self._app = app
        self.port = port
        self.bind = bind
        self.poll_interval = poll_interval
        self._settings = dict(settings or {})
        self._settings_file = settings_file
        self._host_json = host_json
        self.history_container = history_container
        self.clock_scale = clock_scale
        self.base_url = ""
        self.function_key = ""
        self.task_hub = DEFAULT_TASK_HUB
        self.route_prefix = "api"
        self.functions: dict[str, FunctionInfo] = {}
        self.resumed: list[str] = []
        self.driver: Any = None
        self.watcher: BlobWatcher | None = None
        self._routes: list[tuple[RouteTemplate, set[str], FunctionInfo]] = []
        self._watches: dict[str, BlobWatch] = {}
        self._worker: _Worker | None = None
        self._stack: ExitStack | None = None
        self._saved_environ: dict[str, str] | None = None
        self._client_binding = ""
        self._activity_concurrency = 8
        self._orchestrator_concurrency = 4

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalHost:
        if self._stack is not None:
            raise HostError("the host is already running")
        self._stack = ExitStack()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self._stack is not None
        self._apply_settings()
        self._stack.callback(self._restore_settings)
        app = self._app
        if app is None:
            import function_app

            app = function_app.app
        problems = check_function_metadata(app, os.environ)
        if problems:
            raise HostError("the app's function metadata has problems:\n  " + "\n  ".join(problems))
        self._read_host_json()
        self.function_key = os.environ.get(KEY_SETTING) or secrets.token_urlsafe(32)
        functions = describe_functions(app)
        self.functions = {f.name: f for f in functions}

        from shared.platform.settings import get_settings

        settings = get_settings()
        if not settings.app_storage:
            raise HostError("AzureWebJobsStorage is not set: point it at Azurite (its connection string)")
        if not settings.segments_storage:
            raise HostError("SEGMENTS_STORAGE is not set: the local host watches it with a connection string")
        self._ensure_containers(settings)

        from localdev.durable import BlobHistoryStore, LocalDurableDriver

        history = BlobHistoryStore.from_connection_string(settings.app_storage, self.history_container)
        self.driver = LocalDurableDriver(
            app,
            history,
            activity_concurrency=self._activity_concurrency,
            orchestrator_concurrency=self._orchestrator_concurrency,
            clock_scale=self.clock_scale,
            task_hub=self.task_hub,
        )
        self._stack.callback(self.driver.close)
        self.resumed = self.driver.resume()
        for instance_id in self.resumed:
            log.info("resuming durable instance %s", instance_id)

        self._worker = worker = _Worker()
        self._stack.callback(self._stop_worker, worker)
        self._routes = self._http_routes(functions)

        from localdev.durable.rpc import serve_in_thread

        try:
            self.base_url = self._stack.enter_context(serve_in_thread(self._asgi_app(), self.bind, self.port))
        except OSError as exc:
            raise HostError(
                f"cannot listen on {self.bind}:{self.port}: {exc.strerror or exc} (--port 0 picks a free port)"
            ) from None

        from localdev.durable import client_binding_json

        self._client_binding = client_binding_json(self.base_url, self.task_hub)
        self._watches = self._blob_watches(functions)
        from azure.storage.blob import ContainerClient

        seen = SeenBlobs(ContainerClient.from_connection_string(settings.app_storage, self.history_container))
        self.watcher = BlobWatcher(
            list(self._watches.values()),
            os.environ,
            seen,
            self._deliver,
            interval=self.poll_interval or 1.0,
            csv_prefix=settings.csv_prefix,
        )
        if self.poll_interval is not None:
            self.watcher.start()
            self._stack.callback(self.watcher.stop)

    def stop(self) -> None:
        """Stop watching, stop serving, stop the worker, stop the durable driver (in that order), and put the
        process environment back."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _stop_worker(self, worker: _Worker) -> None:
        self._worker = None
        worker.close()

    @property
    def running(self) -> bool:
        return self._stack is not None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # -- settings ------------------------------------------------------------------------------------------
    def _apply_settings(self) -> None:
        self._saved_environ = dict(os.environ)
        for key, value in load_local_settings(self._settings_file).items():
            if key not in os.environ:  # as Core Tools: the environment wins over local.settings.json
                os.environ[key] = value
        os.environ.update(self._settings)
        for name, value in app_setting_defaults().items():
            os.environ.setdefault(name, value)
        _clear_setting_caches()

    def _restore_settings(self) -> None:
        saved, self._saved_environ = self._saved_environ, None
        if saved is not None:
            for key in set(os.environ) - set(saved):
                del os.environ[key]
            os.environ.update(saved)
        _clear_setting_caches()

    def _read_host_json(self) -> None:
        doc = read_host_json(self._host_json)
        extensions = doc.get("extensions") or {}
        prefix = (extensions.get("http") or {}).get("routePrefix")
        self.route_prefix = "api" if prefix is None else str(prefix).strip("/")
        durable = extensions.get("durableTask") or {}
        hub = durable.get("hubName")
        if hub:
            try:
                self.task_hub = resolve_refs(str(hub), os.environ) or DEFAULT_TASK_HUB
            except HostError:
                self.task_hub = DEFAULT_TASK_HUB
        self._activity_concurrency = int(durable.get("maxConcurrentActivityFunctions") or 8)
        self._orchestrator_concurrency = int(durable.get("maxConcurrentOrchestratorFunctions") or 4)

    def _ensure_containers(self, settings: Any) -> None:
        """What Bicep creates in Azure: the app's containers, and the segments container."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        wanted = [
            (settings.app_storage, settings.config_container),
            (settings.app_storage, settings.workspace_container),
            (settings.app_storage, settings.reports_container),
            (settings.app_storage, self.history_container),
            (settings.segments_storage, settings.segments_container),
        ]
        from azure.core.exceptions import AzureError

        for conn, container in wanted:
            try:
                with contextlib.suppress(ResourceExistsError):
                    # No retries: an unreachable Azurite should say so now, not after the SDK's minute of backoff.
                    BlobServiceClient.from_connection_string(conn, retry_total=0).create_container(container)
            except (AzureError, ValueError) as exc:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise HostError(
                    f"cannot create container '{container}' (is Azurite running, and do AzureWebJobsStorage and "
                    f"SEGMENTS_STORAGE point at it?): {first_line}"
                ) from None

    # -- indexing ----------------------------------------------------------------------------------------
    def _http_routes(self, functions: Iterable[FunctionInfo]) -> list[tuple[RouteTemplate, set[str], FunctionInfo]]:
        routes = []
        for f in functions:
            trigger = f.trigger
            if not trigger or trigger.get("type") != "httpTrigger":
                continue
            methods = {str(m).upper() for m in trigger.get("methods") or HTTP_METHODS}
            routes.append((RouteTemplate.parse(str(trigger.get("route") or f.name)), methods, f))
        routes.sort(key=lambda r: (r[0].precedence, r[0].template))
        return routes

    def _blob_watches(self, functions: Iterable[FunctionInfo]) -> dict[str, BlobWatch]:
        watches = {}
        for f in functions:
            trigger = f.trigger
            if not trigger or trigger.get("type") != "blobTrigger":
                continue
            container, pattern = compile_blob_path(resolve_refs(str(trigger["path"]), os.environ))
            watches[f.name] = BlobWatch(
                f.name, str(trigger["name"]), str(trigger["connection"]), container, pattern, trigger.get("source", "")
            )
        return watches

    # -- invoking functions ------------------------------------------------------------------------------
    def _arguments(self, info: FunctionInfo, kwargs: dict[str, Any]) -> dict[str, Any]:
        args = dict(kwargs)
        for binding in info.durable_clients:
            hub = resolve_refs(str(binding.get("taskHub") or self.task_hub), os.environ)
            value = self._client_binding
            if hub != self.task_hub:
                from localdev.durable import client_binding_json

                value = client_binding_json(self.base_url, hub)
            args.setdefault(binding["name"], value)
        if "context" in info.parameters and "context" not in args:
            args["context"] = InvocationContext(str(uuid.uuid4()), info.name, str(ROOT))
        return args

    async def _invoke(self, info: FunctionInfo, kwargs: dict[str, Any], reason: str) -> Any:
        assert self._worker is not None
        args = self._arguments(info, kwargs)
        invocation = args["context"].invocation_id if "context" in args else str(uuid.uuid4())
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", info.name, reason, invocation)
        started = time.monotonic()
        try:
            result = await self._worker.call(info.fn, args)
        except Exception:  # logged as the Functions host does, then raised to the caller
            elapsed = (time.monotonic() - started) * 1000
            log.exception("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", info.name, invocation, elapsed)
            raise
        elapsed = (time.monotonic() - started) * 1000
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", info.name, invocation, elapsed)
        return result

    def call_function(self, name: str, reason: str = "called from the host API", **kwargs: Any) -> Any:
        """Run a function on the worker as the host would (durable client bindings added) and return what it
        returned; raises what it raised."""
        if self._worker is None:
            raise HostError("the host is not running")
        info = self.functions[name]
        return self._worker.submit(self._invoke(info, kwargs, reason)).result()

    def blob_value(self, function: str, blob_name: str) -> Any:
        """What the worker passes to ``function``'s blob trigger parameter for ``blob_name``."""
        watch = self._watches[function]
        annotation = self.functions[function].hints.get(watch.parameter, bytes)
        return blob_binding_value(annotation, watch.connection, watch.container, blob_name, os.environ)

    def deliver_blob(self, function: str, blob_name: str) -> Any:
        """Deliver one blob event to a blob trigger function now (what the watcher does for a new blob)."""
        watch = self._watches[function]
        reason = f"New blob detected(EventGrid): {watch.container}/{blob_name}"
        return self.call_function(function, reason, **{watch.parameter: self.blob_value(function, blob_name)})

    def _deliver(self, watch: BlobWatch, blob_name: str) -> None:
        self.deliver_blob(watch.function, blob_name)

    # -- HTTP ------------------------------------------------------------------------------------------
    def _asgi_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route

        from localdev.durable.rpc import RPC_PREFIX, WEBHOOK_PREFIX, durable_routes

        routes: list[Any] = [
            Mount(RPC_PREFIX, routes=durable_routes(self.driver)),
            Mount(WEBHOOK_PREFIX, routes=durable_routes(self.driver)),
            Route(BLOBS_WEBHOOK, self._blob_webhook, methods=["POST"]),
        ]
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        routes += [
            Route(f"{prefix}/{{path:path}}", self._http, methods=list(HTTP_METHODS)),
            Route(prefix or "/", self._http, methods=list(HTTP_METHODS)),
        ]
        return Starlette(routes=routes)

    async def _blob_webhook(self, request: Any) -> Any:
        """The blob extension's Event Grid webhook, as Core Tools serves it: ``POST /runtime/webhooks/blobs?
        functionName=Host.Functions.<name>`` with ``aeg-event-type: Notification`` and an array of Event Grid
        ``BlobCreated`` events (Event Grid schema) delivers each blob to that function now. A subscription's
        validation event is answered. In Azure this URL takes the ``blobs_extension`` system key; here, as the
        durable webhooks, it is open on loopback."""
        from azure.storage.blob import BlobClient
        from starlette.responses import JSONResponse

        name = request.query_params.get("functionName", "").removeprefix("Host.Functions.")
        watch = self._watches.get(name)
        if watch is None:
            known = ", ".join(f"Host.Functions.{n}" for n in self._watches)
            return JSONResponse({"error": f"functionName must be a blob trigger function: {known}"}, 404)
        try:
            events = json.loads(await request.body())
            events = events if isinstance(events, list) else [events]
            kind = request.headers.get("aeg-event-type", "")
            if kind == "SubscriptionValidation":
                return JSONResponse({"validationResponse": events[0]["data"]["validationCode"]})
            if kind != "Notification":
                return JSONResponse({"error": "the header aeg-event-type must be Notification"}, 400)
            blobs = []
            for event in events:
                if event.get("eventType") != "Microsoft.Storage.BlobCreated":
                    continue
                blob = BlobClient.from_blob_url(event["data"]["url"])
                if blob.container_name != watch.container:
                    message = f"{name} watches container '{watch.container}', not '{blob.container_name}'"
                    return JSONResponse({"error": message}, 400)
                blobs.append(blob.blob_name)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            problem = "expected a JSON array of Event Grid events with data.url"
            return JSONResponse({"error": f"{problem} ({type(exc).__name__}: {exc})"}, 400)
        for blob_name in blobs:
            try:
                await asyncio.to_thread(self.deliver_blob, name, blob_name)
            except Exception:  # logged by _invoke; Event Grid would retry
                return JSONResponse({"error": f"{name} failed on {blob_name}: see the host's log"}, 500)
        return JSONResponse({"delivered": blobs}, 202)

    def _match(self, path: str, method: str) -> tuple[FunctionInfo, dict[str, str]] | None:
        for template, methods, info in self._routes:
            values = template.match(path)
            if values is not None and method in methods:
                return info, values
        return None

    def _authorized(self, request: Any) -> bool:
        given = request.headers.get("x-functions-key") or request.query_params.get("code") or ""
        return hmac.compare_digest(given.encode(), self.function_key.encode())

    async def _http(self, request: Any) -> Any:
        import azure.functions as func
        from starlette.responses import JSONResponse, Response

        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = remove_dot_segments(raw.decode("latin-1"))
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        if prefix and not (path.lower() == prefix.lower() or path.lower().startswith(prefix.lower() + "/")):
            return Response(status_code=404)
        found = self._match(path[len(prefix) :], request.method.upper())
        if found is None:
            return Response(status_code=404)
        info, route_params = found
        auth = str((info.trigger or {}).get("authLevel", "function")).lower()
        if auth != "anonymous" and not self._authorized(request):
            return JSONResponse({"error": UNAUTHORIZED}, status_code=401)
        body = await _read_body(request, MAX_REQUEST_BYTES)
        if body is None:
            return Response(status_code=413)
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        req = func.HttpRequest(
            method=request.method.upper(),
            url=str(request.url),
            headers=headers,
            params=dict(request.query_params),
            route_params=route_params,
            body=body,
        )
        assert self._worker is not None and info.trigger is not None
        future = self._worker.submit(
            self._invoke(info, {info.trigger["name"]: req}, "This function was invoked by HTTP")
        )
        try:
            result = await asyncio.wrap_future(future)
        except Exception:  # already logged by call_function; the client gets the host's plain 500
            return Response(status_code=500)
        return _to_response(result)


async def _read_body(request: Any, limit: int) -> bytes | None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _to_response(result: Any) -> Any:
    import azure.functions as func
    from starlette.responses import Response

    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers.items())
        if not any(k.lower() == "content-type" for k in headers):
            charset = f"; charset={result.charset}" if result.charset else ""
            headers["Content-Type"] = f"{result.mimetype}{charset}"
        return Response(result.get_body(), status_code=result.status_code, headers=headers)
    if result is None:
        return Response(status_code=204)
    if isinstance(result, str | bytes):
        return Response(result, status_code=200, media_type="text/plain")
    return Response(json.dumps(result), status_code=200, media_type="application/json")


# ---------------------------------------------------------------------------------------------- command line


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("azure", "httpx", "httpcore", "uvicorn", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def banner(host: LocalHost, notes: Iterable[str] = ()) -> str:
    lines = ["", "Functions:", ""]
    for template, methods, info in sorted(host._routes, key=lambda r: r[2].name):
        shown = ",".join(sorted(m for m in methods if m != "HEAD"))
        prefix = f"/{host.route_prefix}" if host.route_prefix else ""
        lines.append(f"    {info.name}: [{shown}] {host.base_url}{prefix}/{template.template}")
    for watch in host._watches.values():
        every = f"every {host.poll_interval:g} s" if host.poll_interval is not None else "off"
        lines.append(f"    {watch.function}: blobTrigger ({watch.source}) on {watch.container}/, polled {every}")
        webhook = f"{host.base_url}{BLOBS_WEBHOOK}?functionName=Host.Functions.{watch.function}"
        lines.append(f"        Event Grid events: POST {webhook}")
    others = [f for f in host.functions.values() if f.trigger_type not in ("httpTrigger", "blobTrigger")]
    for f in sorted(others, key=lambda f: (str(f.trigger_type), f.name)):
        lines.append(f"    {f.name}: {f.trigger_type}")
    prefix = f"/{host.route_prefix}" if host.route_prefix else ""
    lines += [
        "",
        f"Local host: {host.base_url} (the API under {prefix}/, the run history page at {prefix}/history)",
        f"Function key: {host.function_key}  (?code=KEY or header x-functions-key)",
        f"Durable task hub '{host.task_hub}': {host.base_url}/runtime/webhooks/durabletask/instances",
        *notes,
    ]
    if host.resumed:
        lines.append(f"Resumed {len(host.resumed)} unfinished run(s): {', '.join(host.resumed)}")
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


def serve(
    port: int = DEFAULT_PORT,
    poll_interval: float = 1.0,
    settings_file: str | None = None,
    storage: str | None = None,
    azurite_dir: str | None = None,
) -> int:
    """``python -m localdev host``: serve until Ctrl+C (or SIGTERM). Settings come from ``settings_file`` (default:
    ``local.settings.json`` in the current folder, as with Core Tools, if there is one) under the environment;
    storage and Klaviyo the settings do not name are started here (:mod:`localdev.host_services`)."""
    import signal

    from localdev.host_services import DEFAULT_AZURITE_DIR, start_local_services

    configure_logging()
    path = Path(settings_file or "local.settings.json")
    if settings_file and not path.is_file():
        print(f"error: no such settings file: {settings_file}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        try:
            values = {**load_local_settings(path), **os.environ}  # the environment wins, as in LocalHost
            services = start_local_services(stack, values, storage, Path(azurite_dir or DEFAULT_AZURITE_DIR))
            host = LocalHost(port=port, poll_interval=poll_interval, settings=services.settings, settings_file=path)
            host.start()
        except HostError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        stack.callback(host.stop)  # before the services it runs on stop
        shown = f"Settings: {path.resolve()}" if path.is_file() else "Settings: none (no local.settings.json here)"
        stopped = threading.Event()
        # SIGTERM, and SIGHUP when the terminal closes: stop what was started here, Azurite and the emulator too.
        previous = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            print(banner(host, [shown, *services.notes]), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stopped.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            print("stopping the local host...", file=sys.stderr)
    return 0
