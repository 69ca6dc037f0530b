"""Export configurations and Klaviyo connections: pydantic models and their store (JSON blobs).

Layout in the config container (any `ObjectStore`):

    exports/<name>.json        one `ExportConfig` per export
    connections/<name>.json    one `Connection` per Klaviyo account (the API key stays in Key Vault)

Names are slugs (``^[a-z0-9][a-z0-9_-]{0,62}$``) because they become blob paths and URL segments.

Validation errors are reported per field: `validation_errors(exc)` turns a pydantic ``ValidationError`` (or
the store's `ConfigValidationError`) into ``[{"field": "source.path_prefix", "message": "..."}]`` for an
HTTP 400. Messages never include the rejected input (``hide_input_in_errors``), so a key pasted into the
wrong field is not echoed back.

Which exports a new blob concerns (`ConfigStore.exports_watching`): enabled exports whose source container
matches and
- ``kind="cdm"``: the blob is a ``model.json`` at or below the prefix (a CDM prefix is a folder: a missing
  trailing ``/`` is added);
- ``kind="csv"``: the blob ends in ``.csv`` (any case) and starts with the prefix (a plain string prefix:
  ``csv/newsletter`` also matches ``csv/newsletter-2024.csv``; end it with ``/`` to mean a folder).
An optional ``pattern`` (glob, ``*`` also crosses ``/``) narrows that further: a pattern without ``/`` is
matched against the blob's file name, one with ``/`` against the path below the prefix (like .gitignore).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.platform.errors import ConfigError, SourceError
from shared.platform.secrets import validate_secret_name
from shared.platform.storage import ObjectStore

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
LIST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

DEFAULT_MAX_REJECT_SHARE = 0.2
NAME_RULE = "must be 1-63 characters: lowercase letters, digits, '-' or '_', starting with a letter or digit"
EXPORTS_PREFIX = "exports/"
CONNECTIONS_PREFIX = "connections/"

PROFILE_TARGETS = frozenset(
    {"first_name", "last_name", "phone_number", "external_id", "organization", "title", "locale"}
)
LOCATION_TARGETS = frozenset(
    {"address1", "address2", "city", "country", "region", "zip", "timezone", "ip", "latitude", "longitude"}
)


# ---------------------------------------------------------------------------------------------- validators


def _err(kind: str, message: str) -> PydanticCustomError:
    # The message is used as a format template by pydantic: keep braces out of it.
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"))


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise _err("invalid_name", NAME_RULE)
    return value


def _check_secret_name(value: str) -> str:
    try:
        return validate_secret_name(value)
    except ValueError as exc:
        raise _err("invalid_secret_name", str(exc)) from None


def _check_container(value: str) -> str:
    if not CONTAINER_RE.fullmatch(value):
        raise _err(
            "invalid_container",
            "must be a blob container name: 3-63 lowercase letters, digits and single dashes",
        )
    return value


def _check_list_id(value: str) -> str:
    if not LIST_ID_RE.fullmatch(value):
        raise _err("invalid_list_id", "must be a Klaviyo list id (letters and digits)")
    return value


def _check_path(value: str, what: str) -> str:
    if "\\" in value or value.startswith("/") or "//" in value or any(ord(c) < 32 for c in value):
        raise _err("invalid_path", f"{what} must be a relative '/'-separated blob path")
    if any(part in (".", "..") for part in value.split("/")):
        raise _err("invalid_path", f"{what} must not contain '.' or '..' segments")
    return value


def check_target(value: str) -> str:
    """A Klaviyo profile attribute a source column may be mapped to."""
    head, dot, rest = value.partition(".")
    if not dot and value in PROFILE_TARGETS:
        return value
    if head == "location" and rest in LOCATION_TARGETS:
        return value
    if head == "properties" and rest and rest == rest.strip():
        return value
    raise _err(
        "invalid_target",
        f"'{value[:100]}' is not a Klaviyo profile attribute: use one of {', '.join(sorted(PROFILE_TARGETS))}, "
        f"location.<{'|'.join(sorted(LOCATION_TARGETS))}> or properties.<name>",
    )


def _non_blank(value: str) -> str:
    if not value.strip():
        raise _err("blank", "must not be blank")
    return value


Name = Annotated[str, AfterValidator(check_name)]
NonBlank = Annotated[str, AfterValidator(_non_blank)]
Target = Annotated[str, AfterValidator(check_target)]
SourceColumn = Annotated[str, AfterValidator(_non_blank)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_assignment=True)


# ---------------------------------------------------------------------------------------------- models


class SourceConfig(_Model):
    """Where an export's segment lands: a CDM folder written by Customer Insights, or plain CSV drops."""

    container: Annotated[str, AfterValidator(_check_container)] = "segments"
    kind: Literal["cdm", "csv"]
    path_prefix: str = Field(min_length=1, max_length=1024)
    pattern: str | None = Field(default=None, min_length=1, max_length=256)
    entity: NonBlank | None = Field(default=None, validate_default=True)
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="plain CSV drops only")

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str, info: ValidationInfo) -> str:
        _check_path(value, "path_prefix")
        if info.data.get("kind") == "cdm" and not value.endswith("/"):
            value += "/"  # a CDM export is a folder
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value, "pattern")

    @field_validator("entity")
    @classmethod
    def _entity(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("kind") == "csv":
            raise _err("entity_not_cdm", "entity applies to CDM sources only (kind 'cdm')")
        return value

    def matches(self, blob_path: str) -> bool:
        """Does a blob at `blob_path` (in this source's container) start a run of this export?"""
        if not blob_path.startswith(self.path_prefix):
            return False
        rest = blob_path[len(self.path_prefix) :]
        filename = rest.rpartition("/")[2]
        if self.kind == "cdm":
            if filename != "model.json":
                return False
        elif not filename.lower().endswith(".csv"):
            return False
        if self.pattern is None:
            return True
        return fnmatchcase(rest if "/" in self.pattern else filename, self.pattern)


class SubscribeOptions(_Model):
    """Mode 'subscribe': only rows whose consent field holds one of the consent values are subscribed."""

    consent_field: NonBlank
    consent_values: list[NonBlank] = Field(min_length=1)
    consented_at_field: NonBlank | None = None


class MirrorOptions(_Model):
    """Mode 'mirror': removals from the list are refused when they exceed this share of its members."""

    max_removal_share: float = Field(default=0.30, ge=0.0, le=1.0)


NOTIFY_STATUSES = ("failed", "partially_succeeded", "succeeded", "superseded")
NotifyOn = Literal["failed", "partially_succeeded", "succeeded", "superseded", "rejects_over"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_webhook_url(value: str) -> str:
    """HTTPS, or plain HTTP to this machine only (local use): a run's counts never travel in clear text."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise _err("invalid_url", "must be an http(s) URL") from None
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and is_loopback(host):
        return value
    if parts.scheme == "http" and host:
        raise _err("insecure_url", "must be https (plain http only to 127.0.0.1, ::1 or localhost)")
    raise _err("invalid_url", "must be an https URL")


class NotifyOptions(_Model):
    """A webhook told about runs (Slack and Teams incoming webhooks show the body's `text`).

    `on`: the statuses that post, and ``rejects_over`` for runs whose share of rejected rows (of rows read)
    exceeds `rejects_over` (e.g. 0.05)."""

    webhook_url: Annotated[str, AfterValidator(_check_webhook_url)] = Field(max_length=2048)
    on: list[NotifyOn] = Field(default_factory=lambda: ["failed", "partially_succeeded"], min_length=1)
    rejects_over: float | None = Field(default=None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _share(self) -> NotifyOptions:
        if ("rejects_over" in self.on) != (self.rejects_over is not None):
            raise _err("rejects_over", "'rejects_over' in on and a rejects_over share (e.g. 0.05) go together")
        return self


class ExportConfig(_Model):
    name: Name
    connection: Name
    list_id: Annotated[str, AfterValidator(_check_list_id)]
    source: SourceConfig
    email_field: NonBlank
    field_mappings: dict[SourceColumn, Target] = Field(default_factory=dict)
    mode: Literal["upsert", "mirror", "subscribe"] = "upsert"
    subscribe: SubscribeOptions | None = Field(default=None, validate_default=True)
    mirror: MirrorOptions | None = Field(default=None, validate_default=True)
    full_resync: bool = False
    max_profiles: int | None = Field(default=None, ge=1)
    # A run whose rejected rows are more than this share of the rows read fails before sending (a source
    # read wrongly rejects nearly every row); a higher limit is recorded in the report as an override.
    max_reject_share: float = Field(default=DEFAULT_MAX_REJECT_SHARE, ge=0.0, le=1.0)
    notify: NotifyOptions | None = None
    enabled: bool = True

    @field_validator("field_mappings")
    @classmethod
    def _distinct_targets(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for column, target in value.items():
            if target in seen:
                raise _err(
                    "duplicate_target",
                    f"columns '{seen[target]}' and '{column}' are both mapped to '{target}'",
                )
            seen[target] = column
        return value

    @field_validator("subscribe")
    @classmethod
    def _subscribe(cls, value: SubscribeOptions | None, info: ValidationInfo) -> SubscribeOptions | None:
        if value is None and info.data.get("mode") == "subscribe":
            raise _err(
                "subscribe_options_missing",
                "mode 'subscribe' needs consent_field and consent_values (only consenting rows are subscribed)",
            )
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: MirrorOptions | None, info: ValidationInfo) -> MirrorOptions | None:
        if value is None and info.data.get("mode") == "mirror":
            return MirrorOptions()  # record the removal safety limit that applies
        return value

    def watches(self, container: str, blob_path: str) -> bool:
        return self.enabled and self.source.container == container and self.source.matches(blob_path)


class PrivacyAcceptance(_Model):
    accepted_by: NonBlank
    accepted_at: AwareDatetime


class Connection(_Model):
    """A Klaviyo account. Holds the *name* of the Key Vault secret with its API key, never the key."""

    name: Name
    display_name: str = ""
    secret_name: Annotated[str, AfterValidator(_check_secret_name)]
    # Who may use it: administrators only, or contributors too.
    allowed_roles: Literal["admins", "contributors"] = "admins"
    privacy_acceptance: PrivacyAcceptance | None = None

    @model_validator(mode="after")
    def _display_name(self) -> Connection:
        if not self.display_name.strip():
            # object.__setattr__: plain assignment would re-run validation (validate_assignment) recursively.
            object.__setattr__(self, "display_name", self.name)
        return self

    def require_accepted(self) -> PrivacyAcceptance:
        if self.privacy_acceptance is None:
            raise ConfigError(
                f"connection '{self.name}' has no recorded acceptance of the data privacy terms: an administrator "
                "must accept them before exports can send profiles through it"
            )
        return self.privacy_acceptance

    def accept_privacy_terms(self, accepted_by: str, accepted_at: datetime) -> Connection:
        """A copy with the acceptance recorded (`accepted_at` must be timezone-aware)."""
        return self.model_validate(
            {**self.model_dump(), "privacy_acceptance": {"accepted_by": accepted_by, "accepted_at": accepted_at}}
        )


# ---------------------------------------------------------------------------------------------- errors


class ConfigNotFoundError(ConfigError):
    """No export / connection of that name (HTTP 404)."""


class ConfigValidationError(ConfigError):
    """A configuration was rejected; `errors` lists ``{"field", "message"}`` (HTTP 400)."""

    def __init__(self, what: str, errors: list[dict[str, str]]):
        self.errors = errors
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        super().__init__(f"{what} is invalid: {detail}")


def validation_errors(exc: ValidationError | ConfigValidationError) -> list[dict[str, str]]:
    """Field errors for an HTTP 400: ``[{"field": "source.path_prefix", "message": "..."}]``.

    ``field`` is the dotted location ("" for the document itself); messages never contain the input.
    """
    if isinstance(exc, ConfigValidationError):
        return [dict(e) for e in exc.errors]
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in err["loc"])
        message = err["msg"]
        if err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        out.append({"field": field, "message": message})
    return out


def _invalid_name(what: str) -> ConfigValidationError:
    return ConfigValidationError(f"{what} name", [{"field": "name", "message": NAME_RULE}])


# ---------------------------------------------------------------------------------------------- store


class ConfigStore:
    """Exports and connections as JSON blobs in the config container (`ObjectStore`)."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def __repr__(self) -> str:
        return f"ConfigStore({self.store!r})"

    # --- exports ---

    def list_export_names(self) -> list[str]:
        return self._names(EXPORTS_PREFIX)

    def list_exports(self) -> list[ExportConfig]:
        """All exports, by name. An unreadable blob is logged and skipped (`get_export` reports its errors),
        so one broken configuration does not stop the others."""
        exports = []
        for name in self.list_export_names():
            try:
                exports.append(self.get_export(name))
            except ConfigNotFoundError:
                continue  # deleted meanwhile
            except ConfigError as exc:
                log.warning("skipping export configuration %s: %s", self._export_path(name), exc)
        return exports

    def get_export(self, name: str) -> ExportConfig:
        return self._load(ExportConfig, "export", self._export_path(name), name)

    def put_export(self, cfg: ExportConfig) -> ExportConfig:
        """Validate and store (create or replace). The connection must exist."""
        cfg = self._revalidate(ExportConfig, "export", cfg)
        if not self.store.exists(self._connection_path(cfg.connection)):
            raise ConfigValidationError(
                f"export '{cfg.name}'",
                [{"field": "connection", "message": f"no connection named '{cfg.connection}'"}],
            )
        self.store.write_bytes(self._export_path(cfg.name), cfg.model_dump_json(indent=2).encode())
        return cfg

    def delete_export(self, name: str) -> bool:
        """Delete; returns whether it existed."""
        path = self._export_path(name)
        existed = self.store.exists(path)
        self.store.delete(path)
        return existed

    def exports_watching(self, container: str, blob_path: str) -> list[ExportConfig]:
        """Enabled exports that a new blob `container`/`blob_path` concerns (see the module docstring)."""
        blob_path = blob_path.lstrip("/")
        return [cfg for cfg in self.list_exports() if cfg.watches(container, blob_path)]

    # --- connections ---

    def list_connection_names(self) -> list[str]:
        return self._names(CONNECTIONS_PREFIX)

    def list_connections(self) -> list[Connection]:
        connections = []
        for name in self.list_connection_names():
            try:
                connections.append(self.get_connection(name))
            except ConfigNotFoundError:
                continue
            except ConfigError as exc:
                log.warning("skipping connection %s: %s", self._connection_path(name), exc)
        return connections

    def get_connection(self, name: str) -> Connection:
        return self._load(Connection, "connection", self._connection_path(name), name)

    def put_connection(self, conn: Connection) -> Connection:
        conn = self._revalidate(Connection, "connection", conn)
        self.store.write_bytes(self._connection_path(conn.name), conn.model_dump_json(indent=2).encode())
        return conn

    # --- helpers ---

    @staticmethod
    def _export_path(name: str) -> str:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise _invalid_name("export")
        return f"{EXPORTS_PREFIX}{name}.json"

    @staticmethod
    def _connection_path(name: str) -> str:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise _invalid_name("connection")
        return f"{CONNECTIONS_PREFIX}{name}.json"

    def _names(self, prefix: str) -> list[str]:
        names = []
        for path in self.store.list(prefix):
            stem = path[len(prefix) :].removesuffix(".json")
            if path.endswith(".json") and NAME_RE.fullmatch(stem):
                names.append(stem)
        return sorted(names)

    @staticmethod
    def _revalidate(model: type[_Model], what: str, obj: Any) -> Any:
        # A fresh validation: the object may have been built with model_construct() or edited in place.
        data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            name = data.get("name") if isinstance(data, dict) else None
            label = f"{what} '{name}'" if isinstance(name, str) and NAME_RE.fullmatch(name) else what
            raise ConfigValidationError(label, validation_errors(exc)) from None

    def _load(self, model: type[_Model], what: str, path: str, name: str) -> Any:
        try:
            raw = self.store.read_bytes(path)
        except SourceError:
            raise ConfigNotFoundError(f"no {what} named '{name}'") from None
        try:
            obj = model.model_validate_json(raw)
        except ValidationError as exc:
            raise ConfigValidationError(f"{what} '{name}' ({path})", validation_errors(exc)) from None
        if obj.name != name:
            raise ConfigValidationError(
                f"{what} '{name}' ({path})",
                [{"field": "name", "message": f"is '{obj.name}' but the blob is named '{name}'"}],
            )
        return obj
