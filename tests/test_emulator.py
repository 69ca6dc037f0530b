"""The Klaviyo emulator over real HTTP on loopback: the official SDK, raw requests, limits, paging, jobs,
rate limits and faults. Tests on the shared session emulator (`emulator_url`) only touch lists and
profiles they create; tests that change global behaviour (faults, clock, rate limits) start their own."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import httpx
import openapi_client.models as m
import orjson
import pytest
import uvicorn
from klaviyo_api import KlaviyoAPI
from openapi_client.exceptions import ApiException

from localdev.klaviyo_emulator import EmulatorConfig, create_app
from localdev.klaviyo_emulator.spec import Spec
from localdev.services import LOCALDEV, free_port, run_emulator, wait_for_port
from tests.fixtures.services import EMULATOR_KEY

REVISION = "2026-07-15"
JSONAPI = "application/vnd.api+json"
SPEC = Spec()


# -- helpers -------------------------------------------------------------------------------------------------
def api(url: str, key: str = EMULATOR_KEY, revision: str | None = REVISION) -> httpx.Client:
    headers = {"Authorization": f"Klaviyo-API-Key {key}", "Content-Type": JSONAPI, "Accept": JSONAPI}
    if revision is not None:
        headers["revision"] = revision
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def emails(n: int, tag: str, domain: str = "example.com") -> list[str]:
    return [f"{tag}.{i}@{domain}" for i in range(n)]


def profile(email: str | None = None, **attrs) -> dict:
    if email is not None:
        attrs["email"] = email
    return {"type": "profile", "attributes": attrs}


def import_body(profiles: list[dict], list_id: str | None = None) -> dict:
    data: dict = {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}
    if list_id is not None:
        data["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
    return {"data": data}


def new_list(c: httpx.Client, name: str | None = None, **attrs) -> str:
    r = c.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": name or f"t-{uid()}", **attrs}}})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def import_profiles(c: httpx.Client, profiles: list[dict], list_id: str | None = None) -> dict:
    r = c.post("/api/profile-bulk-import-jobs", json=import_body(profiles, list_id))
    assert r.status_code == 202, r.text
    return r.json()["data"]


def wait_complete(c: httpx.Client, job_id: str, timeout_s: float = 20) -> dict:
    """Poll the job until it reads complete (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        attrs = c.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"]
        if attrs["status"] == "complete":
            return attrs
        assert time.monotonic() < deadline, f"job {job_id} still {attrs['status']}"
        time.sleep(0.02)


def follow(c: httpx.Client, url: str, params: dict | None = None) -> list[dict]:
    """Every page of a collection, following links.next; returns the pages' bodies."""
    pages = [c.get(url, params=params).json()]
    while pages[-1]["links"].get("next"):
        nxt = pages[-1]["links"]["next"]
        assert nxt.startswith("http://") and "page%5Bcursor%5D=" in nxt, nxt
        pages.append(c.get(nxt).json())
        assert len(pages) < 1000
    return pages


def find_by_email(c: httpx.Client, addresses: list[str]) -> list[dict]:
    quoted = ",".join(f'"{a}"' for a in addresses)
    r = c.get("/api/profiles", params={"filter": f"any(email,[{quoted}])", "page[size]": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def errors_of(r: httpx.Response) -> list[dict]:
    body = r.json()
    assert set(body) == {"errors"}, body
    for err in body["errors"]:
        assert {"id", "status", "code", "title", "detail", "source"} <= set(err), err
        assert err["status"] == r.status_code
    return body["errors"]


def pointers(r: httpx.Response) -> list[str]:
    return [e["source"].get("pointer") for e in errors_of(r)]


def assert_conforms(body: dict, schema: str) -> None:
    """The answer matches the spec's response schema (null links.next/prev tolerated, as Klaviyo sends)."""
    errs: list[tuple[str, str]] = []
    SPEC.response_validator(schema)(body, "", errs)
    errs = [(p, d) for p, d in errs if not (p.endswith(("/links/next", "/links/prev")) and "null" in d)]
    assert not errs, errs


def admin(url: str, path: str, body: object | None = None) -> dict:
    r = httpx.post(f"{url}/__emulator/{path}", json=body) if body is not None else httpx.get(f"{url}/__emulator/{path}")
    assert r.status_code in (200, 201), r.text
    return r.json()


@pytest.fixture(scope="module")
def private_url() -> Iterator[str]:
    """An emulator of this module's own (rate limits off), for tests that change global behaviour."""
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off") as url:
        yield url


@pytest.fixture
def fresh_url(private_url: str) -> str:
    admin(private_url, "reset", {})
    return private_url


# -- the official SDK ----------------------------------------------------------------------------------------
def sdk_import_query(addresses: list[str], list_id: str) -> m.ProfileImportJobCreateQuery:
    return m.ProfileImportJobCreateQuery(
        data=m.ProfileImportJobCreateQueryResourceObject(
            type="profile-bulk-import-job",
            attributes=m.ProfileImportJobCreateQueryResourceObjectAttributes(
                profiles=m.ProfileImportJobCreateQueryResourceObjectAttributesProfiles(
                    data=[
                        m.ProfileUpsertQueryResourceObject(
                            type="profile",
                            attributes=m.ProfileUpsertQueryResourceObjectAttributes(
                                email=a,
                                first_name=f"First{i}",
                                location=m.ProfileLocation(city="Boston", latitude="42.36"),
                                properties={"tier": "gold", "score": i},
                            ),
                        )
                        for i, a in enumerate(addresses)
                    ]
                )
            ),
            relationships=m.ProfileImportJobCreateQueryResourceObjectRelationships(
                lists=m.ProfileImportJobCreateQueryResourceObjectRelationshipsLists(
                    data=[
                        m.ProfileImportJobCreateQueryResourceObjectRelationshipsListsDataInner(type="list", id=list_id)
                    ]
                )
            ),
        )
    )


def test_sdk_bulk_import_job_status_and_list_read(emulator_url: str) -> None:
    sdk = KlaviyoAPI(EMULATOR_KEY, max_delay=2, max_retries=2, test_host=emulator_url)
    assert sdk.Accounts.get_accounts().data[0].type.value == "account"
    created = sdk.Lists.create_list(
        m.ListCreateQuery(
            data=m.ListCreateQueryResourceObject(
                type="list", attributes=m.ListCreateQueryResourceObjectAttributes(name=f"sdk-{uid()}")
            )
        )
    )
    list_id = created.data.id
    addresses = emails(5, f"sdk-{uid()}")

    job = sdk.Profiles.bulk_import_profiles(sdk_import_query(addresses, list_id)).data
    assert job.attributes.status == "queued"
    assert job.attributes.total_count == 5
    deadline = time.monotonic() + 20
    while (state := sdk.Profiles.get_bulk_import_profiles_job(job.id).data.attributes).status != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (state.completed_count, state.failed_count) == (5, 0)
    assert state.completed_at is not None and state.started_at is not None

    lst = sdk.Lists.get_list(list_id, additional_fields_list=["profile_count"]).data
    assert lst.attributes.profile_count == 5
    page1 = sdk.Lists.get_profiles_for_list(list_id, page_size=3)
    assert len(page1.data) == 3 and page1.links.next
    page2 = sdk.Lists.get_profiles_for_list(list_id, page_size=3, page_cursor=page1.links.next)
    members = page1.data + page2.data
    assert [p.attributes.email for p in members] == addresses
    assert members[2].attributes.first_name == "First2"
    assert members[2].attributes.location.city == "Boston"
    assert members[2].attributes.properties == {"tier": "gold", "score": 2}
    assert page2.links.next is None
    job_profiles = sdk.Profiles.get_profiles_for_bulk_import_profiles_job(job.id)
    assert {p.id for p in job_profiles.data} == {p.id for p in members}


def test_sdk_wrong_key_is_401_and_429_is_retried(private_url: str) -> None:
    with pytest.raises(ApiException) as info:
        KlaviyoAPI("pk_wrong", max_delay=1, max_retries=1, test_host=private_url).Accounts.get_accounts()
    assert info.value.status == 401

    admin(private_url, "faults", {"kind": "throttle", "path": "/api/lists", "method": "GET", "count": 1})
    sdk = KlaviyoAPI(EMULATOR_KEY, max_delay=2, max_retries=3, test_host=private_url)
    assert sdk.Lists.get_lists().data is not None  # first answer was 429; the SDK waited and retried
    stats = admin(private_url, "stats")["endpoints"]["GET /api/lists"]
    assert stats["responses"]["429"] == 1 and stats["faults_injected"] == {"throttle": 1}


def test_sdk_subscribe_sets_consent_and_membership(emulator_url: str) -> None:
    sdk = KlaviyoAPI(EMULATOR_KEY, max_delay=2, max_retries=2, test_host=emulator_url)
    with api(emulator_url) as c:
        list_id = new_list(c)
        address = f"sub-{uid()}@example.com"
        import_profiles(c, [profile(address, first_name="Sue")])
    query = m.SubscriptionCreateJobCreateQuery(
        data=m.SubscriptionCreateJobCreateQueryResourceObject(
            type="profile-subscription-bulk-create-job",
            attributes=m.SubscriptionCreateJobCreateQueryResourceObjectAttributes(
                custom_source="ci-sync",
                profiles=m.SubscriptionCreateJobCreateQueryResourceObjectAttributesProfiles(
                    data=[
                        m.ProfileSubscriptionCreateQueryResourceObject(
                            type="profile",
                            attributes=m.ProfileSubscriptionCreateQueryResourceObjectAttributes(
                                email=address,
                                subscriptions=m.SubscriptionChannels(
                                    email=m.EmailSubscriptionParameters(
                                        marketing=m.SubscriptionParameters(consent="SUBSCRIBED")
                                    )
                                ),
                            ),
                        )
                    ]
                ),
            ),
            relationships=m.SubscriptionCreateJobCreateQueryResourceObjectRelationships(
                list=m.SubscriptionCreateJobCreateQueryResourceObjectRelationshipsList(
                    data=m.SubscriptionCreateJobCreateQueryResourceObjectRelationshipsListData(type="list", id=list_id)
                )
            ),
        )
    )
    assert sdk.Profiles.bulk_subscribe_profiles(query) is None  # 202, no body
    found = sdk.Profiles.get_profiles(filter=f'equals(email,"{address}")', additional_fields_profile=["subscriptions"])
    marketing = found.data[0].attributes.subscriptions.email.marketing
    assert marketing.consent == "SUBSCRIBED" and marketing.can_receive_email_marketing
    assert marketing.custom_method_detail == "ci-sync"
    assert found.data[0].attributes.first_name == "Sue"  # subscribing did not touch other attributes
    ids = sdk.Lists.get_profile_ids_for_list(list_id).data
    assert [i.id for i in ids] == [found.data[0].id]


# -- keys, revision, content type ----------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401(emulator_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer pk_x"}, {"Authorization": "Klaviyo-API-Key pk_wrong"}):
        r = httpx.get(f"{emulator_url}/api/lists", headers={"revision": REVISION, **headers})
        assert r.status_code == 401
        [err] = errors_of(r)
        assert err["code"] in ("not_authenticated", "authentication_failed")
        assert r.headers["content-type"] == JSONAPI


@pytest.mark.parametrize("revision", [None, "", "2026/07/15", "latest", "2026-07-16", "2026-7-15"])
def test_missing_or_bad_revision_is_400(emulator_url: str, revision: str | None) -> None:
    with api(emulator_url, revision=revision) as c:
        r = c.get("/api/lists")
    assert r.status_code == 400
    [err] = errors_of(r)
    assert err["source"] == {"parameter": "revision"}


@pytest.mark.parametrize("revision", ["2026-07-15", "2026-10-15", "2024-10-15", "2026-07-15.pre"])
def test_known_revisions_are_accepted(emulator_url: str, revision: str) -> None:
    with api(emulator_url, revision=revision) as c:
        assert c.get("/api/accounts").status_code == 200


def test_write_content_types(emulator_url: str) -> None:
    body = orjson.dumps({"data": {"type": "list", "attributes": {"name": f"ct-{uid()}"}}})
    with api(emulator_url) as c:
        assert c.post("/api/lists", content=body, headers={"Content-Type": "application/json"}).status_code == 201
        r = c.post("/api/lists", content=body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        assert errors_of(r)[0]["code"] == "unsupported_media_type"
        r = c.post("/api/lists", content=b"{not json", headers={"Content-Type": JSONAPI})
        assert r.status_code == 400 and errors_of(r)[0]["code"] == "parse_error"


def test_unknown_paths_methods_and_parameters(emulator_url: str) -> None:
    with api(emulator_url) as c:
        assert c.get("/api/lists/").status_code == 404  # no trailing slash since 2024-10-15
        assert c.get("/api/nothing-here").status_code == 404
        r = c.put("/api/lists", json={})
        assert r.status_code == 405 and errors_of(r)[0]["code"] == "method_not_allowed"
        r = c.get("/api/lists", params={"bogus": "1"})
        assert r.status_code == 400 and errors_of(r)[0]["source"] == {"parameter": "bogus"}
        r = c.get("/api/lists", params={"fields[list]": "name,nope"})
        assert r.status_code == 400 and errors_of(r)[0]["source"] == {"parameter": "fields[list]"}


# -- bodies and limits ---------------------------------------------------------------------------------------
def test_invalid_emails_reject_the_whole_batch_with_every_pointer(emulator_url: str) -> None:
    tag = f"bad-{uid()}"
    good = emails(5, tag)
    batch = [profile(a) for a in good]
    batch.insert(1, profile("not-an-email"))
    batch.insert(4, profile(f"{tag}@@example.com"))
    batch.append(profile("two words@example.com"))
    with api(emulator_url) as c:
        r = c.post("/api/profile-bulk-import-jobs", json=import_body(batch))
        assert r.status_code == 400
        assert pointers(r) == [f"/data/attributes/profiles/data/{i}/attributes/email" for i in (1, 4, 7)]
        assert all(e["code"] == "invalid" for e in errors_of(r))
        assert find_by_email(c, good) == []  # nothing of the batch was imported


def test_profile_errors_point_at_each_profile(emulator_url: str) -> None:
    tag = f"ptr-{uid()}"
    batch = [
        profile(f"{tag}.0@example.com"),
        profile(first_name="No identifier"),
        profile(f"{tag}.2@example.com", properties={"blob": "x" * 100_001}),
        profile(f"{tag}.3@example.com", first_name=42),
        profile(f"{tag}.4@example.com", favourite_colour="teal"),
        profile(phone_number="555-1234"),
        {"attributes": {"email": f"{tag}.6@example.com"}},
        profile(f"{tag}.7@example.com"),
    ]
    with api(emulator_url) as c:
        r = c.post("/api/profile-bulk-import-jobs", json=import_body(batch))
        assert r.status_code == 400
        base = "/data/attributes/profiles/data"
        assert pointers(r) == [
            f"{base}/1/attributes",
            f"{base}/2",
            f"{base}/3/attributes/first_name",
            f"{base}/4/attributes/favourite_colour",
            f"{base}/5/attributes/phone_number",
            f"{base}/6/type",
        ]
        assert find_by_email(c, [f"{tag}.0@example.com", f"{tag}.7@example.com"]) == []

        r = c.post("/api/profile-bulk-import-jobs", json={"data": {"attributes": {"profiles": {"data": []}}}})
        assert r.status_code == 400
        r = c.post("/api/profile-bulk-import-jobs", json={"data": {"type": "profile-bulk-import-job"}})
        assert r.status_code == 400 and pointers(r) == ["/data/attributes"]


def test_oversize_batches(emulator_url: str) -> None:
    tag = f"big-{uid()}"
    with api(emulator_url) as c:
        r = c.post("/api/profile-bulk-import-jobs", json=import_body([profile(a) for a in emails(10_001, tag)]))
        assert r.status_code == 400
        [err] = errors_of(r)
        assert err["source"] == {"pointer": "/data/attributes/profiles/data"} and "10000" in err["detail"]

        wide = [profile(a, properties={"notes": "n" * 600}) for a in emails(9_000, tag)]
        body = orjson.dumps(import_body(wide))
        assert len(body) > 5_000_000
        r = c.post("/api/profile-bulk-import-jobs", content=body)
        assert r.status_code == 413
        [err] = errors_of(r)
        assert err["code"] == "request_too_large"
        assert find_by_email(c, emails(3, tag)) == []

        exactly = import_body([profile(a) for a in emails(10_000, tag)])
        job = import_profiles(c, exactly["data"]["attributes"]["profiles"]["data"])
        assert wait_complete(c, job["id"])["completed_count"] == 10_000


def test_unknown_list_is_404_and_imports_nothing(emulator_url: str) -> None:
    address = f"nolist-{uid()}@example.com"
    with api(emulator_url) as c:
        r = c.post("/api/profile-bulk-import-jobs", json=import_body([profile(address)], list_id="XXXXXX"))
        assert r.status_code == 404
        [err] = errors_of(r)
        assert err["code"] == "not_found" and err["source"] == {"pointer": "/data/relationships/lists/data/0/id"}
        assert find_by_email(c, [address]) == []
        assert c.get("/api/lists/XXXXXX").status_code == 404
        assert c.get("/api/lists/XXXXXX/profiles").status_code == 404


# -- paging --------------------------------------------------------------------------------------------------
def test_paging_a_list_of_250_members(emulator_url: str) -> None:
    tag = f"page-{uid()}"
    addresses = emails(250, tag)
    with api(emulator_url) as c:
        list_id = new_list(c)
        wait_complete(c, import_profiles(c, [profile(a, first_name="P") for a in addresses], list_id)["id"])

        pages = follow(c, f"/api/lists/{list_id}/profiles", {"page[size]": 100, "fields[profile]": "email"})
        assert [len(p["data"]) for p in pages] == [100, 100, 50]
        assert pages[-1]["links"]["next"] is None
        members = [d for p in pages for d in p["data"]]
        assert [d["attributes"]["email"] for d in members] == addresses
        assert {frozenset(d["attributes"]) for d in members} == {frozenset({"email", "joined_group_at"})}
        assert len({d["id"] for d in members}) == 250
        for page in pages:
            assert_conforms(page, "GetListMemberResponseCollection")
        cursor = parse_qs(urlsplit(pages[0]["links"]["next"]).query)
        assert set(cursor) == {"page[cursor]", "page[size]", "fields[profile]"}

        default = c.get(f"/api/lists/{list_id}/profiles").json()
        assert len(default["data"]) == 20 and default["data"][0]["attributes"]["first_name"] == "P"
        assert "joined_group_at" in default["data"][0]["attributes"]
        newest = c.get(f"/api/lists/{list_id}/profiles", params={"sort": "-joined_group_at", "page[size]": 1})
        assert newest.json()["data"][0]["attributes"]["email"] == addresses[-1]

        id_pages = follow(c, f"/api/lists/{list_id}/relationships/profiles", {"page[size]": 100})
        assert [d["id"] for p in id_pages for d in p["data"]] == [d["id"] for d in members]

        for size in ("0", "101", "x"):
            r = c.get(f"/api/lists/{list_id}/profiles", params={"page[size]": size})
            assert r.status_code == 400 and errors_of(r)[0]["source"] == {"parameter": "page[size]"}
        r = c.get(f"/api/lists/{list_id}/profiles", params={"page[cursor]": "garbage!"})
        assert r.status_code == 400 and errors_of(r)[0]["source"] == {"parameter": "page[cursor]"}

        one = c.get(f"/api/lists/{list_id}/profiles", params={"filter": f'equals(email,"{addresses[7].upper()}")'})
        assert [d["attributes"]["email"] for d in one.json()["data"]] == [addresses[7]]


def test_import_errors_after_acceptance_are_paged(emulator_url: str) -> None:
    tag = f"ierr-{uid()}"
    batch = []
    failing: list[int] = []
    for i in range(60):
        if i % 4 == 0:
            batch.append(profile(f"{tag}.{i}@example.com"))
        else:
            failing.append(i)
            domain = "fail.invalid" if i % 2 else "eu.fail.invalid"
            batch.append(profile(f"{tag}.{i}@{domain}", first_name=f"F{i}"))
    with api(emulator_url) as c:
        job = import_profiles(c, batch)
        state = wait_complete(c, job["id"])
        assert (state["total_count"], state["completed_count"], state["failed_count"]) == (60, 15, 45)

        pages = follow(c, f"/api/profile-bulk-import-jobs/{job['id']}/import-errors")
        assert [len(p["data"]) for p in pages] == [20, 20, 5]  # page[size] defaults to 20
        errors = [e for p in pages for e in p["data"]]
        assert [e["attributes"]["source"]["pointer"] for e in errors] == [
            f"/data/attributes/profiles/data/{i}/attributes/email" for i in failing
        ]
        assert errors[0]["type"] == "import-error"
        assert errors[0]["attributes"]["original_payload"]["first_name"] == "F1"
        for page in pages:
            assert_conforms(page, "GetImportErrorResponseCollection")
        big = c.get(f"/api/profile-bulk-import-jobs/{job['id']}/import-errors", params={"page[size]": 100}).json()
        assert len(big["data"]) == 45 and big["links"]["next"] is None

        imported = follow(c, f"/api/profile-bulk-import-jobs/{job['id']}/profiles", {"page[size]": 100})
        assert sorted(d["attributes"]["email"] for p in imported for d in p["data"]) == sorted(
            f"{tag}.{i}@example.com" for i in range(0, 60, 4)
        )


# -- semantics -----------------------------------------------------------------------------------------------
def test_upsert_by_identifier_and_list_membership_is_a_set(emulator_url: str) -> None:
    tag = f"ups-{uid()}"
    with api(emulator_url) as c:
        list_id = new_list(c)
        first = import_profiles(c, [profile(f"{tag}@Example.com", first_name="Ann")], list_id)
        wait_complete(c, first["id"])
        second = import_profiles(c, [profile(f" {tag.upper()}@example.COM ", last_name="Lee")], list_id)
        wait_complete(c, second["id"])
        [found] = find_by_email(c, [f"{tag}@example.com"])
        assert found["attributes"]["email"] == f"{tag}@example.com"
        assert (found["attributes"]["first_name"], found["attributes"]["last_name"]) == ("Ann", "Lee")
        assert len(found["id"]) == 26
        count = c.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"}).json()
        assert count["data"]["attributes"]["profile_count"] == 1
        assert_conforms(count, "GetListRetrieveResponseCompoundDocument")

        phone = f"+1555{uuid.uuid4().int % 10**7:07d}"
        wait_complete(c, import_profiles(c, [profile(phone_number=phone, external_id=f"x-{tag}")])["id"])
        wait_complete(c, import_profiles(c, [profile(f"{tag}.p@example.com", phone_number=phone)])["id"])
        by_ext = c.get("/api/profiles", params={"filter": f'equals(external_id,"x-{tag}")'}).json()["data"]
        assert [p["attributes"]["email"] for p in by_ext] == [f"{tag}.p@example.com"]  # same profile

        conflict = import_profiles(c, [profile(f"{tag}@example.com", phone_number=phone)])
        assert wait_complete(c, conflict["id"])["failed_count"] == 1


def test_list_relationships_add_remove_and_limits(emulator_url: str) -> None:
    tag = f"rel-{uid()}"
    with api(emulator_url) as c:
        list_id = new_list(c)
        wait_complete(c, import_profiles(c, [profile(a) for a in emails(3, tag)])["id"])
        ids = [p["id"] for p in find_by_email(c, emails(3, tag))]
        url = f"/api/lists/{list_id}/relationships/profiles"
        body = {"data": [{"type": "profile", "id": i} for i in ids + ids[:1]]}
        r = c.post(url, json=body)
        assert r.status_code == 204 and r.content == b""
        r = c.request("DELETE", url, json={"data": [{"type": "profile", "id": ids[1]}]})
        assert r.status_code == 204
        assert [d["id"] for d in c.get(url).json()["data"]] == [ids[0], ids[2]]

        r = c.post(url, json={"data": [{"type": "profile", "id": ids[0]}, {"type": "profile", "id": "01NOPE"}]})
        assert r.status_code == 404 and pointers(r) == ["/data/1/id"]
        r = c.post(url, json={"data": [{"type": "profile", "id": ids[0]}] * 1001})
        assert r.status_code == 400 and pointers(r) == ["/data"]
        r = c.post(url, json={"data": [{"type": "list", "id": ids[0]}]})
        assert r.status_code == 400 and pointers(r) == ["/data/0/type"]


def test_profiles_filter(emulator_url: str) -> None:
    tag = f"flt-{uid()}"
    addresses = emails(3, tag)
    with api(emulator_url) as c:
        wait_complete(c, import_profiles(c, [profile(a) for a in addresses])["id"])
        one = c.get("/api/profiles", params={"filter": f"equals(email,'{addresses[1]}')"}).json()
        assert [p["attributes"]["email"] for p in one["data"]] == [addresses[1]]
        assert_conforms(one, "GetProfileResponsePluralConversationsCollectionCompoundDocument")
        assert sorted(p["attributes"]["email"] for p in find_by_email(c, [*addresses, "nobody@x.com"])) == addresses
        too_many = ",".join(f'"{i}@x.com"' for i in range(101))
        for bad in (f"any(email,[{too_many}])", "equals(email", "equals(first_name,'x')", "frobnicate(email,'x')"):
            r = c.get("/api/profiles", params={"filter": bad})
            assert r.status_code == 400 and errors_of(r)[0]["source"] == {"parameter": "filter"}, bad


def test_subscribe_checks(emulator_url: str) -> None:
    with api(emulator_url) as c:
        list_id = new_list(c)

        def body(profiles: list[dict], historical: bool | None = None) -> dict:
            attrs: dict = {"profiles": {"data": profiles}}
            if historical is not None:
                attrs["historical_import"] = historical
            rel = {"list": {"data": {"type": "list", "id": list_id}}}
            return {"data": {"type": "profile-subscription-bulk-create-job", "attributes": attrs, "relationships": rel}}

        def sub(address: str, **extra) -> dict:
            marketing = {"consent": "SUBSCRIBED", **extra}
            return {
                "type": "profile",
                "attributes": {"email": address, "subscriptions": {"email": {"marketing": marketing}}},
            }

        url = "/api/profile-subscription-bulk-create-jobs"
        named = sub(f"s-{uid()}@example.com")
        named["attributes"]["first_name"] = "No"
        r = c.post(url, json=body([named]))
        assert r.status_code == 400 and pointers(r) == ["/data/attributes/profiles/data/0/attributes/first_name"]
        r = c.post(url, json=body([sub(f"s{i}@example.com") for i in range(1001)]))
        assert r.status_code == 400 and pointers(r) == ["/data/attributes/profiles/data"]
        r = c.post(url, json=body([sub(f"h-{uid()}@example.com")], historical=True))
        assert r.status_code == 400
        assert pointers(r) == ["/data/attributes/profiles/data/0/attributes/subscriptions/email/marketing/consented_at"]
        ok = c.post(url, json=body([sub(f"h-{uid()}@example.com", consented_at="2024-01-02T03:04:05Z")], True))
        assert ok.status_code == 202 and ok.content == b""
        assert len(c.get(f"/api/lists/{list_id}/profiles").json()["data"]) == 1


def test_accounts_and_lists_conform_to_the_spec(emulator_url: str) -> None:
    with api(emulator_url) as c:
        accounts = c.get("/api/accounts")
        assert accounts.status_code == 200 and accounts.headers["content-type"] == JSONAPI
        assert_conforms(accounts.json(), "GetAccountResponseCollection")
        created = c.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": f"c-{uid()}"}}})
        assert_conforms(created.json(), "PostListCreateResponse")
        lists = c.get("/api/lists", params={"page[size]": 10})
        assert_conforms(lists.json(), "GetListListResponseCollectionCompoundDocument")
        assert c.get("/api/lists", params={"page[size]": 11}).status_code == 400  # the spec's max is 10 here
        job = c.post("/api/profile-bulk-import-jobs", json=import_body([profile(f"cf-{uid()}@example.com")]))
        assert_conforms(job.json(), "PostProfileImportJobResponse")
        got = c.get(f"/api/profile-bulk-import-jobs/{job.json()['data']['id']}", params={"include": "lists"})
        assert_conforms(got.json(), "GetProfileImportJobResponseCompoundDocument")


# -- rate limits ---------------------------------------------------------------------------------------------
def test_rate_limits_klaviyo_throttle_the_eleventh_import_in_a_second() -> None:
    with run_emulator(EMULATOR_KEY, "--rate-limits", "klaviyo") as url, api(url) as c:
        admin(url, "clock", {"freeze": True})  # all requests below happen in the same emulator second
        body = import_body([profile(f"rl-{uid()}@example.com")])
        remaining = []
        for _ in range(10):
            r = c.post("/api/profile-bulk-import-jobs", json=body)
            assert r.status_code == 202, r.text
            assert r.headers["RateLimit-Limit"] == "150"
            remaining.append(int(r.headers["RateLimit-Remaining"]))
            assert 0 < int(r.headers["RateLimit-Reset"]) <= 60
        assert remaining == list(range(149, 139, -1))

        r = c.post("/api/profile-bulk-import-jobs", json=body)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert "RateLimit-Remaining" not in r.headers
        [err] = errors_of(r)
        assert err["code"] == "throttled"
        assert err["detail"] == "Request was throttled. Expected available in 1 second."
        assert c.get("/api/lists").status_code == 200  # another endpoint, another bucket

        admin(url, "clock", {"advance": 1.0})
        assert c.post("/api/profile-bulk-import-jobs", json=body).status_code == 202
        stats = admin(url, "stats")
        assert (
            stats["rate_limited"] == 1 and stats["endpoints"]["POST /api/profile-bulk-import-jobs"]["rate_limited"] == 1
        )

        accepted = 11  # in this minute so far; throttled requests do not count
        for _ in range(200):  # 5 a second stays under the burst limit but uses up the 150/min steady window
            admin(url, "clock", {"advance": 0.2})
            r = c.post("/api/profile-bulk-import-jobs", json=body)
            if r.status_code != 202:
                break
            accepted += 1
        assert r.status_code == 429 and accepted == 150
        retry_after = int(r.headers["Retry-After"])
        assert 1 < retry_after <= 60
        assert errors_of(r)[0]["detail"] == f"Request was throttled. Expected available in {retry_after} seconds."


# -- jobs ----------------------------------------------------------------------------------------------------
def test_job_state_progression_with_latency() -> None:
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "2") as url, api(url) as c:
        admin(url, "clock", {"freeze": True})
        list_id = new_list(c)
        tag = f"lat-{uid()}"
        batch = [profile(a) for a in emails(100, tag)]
        batch[99] = profile(f"{tag}.99@fail.invalid")
        job = import_profiles(c, batch, list_id)
        assert job["attributes"]["status"] == "queued"

        def state() -> dict:
            return c.get(f"/api/profile-bulk-import-jobs/{job['id']}").json()["data"]["attributes"]

        def members() -> int:
            got = c.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"}).json()
            return got["data"]["attributes"]["profile_count"]

        s = state()
        assert (s["status"], s["completed_count"], s["started_at"], s["completed_at"]) == ("queued", 0, None, None)
        assert members() == 0 and find_by_email(c, emails(1, tag)) == []

        admin(url, "clock", {"advance": 1.5})  # half-way through processing
        s = state()
        assert (s["status"], s["completed_count"], s["failed_count"]) == ("processing", 50, 0)
        assert s["started_at"] is not None and s["completed_at"] is None
        assert members() == 50

        admin(url, "clock", {"advance": 0.5})
        s = state()
        assert (s["status"], s["completed_count"], s["failed_count"], s["total_count"]) == ("complete", 99, 1, 100)
        assert s["completed_at"] > s["started_at"] > s["created_at"]
        assert members() == 99

        listed = c.get("/api/profile-bulk-import-jobs", params={"filter": 'equals(status,"complete")'}).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]

        admin(url, "clock", {"freeze": False})  # real time again: a new job completes by itself; poll for it
        later = import_profiles(c, [profile(f"{tag}.late@example.com")], list_id)
        assert wait_complete(c, later["id"])["completed_count"] == 1


# -- faults --------------------------------------------------------------------------------------------------
def test_dropped_connection_after_the_work_was_done(fresh_url: str) -> None:
    with api(fresh_url) as c:
        list_id = new_list(c)
        wait_complete(c, import_profiles(c, [profile(f"drop-{uid()}@example.com")])["id"])
        [pid] = [p["id"] for p in c.get("/api/profiles").json()["data"]]
        path = f"/api/lists/{list_id}/relationships/profiles"
        admin(fresh_url, "faults", {"kind": "drop", "path": "/api/lists/*/relationships/profiles", "method": "POST"})
        with pytest.raises(httpx.TransportError):
            c.post(path, json={"data": [{"type": "profile", "id": pid}]})
        assert [d["id"] for d in c.get(path).json()["data"]] == [pid]  # the change was applied

        admin(fresh_url, "faults", {"kind": "drop", "path": "/api/profile-bulk-import-jobs", "method": "POST"})
        address = f"drop2-{uid()}@example.com"
        with pytest.raises(httpx.TransportError):
            c.post("/api/profile-bulk-import-jobs", json=import_body([profile(address)], list_id))
        assert [p["attributes"]["email"] for p in find_by_email(c, [address])] == [address]
        stats = admin(fresh_url, "stats")
        assert stats["faults_injected"] == {"drop": 2}
        assert stats["state"]["jobs"] == 2


def test_throttle_error_and_slow_faults(fresh_url: str) -> None:
    with api(fresh_url) as c:
        plan = {
            "rules": [
                {"kind": "throttle", "path": "/api/lists", "method": "POST", "count": 2, "retry_after": 3},
                {"kind": "error", "path": "/api/lists", "method": "POST", "status": 503},
                {"kind": "slow", "path": "/api/accounts", "delay": 0.2},
            ]
        }
        added = admin(fresh_url, "faults", plan)["added"]
        assert [r["kind"] for r in added] == ["throttle", "error", "slow"]
        body = {"data": {"type": "list", "attributes": {"name": "faulty"}}}
        statuses = [c.post("/api/lists", json=body) for _ in range(4)]
        assert [r.status_code for r in statuses] == [429, 429, 503, 201]
        assert statuses[0].headers["Retry-After"] == "3"
        assert errors_of(statuses[0])[0]["detail"] == "Request was throttled. Expected available in 3 seconds."
        assert errors_of(statuses[2])[0]["status"] == 503
        assert len(c.get("/api/lists").json()["data"]) == 1  # only the last request did anything
        assert c.get("/api/accounts").status_code == 200

        stats = admin(fresh_url, "stats")
        assert stats["throttled_429"] == 2 and stats["rate_limited"] == 0
        assert stats["faults_injected"] == {"throttle": 2, "error": 1, "slow": 1}
        assert stats["endpoints"]["POST /api/lists"]["responses"] == {"201": 1, "429": 2, "503": 1}
        assert admin(fresh_url, "faults")["rules"] == []  # all used up

        r = httpx.post(f"{fresh_url}/__emulator/faults", json={"kind": "explode"})
        assert r.status_code == 400


def test_random_faults_are_seeded() -> None:
    def statuses(seed: int) -> list[int]:
        args = (
            "--rate-limits",
            "off",
            "--fault-rate",
            "0.4",
            "--fault-seed",
            str(seed),
            "--fault-kinds",
            "throttle,error",
        )
        with run_emulator(EMULATOR_KEY, *args) as url, api(url) as c:
            return [c.get("/api/accounts").status_code for _ in range(30)]

    first, again = statuses(7), statuses(7)
    assert first == again
    assert {200, 429} <= set(first) and any(s >= 500 for s in first)


# -- process and embedding -----------------------------------------------------------------------------------
def test_sigterm_ends_it_cleanly() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "localdev.klaviyo_emulator", "--port", str(port), "--api-key", EMULATOR_KEY]
    proc = subprocess.Popen(cmd, cwd=LOCALDEV.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, what="emulator")
        with api(f"http://127.0.0.1:{port}") as c:
            assert c.get("/api/accounts").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def serve_in_process(app) -> Iterator[str]:
    """Serve an app made by create_app() with uvicorn in a thread, on a loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_create_app_serves_in_process() -> None:
    app = create_app(EmulatorConfig(api_keys=("pk_in_process",), rate_limits=False, job_latency=0))
    with serve_in_process(app) as url, api(url, key="pk_in_process") as c:
        job = import_profiles(c, [profile("inproc@example.com")])
        assert wait_complete(c, job["id"])["completed_count"] == 1
    assert len(app.emulator.store.profiles) == 1


def test_fast_and_exact_import_paths_agree() -> None:
    """The msgspec/columnar bulk path and the per-profile path give the same answers and the same state."""
    batches = [
        [profile(f"A{i}@Example.com", first_name="A", external_id=f"e{i}", properties={"n": i}) for i in range(40)],
        [profile(f"a{i}@example.com", last_name="L", properties={"m": i}, organization=None) for i in range(0, 40, 2)],
        [profile(f"n{i}@example.com", _kx="k", location={"city": "Oslo", "latitude": 59.9}) for i in range(5)],
        [profile(f"n{i}@example.com") for i in range(5)] + [profile("x@fail.invalid"), profile(" Y@Example.com ")],
        [profile(phone_number="+15005550006", external_id="e3"), profile(phone_number="+15005550007")],
        [{"type": "profile", "id": None, "attributes": {"email": "z@example.com", "title": "T"}}],
    ]
    bad = [profile("ok@example.com"), profile("nope"), profile("q@example.com", first_name=1), profile()]

    def run(fast: bool) -> tuple[list, list, list]:
        app = create_app(EmulatorConfig(api_keys=(EMULATOR_KEY,), rate_limits=False, id_seed=3, msgspec=fast))
        assert (app.emulator.import_decoder is not None) == fast
        with serve_in_process(app) as url, api(url) as c:
            list_id = new_list(c, name="same")
            states = [wait_complete(c, import_profiles(c, b, list_id)["id"]) for b in batches]
            counts = [(s["completed_count"], s["failed_count"]) for s in states]
            rejected = c.post("/api/profile-bulk-import-jobs", json=import_body(bad))
            assert rejected.status_code == 400
            members = follow(c, f"/api/lists/{list_id}/profiles", {"page[size]": 100})
            attrs = []
            for page in members:
                for d in page["data"]:
                    a = d["attributes"]
                    attrs.append({k: v for k, v in a.items() if k not in ("created", "updated", "joined_group_at")})
            details = [(e["source"], e["detail"]) for e in rejected.json()["errors"]]
            return counts, attrs, details

    fast, exact = run(True), run(False)
    assert fast == exact
    counts, attrs, _details = fast
    assert counts == [(40, 0), (20, 0), (5, 0), (6, 1), (2, 0), (1, 0)]
    by_email = {a["email"]: a for a in attrs}
    assert by_email["a2@example.com"]["last_name"] == "L" and by_email["a2@example.com"]["properties"] == {
        "n": 2,
        "m": 2,
    }
    assert by_email["a3@example.com"]["phone_number"] == "+15005550006"  # matched by external_id e3
    assert by_email["n1@example.com"]["location"]["city"] == "Oslo" and "y@example.com" in by_email
