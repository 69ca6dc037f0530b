"""The HTTP API's logic, free of azure.functions: each handler takes plain inputs and returns
(status, JSON body). functions/http_api.py adapts them to func.HttpRequest / HttpResponse."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError

from shared.finishing.history import (
    RUNS_SHOWN,
    group_rejects,
    recent_reports,
    rejects_name,
    render_page,
    render_run,
    report_name,
)
from shared.planning import native
from shared.platform.config import (
    NAME_RE,
    ConfigNotFoundError,
    ConfigStore,
    ConfigValidationError,
    Connection,
    ExportConfig,
    PrivacyAcceptance,
    validation_errors,
)
from shared.platform.errors import ConfigError, ExportError
from shared.platform.runtime import blob_store, open_store
from shared.platform.secrets import KeyVaultSecrets, SecretError, SecretProvider
from shared.platform.settings import AppSettings
from shared.pushing.klaviyo.client import KlaviyoClient
from shared.pushing.klaviyo.errors import KlaviyoError
from shared.runs import ACTIVE, build_run, instance_id, latest_source

MAX_BODY_BYTES = 256 * 1024
# '<export>.<digest>[-m<time>]': an instance id names its export, and a blob path is built from it.
INSTANCE_RE = re.compile(rf"{NAME_RE.pattern}\.[A-Za-z0-9-]{{1,64}}")
Reply = tuple[int, dict | list]


def error(status: int, message: str, errors: list | None = None) -> Reply:
    body: dict = {"error": message}
    if errors:
        body["errors"] = errors
    return status, body


def parse_json(body: bytes) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise _HttpError(413, f"request body over {MAX_BODY_BYTES // 1024} KB")
    try:
        data = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        raise _HttpError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _HttpError(400, "request body must be a JSON object")
    return data


class _HttpError(Exception):
    def __init__(self, status: int, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.errors = status, errors


def principal_roles(header: str | None) -> set[str] | None:
    """Roles from App Service authentication's X-MS-CLIENT-PRINCIPAL (base64 JSON); None without one."""
    if not header:
        return None
    try:
        doc = orjson.loads(base64.b64decode(header))
        claims = doc.get("claims") or []
        role_type = doc.get("role_typ", "roles")
        return {c["val"].lower() for c in claims if c.get("typ") in (role_type, "roles") and "val" in c}
    except (ValueError, TypeError, AttributeError, KeyError):
        raise _HttpError(401, "X-MS-CLIENT-PRINCIPAL cannot be read") from None


def principal_name(header: str | None) -> str | None:
    if not header:
        return None
    try:
        doc = orjson.loads(base64.b64decode(header))
    except ValueError:
        return None
    for claim in doc.get("claims") or []:
        if claim.get("typ") in ("name", "preferred_username", doc.get("name_typ")):
            return claim.get("val")
    return doc.get("userDetails")


def may_use(conn: Connection, roles: set[str] | None) -> bool:
    """Without App Service authentication (function keys only) the key holder is trusted; with it, an
    administrators-only connection needs the 'admin' role, and any connection 'admin' or 'contributor'."""
    if roles is None:
        return True
    if "admin" in roles:
        return True
    return conn.allowed_roles == "contributors" and "contributor" in roles


