"""KlaviyoClient against the Klaviyo emulator over real HTTP (session fixture ``emulator_url``)."""

from __future__ import annotations

import logging
import traceback
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from shared.pushing.klaviyo import (
    FlushPolicy,
    ImportBatch,
    KlaviyoAuthError,
    KlaviyoBadRequest,
    KlaviyoClient,
    KlaviyoNotFound,
    RateLimiter,
    RejectedProfile,
    RetryPolicy,
    SubscribeProfile,
    build_batches,
    serialize_profile,
)
from tests.fixtures.services import EMULATOR_KEY

CANARY = "pk_CANARY_emulator_0badc0ffee42"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client_for(url: str, key: str = EMULATOR_KEY, **kw) -> KlaviyoClient:
    kw.setdefault("limiter", RateLimiter.off())  # the fixture runs the emulator with its limits off
    kw.setdefault("retry", RetryPolicy(sleep=Sleeps()))
    return KlaviyoClient(key, url, **kw)


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def test_check_key_and_a_bad_key(emulator_url, caplog):
    caplog.set_level(logging.DEBUG)
    async with client_for(emulator_url) as client:
        account = await client.check_key()
    assert account["type"] == "account" and account["id"]

    async with client_for(emulator_url, CANARY) as bad:
        with pytest.raises(KlaviyoAuthError) as info:
            await bad.check_key()
        assert bad.stats.requests == 1  # not retried
    err = info.value
    assert err.status == 401
    assert str(err).startswith("Klaviyo rejected the API key (401")
    for text in (str(err), repr(err), "".join(traceback.format_exception(err)), caplog.text, repr(bad)):
        assert CANARY not in text


async def test_lists_exist_or_fail_clearly(emulator_url):
    async with client_for(emulator_url) as client:
        list_id = await client.create_list(f"client-test {tag()}")
        got = await client.get_list(list_id)
        assert got["id"] == list_id and got["type"] == "list"
        with pytest.raises(KlaviyoNotFound) as info:
            await client.get_list("NoSuchList")
        with pytest.raises(KlaviyoNotFound) as info2:
            await client.submit_import_job(ImportBatch.of([("r1", serialize_profile({"email": "a@x.com"}))]), "Nope1")
    assert str(info.value).startswith("Klaviyo list 'NoSuchList' does not exist in this account (404")
    assert "'Nope1' does not exist" in str(info2.value)


async def test_import_strip_and_resend_then_every_import_error_maps_to_its_row(emulator_url):
    t = tag()
    rows: list[tuple[str, bytes]] = []
    expect_rejected: dict[str, str] = {}
    expect_failed: set[str] = set()
    good: set[str] = set()
    for i in range(400):
        loc = f"part-00001.csv:row {i + 1}"
        attrs: dict = {"email": f"u{i}.{t}@example.com", "first_name": f"U{i}"}
        if i % 97 == 5:
            attrs["email"] = f"not-an-email-{i}"
            expect_rejected[loc] = "email"
        elif i % 89 == 7:
            attrs["phone_number"] = "555-0100"
            expect_rejected[loc] = "phone"
        elif i % 3 == 0:  # the emulator accepts these, then fails them in the job (import errors)
            attrs["email"] = f"u{i}.{t}@fail.invalid"
            expect_failed.add(loc)
        else:
            good.add(attrs["email"])
        rows.append((loc, serialize_profile(attrs)))
    rows.append(("part-00001.csv:row 401", serialize_profile({"email": f"big.{t}@x.com", "x": "y" * 100_001})))

    local_rejects: list[RejectedProfile] = []
    batches = list(build_batches(rows, FlushPolicy(max_profiles=150), local_rejects))
    assert [r.locator for r in local_rejects] == ["part-00001.csv:row 401"]
    assert [len(b) for b in batches] == [150, 150, 100]

    async with client_for(emulator_url) as client:
        list_id = await client.create_list(f"import {t}")
        results = [await client.submit_import_job(b, list_id) for b in batches]
        rejected = {r.locator: r.detail for res in results for r in res.rejected}
        assert rejected.keys() == expect_rejected.keys()
        for loc, kind in expect_rejected.items():
            assert ("email" if kind == "email" else "phone") in rejected[loc].lower()
        assert sum(r.submitted for r in results) == 400 - len(expect_rejected)
        assert client.stats.requests == 1 + 2 * len(batches)  # each batch had a bad row: resent once

        failed: set[str] = set()
        for res in results:
            job = await client.get_import_job(res.job_id)
            assert job.id == res.job_id and job.status == "complete"
            assert job.total_count == res.submitted
            items = [e async for e in client.iter_import_errors(res.job_id)]
            assert job.failed_count == len(items)
            for item in items:
                loc = res.locator_for(item.index)
                assert loc is not None and item.detail and item.code
                assert item.original_payload and item.original_payload["email"].endswith("@fail.invalid")
                failed.add(loc)
        assert failed == expect_failed  # 134 errors: some jobs have more than one page of them

        members = [m async for m in client.iter_list_members(list_id)]
        assert {m["email"] for m in members} == good
        assert all(m["id"] for m in members)


async def test_import_errors_span_several_pages(emulator_url):
    t = tag()
    batch = ImportBatch.of(
        (f"r{i}", serialize_profile({"email": f"x{i}.{t}@fail.invalid"})) for i in range(250)
    )  # 250 failures: 3 pages of at most 100
    async with client_for(emulator_url) as client:
        res = await client.submit_import_job(batch, None)
        items = [e async for e in client.iter_import_errors(res.job_id)]
        requests = client.stats.by_status[200]
    assert sorted(i.index for i in items) == list(range(250))
    assert requests == 3


