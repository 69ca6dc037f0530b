"""The Klaviyo emulator as a Starlette app: `create_app(EmulatorConfig(...))`.

Every /api request goes through the same pipeline, in Klaviyo's order: fault injection (test-only) ->
API key (401) -> revision header (400) -> rate limit (429) -> query parameters (400) -> content type (415)
-> body size (413) -> JSON (400) -> schema of the spec (400, every error with its pointer) -> the
endpoint's own checks -> the change. Test-only admin endpoints live under /__emulator (no key needed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import fastdecode, filters
from .errors import ApiError, error_object, throttled
from .faults import KINDS, Fault, Faults, PlanError
from .ids import IdFactory, account_id_for
from .ratelimit import RateLimiter
from .schema import ColumnarCheck, replace_items
from .spec import Operation, Spec, check_revision
from .store import LOCATION_KEYS, Job, KList, Profile, Store, iso, parse_time

log = logging.getLogger("klaviyo_emulator")

JSONAPI = "application/vnd.api+json"
WRITE_CONTENT_TYPES = ("application/vnd.api+json", "application/json")
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and discard) at most this much of an oversize body, then give up
PROFILE_ATTRS = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)


@dataclass
class EmulatorConfig:
    api_keys: tuple[str, ...] = ("pk_emulator_key",)
    rate_limits: bool = True  # Klaviyo's limits; False = off
    job_latency: float = 0.0  # seconds from queued to complete; 0 = complete at once
    fault_rate: float = 0.0  # fraction of /api requests that get a random fault
    fault_seed: int | None = None
    fault_kinds: tuple[str, ...] = KINDS
    fault_delay: float = 1.0  # seconds, for random "slow" faults
    max_body_bytes: int = 5_000_000  # "5 MB"
    max_profile_bytes: int = 100_000  # "100 KB"
    max_import_profiles: int = 10_000
    max_subscribe_profiles: int = 1_000
    max_relationship_ids: int = 1_000
    id_seed: int | None = None  # make generated ids reproducible
    msgspec: bool = True  # parse bulk imports with msgspec when it is installed (same answers, faster)


class Clock:
    """Wall-clock seconds that tests can freeze and advance (POST /__emulator/clock)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def now(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.offset

    def freeze(self) -> None:
        if self.frozen is None:
            self.frozen = self.now()

    def unfreeze(self) -> None:
        if self.frozen is not None:
            self.offset = self.frozen - time.time()
            self.frozen = None

    def advance(self, seconds: float) -> None:
        if self.frozen is not None:
            self.frozen += seconds
        else:
            self.offset += seconds


@dataclass
class EndpointStats:
    requests: int = 0
    responses: Counter = field(default_factory=Counter)
    rate_limited: int = 0
    faults: Counter = field(default_factory=Counter)


class Stats:
    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointStats] = defaultdict(EndpointStats)

    def as_dict(self) -> dict:
        total = EndpointStats()
        for ep in self.endpoints.values():
            total.requests += ep.requests
            total.responses.update(ep.responses)
            total.rate_limited += ep.rate_limited
            total.faults.update(ep.faults)
        return {
            "requests": total.requests,
            "responses": {str(k): v for k, v in sorted(total.responses.items())},
            "throttled_429": total.responses.get(429, 0),
            "rate_limited": total.rate_limited,
            "faults_injected": dict(total.faults),
            "endpoints": {
                key: {
                    "requests": ep.requests,
                    "responses": {str(k): v for k, v in sorted(ep.responses.items())},
                    "rate_limited": ep.rate_limited,
                    "faults_injected": dict(ep.faults),
                }
                for key, ep in sorted(self.endpoints.items())
            },
        }


class ConnectionDropped(ConnectionError):
    """Raised in-process (no socket to close) where a real server would drop the connection."""


class JsonApiResponse(Response):
    media_type = JSONAPI

    def render(self, content: Any) -> bytes:
        return b"" if content is None else orjson.dumps(content)