class Api:
    def __init__(self, settings: AppSettings, configs: ConfigStore, secrets: SecretProvider, client_factory=None):
        self.settings = settings
        self.configs = configs
        self.secrets = secrets
        self.client_factory = client_factory or (lambda key: KlaviyoClient(key, settings.klaviyo_base_url))

    # --- guarded dispatch ---
    # Handlers that only read and write storage are plain functions: the Functions worker runs a plain `def`
    # on its thread pool, while an `async def` runs on its one event loop, where a blocking SDK call would stall
    # every other invocation. Handlers that need the durable client (async) move their blocking part to a thread.

    def call(self, handler, *args, **kwargs) -> Reply:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            return _error_reply(exc)

    async def call_async(self, handler, *args, **kwargs) -> Reply:
        try:
            return await handler(*args, **kwargs)
        except Exception as exc:
            return _error_reply(exc)

    # --- exports ---

    def list_exports(self) -> Reply:
        return 200, [cfg.model_dump(mode="json") for cfg in self.configs.list_exports()]

    def get_export(self, name: str) -> Reply:
        return 200, self.configs.get_export(name).model_dump(mode="json")

    def put_export(self, name: str, body: bytes, roles: set[str] | None) -> Reply:
        data = parse_json(body)
        if data.setdefault("name", name) != name:
            raise _HttpError(400, "the body's name differs from the URL's", [{"field": "name", "message": "mismatch"}])
        self.configs._export_path(name)  # validates the name before anything else
        cfg = ExportConfig.model_validate(data)
        existed = self.configs.store.exists(self.configs._export_path(name))
        conn = self.configs.get_connection(cfg.connection) if self._connection_exists(cfg.connection) else None
        if conn is not None and not may_use(conn, roles):
            raise _HttpError(403, f"you may not use connection '{conn.name}'")
        saved = self.configs.put_export(cfg)
        return (200 if existed else 201), saved.model_dump(mode="json")

    def delete_export(self, name: str) -> Reply:
        if not self.configs.delete_export(name):
            raise ConfigNotFoundError(f"no export named '{name}'")
        return 200, {"deleted": name}

    def _connection_exists(self, name: str) -> bool:
        return self.configs.store.exists(self.configs._connection_path(name))

    # --- runs ---

    async def start_run(self, client, name: str, dry_run: bool, full: bool | None, roles: set[str] | None) -> Reply:
        cfg, conn = await asyncio.to_thread(self._export_and_connection, name)
        if not may_use(conn, roles):
            raise _HttpError(403, f"you may not run exports on connection '{conn.name}'")
        conn.require_accepted()
        for status in await client.get_status_by(runtime_status=None) or []:
            iid = status.instance_id or ""
            state = status.runtime_status.value if status.runtime_status else ""
            if iid.startswith(f"{name}.") and state in ACTIVE:
                return error(409, f"export '{name}' is already running (instance {iid})")
        path, etag = await asyncio.to_thread(self._latest_source, cfg)
        iid = instance_id(cfg.name, f"{cfg.source.container}/{path}", etag, datetime.now(UTC))
        run = build_run(cfg, conn, path, self.settings, iid, dry_run=dry_run, full_resync=full, trigger="http")
        await client.start_new("export_orchestrator", iid, run)
        return 202, {"id": iid}

    def _export_and_connection(self, name: str) -> tuple[ExportConfig, Connection]:
        cfg = self.configs.get_export(name)
        return cfg, self.configs.get_connection(cfg.connection)

    def _latest_source(self, cfg: ExportConfig) -> tuple[str, str]:
        segments = open_store(blob_store("segments", cfg.source.container), self.settings)
        path = latest_source(segments, cfg)
        return path, segments.info(path).etag

    async def get_run(self, client, instance: str) -> Reply:
        status = await client.get_status(instance)
        if status is None or status.runtime_status is None:
            raise _HttpError(404, f"no run with id '{instance}'")
        body = {
            "instance_id": instance,
            "runtime_status": status.runtime_status.value,
            "progress": status.custom_status,
            "created_time": _iso(status.created_time),
            "last_updated_time": _iso(status.last_updated_time),
        }
        if isinstance(status.output, dict):
            body["report"] = status.output
        return 200, body

    def _reports(self):
        return open_store(blob_store("app", self.settings.reports_container), self.settings)

    def list_runs(self, name: str, limit: int = RUNS_SHOWN) -> Reply:
        self.configs.get_export(name)
        return 200, recent_reports(self._reports(), name, limit)

    async def history_page(self, client=None, roles: set[str] | None = None, key_query: str = "") -> str:
        """The run console: runs in progress (from the durable client, if given) and the run history of
        every configured export, with "Run now" for the exports `roles` may run."""
        history, can_run = await asyncio.to_thread(self._history, roles)  # storage reads: off the event loop
        active = []
        for status in (await client.get_status_by(runtime_status=None) or []) if client is not None else []:
            state = status.runtime_status.value if status.runtime_status else ""
            iid = status.instance_id or ""
            if state in ACTIVE and INSTANCE_RE.fullmatch(iid):
                active.append({
                    "instance_id": iid, "export": iid.partition(".")[0], "runtime_status": state,
                    "created_time": _iso(status.created_time), "progress": status.custom_status,
                })  # fmt: skip
        active.sort(key=lambda r: r["created_time"] or "", reverse=True)
        return render_page(history, active, can_run, key_query)

    def _history(self, roles: set[str] | None) -> tuple[dict, dict]:
        """(recent reports per export, whether `roles` may run each export)."""
        reports = self._reports()
        exports = self.configs.list_exports()
        connections = {c.name: c for c in self.configs.list_connections()}
        can_run = {cfg.name: cfg.connection in connections and may_use(connections[cfg.connection], roles)
                   for cfg in exports}  # fmt: skip
        return {cfg.name: recent_reports(reports, cfg.name) for cfg in exports}, can_run

    def _check_run_access(self, instance: str, roles: set[str] | None) -> None:
        """A run is seen by those who may use its export's connection (admins only once it is gone)."""
        if not INSTANCE_RE.fullmatch(instance or ""):
            raise _HttpError(404, f"no run with id '{instance[:80]}'")
        if roles is None or "admin" in roles:
            return
        try:
            cfg = self.configs.get_export(instance.partition(".")[0])
            allowed = may_use(self.configs.get_connection(cfg.connection), roles)
        except ConfigError:
            allowed = False
        if not allowed:
            raise _HttpError(403, "you may not see runs of this export")

    async def run_page(self, client, instance: str, roles: set[str] | None, key_query: str = "") -> tuple[int, str]:
        """One run's page: its report, jobs and rejected rows by reason, or its live progress."""
        finished = await asyncio.to_thread(self._finished_run, instance, roles)  # storage reads: off the event loop
        report, status, groups, kinds = None, None, [], {}
        if finished is not None:
            report, groups, kinds = finished
        else:
            found = await client.get_status(instance) if client is not None else None
            if found is None or found.runtime_status is None:
                raise _HttpError(404, f"no run with id '{instance}'")
            status = {"runtime_status": found.runtime_status.value, "progress": found.custom_status or {}}
        return 200, render_run(instance, report, status, groups, kinds, key_query)

    def _finished_run(self, instance: str, roles: set[str] | None) -> tuple[dict, list, dict] | None:
        """(report, rejected rows by reason, counts by kind) of a finished run; None while it has no report."""
        self._check_run_access(instance, roles)
        reports = self._reports()
        if not reports.exists(report_name(instance)):
            return None
        report, groups, kinds = orjson.loads(reports.read_bytes(report_name(instance))), [], {}
        if reports.exists(rejects_name(instance)):
            groups, kinds = group_rejects(reports.iter_bytes(rejects_name(instance)))
        return report, groups, kinds

    def rejects_file(self, instance: str, roles: set[str] | None) -> tuple[int, bytes]:
        """The run's rejects file (NDJSON: partition, row, reason, kind per line)."""
        self._check_run_access(instance, roles)
        reports = self._reports()
        if not reports.exists(rejects_name(instance)):
            raise _HttpError(404, f"run '{instance}' has no rejects file (yet)")
        return 200, reports.read_bytes(rejects_name(instance))

    # --- connections ---

    def put_connection(self, name: str, body: bytes, roles: set[str] | None, who: str | None) -> Reply:
        if roles is not None and "admin" not in roles:
            raise _HttpError(403, "only administrators may add or change connections")
        data = parse_json(body)
        api_key = data.pop("api_key", None)
        data.setdefault("name", name)
        data.setdefault("secret_name", f"klaviyo-{name}".replace("_", "-"))
        accept = data.pop("accept_privacy_terms", None)
        if accept is True and "privacy_acceptance" not in data:
            data["privacy_acceptance"] = {"accepted_by": who or "function-key holder", "accepted_at": datetime.now(UTC)}
        conn = Connection.model_validate(data)
        if conn.privacy_acceptance is None:
            raise _HttpError(
                400,
                "accept the data privacy terms to use a connection ('accept_privacy_terms': true)",
                [{"field": "privacy_acceptance", "message": "required"}],
            )
        if api_key is not None:
            if not isinstance(api_key, str) or not api_key.strip():
                problem = [{"field": "api_key", "message": "invalid"}]
                raise _HttpError(400, "api_key must be a non-empty string", problem)
            try:
                asyncio.run(self._check_key(api_key))  # on the worker's thread pool: no loop runs here
            except KlaviyoError as exc:
                raise _HttpError(400, f"Klaviyo did not accept the key: {exc}") from None
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from None
            self.secrets.set(conn.secret_name, api_key.strip())
        saved = self.configs.put_connection(conn)
        return 200, saved.model_dump(mode="json")

    async def _check_key(self, api_key: str) -> None:
        async with self.client_factory(api_key) as klaviyo:
            await klaviyo.check_key()

    def get_connection(self, name: str) -> Reply:
        return 200, self.configs.get_connection(name).model_dump(mode="json")

    # --- health ---

    def health(self) -> Reply:
        """What operators check after a deployment: the version, which fast path runs, and whether the app's
        storage and Key Vault answer this identity (never a secret or a key: only yes/no and why not)."""
        storage = _reachable(lambda: self.configs.store.exists(HEALTH_PROBE))
        key_vault: dict = {"configured": isinstance(self.secrets, KeyVaultSecrets)}
        if key_vault["configured"]:
            key_vault.update(_reachable(self.secrets.check_access))
        healthy = storage["reachable"] and key_vault.get("reachable", True)
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "version": app_version(),
            **fast_path(),
            "storage": storage,
            "key_vault": key_vault,
        }
        return (200 if healthy else 503), body


