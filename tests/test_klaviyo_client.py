"""KlaviyoClient against httpx.MockTransport: exact edge cases, asserted on the requests made."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from shared.pushing.klaviyo import (
    REVISION,
    ImportBatch,
    KlaviyoAuthError,
    KlaviyoBadRequest,
    KlaviyoClient,
    KlaviyoError,
    KlaviyoNotFound,
    KlaviyoServerError,
    KlaviyoThrottled,
    KlaviyoUnavailable,
    RateLimiter,
    RetryPolicy,
    SubscribeProfile,
    import_body,
    serialize_profile,
)

CANARY = "pk_CANARY_9f8e7d6c5b4a39281706"
JSONAPI = "application/vnd.api+json"
BASE = "https://a.klaviyo.com"


class Recorder:
    """MockTransport handler: records requests, answers from ``responses`` in order (the last one
    repeats). An answer is an httpx.Response, an exception to raise, or a callable(request)."""

    def __init__(self, *responses) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses[min(len(self.requests) - 1, len(self.responses) - 1)]
        if callable(answer) and not isinstance(answer, httpx.Response):
            answer = answer(request)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def bodies(self) -> list[dict]:
        return [orjson.loads(r.content) for r in self.requests]


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def jsonapi(status: int, doc: dict | None = None, headers: dict | None = None) -> httpx.Response:
    content = orjson.dumps(doc) if doc is not None else b""
    return httpx.Response(status, content=content, headers={"content-type": JSONAPI, **(headers or {})})


def error(status: int, code: str, detail: str, pointer: str | None = None, **extra) -> dict:
    err = {"id": "e1", "status": status, "code": code, "title": code.replace("_", " "), "detail": detail}
    if pointer is not None:
        err["source"] = {"pointer": pointer}
    err.update(extra)
    return err


def errors(status: int, *errs: dict, headers: dict | None = None) -> httpx.Response:
    return jsonapi(status, {"errors": list(errs)}, headers)


def job_doc(job_id: str = "job1", status: str = "queued", total: int = 3) -> dict:
    return {
        "data": {
            "type": "profile-bulk-import-job",
            "id": job_id,
            "attributes": {"status": status, "total_count": total, "completed_count": 0, "failed_count": 0},
        }
    }


def make_client(handler: Callable, sleeps: Sleeps | None = None, **kw) -> KlaviyoClient:
    retry = kw.pop("retry", None) or RetryPolicy(sleep=sleeps or Sleeps())
    return KlaviyoClient(
        CANARY, BASE, transport=httpx.MockTransport(handler), limiter=RateLimiter.off(), retry=retry, **kw
    )


def batch_of(n: int) -> ImportBatch:
    return ImportBatch.of(
        (f"part-00001.csv:row {i + 1}", serialize_profile({"email": f"p{i}@example.com", "first_name": f"P{i}"}))
        for i in range(n)
    )


# -- headers ------------------------------------------------------------------------------------


async def test_every_request_carries_key_revision_and_jsonapi_types():
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/accounts":
            return jsonapi(200, {"data": [{"type": "account", "id": "acc1", "attributes": {}}]})
        if path == "/api/lists/L1":
            return jsonapi(200, {"data": {"type": "list", "id": "L1", "attributes": {"name": "x"}}})
        if path == "/api/lists" and request.method == "POST":
            return jsonapi(201, {"data": {"type": "list", "id": "NEW", "attributes": {"name": "x"}}})
        if path == "/api/profile-bulk-import-jobs":
            return jsonapi(202, job_doc())
        if path == "/api/profile-bulk-import-jobs/job1":
            return jsonapi(200, job_doc())
        if path == "/api/profiles":
            return jsonapi(200, {"data": [], "links": {"self": str(request.url)}})
        return jsonapi(204) if request.method in ("POST", "DELETE") else jsonapi(200, {"data": []})

    rec = Recorder(answer)
    async with make_client(rec) as client:
        await client.check_key()
        await client.get_list("L1")
        await client.create_list("Segment A")
        await client.submit_import_job(batch_of(2), "L1")
        await client.get_import_job("job1")
        await client.lookup_profile_ids(["a@x.com"])
        await client.add_list_members("L1", ["p1"])
        await client.remove_list_members("L1", ["p1"])
        await client.subscribe_profiles("L1", [SubscribeProfile("a@x.com")], custom_source="sync")
        _ = [m async for m in client.iter_list_members("L1")]
        _ = [e async for e in client.iter_import_errors("job1")]

    assert len(rec.requests) == 11
    for req in rec.requests:
        assert req.headers["authorization"] == f"Klaviyo-API-Key {CANARY}"
        assert req.headers["revision"] == REVISION == "2026-07-15"
        assert req.headers["accept"] == JSONAPI
        assert req.url.host == "a.klaviyo.com" and req.url.scheme == "https"
        assert not req.url.path.endswith("/")
        if req.method in ("POST", "DELETE"):
            assert req.headers["content-type"] == JSONAPI
            orjson.loads(req.content)  # valid JSON body


# -- retries ------------------------------------------------------------------------------------


async def test_429_waits_retry_after_then_succeeds():
    sleeps = Sleeps()
    rec = Recorder(
        errors(429, error(429, "throttled", "Request was throttled. Expected available in 7 seconds."),
               headers={"Retry-After": "7"}),
        jsonapi(202, job_doc("job-after-429")),
    )  # fmt: skip
    async with make_client(rec, sleeps) as client:
        result = await client.submit_import_job(batch_of(3), "L1")
    assert result.job_id == "job-after-429" and result.submitted == 3
    assert sleeps.calls == [7.0]
    assert len(rec.requests) == 2
    assert rec.requests[0].content == rec.requests[1].content
    assert client.stats.throttled == 1 and client.stats.retries == 1 and client.stats.requests == 2


async def test_429_without_retry_after_waits_a_burst_window():
    sleeps = Sleeps()
    rec = Recorder(errors(429, error(429, "throttled", "Request was throttled.")), jsonapi(202, job_doc()))
    async with make_client(rec, sleeps) as client:
        await client.submit_import_job(batch_of(1), None)
    assert sleeps.calls == [1.0]
    assert len(rec.requests) == 2


async def test_429_with_retry_after_beyond_the_policy_is_raised_not_waited():
    sleeps = Sleeps()
    rec = Recorder(errors(429, error(429, "throttled", "Daily limit."), headers={"Retry-After": "3600"}))
    async with make_client(rec, sleeps) as client:
        with pytest.raises(KlaviyoThrottled) as info:
            await client.create_list("x")
    assert info.value.retry_after == 3600
    assert isinstance(info.value, KlaviyoUnavailable)
    assert sleeps.calls == [] and len(rec.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_then_success(status):
    sleeps = Sleeps()
    rec = Recorder(errors(status, error(status, "error", "Something went wrong.")), jsonapi(202, job_doc()))
    async with make_client(rec, sleeps) as client:
        result = await client.submit_import_job(batch_of(2), None)
    assert result.job_id == "job1"
    assert len(rec.requests) == 2
    assert len(sleeps.calls) == 1 and 0.5 <= sleeps.calls[0] <= 1.0  # first backoff: 0.5 s + jitter
    assert client.stats.server_errors == 1 and client.stats.retries == 1


async def test_5xx_with_an_html_body_still_retries():
    rec = Recorder(httpx.Response(502, text="<html>Bad gateway</html>"), jsonapi(204))
    async with make_client(rec) as client:
        await client.add_list_members("L1", ["p1"])
    assert len(rec.requests) == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadError("Connection reset by peer"),
        httpx.ReadTimeout("timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_dropped_connection_then_success(exc):
    sleeps = Sleeps()
    rec = Recorder(exc, jsonapi(202, job_doc()))
    async with make_client(rec, sleeps) as client:
        result = await client.submit_import_job(batch_of(2), "L1")
    assert result.job_id == "job1"
    assert len(rec.requests) == 2 and len(sleeps.calls) == 1
    assert client.stats.transport_errors == 1


async def test_backoff_grows_exponentially_and_is_bounded():
    sleeps = Sleeps()
    rec = Recorder(errors(503, error(503, "unavailable", "Down.")))
    policy = RetryPolicy(max_attempts=6, backoff_initial=0.5, backoff_max=4.0, jitter=0.25, sleep=sleeps)
    async with make_client(rec, retry=policy) as client:
        with pytest.raises(KlaviyoUnavailable):
            await client.get_import_job("job1")
    assert len(rec.requests) == 6 and len(sleeps.calls) == 5
    for n, wait in enumerate(sleeps.calls):
        base = min(0.5 * 2**n, 4.0)
        assert base <= wait <= min(base + 0.25, 4.0)


async def test_5xx_retries_exhausted_raise_klaviyo_unavailable():
    sleeps = Sleeps()
    rec = Recorder(errors(503, error(503, "service_unavailable", "Klaviyo is down for maintenance.")))
    async with make_client(rec, sleeps, retry=RetryPolicy(max_attempts=4, sleep=sleeps)) as client:
        with pytest.raises(KlaviyoUnavailable) as info:
            await client.submit_import_job(batch_of(2), None)
    err = info.value
    assert isinstance(err, KlaviyoServerError)
    assert (err.status, err.code, err.attempts) == (503, "service_unavailable", 4)
    assert len(rec.requests) == 4 and len(sleeps.calls) == 3
    assert str(err) == (
        "Klaviyo 503 (service_unavailable) on POST /api/profile-bulk-import-jobs after 4 attempts: "
        "Klaviyo is down for maintenance."
    )


async def test_connection_retries_exhausted_raise_klaviyo_unavailable():
    rec = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    async with make_client(rec, retry=RetryPolicy(max_attempts=3, sleep=Sleeps())) as client:
        with pytest.raises(KlaviyoUnavailable) as info:
            await client.check_key()
    assert info.value.status is None and info.value.code == "connection_error"
    assert info.value.attempts == 3 and len(rec.requests) == 3
    assert "\n" not in str(info.value) and "Connection refused" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_still_throttled_after_retries_is_klaviyo_throttled():
    sleeps = Sleeps()
    rec = Recorder(errors(429, error(429, "throttled", "Request was throttled."), headers={"Retry-After": "1"}))
    async with make_client(rec, retry=RetryPolicy(max_attempts=3, sleep=sleeps)) as client:
        with pytest.raises(KlaviyoThrottled) as info:
            await client.add_list_members("L1", ["p1"])
    assert info.value.attempts == 3 and sleeps.calls == [1.0, 1.0]
    assert client.stats.throttled == 3


# -- 4xx: strip-and-resend, fatal errors --------------------------------------------------------


async def test_400_naming_profiles_strips_exactly_those_and_resends_the_rest_once():
    batch = batch_of(6)
    rec = Recorder(
        errors(
            400,
            error(400, "invalid", "Invalid email address.", "/data/attributes/profiles/data/1/attributes/email"),
            error(400, "invalid", "Invalid phone number.", "/data/attributes/profiles/data/4/attributes/phone_number"),
            error(400, "invalid", "Invalid email address.", "/data/attributes/profiles/data/4/attributes/email"),
        ),
        jsonapi(202, job_doc("job-rest", total=4)),
    )
    sleeps = Sleeps()
    async with make_client(rec, sleeps) as client:
        result = await client.submit_import_job(batch, "L1")

    assert len(rec.requests) == 2 and sleeps.calls == []
    keep = [0, 2, 3, 5]
    assert rec.requests[1].content == import_body([batch.profiles[i] for i in keep], "L1")
    assert result.job_id == "job-rest" and result.submitted == 4
    assert [r.locator for r in result.rejected] == ["part-00001.csv:row 2", "part-00001.csv:row 5"]
    assert result.rejected[0].detail == "Invalid email address."
    assert result.rejected[1].detail == "Invalid phone number.; Invalid email address."
    assert result.rejected[0].code == "invalid"
    # the job's indexes refer to the resent body
    assert result.locators == tuple(batch.locators[i] for i in keep)
    assert result.locator_for(1) == "part-00001.csv:row 3"
    assert client.stats.rejected_profiles == 2


async def test_400_again_after_stripping_is_fatal_and_keeps_the_rejects():
    rec = Recorder(
        errors(400, error(400, "invalid", "Bad email.", "/data/attributes/profiles/data/0/attributes/email")),
        errors(400, error(400, "invalid", "Bad phone.", "/data/attributes/profiles/data/1/attributes/phone_number")),
    )
    batch = batch_of(3)
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoBadRequest) as info:
            await client.submit_import_job(batch, None)
    assert len(rec.requests) == 2  # resent once, not again
    # the second answer's index 1 is the original row 3 (row 1 was stripped before)
    assert [(r.locator, r.detail) for r in info.value.rejected] == [
        ("part-00001.csv:row 1", "Bad email."),
        ("part-00001.csv:row 3", "Bad phone."),
    ]
    assert "1 not sent" in str(info.value)


async def test_400_rejecting_every_profile_sends_nothing_more():
    rec = Recorder(
        errors(
            400,
            error(400, "invalid", "Bad email.", "/data/attributes/profiles/data/0/attributes/email"),
            error(400, "invalid", "Bad email.", "/data/attributes/profiles/data/1/attributes/email"),
        )
    )
    async with make_client(rec) as client:
        result = await client.submit_import_job(batch_of(2), "L1")
    assert len(rec.requests) == 1
    assert result.job_id is None and result.submitted == 0 and len(result.rejected) == 2


@pytest.mark.parametrize(
    "err",
    [
        error(400, "invalid", "List does not exist.", "/data/relationships/lists/data/0/id"),
        error(400, "invalid", "Invalid revision.", parameter=None),
    ],
)
async def test_400_about_the_request_itself_is_fatal_and_not_retried(err):
    rec = Recorder(errors(400, err))
    sleeps = Sleeps()
    async with make_client(rec, sleeps) as client:
        with pytest.raises(KlaviyoBadRequest) as info:
            await client.submit_import_job(batch_of(3), "NOPE")
    assert len(rec.requests) == 1 and sleeps.calls == []
    assert info.value.status == 400 and info.value.code == "invalid"
    assert info.value.detail == err["detail"]


async def test_400_mixing_profile_and_request_errors_is_fatal():
    rec = Recorder(
        errors(
            400,
            error(400, "invalid", "Bad email.", "/data/attributes/profiles/data/0/attributes/email"),
            error(400, "invalid", "Unknown list.", "/data/relationships/lists/data/0/id"),
        )
    )
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoBadRequest):
            await client.submit_import_job(batch_of(2), "L1")
    assert len(rec.requests) == 1


async def test_401_is_fatal_and_not_retried():
    sleeps = Sleeps()
    rec = Recorder(errors(401, error(401, "not_authenticated", "Incorrect authentication credentials.")))
    async with make_client(rec, sleeps) as client:
        with pytest.raises(KlaviyoAuthError) as info:
            await client.check_key()
    assert len(rec.requests) == 1 and sleeps.calls == []
    assert (info.value.status, info.value.code) == (401, "not_authenticated")
    assert str(info.value) == (
        "Klaviyo rejected the API key (401 not_authenticated: Incorrect authentication credentials.)"
    )


async def test_403_on_a_write_is_an_auth_error_naming_the_call():
    rec = Recorder(errors(403, error(403, "permission_denied", "You do not have permission.")))
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoAuthError) as info:
            await client.add_list_members("L1", ["p1"])
    assert len(rec.requests) == 1
    assert "403" in str(info.value) and "/api/lists/L1/relationships/profiles" in str(info.value)


async def test_404_list_is_fatal_with_a_clear_message():
    rec = Recorder(errors(404, error(404, "not_found", "A list with id XyZ123 does not exist.")))
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoNotFound) as info:
            await client.get_list("XyZ123")
        with pytest.raises(KlaviyoNotFound) as info2:
            await client.add_list_members("XyZ123", ["p1", "p2"])
        with pytest.raises(KlaviyoNotFound):
            _ = [m async for m in client.iter_list_members("XyZ123")]
    assert len(rec.requests) == 3
    assert str(info.value).startswith("Klaviyo list 'XyZ123' does not exist in this account (404 not_found")
    assert info2.value.status == 404 and "XyZ123" in str(info2.value)


# -- paging and batching ------------------------------------------------------------------------


def import_error(i: int) -> dict:
    return {
        "type": "import-error",
        "id": f"err{i}",
        "attributes": {
            "code": "invalid",
            "title": "Invalid input",
            "detail": f"bad row {i}",
            "source": {"pointer": f"/data/attributes/profiles/data/{i}/attributes/email"},
            "original_payload": {"email": f"bad{i}"},
        },
    }


async def test_import_errors_reads_every_page():
    pages = {
        None: ([import_error(i) for i in range(100)], "c2"),
        "c2": ([import_error(i) for i in range(100, 200)], "c3"),
        "c3": ([import_error(i) for i in range(200, 230)], None),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("page[cursor]")
        data, nxt = pages[cursor]
        path = "/api/profile-bulk-import-jobs/job9/import-errors"
        links = {"self": f"https://a.klaviyo.com{path}"}
        if nxt:  # Klaviyo gives absolute links; a foreign host must not receive the key
            links["next"] = f"https://elsewhere.example{path}?page%5Bcursor%5D={nxt}&page%5Bsize%5D=100"
        return jsonapi(200, {"data": data, "links": links})

    rec = Recorder(answer)
    async with make_client(rec) as client:
        items = [e async for e in client.iter_import_errors("job9")]
    assert len(rec.requests) == 3
    assert [i.index for i in items] == list(range(230))
    assert items[229].detail == "bad row 229" and items[229].original_payload == {"email": "bad229"}
    assert items[0].code == "invalid" and items[0].title == "Invalid input"
    assert all(r.url.host == "a.klaviyo.com" for r in rec.requests)
    assert rec.requests[0].url.params["page[size]"] == "100"
    assert [r.url.params.get("page[cursor]") for r in rec.requests] == [None, "c2", "c3"]


def emails_in(request: httpx.Request) -> list[str]:
    flt = request.url.params["filter"]
    assert flt.startswith("any(email,[") and flt.endswith("])")
    return orjson.loads(flt[len("any(email,") : -1])


async def test_lookup_profile_ids_batches_at_100():
    def answer(request: httpx.Request) -> httpx.Response:
        data = [
            {"type": "profile", "id": f"id-{e}", "attributes": {"email": e.upper() if e.startswith("u") else e}}
            for e in emails_in(request)
            if not e.startswith("missing")
        ]
        return jsonapi(200, {"data": data, "links": {"self": str(request.url)}})

    emails = [f"p{i}@example.com" for i in range(248)] + ["missing@example.com", "U1@Example.com"]
    emails += ["P0@EXAMPLE.COM", "  p1@example.com "]  # duplicates by case and whitespace
    rec = Recorder(answer)
    async with make_client(rec) as client:
        found = await client.lookup_profile_ids(emails)
    sent = [emails_in(r) for r in rec.requests]
    assert sorted(map(len, sent)) == [50, 100, 100]
    assert sorted(e for chunk in sent for e in chunk) == sorted({e.strip().lower() for e in emails})
    assert all(r.url.path == "/api/profiles" and r.method == "GET" for r in rec.requests)
    assert rec.requests[0].url.params["fields[profile]"] == "email"
    assert len(found) == 249 and "missing@example.com" not in found
    assert found["p0@example.com"] == "id-p0@example.com" and found["u1@example.com"] == "id-u1@example.com"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_list_member_changes_batch_at_1000(method):
    rec = Recorder(jsonapi(204))
    ids = [f"01PROFILE{i:05d}" for i in range(2500)]
    async with make_client(rec) as client:
        if method == "POST":
            await client.add_list_members("L1", ids + ids[:10])
        else:
            await client.remove_list_members("L1", ids)
    assert all(r.method == method and r.url.path == "/api/lists/L1/relationships/profiles" for r in rec.requests)
    bodies = rec.bodies()
    assert sorted(len(b["data"]) for b in bodies) == [500, 1000, 1000]
    sent = [d["id"] for b in bodies for d in b["data"]]
    assert sorted(sent) == ids  # each exactly once
    assert all(d["type"] == "profile" for b in bodies for d in b["data"])


async def test_empty_inputs_send_nothing():
    rec = Recorder(jsonapi(204))
    async with make_client(rec) as client:
        await client.add_list_members("L1", [])
        assert await client.lookup_profile_ids([]) == {}
        await client.subscribe_profiles("L1", [], custom_source="x")
        result = await client.submit_import_job(ImportBatch(), "L1")
    assert rec.requests == [] and result.submitted == 0


async def test_list_members_follow_links_next():
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page[cursor]", "0"))
        data = [
            {"type": "profile", "id": f"id{page}-{i}", "attributes": {"email": f"m{page}-{i}@x.com"}}
            for i in range(100 if page < 2 else 7)
        ]
        links = {"self": str(request.url)}
        if page < 2:
            links["next"] = f"{BASE}/api/lists/L1/profiles?page%5Bcursor%5D={page + 1}&page%5Bsize%5D=100"
        return jsonapi(200, {"data": data, "links": links})

    rec = Recorder(answer)
    async with make_client(rec) as client:
        members = [m async for m in client.iter_list_members("L1", fields=("email", "external_id"))]
    assert len(members) == 207 and len(rec.requests) == 3
    assert members[0] == {"id": "id0-0", "email": "m0-0@x.com"}
    assert rec.requests[0].url.params["fields[profile]"] == "email,external_id"
    assert rec.requests[0].url.params["page[size]"] == "100"


async def test_subscribe_splits_historical_imports_and_batches_at_1000():
    rec = Recorder(jsonapi(202))
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    profiles = [SubscribeProfile(f"h{i}@x.com", consented_at=when) for i in range(1200)]
    profiles += [SubscribeProfile(f"n{i}@x.com", phone_number="+15005550006") for i in range(5)]
    async with make_client(rec) as client:
        await client.subscribe_profiles("L1", profiles, custom_source="CI segment sync")
    bodies = rec.bodies()
    assert all(r.url.path == "/api/profile-subscription-bulk-create-jobs" for r in rec.requests)
    assert sorted(len(b["data"]["attributes"]["profiles"]["data"]) for b in bodies) == [5, 200, 1000]
    for b in bodies:
        d = b["data"]
        assert d["type"] == "profile-subscription-bulk-create-job"
        assert d["relationships"] == {"list": {"data": {"type": "list", "id": "L1"}}}
        assert d["attributes"]["custom_source"] == "CI segment sync"
        hist = d["attributes"]["historical_import"]
        for p in d["attributes"]["profiles"]["data"]:
            marketing = p["attributes"]["subscriptions"]["email"]["marketing"]
            assert marketing["consent"] == "SUBSCRIBED"
            assert p["attributes"]["email"].startswith("h" if hist else "n")
            assert ("consented_at" in marketing) is hist
            if hist:
                assert marketing["consented_at"] == "2024-05-01T12:00:00+00:00"
            assert set(p["attributes"]) <= {"email", "phone_number", "subscriptions"}


async def test_job_status_and_account_and_list_creation():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/accounts":
            return jsonapi(200, {"data": [{"type": "account", "id": "ACC", "attributes": {"test_account": True}}]})
        if request.url.path == "/api/lists":
            assert orjson.loads(request.content) == {"data": {"type": "list", "attributes": {"name": "Seg"}}}
            return jsonapi(201, {"data": {"type": "list", "id": "NEWLIST", "attributes": {"name": "Seg"}}})
        doc = job_doc("job5", "complete", 10)
        doc["data"]["attributes"].update(completed_count=8, failed_count=2, completed_at="2026-07-20T00:00:00Z")
        return jsonapi(200, doc)

    async with make_client(Recorder(answer)) as client:
        assert (await client.check_key())["id"] == "ACC"
        assert await client.create_list("Seg") == "NEWLIST"
        job = await client.get_import_job("job5")
    assert (job.id, job.status, job.total_count, job.completed_count, job.failed_count) == (
        "job5",
        "complete",
        10,
        8,
        2,
    )
    assert job.done


# -- the key never leaks ------------------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    return "\n".join(
        [str(exc), repr(exc), "".join(traceback.format_exception(exc)), *map(str, getattr(exc, "errors", []))]
    )


async def test_canary_key_never_appears_in_errors_logs_or_reprs(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    echo = f"Invalid API key {CANARY} provided."  # even if Klaviyo echoed it back
    rec = Recorder(
        errors(401, error(401, "not_authenticated", echo)),  # check_key
        errors(401, error(401, "not_authenticated", echo)),  # get_list
        errors(503, error(503, "down", echo)),  # retries exhausted
        errors(503, error(503, "down", echo)),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        errors(400, error(400, "invalid", echo, "/data/attributes/profiles/data/0/attributes/email")),
        jsonapi(202, job_doc()),
    )
    client = make_client(rec, retry=RetryPolicy(max_attempts=2, sleep=Sleeps()))
    raised: list[BaseException] = []
    for call in (
        client.check_key,
        lambda: client.get_list("L1"),
        lambda: client.get_import_job("j"),
        lambda: client.get_import_job("j"),
    ):
        with pytest.raises(KlaviyoError) as info:
            await call()
        raised.append(info.value)
    result = await client.submit_import_job(batch_of(2), "L1")
    await client.aclose()
    assert result.rejected[0].detail == "Invalid API key [redacted] provided."

    assert isinstance(raised[0], KlaviyoAuthError) and raised[0].status == 401
    assert "[redacted]" in str(raised[0])
    texts = [_all_text(e) for e in raised]
    texts += [repr(client), str(client), repr(client.limiter), repr(client.retry), repr(vars(client))]
    texts += [repr(result), str(client.stats.as_dict())]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert caplog.records, "expected the retries to be logged"
    for text in texts:
        assert CANARY not in text
        assert CANARY[3:] not in text
    assert rec.requests[0].headers["authorization"].endswith(CANARY)  # it was sent, just never shown


def test_bad_keys_are_refused_without_echoing_them():
    for bad in ("", "   ", "pk_with space", "pk_\u00e9t\u00e9"):
        with pytest.raises(ValueError) as info:
            KlaviyoClient(bad)
        assert (bad.strip() or "\x00") not in str(info.value)


def test_client_repr_names_no_key():
    client = KlaviyoClient(CANARY, "http://127.0.0.1:1")
    assert repr(client) == "KlaviyoClient(base_url='http://127.0.0.1:1', revision='2026-07-15')"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(client)


async def test_counters_track_requests_429s_and_retries():
    rec = Recorder(
        errors(429, error(429, "throttled", "Throttled."), headers={"Retry-After": "2"}),
        errors(500, error(500, "error", "Oops.")),
        jsonapi(204),
    )
    async with make_client(rec) as client:
        await client.add_list_members("L1", ["a"])
    assert client.stats.as_dict() == {
        "requests": 3,
        "throttled": 1,
        "retries": 2,
        "server_errors": 1,
        "transport_errors": 0,
        "rejected_profiles": 0,
        "by_status": {204: 1, 429: 1, 500: 1},
    }


async def test_a_429_holds_back_every_caller_of_that_endpoint():
    now = [100.0]
    limiter_sleeps: list[float] = []

    async def limiter_sleep(s: float) -> None:
        limiter_sleeps.append(s)
        now[0] += s

    async def retry_sleep(s: float) -> None:
        pass  # the clock stands still: the retried call is just like another caller arriving at once

    limiter = RateLimiter(clock=lambda: now[0], sleep=limiter_sleep)
    rec = Recorder(
        errors(429, error(429, "throttled", "Throttled."), headers={"Retry-After": "4"}),
        jsonapi(204),
        jsonapi(200, {"data": {"type": "list", "id": "L1", "attributes": {}}}),
    )
    async with KlaviyoClient(
        CANARY, BASE, transport=httpx.MockTransport(rec), limiter=limiter, retry=RetryPolicy(sleep=retry_sleep)
    ) as client:
        await client.add_list_members("L1", ["a"])
        assert limiter_sleeps == [4.0]  # held back by the limiter until Retry-After has passed
        await client.get_list("L1")  # another endpoint: its own bucket, not held back
    assert limiter_sleeps == [4.0]
    assert len(rec.requests) == 3
    # The refused request's slot was given back: only the request Klaviyo took counts in that endpoint's windows.
    assert [len(w.times) for w in limiter._bucket("M", "add_profiles_to_list").windows] == [1, 1]


def test_query_strings_are_not_in_error_messages():
    err = KlaviyoBadRequest(400, "invalid", "bad filter", method="GET", path="/api/profiles")
    assert str(err) == "Klaviyo 400 (invalid) on GET /api/profiles: bad filter"
    assert repr(err) == "KlaviyoBadRequest(status=400, code='invalid', detail='bad filter')"


async def test_lookup_error_message_carries_no_emails():
    rec = Recorder(errors(400, error(400, "invalid", "Invalid filter.", parameter="filter")))
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoBadRequest) as info:
            await client.lookup_profile_ids(["secret.person@example.com"])
    assert "secret.person" not in str(info.value)
    assert parse_qs(urlsplit(str(rec.requests[0].url)).query)["filter"] == ['any(email,["secret.person@example.com"])']


async def test_a_2xx_that_is_not_json_is_a_typed_error():
    rec = Recorder(httpx.Response(200, text="<html>captive portal</html>"))
    async with make_client(rec) as client:
        with pytest.raises(KlaviyoError) as info:
            await client.get_list("L1")
    assert info.value.code == "invalid_response" and "/api/lists/L1" in str(info.value)