class _NoResponse(Response):
    """Sends nothing: the connection has been closed under it."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


@dataclass
class Ctx:
    request: Request
    op: Operation
    now: float
    query: dict[str, str]
    path: dict[str, str]
    body: Any = None
    raw_len: int = 0
    columns: dict[str, list] | None = None  # bulk import: the profiles as columns (fast path)
    import_resources: list | None = None  # bulk import: the profiles (dicts, or msgspec Structs)
    import_list_ids: list[str] = field(default_factory=list)
    structs: bool = False

    @property
    def base(self) -> str:
        url = self.request.url
        return f"{url.scheme}://{url.netloc}"

    def url_with_cursor(self, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        return str(self.request.url.include_query_params(**{"page[cursor]": cursor}))


def encode_cursor(data: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def decode_cursor(token: str) -> dict:
    if token.startswith(("http://", "https://")):
        # klaviyo-api only cuts the cursor out of a links.next URL that starts with https://, so against
        # the emulator (http) it sends the whole URL as page[cursor]: take the cursor out of it here.
        values = parse_qs(urlsplit(token).query).get("page[cursor]")
        token = values[0] if values else token
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise ApiError.bad_parameter("page[cursor]", f"Invalid page cursor '{token}'.") from exc
    if not isinstance(data, dict):
        raise ApiError.bad_parameter("page[cursor]", f"Invalid page cursor '{token}'.")
    return data


def pick_fields(attrs: dict, fields: list[str]) -> dict:
    out: dict = {}
    for name in fields:
        parts = name.split(".")
        src, dst = attrs, out
        for i, part in enumerate(parts):
            if not isinstance(src, dict) or part not in src:
                break
            if i == len(parts) - 1:
                dst[part] = src[part]
            else:
                src = src[part]
                dst = dst.setdefault(part, {})
    return out


class Emulator:
    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.spec = Spec()
        self.clock = Clock()
        self.ids = IdFactory(random.Random(config.id_seed))
        self.store = Store(self.ids)
        self.limiter = RateLimiter()
        self.faults = Faults(config.fault_rate, config.fault_seed, config.fault_kinds, config.fault_delay)
        self.stats = Stats()
        self.accounts = {key: account_id_for(config.api_keys[0]) for key in config.api_keys}
        self.validators = {op_id: self.spec.request_validator(op) for op_id, op in self.spec.operations.items()}
        # Bulk import: the envelope and the 10,000 profiles are validated separately (see check_import_body).
        items_path = ["properties", "data", "properties", "attributes", "properties", "profiles", "properties", "data"]
        import_op = self.spec.operations["bulk_import_profiles"]
        schemas = self.spec.schemas
        envelope = replace_items(schemas, import_op.body_schema, [*items_path, "items"], {})
        item_schema = self._schema_at(import_op.body_schema, items_path)["items"]
        self.import_envelope = self.spec.compiler.compile(envelope, strict=True, name="import envelope")
        self.import_item = self.spec.compiler.compile(item_schema, strict=True, name="import profile")
        self.import_columns = ColumnarCheck(item_schema, schemas)
        self.import_decoder = fastdecode.build_decoder(schemas, import_op.body_schema) if config.msgspec else None
        self._frozen_at = 0
        self.handlers: dict[str, Callable[[Ctx], Response]] = {
            "get_accounts": self.get_accounts,
            "get_lists": self.get_lists,
            "create_list": self.create_list,
            "get_list": self.get_list,
            "get_profiles_for_list": self.get_profiles_for_list,
            "get_profile_ids_for_list": self.get_profile_ids_for_list,
            "add_profiles_to_list": self.add_profiles_to_list,
            "remove_profiles_from_list": self.remove_profiles_from_list,
            "get_profiles": self.get_profiles,
            "get_bulk_import_profiles_jobs": self.get_jobs,
            "bulk_import_profiles": self.bulk_import_profiles,
            "get_bulk_import_profiles_job": self.get_job,
            "get_errors_for_bulk_import_profiles_job": self.get_job_errors,
            "get_profiles_for_bulk_import_profiles_job": self.get_job_profiles,
            "get_profile_ids_for_bulk_import_profiles_job": self.get_job_profile_ids,
            "get_list_for_bulk_import_profiles_job": self.get_job_lists,
            "get_list_ids_for_bulk_import_profiles_job": self.get_job_list_ids,
            "bulk_subscribe_profiles": self.bulk_subscribe_profiles,
        }
        missing = set(self.spec.operations) - set(self.handlers)
        if missing:
            raise RuntimeError(f"operations in the trimmed spec without a handler: {sorted(missing)}")

    def _schema_at(self, name: str, path: list[str]) -> dict:
        node: dict = {"$ref": "#/components/schemas/" + name}
        for key in path:
            while "$ref" in node:
                node = self.spec.schemas[node["$ref"].rsplit("/", 1)[-1]]
            node = node[key]
        while "$ref" in node and "items" not in node:
            node = self.spec.schemas[node["$ref"].rsplit("/", 1)[-1]]
        return node

    # ======================================================================================================
    # Pipeline
    # ======================================================================================================
    def routes(self) -> list[Route]:
        routes = []
        for op in self.spec.operations.values():
            routes.append(Route(op.path, self._endpoint(op), methods=[op.method], name=op.operation_id))
        return routes

    def _endpoint(self, op: Operation):
        handler = self.handlers[op.operation_id]

        async def endpoint(request: Request) -> Response:
            return await self.handle(request, op, handler)

        return endpoint

    async def handle(self, request: Request, op: Operation, handler: Callable[[Ctx], Response]) -> Response:
        ep = self.stats.endpoints[op.key]
        ep.requests += 1
        fault = self.faults.pick(request.method, request.url.path)
        if fault is not None:
            ep.faults[fault.kind] += 1
            early = await self._early_fault(fault)
            if early is not None:
                ep.responses[early.status_code] += 1
                return early
        response = await self.process(request, op, handler, ep)
        if fault is not None and fault.kind == "drop":
            await self._drop_connection(request)
            return _NoResponse()
        ep.responses[response.status_code] += 1
        return response

    async def _early_fault(self, fault: Fault) -> Response | None:
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "throttle":
            return self.error_response(throttled(max(0, fault.retry_after)))
        if fault.kind == "error":
            detail = "The emulator injected this server error (fault)."
            return self.error_response(ApiError.one(fault.status, detail))
        return None

    async def _drop_connection(self, request: Request) -> None:
        send = request.scope.get("emulator.raw_send")
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise ConnectionDropped("fault: the emulator dropped the connection after applying the request")
        transport.abort()
        await asyncio.sleep(0)  # let the server see the connection go before the app returns
        if hasattr(cycle, "disconnected"):
            cycle.disconnected = True

    def error_response(self, err: ApiError, headers: dict[str, str] | None = None) -> Response:
        return JsonApiResponse(err.document(), status_code=err.status, headers={**err.headers, **(headers or {})})

    async def process(self, request: Request, op: Operation, handler, ep: EndpointStats) -> Response:
        now = self.clock.now()
        headers: dict[str, str] = {}
        try:
            account = self.authenticate(request)
            problem = check_revision(request.headers.get("revision"))
            if problem:
                raise ApiError.one(400, problem, parameter="revision")
            if self.config.rate_limits:
                decision = self.limiter.check(account, op.operation_id, op.rate_limits, now)
                if not decision.allowed:
                    ep.rate_limited += 1
                    raise throttled(decision.retry_after)
                headers = {
                    "RateLimit-Limit": str(decision.limit),
                    "RateLimit-Remaining": str(decision.remaining),
                    "RateLimit-Reset": str(decision.reset),
                }
            ctx = Ctx(request, op, now, self.check_query(op, request), dict(request.path_params))
            self.store.settle(now)
            if op.body_schema is not None:
                await self.read_body(ctx)
            response = handler(ctx)
            grown = self.store.seq + self.store.next_profile_number
            if grown - self._frozen_at > 50_000:
                # Millions of long-lived profile objects: keep the cyclic GC from rescanning them.
                gc.freeze()
                self._frozen_at = grown
        except ApiError as err:
            return self.error_response(err, headers)
        except Exception:  # an emulator bug: logged with its traceback, answered as Klaviyo's 500
            log.exception("emulator bug while handling %s %s", request.method, request.url.path)
            return self.error_response(ApiError.one(500, "The emulator failed on this request (a bug)."), headers)
        response.headers.update(headers)
        return response

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization")
        if not header:
            raise ApiError.one(401, "Missing or invalid private key.")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "klaviyo-api-key" or not key.strip():
            raise ApiError.one(401, "Missing or invalid private key.")
        account = self.accounts.get(key.strip())
        if account is None:
            raise ApiError.one(
                401,
                "Missing or invalid private key.",
                code="authentication_failed",
                title="Incorrect authentication credentials.",
            )
        return account

    def check_query(self, op: Operation, request: Request) -> dict[str, str]:
        query = dict(request.query_params)
        for name, value in query.items():
            param = op.parameters.get(name)
            if param is None:
                raise ApiError.bad_parameter(name, f"'{name}' is not a valid query parameter for this endpoint.")
            enum = param.enum
            if enum is not None:
                values = [v for v in value.split(",") if v] if param.schema.get("type") == "array" else [value]
                bad = [v for v in values if v not in enum]
                if bad:
                    raise ApiError.bad_parameter(
                        name, f"Invalid value(s) for '{name}': {', '.join(bad)}. Allowed: {', '.join(sorted(enum))}."
                    )
        return query

    async def read_body(self, ctx: Ctx) -> None:
        request = ctx.request
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media not in WRITE_CONTENT_TYPES:
            raise ApiError.one(415, f'Unsupported media type "{ctype}" in request.', pointer="/data/")
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_big = True
                chunks = []
            if not too_big:
                chunks.append(chunk)
            elif size > DRAIN_LIMIT:
                break
        if too_big:
            raise ApiError.one(
                413,
                f"The request body is {max(size, int(declared or 0))} bytes; the maximum is {limit} bytes.",
                pointer="/data/",
            )
        raw = b"".join(chunks)
        ctx.raw_len = len(raw)
        fast = ctx.op.operation_id == "bulk_import_profiles" and self.import_decoder is not None
        if fast and self.fast_import_body(ctx, raw):
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError.one(
                400, f"JSON parse error - {exc}", code="parse_error", title="Malformed request.", pointer="/"
            ) from exc
        ctx.body = body
        self.check_body(ctx)
        if ctx.op.operation_id == "bulk_import_profiles":
            data = body["data"]
            ctx.import_resources = data["attributes"]["profiles"]["data"]
            refs = ((data.get("relationships") or {}).get("lists") or {}).get("data") or []
            ctx.import_list_ids = [ref["id"] for ref in refs]

    def fast_import_body(self, ctx: Ctx, raw: bytes) -> bool:
        """Parse and validate a bulk import in one msgspec pass; False = let the exact path answer."""
        body = fastdecode.decode(self.import_decoder, raw)
        if body is None:
            return False
        data = body.data
        profiles = data.attributes.profiles.data
        if not 0 < len(profiles) <= self.config.max_import_profiles:
            return False  # the exact path words the error
        unset = fastdecode.UNSET
        lists = data.relationships.lists if data.relationships is not unset else unset
        refs = lists.data if lists is not unset and lists.data is not unset else []
        ctx.import_resources = profiles
        ctx.import_list_ids = [ref.id for ref in refs]
        ctx.columns = fastdecode.import_columns(profiles)
        ctx.structs = True
        return True

    def check_body(self, ctx: Ctx) -> None:
        """Size limits first (cheap, and Klaviyo refuses the request before looking inside), then the schema."""
        body, op = ctx.body, ctx.op
        limits = {
            "bulk_import_profiles": ("profiles", self.config.max_import_profiles),
            "bulk_subscribe_profiles": ("profiles", self.config.max_subscribe_profiles),
            "add_profiles_to_list": (None, self.config.max_relationship_ids),
            "remove_profiles_from_list": (None, self.config.max_relationship_ids),
        }
        if op.operation_id in limits and isinstance(body, dict):
            key, limit = limits[op.operation_id]
            items, pointer = body.get("data"), "/data"
            if key is not None:
                attributes = items.get("attributes") if isinstance(items, dict) else None
                container = attributes.get(key) if isinstance(attributes, dict) else None
                items = container.get("data") if isinstance(container, dict) else None
                pointer = f"/data/attributes/{key}/data"
            if isinstance(items, list):
                if len(items) > limit:
                    raise ApiError.invalid(
                        [(pointer, f"At most {limit} items are allowed per request; got {len(items)}.")]
                    )
                if not items:
                    raise ApiError.invalid([(pointer, "At least one item is required.")])
        if op.operation_id == "bulk_import_profiles":
            self.check_import_body(ctx)
            return
        errors: list[tuple[str, str]] = []
        self.validators[op.operation_id](body, "", errors)
        if errors:
            raise ApiError.invalid(errors)

    def check_import_body(self, ctx: Ctx) -> None:
        """The envelope with the generated validator; the profiles with the columnar check, falling back to
        the generated per-profile validator (exact errors) when it cannot vouch for all of them."""
        errors: list[tuple[str, str]] = []
        self.import_envelope(ctx.body, "", errors)
        try:
            profiles = ctx.body["data"]["attributes"]["profiles"]["data"]
        except (KeyError, TypeError):
            profiles = None
        if not isinstance(profiles, list):
            raise ApiError.invalid(errors)
        columns = self.import_columns.columns(profiles)
        if columns is None:
            item_errors: list[tuple[str, str]] = []
            for i, profile in enumerate(profiles):
                self.import_item(profile, f"/data/attributes/profiles/data/{i}", item_errors)
            if errors:
                raise ApiError.invalid(errors + item_errors)
            if item_errors:
                self._raise_import_errors(ctx, profiles, item_errors)
        elif errors:
            raise ApiError.invalid(errors)
        ctx.columns = columns

    # ======================================================================================================
    # Rendering
    # ======================================================================================================
    def doc(self, data: Any, ctx: Ctx, **extra) -> dict:
        return {"data": data, "links": {"self": str(ctx.request.url)}, **extra}

    def page_doc(self, data: list, ctx: Ctx, next_cursor: str | None, **extra) -> dict:
        return {
            "data": data,
            "links": {"self": str(ctx.request.url), "next": ctx.url_with_cursor(next_cursor), "prev": None},
            **extra,
        }

    @staticmethod
    def page_size(ctx: Ctx) -> int:
        bounds = ctx.op.page_bounds()
        assert bounds is not None
        default, lo, hi = bounds
        raw = ctx.query.get("page[size]")
        if raw is None:
            return default
        try:
            size = int(raw)
        except ValueError:
            size = -1
        if not lo <= size <= hi:
            raise ApiError.bad_parameter("page[size]", f"page[size] must be an integer from {lo} to {hi}; got '{raw}'.")
        return size

    @staticmethod
    def offset_page(ctx: Ctx, items: list, size: int) -> tuple[list, str | None]:
        offset = 0
        if "page[cursor]" in ctx.query:
            offset = decode_cursor(ctx.query["page[cursor]"]).get("o", -1)
            if not isinstance(offset, int) or offset < 0:
                raise ApiError.bad_parameter("page[cursor]", "Invalid page cursor.")
        chunk = items[offset : offset + size]
        nxt = encode_cursor({"o": offset + size}) if offset + size < len(items) else None
        return chunk, nxt

    def fields_for(self, ctx: Ctx, resource_type: str) -> list[str] | None:
        raw = ctx.query.get(f"fields[{resource_type}]")
        return [f for f in raw.split(",") if f] if raw else None

    def rel_links(self, ctx: Ctx, kind: str, rid: str, name: str) -> dict:
        base = f"{ctx.base}/api/{kind}/{rid}"
        return {"links": {"self": f"{base}/relationships/{name}", "related": f"{base}/{name}"}}

    def profile_resource(
        self, p: Profile, ctx: Ctx, fields: list[str] | None, additional: set[str], joined: float | None = None
    ) -> dict:
        a = p.attrs
        loc = a.get("location") or {}
        attrs: dict[str, Any] = {name: a.get(name) for name in PROFILE_ATTRS}
        attrs["created"] = iso(p.created)
        attrs["updated"] = iso(p.updated)
        attrs["last_event_date"] = None
        attrs["location"] = {k: loc.get(k) for k in LOCATION_KEYS}
        attrs["properties"] = a.get("properties") or {}
        if joined is not None:
            attrs["joined_group_at"] = iso(joined)
        if "subscriptions" in additional:
            attrs["subscriptions"] = self.subscriptions_of(p)
        if "predictive_analytics" in additional:
            attrs["predictive_analytics"] = None
        if fields:
            attrs = pick_fields(attrs, fields)
            if joined is not None:
                attrs["joined_group_at"] = iso(joined)  # required in list-member answers, even sparse ones
        return {
            "type": "profile",
            "id": p.id,
            "attributes": attrs,
            "relationships": {
                "lists": self.rel_links(ctx, "profiles", p.id, "lists"),
                "segments": self.rel_links(ctx, "profiles", p.id, "segments"),
            },
            "links": {"self": f"{ctx.base}/api/profiles/{p.id}"},
        }

    @staticmethod
    def subscriptions_of(p: Profile) -> dict:
        out: dict[str, Any] = {}
        email = p.subscriptions.get("email")
        out["email"] = {
            "marketing": {
                "can_receive_email_marketing": bool(email) and p.attrs.get("email") is not None,
                "consent": "SUBSCRIBED" if email else "NEVER_SUBSCRIBED",
                "consent_timestamp": iso(email["consent_timestamp"]) if email else None,
                "last_updated": iso(email["last_updated"]) if email else None,
                "method": email["method"] if email else None,
                "method_detail": "",
                "custom_method_detail": email["custom_method_detail"] if email else None,
                "double_optin": email["double_optin"] if email else None,
                "suppression": [],
                "list_suppressions": [],
            }
        }
        sms = p.subscriptions.get("sms")
        if sms or p.attrs.get("phone_number"):
            out["sms"] = {
                "marketing": {
                    "can_receive_sms_marketing": bool(sms),
                    "consent": "SUBSCRIBED" if sms else "NEVER_SUBSCRIBED",
                    "consent_timestamp": iso(sms["consent_timestamp"]) if sms else None,
                    "last_updated": iso(sms["last_updated"]) if sms else None,
                    "method": sms["method"] if sms else None,
                    "method_detail": "",
                }
            }
        return out

    def additional(self, ctx: Ctx, resource_type: str) -> set[str]:
        raw = ctx.query.get(f"additional-fields[{resource_type}]", "")
        return {v for v in raw.split(",") if v}

    def list_resource(self, lst: KList, ctx: Ctx, with_count: bool = False) -> dict:
        attrs: dict[str, Any] = {
            "name": lst.name,
            "created": iso(lst.created),
            "updated": iso(lst.updated),
            "opt_in_process": lst.opt_in_process,
        }
        if with_count:
            attrs["profile_count"] = len(lst.members)
        fields = self.fields_for(ctx, "list")
        if fields:
            attrs = pick_fields(attrs, fields)
        return {
            "type": "list",
            "id": lst.id,
            "attributes": attrs,
            "relationships": {
                "profiles": self.rel_links(ctx, "lists", lst.id, "profiles"),
                "tags": self.rel_links(ctx, "lists", lst.id, "tags"),
                "flow-triggers": self.rel_links(ctx, "lists", lst.id, "flow-triggers"),
            },
            "links": {"self": f"{ctx.base}/api/lists/{lst.id}"},
        }

    def job_resource(self, job: Job, ctx: Ctx, snapshot_queued: bool = False) -> dict:
        if snapshot_queued:
            status, done, failed, started, completed = "queued", 0, 0, None, None
        else:
            status = job.status(ctx.now)
            done, failed, started, completed = job.completed_count, job.failed_count, job.started_at, job.completed_at
        attrs = {
            "status": status,
            "created_at": iso(job.created),
            "total_count": job.total,
            "completed_count": done,
            "failed_count": failed,
            "completed_at": iso(completed) if status == "complete" else None,
            "expires_at": iso(job.expires_at),
            "started_at": iso(started),
        }
        fields = self.fields_for(ctx, "profile-bulk-import-job")
        if fields:
            attrs = pick_fields(attrs, fields)
        base = f"{ctx.base}/api/profile-bulk-import-jobs/{job.id}"
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": attrs,
            "relationships": {
                "lists": {
                    "data": [{"type": "list", "id": lid} for lid in job.list_ids],
                    **self.rel_links(ctx, "profile-bulk-import-jobs", job.id, "lists"),
                },
                "profiles": self.rel_links(ctx, "profile-bulk-import-jobs", job.id, "profiles"),
                "import-errors": {"links": {"related": f"{base}/import-errors"}},
            },
            "links": {"self": base},
        }

    def account_resource(self, account_id: str, ctx: Ctx) -> dict:
        return {
            "type": "account",
            "id": account_id,
            "attributes": {
                "test_account": True,
                "contact_information": {
                    "default_sender_name": "Klaviyo Emulator",
                    "default_sender_email": "sender@example.com",
                    "website_url": "https://example.com",
                    "organization_name": "Klaviyo Emulator",
                    "street_address": {
                        "address1": "1 Emulator Way",
                        "address2": None,
                        "city": "Boston",
                        "region": "MA",
                        "country": "US",
                        "zip": "02110",
                    },
                },
                "industry": None,
                "timezone": "UTC",
                "preferred_currency": "USD",
                "public_api_key": account_id,
                "locale": "en-US",
            },
            "links": {"self": f"{ctx.base}/api/accounts/{account_id}"},
        }

    @staticmethod
    def json(content: Any, status: int = 200) -> Response:
        return JsonApiResponse(content, status_code=status)

    def parse_filter(self, ctx: Ctx):
        raw = ctx.query.get("filter")
        return filters.parse_filter(raw, ctx.op.filter_rules) if raw else None

    def get_list_or_404(self, list_id: str, pointer: str | None = None) -> KList:
        lst = self.store.lists.get(list_id)
        if lst is None:
            raise ApiError.one(404, f"A list with id '{list_id}' does not exist.", pointer=pointer)
        return lst

    def get_job_or_404(self, job_id: str) -> Job:
        job = self.store.jobs.get(job_id)
        if job is None:
            raise ApiError.one(404, f"A profile bulk import job with id '{job_id}' does not exist.")
        return job

    # ======================================================================================================
    # Endpoints
    # ======================================================================================================
    def get_accounts(self, ctx: Ctx) -> Response:
        account_id = next(iter(self.accounts.values()))
        return self.json(self.page_doc([self.account_resource(account_id, ctx)], ctx, None))

    # -- lists ---------------------------------------------------------------------------------------------
    def get_lists(self, ctx: Ctx) -> Response:
        node = self.parse_filter(ctx)
        lists = self.store.list_order
        if node is not None:
            getters = {
                "id": lambda lst: lst.id,
                "name": lambda lst: lst.name,
                "created": lambda lst: lst.created,
                "updated": lambda lst: lst.updated,
            }
            lists = [lst for lst in lists if filters.evaluate(node, lambda f, lst=lst: getters[f](lst))]
        sort = ctx.query.get("sort")
        if sort:
            lists = sorted(lists, key=lambda lst: getattr(lst, sort.lstrip("-")), reverse=sort.startswith("-"))
        chunk, nxt = self.offset_page(ctx, lists, self.page_size(ctx))
        return self.json(self.page_doc([self.list_resource(lst, ctx) for lst in chunk], ctx, nxt))

    def create_list(self, ctx: Ctx) -> Response:
        attrs = ctx.body["data"]["attributes"]
        name = attrs["name"]
        if not name.strip():
            raise ApiError.invalid([("/data/attributes/name", "'name' must not be blank.")])
        lst = self.store.create_list(name, attrs.get("opt_in_process"), ctx.now)
        return self.json(self.doc(self.list_resource(lst, ctx), ctx), 201)

    def get_list(self, ctx: Ctx) -> Response:
        lst = self.get_list_or_404(ctx.path["id"])
        with_count = "profile_count" in ctx.query.get("additional-fields[list]", "").split(",")
        extra = {"included": []} if "include" in ctx.query else {}
        return self.json(self.doc(self.list_resource(lst, ctx, with_count), ctx, **extra))

    def _members_page(self, ctx: Ctx) -> tuple[KList, list[tuple[Profile, float]], str | None]:
        lst = self.get_list_or_404(ctx.path["id"])
        size = self.page_size(ctx)
        sort = ctx.query.get("sort", "joined_group_at")
        reverse = sort.startswith("-")
        after = None
        if "page[cursor]" in ctx.query:
            cur = decode_cursor(ctx.query["page[cursor]"])
            after = cur.get("s")
            if not isinstance(after, int) or bool(cur.get("r")) != reverse:
                raise ApiError.bad_parameter("page[cursor]", "Invalid page cursor.")
        node = self.parse_filter(ctx)
        profiles = self.store.profiles
        out: list[tuple[Profile, float]] = []
        nxt = None
        last_seq = None
        for seq, number, joined in lst.iter_members(after, reverse):
            p = profiles.by_number(number)
            if node is not None:
                values = {
                    "email": p.attrs.get("email"),
                    "phone_number": p.attrs.get("phone_number"),
                    "_kx": p.attrs.get("_kx"),
                    "push_token": None,
                    "joined_group_at": joined,
                }
                if not filters.evaluate(node, values.get):
                    continue
            if len(out) == size:
                nxt = encode_cursor({"s": last_seq, "r": int(reverse)})
                break
            out.append((p, joined))
            last_seq = seq
        return lst, out, nxt

    def get_profiles_for_list(self, ctx: Ctx) -> Response:
        _lst, members, nxt = self._members_page(ctx)
        fields = self.fields_for(ctx, "profile")
        additional = self.additional(ctx, "profile")
        data = [self.profile_resource(p, ctx, fields, additional, joined) for p, joined in members]
        return self.json(self.page_doc(data, ctx, nxt))

    def get_profile_ids_for_list(self, ctx: Ctx) -> Response:
        _lst, members, nxt = self._members_page(ctx)
        return self.json(self.page_doc([{"type": "profile", "id": p.id} for p, _ in members], ctx, nxt))

    def _relationship_ids(self, ctx: Ctx) -> list[str]:
        return [item["id"] for item in ctx.body["data"]]

    def add_profiles_to_list(self, ctx: Ctx) -> Response:
        lst = self.get_list_or_404(ctx.path["id"])
        ids = self._relationship_ids(ctx)
        found = [self.store.profiles.get(pid) for pid in ids]
        unknown = [(i, pid) for i, (pid, p) in enumerate(zip(ids, found, strict=True)) if p is None]
        if unknown:
            raise ApiError(
                404,
                [
                    error_object(404, f"A profile with id '{pid}' does not exist.", pointer=f"/data/{i}/id")
                    for i, pid in unknown
                ],
            )
        self.store.add_members(lst, [p.number for p in found if p is not None], ctx.now)
        return Response(status_code=204)

    def remove_profiles_from_list(self, ctx: Ctx) -> Response:
        lst = self.get_list_or_404(ctx.path["id"])
        found = [self.store.profiles.get(pid) for pid in self._relationship_ids(ctx)]
        removed = sum(lst.remove(p.number) for p in found if p is not None)
        if removed:
            lst.updated = ctx.now
        return Response(status_code=204)

    # -- profiles ------------------------------------------------------------------------------------------
    def get_profiles(self, ctx: Ctx) -> Response:
        node = self.parse_filter(ctx)
        store = self.store
        candidates: list[Profile] | None = None
        if node is not None:
            for field_name, index in (
                ("id", store.profiles),
                ("email", store.by_email),
                ("phone_number", store.by_phone),
                ("external_id", store.by_external_id),
            ):
                values = filters.lookup_values(node, field_name)
                if values is not None:
                    found = {index[v].id: index[v] for v in values if isinstance(v, str) and v in index}
                    candidates = sorted(found.values(), key=lambda p: p.number)
                    break
        profiles = store.profile_order if candidates is None else candidates
        if node is not None:

            def getter(p: Profile):
                return lambda f: p.id if f == "id" else getattr(p, f) if f in ("created", "updated") else p.attrs.get(f)

            profiles = [p for p in profiles if filters.evaluate(node, getter(p))]
        sort = ctx.query.get("sort")
        if sort:
            key = sort.lstrip("-")
            profiles = sorted(
                profiles,
                key=lambda p: (p.attrs.get(key) or "") if key == "email" else getattr(p, key),
                reverse=sort.startswith("-"),
            )
        chunk, nxt = self.offset_page(ctx, profiles, self.page_size(ctx))
        fields = self.fields_for(ctx, "profile")
        additional = self.additional(ctx, "profile")
        data = [self.profile_resource(p, ctx, fields, additional) for p in chunk]
        extra = {"included": []} if "include" in ctx.query else {}
        return self.json(self.page_doc(data, ctx, nxt, **extra))

    # -- bulk import jobs ----------------------------------------------------------------------------------
    def _raise_import_errors(self, ctx: Ctx, profiles: list, schema_errors: list[tuple[str, str]]) -> None:
        """Schema errors inside profiles: add the other profiles' semantic errors (bad email, no identifier,
        too big), so the client learns about every bad profile from one answer."""
        prefix = "/data/attributes/profiles/data/"
        bad = frozenset(int(pointer[len(prefix) :].split("/", 1)[0]) for pointer, _ in schema_errors)
        _batch, semantic = self.store.prepare_import(
            profiles, None, self.config.max_profile_bytes, ctx.raw_len, skip=bad
        )
        errors = schema_errors + semantic
        errors.sort(key=lambda e: int(e[0][len(prefix) :].split("/", 1)[0]))
        raise ApiError.invalid(errors)

    def bulk_import_profiles(self, ctx: Ctx) -> Response:
        resources = ctx.import_resources
        assert resources is not None
        list_ids: list[str] = []
        for i, list_id in enumerate(ctx.import_list_ids):
            self.get_list_or_404(list_id, pointer=f"/data/relationships/lists/data/{i}/id")
            if list_id not in list_ids:
                list_ids.append(list_id)
        batch, errors = self.store.prepare_import(
            resources, ctx.columns, self.config.max_profile_bytes, ctx.raw_len, structs=ctx.structs
        )
        if errors:
            raise ApiError.invalid(errors)
        job = Job(
            id=self.ids.ulid(ctx.now),
            kind="import",
            created=ctx.now,
            latency=self.config.job_latency,
            batch=batch,
            list_ids=list_ids,
            total=len(resources),
        )
        self.store.add_job(job, ctx.now)
        return self.json(self.doc(self.job_resource(job, ctx, snapshot_queued=True), ctx), 202)

    def get_jobs(self, ctx: Ctx) -> Response:
        node = self.parse_filter(ctx)
        jobs = self.store.job_order
        if node is not None:
            jobs = [j for j in jobs if filters.evaluate(node, lambda f, j=j: j.status(ctx.now))]
        sort = ctx.query.get("sort")
        if sort:
            jobs = sorted(jobs, key=lambda j: j.created, reverse=sort.startswith("-"))
        chunk, nxt = self.offset_page(ctx, jobs, self.page_size(ctx))
        return self.json(self.page_doc([self.job_resource(j, ctx) for j in chunk], ctx, nxt))

    def get_job(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["job_id"])
        extra = {}
        if "include" in ctx.query:
            lists = [self.store.lists[lid] for lid in job.list_ids if lid in self.store.lists]
            extra["included"] = [self.list_resource(lst, ctx) for lst in lists]
        return self.json(self.doc(self.job_resource(job, ctx), ctx, **extra))

    def get_job_errors(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["id"])
        chunk, nxt = self.offset_page(ctx, job.errors, self.page_size(ctx))
        fields = self.fields_for(ctx, "import-error")
        if fields:
            chunk = [{**e, "attributes": pick_fields(e["attributes"], fields)} for e in chunk]
        return self.json(self.page_doc(chunk, ctx, nxt))

    def get_job_profiles(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["id"])
        chunk, nxt = self.offset_page(ctx, job.profile_numbers, self.page_size(ctx))
        fields = self.fields_for(ctx, "profile")
        additional = self.additional(ctx, "profile")
        profiles = self.store.profiles
        data = [self.profile_resource(profiles.by_number(n), ctx, fields, additional) for n in chunk]
        return self.json(self.page_doc(data, ctx, nxt))

    def get_job_profile_ids(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["id"])
        chunk, nxt = self.offset_page(ctx, job.profile_numbers, self.page_size(ctx))
        by_number = self.store.profiles.by_number
        return self.json(self.page_doc([{"type": "profile", "id": by_number(n).id} for n in chunk], ctx, nxt))

    def get_job_lists(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["id"])
        lists = [self.store.lists[lid] for lid in job.list_ids if lid in self.store.lists]
        return self.json(self.page_doc([self.list_resource(lst, ctx) for lst in lists], ctx, None))

    def get_job_list_ids(self, ctx: Ctx) -> Response:
        job = self.get_job_or_404(ctx.path["id"])
        return self.json(self.page_doc([{"type": "list", "id": lid} for lid in job.list_ids], ctx, None))

    # -- subscriptions -------------------------------------------------------------------------------------
    def bulk_subscribe_profiles(self, ctx: Ctx) -> Response:
        data = ctx.body["data"]
        attributes = data["attributes"]
        historical = bool(attributes.get("historical_import"))
        list_ref = ((data.get("relationships") or {}).get("list") or {}).get("data")
        list_ids = []
        if list_ref:
            self.get_list_or_404(list_ref["id"], pointer="/data/relationships/list/data/id")
            list_ids.append(list_ref["id"])
        resources = attributes["profiles"]["data"]
        identify = []
        for res in resources:
            a = res["attributes"]
            identify.append(
                {
                    "type": "profile",
                    **({"id": res["id"]} if res.get("id") else {}),
                    "attributes": {k: a[k] for k in ("email", "phone_number") if a.get(k) is not None},
                }
            )
        batch, errors = self.store.prepare_import(identify, None, self.config.max_profile_bytes, 0)
        for i, res in enumerate(resources):
            subs = res["attributes"].get("subscriptions") or {}
            for channel, identifier in (("email", "email"), ("sms", "phone_number")):
                marketing = (subs.get(channel) or {}).get("marketing")
                if not marketing:
                    continue
                base = f"/data/attributes/profiles/data/{i}/attributes"
                if not res["attributes"].get(identifier) and not res.get("id"):
                    errors.append((f"{base}/{identifier}", f"'{identifier}' is required to subscribe to {channel}."))
                consented_at = marketing.get("consented_at")
                pointer = f"{base}/subscriptions/{channel}/marketing/consented_at"
                if historical and not consented_at:
                    errors.append((pointer, "'consented_at' is required when 'historical_import' is true."))
                elif consented_at and not historical:
                    errors.append((pointer, "'consented_at' is only allowed when 'historical_import' is true."))
                elif consented_at:
                    when = parse_time(consented_at)
                    if when is None or when > ctx.now:
                        errors.append((pointer, "'consented_at' must be a date-time in the past."))
        if errors:
            errors.sort(key=lambda e: e[0])
            raise ApiError.invalid(errors)
        assert batch is not None
        batch.resources, batch.fails = resources, None  # identify by the identifiers; subscribe from the rest
        job = Job(
            id=self.ids.ulid(ctx.now),
            kind="subscribe",
            created=ctx.now,
            latency=self.config.job_latency,
            batch=batch,
            list_ids=list_ids,
            total=len(batch),
            options={"historical": historical, "custom_source": attributes.get("custom_source")},
        )
        self.store.add_job(job, ctx.now)
        return Response(status_code=202)

    # ======================================================================================================
    # Admin (test-only; no key; not under /api)
    # ======================================================================================================
    def admin_routes(self) -> list[Route]:
        return [
            Route("/__emulator/health", self.admin_health, methods=["GET"]),
            Route("/__emulator/stats", self.admin_stats, methods=["GET"]),
            Route("/__emulator/faults", self.admin_faults, methods=["GET", "POST", "DELETE"]),
            Route("/__emulator/reset", self.admin_reset, methods=["POST"]),
            Route("/__emulator/clock", self.admin_clock, methods=["GET", "POST"]),
            Route("/__emulator/config", self.admin_config, methods=["GET", "POST"]),
        ]

    @staticmethod
    async def _admin_body(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not JSON: {exc}") from exc

    @staticmethod
    def _admin_json(content: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status_code=status, media_type="application/json")

    async def admin_health(self, request: Request) -> Response:
        return self._admin_json({"ok": True, "spec_revision": self.spec.revision})

    async def admin_stats(self, request: Request) -> Response:
        self.store.settle(self.clock.now())
        s = self.store
        return self._admin_json(
            {
                **self.stats.as_dict(),
                "state": {
                    "profiles": len(s.profiles),
                    "lists": len(s.lists),
                    "jobs": len(s.jobs),
                    "jobs_active": len(s.active_jobs),
                    "import_errors": sum(len(j.errors) for j in s.job_order),
                    "optin_emails_sent": s.optin_emails_sent,
                },
            }
        )

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
            self.faults.configure_random(0.0, None)
            return self._admin_json(self.faults.describe())
        if request.method == "GET":
            return self._admin_json(self.faults.describe())
        body = await self._admin_body(request)
        try:
            if isinstance(body, list):
                rules, random_cfg = body, None
            elif isinstance(body, dict) and ("kind" in body or "fault" in body):
                rules, random_cfg = [body], None
            elif isinstance(body, dict):
                unknown = set(body) - {"rules", "faults", "random"}
                if unknown:
                    raise PlanError(f"unknown key(s) {sorted(unknown)}: send 'rules' (a list) and/or 'random'")
                rules, random_cfg = body.get("rules", body.get("faults", [])), body.get("random")
            else:
                raise PlanError("send a fault rule, a list of rules, or {'rules': [...], 'random': {...}}")
            if not isinstance(rules, list):
                raise PlanError("'rules' must be a list")
            added = self.faults.add(rules)
            if random_cfg is not None:
                self.faults.configure_random(
                    float(random_cfg.get("rate", 0.0)),
                    random_cfg.get("seed"),
                    tuple(random_cfg.get("kinds", KINDS)),
                    float(random_cfg.get("delay", 1.0)),
                )
        except (PlanError, TypeError, ValueError, AttributeError) as exc:
            return self._admin_json({"error": str(exc)}, 400)
        return self._admin_json({"added": [asdict(r) for r in added], **self.faults.describe()}, 201)

    async def admin_reset(self, request: Request) -> Response:
        c = self.config
        self.store.reset()
        self._frozen_at = self.store.seq + self.store.next_profile_number
        self.limiter.reset()
        self.stats = Stats()
        self.faults = Faults(c.fault_rate, c.fault_seed, c.fault_kinds, c.fault_delay)
        self.clock = Clock()
        return self._admin_json({"reset": True})

    async def admin_clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._admin_body(request)
            if not isinstance(body, dict) or set(body) - {"freeze", "advance"}:
                return self._admin_json({"error": "send {'freeze': true|false} and/or {'advance': seconds}"}, 400)
            if body.get("freeze") is True:
                self.clock.freeze()
            elif body.get("freeze") is False:
                self.clock.unfreeze()
            if "advance" in body:
                try:
                    seconds = float(body["advance"])
                except (TypeError, ValueError):
                    return self._admin_json({"error": "'advance' must be a number of seconds"}, 400)
                self.clock.advance(seconds)
        now = self.clock.now()
        return self._admin_json({"now": iso(now), "epoch": now, "frozen": self.clock.frozen is not None})

    async def admin_config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._admin_body(request)
            if not isinstance(body, dict) or set(body) - {"rate_limits", "job_latency"}:
                return self._admin_json({"error": "send {'rate_limits': 'klaviyo'|'off', 'job_latency': s}"}, 400)
            if "rate_limits" in body:
                if body["rate_limits"] not in ("klaviyo", "off"):
                    return self._admin_json({"error": "rate_limits must be 'klaviyo' or 'off'"}, 400)
                self.config.rate_limits = body["rate_limits"] == "klaviyo"
            if "job_latency" in body:
                self.config.job_latency = max(0.0, float(body["job_latency"]))
        c = self.config
        return self._admin_json(
            {
                "rate_limits": "klaviyo" if c.rate_limits else "off",
                "job_latency": c.job_latency,
                "max_body_bytes": c.max_body_bytes,
                "max_profile_bytes": c.max_profile_bytes,
                "spec_revision": self.spec.revision,
            }
        )

    # ======================================================================================================
    # Errors raised by the router (unknown path, wrong method)
    # ======================================================================================================
    async def http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if not path.startswith("/api"):
            return self._admin_json({"error": exc.detail}, exc.status_code)
        key = f"{request.method} <unmatched>"
        self.stats.endpoints[key].requests += 1
        self.stats.endpoints[key].responses[exc.status_code] += 1
        if exc.status_code == 405:
            err = ApiError.one(405, f'Method "{request.method}" not allowed.')
        elif path.endswith("/") and len(path) > 1:
            err = ApiError.one(404, f"Not found: '{path}' (Klaviyo paths have no trailing slash).")
        else:
            err = ApiError.one(exc.status_code, f"Not found: '{path}'.")
        return self.error_response(err)


class EmulatorApp(Starlette):
    """A Starlette app that remembers the server's raw `send` so a fault can drop the connection."""

    emulator: Emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["emulator.raw_send"] = send
        await super().__call__(scope, receive, send)


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """The emulator as an ASGI app (embed it in-process, or serve it with uvicorn)."""
    emulator = Emulator(config or EmulatorConfig())
    app = EmulatorApp(
        routes=emulator.routes() + emulator.admin_routes(),
        exception_handlers={HTTPException: emulator.http_exception},
    )
    app.router.redirect_slashes = False
    app.emulator = emulator
    app.state.emulator = emulator
    return app
