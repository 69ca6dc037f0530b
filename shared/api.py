"""The HTTP API's logic, free of azure.functions: each handler takes plain inputs and returns
(status, JSON body). functions/http_api.py adapts them to func.HttpRequest / HttpResponse."""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import orjson
from pydantic import ValidationError

from shared.finishing.erasure import erase_emails
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
        raise HttpError(413, f"request body over {MAX_BODY_BYTES // 1024} KB")
    try:
        data = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "request body must be a JSON object")
    return data


class HttpError(Exception):
    def __init__(self, status: int, message: str, errors: list | None = None):
        super().__init__(message)
        self.status, self.errors = status, errors


class Access(StrEnum):
    """Who may call a route's method (declared per route in functions/http_api.py, checked by `Caller.can`)."""

    ANYONE = "anyone"  # no role needed (a probe); the function key still applies
    READ = "read"  # reader, contributor, admin: what they may see is filtered per connection
    CONTRIBUTE = "contribute"  # contributor, admin: exports on connections open to contributors
    ADMIN = "admin"  # admin only: connections


FUNCTION_KEY_CALLER = "function key"


@dataclass(frozen=True)
class Caller:
    """Who is calling. ``roles`` is None for a function key holder without an App Service principal,
    who is trusted as an administrator (unless AUTH_REQUIRE_PRINCIPAL, where no such caller is made)."""

    name: str
    roles: frozenset[str] | None = None

    @classmethod
    def from_request(cls, header: str | None, require_principal: bool) -> Caller:
        if not header:
            if require_principal:
                raise HttpError(401, "sign in: this app requires an App Service authentication principal")
            return cls(FUNCTION_KEY_CALLER)
        try:
            doc = orjson.loads(base64.b64decode(header, validate=True))
            claims = doc.get("claims") or []
            role_type = doc.get("role_typ", "roles")
            roles = {c["val"].lower() for c in claims if c.get("typ") in (role_type, "roles") and "val" in c}
            name = next(
                (
                    c.get("val")
                    for c in claims
                    if c.get("typ") in ("name", "preferred_username", doc.get("name_typ")) and c.get("val")
                ),
                doc.get("userDetails"),
            )
        except (ValueError, TypeError, AttributeError, KeyError):
            raise HttpError(401, "X-MS-CLIENT-PRINCIPAL cannot be read") from None
        return cls(str(name or "unnamed principal")[:200], frozenset(roles))

    @property
    def admin(self) -> bool:
        return self.roles is None or "admin" in self.roles

    def can(self, access: Access) -> bool:
        """The route-level rule; object-level rules (which connection) are `may_see` / `may_change`."""
        if access is Access.ANYONE or self.admin:
            return True
        if access is Access.READ:
            return bool(self.roles & {"contributor", "reader"})
        return access is Access.CONTRIBUTE and "contributor" in self.roles

    def may_see(self, conn: Connection | None) -> bool:
        """Admins see everything; contributors and readers what runs on connections open to contributors."""
        if self.admin:
            return True
        open_to_team = conn is not None and conn.allowed_roles == "contributors"
        return open_to_team and bool(self.roles & {"contributor", "reader"})

    def may_change(self, conn: Connection | None) -> bool:
        """Admins change everything; contributors exports on connections open to contributors."""
        if self.admin:
            return True
        return conn is not None and conn.allowed_roles == "contributors" and "contributor" in self.roles

    def check(self, access: Access) -> None:
        if not self.can(access):
            raise HttpError(403, f"'{self.name}' may not do this: it takes the role {NEEDS[access]}")


