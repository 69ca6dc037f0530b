"""Async Klaviyo client for exactly the calls the sync uses.

Every request goes through ``_send``: the rate limiter grants a slot for the endpoint's tier,
tenacity retries what is worth retrying (see ``retry.py``), and anything else becomes a typed
``KlaviyoError``. The API key lives only inside an ``httpx.Auth`` object with a redacted repr and is
scrubbed from anything Klaviyo echoes back, so it cannot reach logs, reprs, errors or tracebacks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import httpx
import orjson
from tenacity import RetryCallState

from .batching import ImportBatch
from .errors import (
    KlaviyoAuthError,
    KlaviyoBadRequest,
    KlaviyoError,
    KlaviyoNotFound,
    KlaviyoThrottled,
    KlaviyoUnavailable,
    error_for_status,
)
from .limits import RateLimiter
from .models import (
    ImportErrorItem,
    ImportJob,
    RejectedProfile,
    SubmitResult,
    SubscribeProfile,
    profile_index,
)
from .retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy, parse_retry_after

__all__ = ["DEFAULT_BASE_URL", "JSONAPI", "REVISION", "ClientStats", "KlaviyoClient"]

log = logging.getLogger("shared.pushing.klaviyo")

REVISION = "2026-07-15"
DEFAULT_BASE_URL = "https://a.klaviyo.com"
JSONAPI = "application/vnd.api+json"
USER_AGENT = "ci-klaviyo-sync/0.1 (httpx)"

PAGE_SIZE = 100  # max page[size] for every paged endpoint used here
LOOKUP_BATCH = 100  # emails per any(email,[...]) filter
MEMBERS_BATCH = 1_000  # profile ids per list add/remove
SUBSCRIBE_BATCH = 1_000  # profiles per subscription bulk-create job

_WRITE_HEADERS = {"content-type": JSONAPI}
_ITEM_POINTER = re.compile(r"^/data/\d+(?:/|$)")  # an item of a relationship body: a profile id
_T = TypeVar("_T")
_R = TypeVar("_R")


class _Endpoint(NamedTuple):
    op: str  # Klaviyo operationId: the limiter bucket and the log label
    tier: str  # x-klaviyo-ratelimit of the operation in the 2026-07-15 spec


_ACCOUNTS = _Endpoint("get_accounts", "XS")
_GET_LIST = _Endpoint("get_list", "L")
_CREATE_LIST = _Endpoint("create_list", "M")
_IMPORT = _Endpoint("bulk_import_profiles", "M")
_IMPORT_JOB = _Endpoint("get_bulk_import_profiles_job", "M")
_IMPORT_JOBS = _Endpoint("get_bulk_import_profiles_jobs", "M")
_IMPORT_ERRORS = _Endpoint("get_errors_for_bulk_import_profiles_job", "M")
_PROFILES = _Endpoint("get_profiles", "L")
_LIST_PROFILES = _Endpoint("get_profiles_for_list", "L")
_ADD_MEMBERS = _Endpoint("add_profiles_to_list", "M")
_REMOVE_MEMBERS = _Endpoint("remove_profiles_from_list", "M")
_SUBSCRIBE = _Endpoint("bulk_subscribe_profiles", "L")


@dataclass
class ClientStats:
    """Counters for the run report."""

    requests: int = 0  # HTTP attempts sent (retries included)
    throttled: int = 0  # 429 answers
    retries: int = 0  # attempts repeated after a 429/5xx/transport failure
    server_errors: int = 0  # 5xx answers
    transport_errors: int = 0  # timeouts, refused or dropped connections
    rejected_profiles: int = 0  # profiles stripped from import jobs after a 400
    by_status: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "throttled": self.throttled,
            "retries": self.retries,
            "server_errors": self.server_errors,
            "transport_errors": self.transport_errors,
            "rejected_profiles": self.rejected_profiles,
            "by_status": dict(sorted(self.by_status.items())),
        }


class _ApiKeyAuth(httpx.Auth):
    """Adds the key per request; holds it in slots (not in any ``__dict__``) and never shows it."""

    __slots__ = ("_header", "_key")

    def __init__(self, api_key: str) -> None:
        self._key = api_key
        self._header = f"Klaviyo-API-Key {api_key}"

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key in text else text

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "<Klaviyo-API-Key [redacted]>"

    def __reduce__(self):
        raise TypeError("the Klaviyo API key is not picklable")


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """One verifying TLS context per process (and CA setting): building one loads the CA bundle, tens of
    milliseconds of CPU, and every push makes a client (a quarter of a 1 M-row run's CPU before this)."""
    return httpx.create_ssl_context()


class KlaviyoClient:
    """Klaviyo REST client (revision ``REVISION``). Use as ``async with KlaviyoClient(key) as k:``.

    ``concurrency`` bounds the requests one batched call (lookups, list add/remove, subscribe)
    keeps in flight; the limiter, not this, keeps the rate under Klaviyo's limits.
    ``max_resends`` is how many times ``submit_import_job`` resends after stripping profiles.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        concurrency: int = 8,
        max_resends: int = 1,
    ) -> None:
        key = (api_key or "").strip()
        if not key:
            raise ValueError("a Klaviyo private API key is required")
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            raise ValueError("the Klaviyo API key contains characters a key cannot have")
        self._auth = _ApiKeyAuth(key)
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.retry = retry if retry is not None else RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.max_resends = max(0, max_resends)
        self.stats = ClientStats()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=self._auth,
            headers={"revision": REVISION, "accept": JSONAPI, "user-agent": USER_AGENT},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
        )

    # -- plumbing -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={self.base_url!r}, revision={REVISION!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("KlaviyoClient is not picklable")

    async def __aenter__(self) -> KlaviyoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _scrub(self, text: Any) -> str:
        return self._auth.scrub("" if text is None else str(text))

    def _link_path(self, link: str) -> str:
        """``links.next`` as a path on *our* base URL: the key is never sent to another host."""
        url = httpx.URL(link)
        raw = url.raw_path.decode("ascii")
        prefix = httpx.URL(self.base_url).raw_path.decode("ascii").rstrip("/")
        if prefix and raw.startswith(prefix + "/"):
            raw = raw[len(prefix) :]
        return raw

    def _error(
        self, resp: httpx.Response, method: str, path: str, attempts: int, retry_after: float | None
    ) -> KlaviyoError:
        status = resp.status_code
        errors: list[dict[str, Any]] = []
        try:
            doc = orjson.loads(resp.content) if resp.content else {}
            if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
                errors = [e for e in doc["errors"] if isinstance(e, dict)]
        except orjson.JSONDecodeError:
            pass
        for err in errors:  # whatever Klaviyo echoes, the key must not survive into an error
            for k in ("detail", "title"):
                if isinstance(err.get(k), str):
                    err[k] = self._scrub(err[k])
        first = errors[0] if errors else {}
        detail = first.get("detail") or first.get("title") or self._scrub(resp.text[:200]) or resp.reason_phrase
        if len(errors) > 1:
            detail = f"{detail} (+{len(errors) - 1} more)"
        cls = error_for_status(status)
        kwargs: dict[str, Any] = {}
        if cls is KlaviyoThrottled:
            kwargs["retry_after"] = retry_after
        return cls(
            status,
            first.get("code"),
            detail,
            first.get("title"),
            method=method,
            path=path,
            errors=errors,
            attempts=attempts,
            **kwargs,
        )

    async def _send(
        self,
        ep: _Endpoint,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """One logical call: limiter slot, request, retries. Returns a 2xx response or raises."""
        path = url.split("?", 1)[0]  # messages and logs never carry the query (emails live there)
        attempts = 0

        async def attempt_once() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            slot, _ = await self.limiter.take(ep.tier, ep.op)
            self.stats.requests += 1
            try:
                resp = await self._http.request(
                    method, url, params=params, content=body, headers=_WRITE_HEADERS if body is not None else None
                )
            except RETRYABLE_TRANSPORT_ERRORS:
                self.stats.transport_errors += 1
                raise
            status = resp.status_code
            self.stats.by_status[status] += 1
            log.debug("klaviyo %s %s %s -> %d (attempt %d)", ep.op, method, path, status, attempts)
            if status < 300:
                return resp
            retry_after = None
            if status == 429:
                self.stats.throttled += 1
                self.limiter.refund(ep.tier, ep.op, slot)
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            elif status >= 500:
                self.stats.server_errors += 1
            raise self._error(resp, method, path, attempts, retry_after)

        def before_sleep(state: RetryCallState) -> None:
            self.stats.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            wait = state.upcoming_sleep
            if isinstance(exc, KlaviyoThrottled):
                self.limiter.defer(ep.tier, ep.op, wait)  # hold back the other callers too
            what = str(exc) if isinstance(exc, KlaviyoError) else f"{type(exc).__name__}: {self._scrub(exc)}"
            log.debug(  # a retry is routine; what finally fails is reported by the caller
                "klaviyo %s %s %s failed (%s); retry %d of %d in %.1f s",
                ep.op, method, path, what, state.attempt_number, self.retry.max_attempts - 1, wait,
            )  # fmt: skip

        try:
            async for attempt in self.retry.retrying(before_sleep):
                with attempt:
                    return await attempt_once()
        except KlaviyoError:
            raise
        except RETRYABLE_TRANSPORT_ERRORS as exc:
            raise KlaviyoUnavailable(
                None,
                "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error",
                f"{type(exc).__name__}: {self._scrub(exc) or 'no detail'}",
                method=method,
                path=path,
                attempts=attempts,
            ) from exc
        except httpx.HTTPError as exc:
            raise KlaviyoError(
                None, "transport_error", f"{type(exc).__name__}: {self._scrub(exc)}", method=method, path=path
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        if not resp.content:
            return {}
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            path = resp.request.url.path if resp.request else None
            raise KlaviyoError(
                resp.status_code, "invalid_response", "the answer is not JSON", method=resp.request.method, path=path
            ) from None
        return doc if isinstance(doc, dict) else {}

    async def _pages(self, ep: _Endpoint, url: str, params: dict[str, Any] | None) -> AsyncIterator[dict[str, Any]]:
        """Every resource of every page, following ``links.next`` to the end."""
        seen: set[str] = set()
        while True:
            doc = self._json(await self._send(ep, "GET", url, params=params))
            for resource in doc.get("data") or ():
                yield resource
            nxt = (doc.get("links") or {}).get("next")
            if not nxt:
                return
            url, params = self._link_path(nxt), None
            if url in seen:
                raise KlaviyoError(None, "pagination_loop", f"links.next repeats {url.split('?', 1)[0]}")
            seen.add(url)

    async def _each(self, items: Sequence[_T], fn: Callable[[_T], Awaitable[_R]]) -> list[_R]:
        """Run ``fn`` over ``items`` with at most ``concurrency`` in flight; the first error cancels
        the rest and is raised as-is (not as an ExceptionGroup)."""
        if len(items) <= 1 or self.concurrency == 1:
            return [await fn(item) for item in items]
        sem = asyncio.Semaphore(self.concurrency)

        async def run(item: _T) -> _R:
            async with sem:
                return await fn(item)

        tasks = [asyncio.ensure_future(run(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    @staticmethod
    def _list_path(list_id: str, suffix: str = "") -> str:
        if not list_id or not isinstance(list_id, str):
            raise ValueError("a Klaviyo list id is required")
        return f"/api/lists/{quote(list_id, safe='')}{suffix}"

    @staticmethod
    def _list_missing(exc: KlaviyoNotFound, list_id: str) -> KlaviyoNotFound:
        """A 404 on a list-scoped call, reworded to name the list, unless Klaviyo's pointers say the
        missing thing is a profile of the body (``/data/<i>/id``): then the original error stands."""
        if any(_ITEM_POINTER.match(p) for p in exc.pointers):
            return exc
        return exc.reworded(
            f"Klaviyo list {list_id!r} does not exist in this account "
            f"({exc.status} {exc.code or 'not_found'} on {exc.method} {exc.path}: {exc.detail})"
        )

    # -- account and lists ----------------------------------------------------------------------

    async def check_key(self) -> dict[str, Any]:
        """``GET /api/accounts``: the account the key belongs to. ``KlaviyoAuthError`` if the key is bad."""
        try:
            doc = self._json(await self._send(_ACCOUNTS, "GET", "/api/accounts"))
        except KlaviyoAuthError as exc:
            raise exc.reworded(
                f"Klaviyo rejected the API key ({exc.status} {exc.code or 'unauthorized'}: {exc.detail})"
                if exc.status == 401
                else f"the Klaviyo API key lacks a scope ({exc.status} {exc.code or 'forbidden'}: {exc.detail})"
            ) from None
        data = doc.get("data") or []
        if isinstance(data, list):
            if not data:
                raise KlaviyoError(None, "no_account", "GET /api/accounts returned no account")
            return data[0]
        return data

    async def get_list(self, list_id: str) -> dict[str, Any]:
        """``GET /api/lists/{id}``: the list resource; ``KlaviyoNotFound`` if the account has no such list."""
        try:
            doc = self._json(await self._send(_GET_LIST, "GET", self._list_path(list_id)))
        except KlaviyoNotFound as exc:
            raise self._list_missing(exc, list_id) from None
        return doc["data"]

    async def create_list(self, name: str) -> str:
        """``POST /api/lists``; returns the new list id. Klaviyo caps new lists per day: not per run."""
        body = orjson.dumps({"data": {"type": "list", "attributes": {"name": name}}})
        doc = self._json(await self._send(_CREATE_LIST, "POST", "/api/lists", body=body))
        return str(doc["data"]["id"])

    # -- bulk import ----------------------------------------------------------------------------

    async def submit_import_job(self, batch: ImportBatch, list_id: str | None) -> SubmitResult:
        """``POST /api/profile-bulk-import-jobs`` for ``batch`` (optionally adding everyone to ``list_id``).

        A 400 whose errors all point at profiles (``/data/attributes/profiles/data/<i>/...``) strips
        exactly those profiles, reports them as ``rejected`` with Klaviyo's detail, and resends the rest
        (``max_resends`` times, once by default). A 400 about the request itself, 401/403/404 and
        exhausted retries raise. If a resend is refused again, ``KlaviyoBadRequest.rejected`` carries
        the profiles identified so far.
        """
        rejected: list[RejectedProfile] = []
        current = batch
        resends = 0
        while len(current):
            try:
                resp = await self._send(_IMPORT, "POST", "/api/profile-bulk-import-jobs", body=current.body(list_id))
            except KlaviyoNotFound as exc:
                if list_id is None:
                    raise
                raise self._list_missing(exc, list_id) from None
            except KlaviyoBadRequest as exc:
                named, about_request = self._split_profile_errors(exc, len(current))
                if about_request or not named or exc.status != 400:
                    exc.rejected = rejected
                    raise
                new = [
                    RejectedProfile(
                        current.locators[i],
                        "; ".join(self._scrub(e.get("detail") or e.get("title") or "invalid") for e in errs),
                        errs[0].get("code"),
                    )
                    for i, errs in sorted(named.items())
                ]
                rejected.extend(new)
                self.stats.rejected_profiles += len(new)
                if resends >= self.max_resends:
                    raise exc.reworded(
                        f"Klaviyo refused the import again after invalid profiles were stripped "
                        f"({len(rejected)} rejected, {len(current) - len(new)} not sent): {exc.detail}",
                        rejected=rejected,
                    ) from None
                keep = [i for i in range(len(current)) if i not in named]
                log.info(
                    "klaviyo import: %d profile(s) rejected by Klaviyo, resending the other %d",
                    len(new),
                    len(keep),
                )
                current = current.select(keep)
                resends += 1
                continue
            data = self._json(resp).get("data") or {}
            job = ImportJob.from_resource(data) if data.get("id") else None
            return SubmitResult(job.id if job else None, len(current), rejected, tuple(current.locators), job)
        return SubmitResult(None, 0, rejected, (), None)

    @staticmethod
    def _split_profile_errors(
        exc: KlaviyoError, count: int
    ) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
        named: dict[int, list[dict[str, Any]]] = {}
        about_request: list[dict[str, Any]] = []
        for err in exc.errors:
            source = err.get("source")
            idx = profile_index(source.get("pointer") if isinstance(source, dict) else None)
            if idx is not None and idx < count:
                named.setdefault(idx, []).append(dict(err))
            else:
                about_request.append(dict(err))
        return named, about_request

    async def get_import_job(self, job_id: str) -> ImportJob:
        doc = self._json(
            await self._send(_IMPORT_JOB, "GET", f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}")
        )
        return ImportJob.from_resource(doc["data"])

    async def iter_import_jobs(self, newest_first: bool = True) -> AsyncIterator[ImportJob]:
        """The account's bulk import jobs, 100 a page (``GET /api/profile-bulk-import-jobs``): one call
        tells the state of up to 100 jobs, where ``get_import_job`` spends one call per job."""
        params = {"page[size]": PAGE_SIZE, "sort": "-created_at" if newest_first else "created_at"}
        async for resource in self._pages(_IMPORT_JOBS, "/api/profile-bulk-import-jobs", params):
            yield ImportJob.from_resource(resource)

    async def iter_import_errors(self, job_id: str) -> AsyncIterator[ImportErrorItem]:
        """Every import error of a job, across every page. ``index`` is a position in the job."""
        url = f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}/import-errors"
        async for resource in self._pages(_IMPORT_ERRORS, url, {"page[size]": PAGE_SIZE}):
            yield ImportErrorItem.from_resource(resource)

    # -- profiles and list members --------------------------------------------------------------

    async def lookup_profile_ids(self, emails: Sequence[str]) -> dict[str, str]:
        """Profile ids by email (lowercased), ``any(email,[...])`` in batches of 100. Unknown emails
        are absent from the result."""
        wanted = _dedupe(e.strip().lower() for e in emails if e and e.strip())
        found: dict[str, str] = {}

        async def lookup(chunk: Sequence[str]) -> None:
            params = {
                "filter": f"any(email,{orjson.dumps(list(chunk)).decode()})",
                "fields[profile]": "email",
                "page[size]": PAGE_SIZE,
            }
            asked = set(chunk)
            async for resource in self._pages(_PROFILES, "/api/profiles", params):
                email = ((resource.get("attributes") or {}).get("email") or "").lower()
                if email in asked and resource.get("id"):
                    found[email] = str(resource["id"])

        await self._each(_chunks(wanted, LOOKUP_BATCH), lookup)
        return found

    async def iter_list_members(
        self, list_id: str, fields: Sequence[str] = ("email",)
    ) -> AsyncIterator[dict[str, Any]]:
        """Every member of a list as ``{"id": ..., <requested attributes>...}``, page by page."""
        params: dict[str, Any] = {"page[size]": PAGE_SIZE}
        if fields:
            params["fields[profile]"] = ",".join(fields)
        try:
            async for resource in self._pages(_LIST_PROFILES, self._list_path(list_id, "/profiles"), params):
                yield {"id": resource.get("id"), **(resource.get("attributes") or {})}
        except KlaviyoNotFound as exc:
            raise self._list_missing(exc, list_id) from None

    async def add_list_members(self, list_id: str, profile_ids: Sequence[str]) -> None:
        """Add profiles (Klaviyo ids) to a list, 1,000 per call. Does not change consent."""
        await self._members("POST", _ADD_MEMBERS, list_id, profile_ids)

    async def remove_list_members(self, list_id: str, profile_ids: Sequence[str]) -> None:
        """Remove profiles (Klaviyo ids) from a list, 1,000 per call. Does not change consent."""
        await self._members("DELETE", _REMOVE_MEMBERS, list_id, profile_ids)

    async def _members(self, method: str, ep: _Endpoint, list_id: str, profile_ids: Sequence[str]) -> None:
        url = self._list_path(list_id, "/relationships/profiles")
        ids = _dedupe(profile_ids)

        async def send(chunk: Sequence[str]) -> None:
            body = orjson.dumps({"data": [{"type": "profile", "id": pid} for pid in chunk]})
            await self._send(ep, method, url, body=body)

        try:
            await self._each(_chunks(ids, MEMBERS_BATCH), send)
        except KlaviyoNotFound as exc:
            raise self._list_missing(exc, list_id) from None

    # -- consent --------------------------------------------------------------------------------

    async def subscribe_profiles(
        self, list_id: str, profiles: Sequence[SubscribeProfile], *, custom_source: str
    ) -> None:
        """Subscribe profiles to email marketing on ``list_id`` (``profile-subscription-bulk-create-jobs``),
        1,000 per call. Profiles with ``consented_at`` go in ``historical_import`` calls (no double opt-in),
        the others in plain ones. Only call this for people whose consent is recorded."""
        historical = [p for p in profiles if p.consented_at is not None]
        fresh = [p for p in profiles if p.consented_at is None]
        for p in profiles:
            if not p.email:
                raise ValueError("every SubscribeProfile needs an email")
        jobs = [(c, True) for c in _chunks(historical, SUBSCRIBE_BATCH)]
        jobs += [(c, False) for c in _chunks(fresh, SUBSCRIBE_BATCH)]
        self._list_path(list_id)  # validates the id before anything is sent

        async def send(job: tuple[Sequence[SubscribeProfile], bool]) -> None:
            chunk, hist = job
            data = []
            for p in chunk:
                marketing: dict[str, Any] = {"consent": "SUBSCRIBED"}
                if hist:
                    marketing["consented_at"] = p.consented_at_text()
                attrs: dict[str, Any] = {"email": p.email, "subscriptions": {"email": {"marketing": marketing}}}
                if p.phone_number:
                    attrs["phone_number"] = p.phone_number
                data.append({"type": "profile", "attributes": attrs})
            body = orjson.dumps(
                {
                    "data": {
                        "type": "profile-subscription-bulk-create-job",
                        "attributes": {
                            "custom_source": custom_source,
                            "historical_import": hist,
                            "profiles": {"data": data},
                        },
                        "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
                    }
                }
            )
            await self._send(_SUBSCRIBE, "POST", "/api/profile-subscription-bulk-create-jobs", body=body)

        try:
            await self._each(jobs, send)
        except KlaviyoNotFound as exc:
            raise self._list_missing(exc, list_id) from None