async def test_lookup_members_add_remove(emulator_url):
    t = tag()
    emails = [f"m{i}.{t}@example.com" for i in range(230)]
    async with client_for(emulator_url) as client:
        await client.submit_import_job(ImportBatch.of((e, serialize_profile({"email": e})) for e in emails), None)
        asked = [e.upper() if i % 2 else e for i, e in enumerate(emails)] + [f"nobody.{t}@example.com"]
        ids = await client.lookup_profile_ids(asked)
        assert set(ids) == set(emails)
        assert client.stats.by_status[200] == 3  # 231 emails: 3 lookups of at most 100

        list_id = await client.create_list(f"members {t}")
        await client.add_list_members(list_id, list(ids.values()))
        members = {m["id"]: m["email"] for m in [m async for m in client.iter_list_members(list_id)]}
        assert members == {pid: e for e, pid in ids.items()}

        gone = [ids[e] for e in emails[:40]]
        await client.remove_list_members(list_id, gone)
        left = {m["id"] async for m in client.iter_list_members(list_id)}
        assert left == set(ids.values()) - set(gone)

        with pytest.raises(KlaviyoNotFound) as info:  # an unknown profile id is not a missing list
            await client.add_list_members(list_id, ["01NOSUCHPROFILE0000000000"])
        assert "does not exist in this account" not in str(info.value)
        assert "01NOSUCHPROFILE0000000000" in info.value.detail
        with pytest.raises(KlaviyoNotFound) as info:
            await client.add_list_members("NoSuchList", gone)
        assert "'NoSuchList' does not exist" in str(info.value)


async def test_subscribe_historical_and_fresh(emulator_url):
    t = tag()
    async with client_for(emulator_url) as client:
        list_id = await client.create_list(f"consent {t}")
        when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        people = [SubscribeProfile(f"s{i}.{t}@example.com", consented_at=when) for i in range(3)]
        people.append(SubscribeProfile(f"fresh.{t}@example.com"))
        await client.subscribe_profiles(list_id, people, custom_source="CI segment sync")
        assert client.stats.by_status[202] == 2  # one historical call, one plain

        future = SubscribeProfile(f"later.{t}@example.com", consented_at=datetime(2999, 1, 1, tzinfo=UTC))
        with pytest.raises(KlaviyoBadRequest) as info:
            await client.subscribe_profiles(list_id, [future], custom_source="x")
        assert "consented_at" in str(info.value)


async def test_faults_are_retried_over_real_http(emulator_url):
    admin = httpx.AsyncClient(base_url=emulator_url)
    path = "/api/profile-bulk-import-jobs"
    rules = [
        {"kind": "throttle", "path": path, "method": "POST", "retry_after": 3},
        {"kind": "error", "path": path, "method": "POST", "status": 503},
        {"kind": "drop", "path": path, "method": "POST"},
    ]
    try:
        r = await admin.post("/__emulator/faults", json={"rules": rules})
        assert r.status_code == 201
        sleeps = Sleeps()
        async with client_for(emulator_url, retry=RetryPolicy(sleep=sleeps)) as client:
            t = tag()
            batch = ImportBatch.of((f"r{i}", serialize_profile({"email": f"f{i}.{t}@example.com"})) for i in range(5))
            res = await client.submit_import_job(batch, None)
        assert res.job_id and res.submitted == 5
        assert client.stats.requests == 4 and client.stats.retries == 3
        assert client.stats.throttled == 1 and client.stats.server_errors == 1
        assert client.stats.transport_errors == 1
        assert sleeps.calls[0] == 3.0  # Retry-After honoured
    finally:
        await admin.delete("/__emulator/faults")
        await admin.aclose()


async def test_limiter_keeps_a_run_under_klaviyos_limits(emulator_url):
    """Klaviyo's limits on, the emulator's clock frozen and advanced by the limiter's (fake) sleep:
    a burst of calls is paced by the client alone, and the emulator throttles none of them."""
    admin = httpx.AsyncClient(base_url=emulator_url)
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        r = await admin.post("/__emulator/clock", json={"advance": seconds})
        r.raise_for_status()

    async def rate_limited() -> int:
        stats = (await admin.get("/__emulator/stats")).json()
        return sum(ep.get("rate_limited", 0) for ep in stats["endpoints"].values())

    try:
        (await admin.post("/__emulator/clock", json={"freeze": True})).raise_for_status()
        (await admin.post("/__emulator/config", json={"rate_limits": "klaviyo"})).raise_for_status()
        before = await rate_limited()
        limiter = RateLimiter(clock=lambda: now[0], sleep=sleep)
        async with client_for(emulator_url, limiter=limiter, retry=RetryPolicy.none()) as client:
            list_id = await client.create_list(f"paced {tag()}")
            for _ in range(20):  # XS: 1/s, 15/min
                await client.check_key()
            ids = [f"01P{i:022d}" for i in range(25)]
            await client.remove_list_members(list_id, ids)  # M: 10/s, 150/min; unknown ids are a no-op
            for pid in ids:
                await client.remove_list_members(list_id, [pid])
        assert client.stats.throttled == 0
        assert await rate_limited() == before
        assert now[0] >= 60  # the 16th account check had to wait for the next minute
    finally:
        await admin.post("/__emulator/config", json={"rate_limits": "off"})
        await admin.post("/__emulator/clock", json={"freeze": False})
        await admin.aclose()