NEEDS = {Access.READ: "reader, contributor or admin", Access.CONTRIBUTE: "contributor or admin", Access.ADMIN: "admin"}


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

    def _connection(self, name: str) -> Connection | None:
        try:
            return self.configs.get_connection(name)
        except ConfigError:
            return None  # missing or unreadable: only administrators may see or change what uses it

    def _visible_export(self, name: str, caller: Caller) -> ExportConfig:
        cfg = self.configs.get_export(name)
        if not caller.may_see(self._connection(cfg.connection)):
            raise HttpError(403, f"'{caller.name}' may not see export '{name}'")
        return cfg

    def _visible_exports(self, caller: Caller) -> list[ExportConfig]:
        connections: dict[str, Connection | None] = {}
        visible = []
        for cfg in self.configs.list_exports():
            if cfg.connection not in connections:
                connections[cfg.connection] = self._connection(cfg.connection)
            if caller.may_see(connections[cfg.connection]):
                visible.append(cfg)
        return visible

    def list_exports(self, caller: Caller) -> Reply:
        return 200, [cfg.model_dump(mode="json") for cfg in self._visible_exports(caller)]

    def get_export(self, name: str, caller: Caller) -> Reply:
        return 200, self._visible_export(name, caller).model_dump(mode="json")

    def put_export(self, name: str, body: bytes, caller: Caller) -> Reply:
        data = parse_json(body)
        if data.setdefault("name", name) != name:
            raise HttpError(400, "the body's name differs from the URL's", [{"field": "name", "message": "mismatch"}])
        self.configs._export_path(name)  # validates the name before anything else
        cfg = ExportConfig.model_validate(data)
        existed = self.configs.store.exists(self.configs._export_path(name))
        if existed:  # the export's current connection too: moving an export takes it from its connection
            self._changeable_export(name, caller)
        conn = self._connection(cfg.connection)
        if conn is not None and not caller.may_change(conn):
            raise HttpError(403, f"'{caller.name}' may not use connection '{conn.name}'")
        saved = self.configs.put_export(cfg)
        return (200 if existed else 201), saved.model_dump(mode="json")

    def _changeable_export(self, name: str, caller: Caller) -> tuple[ExportConfig, Connection | None]:
        cfg = self.configs.get_export(name)
        conn = self._connection(cfg.connection)
        if not caller.may_change(conn):
            raise HttpError(403, f"'{caller.name}' may not change export '{name}' (connection '{cfg.connection}')")
        return cfg, conn

    def delete_export(self, name: str, caller: Caller) -> Reply:
        self._changeable_export(name, caller)
        if not self.configs.delete_export(name):
            raise ConfigNotFoundError(f"no export named '{name}'")
        return 200, {"deleted": name}

    # --- runs ---

    async def start_run(self, client, name: str, dry_run: bool, full: bool | None, caller: Caller) -> Reply:
        cfg, conn = await asyncio.to_thread(self._runnable_export, name, caller)
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

    def _runnable_export(self, name: str, caller: Caller) -> tuple[ExportConfig, Connection]:
        cfg, conn = self._changeable_export(name, caller)
        if conn is None:
            conn = self.configs.get_connection(cfg.connection)  # its own error: missing or invalid
        return cfg, conn

    def _latest_source(self, cfg: ExportConfig) -> tuple[str, str]:
        segments = open_store(blob_store("segments", cfg.source.container), self.settings)
        path = latest_source(segments, cfg)
        return path, segments.info(path).etag

    async def get_run(self, client, instance: str, caller: Caller) -> Reply:
        await asyncio.to_thread(self._check_run_access, instance, caller)
        status = await client.get_status(instance)
        if status is None or status.runtime_status is None:
            raise HttpError(404, f"no run with id '{instance}'")
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

    def list_runs(self, name: str, caller: Caller, limit: int = RUNS_SHOWN) -> Reply:
        self._visible_export(name, caller)
        return 200, recent_reports(self._reports(), name, limit)

    async def history_page(self, client=None, caller: Caller | None = None, key_query: str = "") -> str:
        """The run console: runs in progress (from the durable client, if given) and the run history of the
        exports the caller may see, with "Run now" for those the caller may run."""
        caller = caller or Caller(FUNCTION_KEY_CALLER)
        history, can_run = await asyncio.to_thread(self._history, caller)  # storage reads: off the event loop
        active = []
        for status in (await client.get_status_by(runtime_status=None) or []) if client is not None else []:
            state = status.runtime_status.value if status.runtime_status else ""
            iid = status.instance_id or ""
            if state in ACTIVE and INSTANCE_RE.fullmatch(iid) and iid.partition(".")[0] in can_run:
                active.append({
                    "instance_id": iid, "export": iid.partition(".")[0], "runtime_status": state,
                    "created_time": _iso(status.created_time), "progress": status.custom_status,
                })  # fmt: skip
        active.sort(key=lambda r: r["created_time"] or "", reverse=True)
        return render_page(history, active, can_run, key_query)

    def _history(self, caller: Caller) -> tuple[dict, dict]:
        """(recent reports per export the caller may see, whether the caller may run each)."""
        reports = self._reports()
        connections: dict[str, Connection | None] = {}
        exports = []
        for cfg in self.configs.list_exports():
            if cfg.connection not in connections:
                connections[cfg.connection] = self._connection(cfg.connection)
            if caller.may_see(connections[cfg.connection]):
                exports.append(cfg)
        can_run = {cfg.name: caller.may_change(connections[cfg.connection]) for cfg in exports}
        return {cfg.name: recent_reports(reports, cfg.name) for cfg in exports}, can_run

    def _check_run_access(self, instance: str, caller: Caller) -> None:
        """A run is seen by those who may see its export (administrators only once the export is gone);
        an id that is not a run id ('..', '/', ...) is 400."""
        export = run_export(instance)
        if caller.admin:
            return
        try:
            self._visible_export(export, caller)
        except ConfigNotFoundError:
            raise HttpError(403, f"'{caller.name}' may not see runs of export '{export}'") from None

    async def run_page(self, client, instance: str, caller: Caller, key_query: str = "") -> tuple[int, str]:
        """One run's page: its report, jobs and rejected rows by reason, or its live progress."""
        finished = await asyncio.to_thread(self._finished_run, instance, caller)  # storage reads: off the loop
        report, status, groups, kinds = None, None, [], {}
        if finished is not None:
            report, groups, kinds = finished
        else:
            found = await client.get_status(instance) if client is not None else None
            if found is None or found.runtime_status is None:
                raise HttpError(404, f"no run with id '{instance}'")
            status = {"runtime_status": found.runtime_status.value, "progress": found.custom_status or {}}
        return 200, render_run(instance, report, status, groups, kinds, key_query)

    def _finished_run(self, instance: str, caller: Caller) -> tuple[dict, list, dict] | None:
        """(report, rejected rows by reason, counts by kind) of a finished run; None while it has no report."""
        self._check_run_access(instance, caller)
        reports = self._reports()
        if not reports.exists(report_name(instance)):
            return None
        report, groups, kinds = orjson.loads(reports.read_bytes(report_name(instance))), [], {}
        if reports.exists(rejects_name(instance)):
            groups, kinds = group_rejects(reports.iter_bytes(rejects_name(instance)))
        return report, groups, kinds

    def rejects_file(self, instance: str, caller: Caller) -> tuple[int, bytes]:
        """The run's rejects file (NDJSON: partition, row, reason, kind per line)."""
        self._check_run_access(instance, caller)
        reports = self._reports()
        if not reports.exists(rejects_name(instance)):
            raise HttpError(404, f"run '{instance}' has no rejects file (yet)")
        return 200, reports.read_bytes(rejects_name(instance))

    # --- connections ---

    def put_connection(self, name: str, body: bytes, caller: Caller) -> Reply:
        caller.check(Access.ADMIN)
        data = parse_json(body)
        if "privacy_acceptance" in data:
            problem = [{"field": "privacy_acceptance", "message": "recorded by the server"}]
            raise HttpError(400, "send 'accept_privacy_terms': true; who accepted and when is recorded here", problem)
        api_key = data.pop("api_key", None)
        data.setdefault("name", name)
        data.setdefault("secret_name", f"klaviyo-{name}".replace("_", "-"))
        accept = data.pop("accept_privacy_terms", None)
        if accept is True:
            data["privacy_acceptance"] = {"accepted_by": caller.name, "accepted_at": datetime.now(UTC)}
        elif (earlier := self._connection(name)) is not None and earlier.privacy_acceptance is not None:
            data["privacy_acceptance"] = earlier.privacy_acceptance.model_dump()  # an edit keeps the acceptance
        conn = Connection.model_validate(data)
        if conn.privacy_acceptance is None:
            raise HttpError(
                400,
                "accept the data privacy terms to use a connection ('accept_privacy_terms': true)",
                [{"field": "privacy_acceptance", "message": "required"}],
            )
        if api_key is not None:
            if not isinstance(api_key, str) or not api_key.strip():
                problem = [{"field": "api_key", "message": "invalid"}]
                raise HttpError(400, "api_key must be a non-empty string", problem)
            try:
                asyncio.run(self._check_key(api_key))  # on the worker's thread pool: no loop runs here
            except KlaviyoError as exc:
                raise HttpError(400, f"Klaviyo did not accept the key: {exc}") from None
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
            self.secrets.set(conn.secret_name, api_key.strip())
        saved = self.configs.put_connection(conn)
        return 200, saved.model_dump(mode="json")

    def get_connection(self, name: str, caller: Caller) -> Reply:
        conn = self.configs.get_connection(name)
        if not caller.may_see(conn):
            raise HttpError(403, f"'{caller.name}' may not see connection '{name}'")
        return 200, conn.model_dump(mode="json")

    async def _check_key(self, api_key: str) -> None:
        async with self.client_factory(api_key) as klaviyo:
            await klaviyo.check_key()

    # --- personal data ---

    def erase(self, body: bytes) -> Reply:
        """{"email": ...} or {"emails": [...]}: out of every export's sync state; says what it changed.
        (Administrators only, checked by the route: it spans every connection.)"""
        data = parse_json(body)
        emails = data.get("emails", [data["email"]] if "email" in data else [])
        if not isinstance(emails, list):
            raise HttpError(
                400, "'emails' must be a list of email addresses", [{"field": "emails", "message": "invalid"}]
            )
        workspace = open_store(blob_store("app", self.settings.workspace_container), self.settings)
        return 200, erase_emails(workspace, emails)

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
    if isinstance(exc, HttpError):
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


def run_export(instance: str) -> str:
    """The export a run id belongs to ('<export>.<digest>[-m<time>]'); 400 for anything else (a '..', a '/')."""
    if not isinstance(instance, str) or not INSTANCE_RE.fullmatch(instance):
        raise HttpError(400, "not a run id: '<export>.<id>' (letters, digits, '-' and '_')")
    return instance.partition(".")[0]


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


__all__ = ["Access", "Api", "Caller", "HttpError", "PrivacyAcceptance", "error", "run_export"]