def _error_reply(exc: Exception) -> Reply:
    """The status and body of what a handler raised; anything unexpected is raised again."""
    if isinstance(exc, _HttpError):
        return error(exc.status, str(exc), exc.errors)
    if isinstance(exc, ConfigNotFoundError):
        return error(404, str(exc))
    if isinstance(exc, ConfigValidationError):
        return error(400, str(exc), exc.errors)
    if isinstance(exc, ValidationError):
        return error(400, "invalid configuration", validation_errors(exc))
    if isinstance(exc, ExportError | ConfigError):
        return error(400, str(exc))
    raise exc


HEALTH_PROBE = "health-probe"  # a name read, never written: "not found" is an answer from storage too
VERSION_FILE = Path(__file__).resolve().parent.parent / "VERSION"  # written by `make package`


def app_version() -> str:
    """The packaged version (pyproject's version + the commit), or "dev" where the app runs from the repository."""
    try:
        return VERSION_FILE.read_text().strip() or "dev"
    except OSError:
        return "dev"


def fast_path() -> dict:
    """Which path plans and builds bodies: "kernels" (the C library) or "arrow" (half the speed), and why."""
    return {"fast_path": "kernels" if native.available else "arrow", "fast_path_detail": native.status}


def startup_line() -> str:
    """The line the app logs when the worker loads it."""
    path = fast_path()
    return f"ci-klaviyo-sync {app_version()}: fast path {path['fast_path']} ({path['fast_path_detail']})"


def _reachable(probe) -> dict:
    try:
        probe()
    except SecretError as exc:  # names the vault and the probe secret, never a value
        return {"reachable": False, "error": str(exc)}
    except Exception as exc:  # SDK messages can carry request details: the type and status code are enough
        status = getattr(exc, "status_code", None)
        return {"reachable": False, "error": type(exc).__name__ + (f" (HTTP {status})" if status else "")}
    return {"reachable": True}


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


__all__ = ["Api", "PrivacyAcceptance", "error", "principal_name", "principal_roles"]
