"""One run at a time per export, and the later export wins (shared/pushing/turns.py), on a local store and Azurite;
then two model.json writes in quick succession through the local host."""

from __future__ import annotations

import httpx
import orjson
import pytest

from localdev.host_client import HostClient
from localdev.services import run_emulator
from shared.platform.storage import BlobStore, LocalStore
from shared.pushing.turns import LOCK_STALE_S, end_turn, take_turn
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, in_phase, new_host, upload_export


@pytest.fixture(params=["local", "blob"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path)
    return BlobStore(request.getfixturevalue("container"))


def test_runs_of_one_export_take_turns_and_an_older_source_is_superseded(store):
    assert take_turn(store, "weekly", "run-a", 100.0)["status"] == "granted"
    assert take_turn(store, "weekly", "run-a", 100.0)["status"] == "granted"  # a retried activity
    assert take_turn(store, "weekly", "run-b", 200.0) == {"status": "wait", "holder": "run-a"}
    assert take_turn(store, "monthly", "run-m", 50.0)["status"] == "granted"  # other exports are not held up
    end_turn(store, "weekly", "run-a", 100.0, ran=True)
    assert take_turn(store, "weekly", "run-b", 200.0)["status"] == "granted"
    end_turn(store, "weekly", "run-b", 200.0, ran=True)
    # An export written before the one that already ran must not undo it.
    assert take_turn(store, "weekly", "run-old", 150.0) == {
        "status": "superseded",
        "by": "run-b",
        "by_source_time": 200.0,
    }


def test_a_failed_run_releases_the_turn_without_superseding(store):
    assert take_turn(store, "weekly", "run-a", 300.0)["status"] == "granted"
    end_turn(store, "weekly", "run-a", 300.0, ran=False)
    assert take_turn(store, "weekly", "run-b", 100.0)["status"] == "granted"


def test_a_turn_held_by_a_run_that_died_is_taken_over(store):
    assert take_turn(store, "weekly", "dead", 1.0, now=1_000.0)["status"] == "granted"
    assert take_turn(store, "weekly", "new", 2.0, now=1_000.0 + LOCK_STALE_S / 2)["status"] == "wait"
    assert take_turn(store, "weekly", "new", 2.0, now=1_000.0 + LOCK_STALE_S + 1)["status"] == "granted"


def _tiers(url: str, emails: list[str]) -> set[str]:
    headers = {"Authorization": f"Klaviyo-API-Key {EMULATOR_KEY}", "revision": "2026-07-15"}
    tiers = set()
    for i in range(0, len(emails), 100):
        params = {"filter": f"any(email,{orjson.dumps(emails[i : i + 100]).decode()})", "page[size]": 100}
        for p in httpx.get(f"{url}/api/profiles", params=params, headers=headers).json()["data"]:
            tiers.add(p["attributes"]["properties"]["tier"])
    return tiers


def test_two_model_json_writes_in_quick_succession_run_in_order_and_the_later_wins(azurite):
    from localdev.sample import TIERS, email_for

    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "3") as url:
        settings = host_settings(azurite, url)
        httpx.post(f"{url}/__emulator/clock", json={"freeze": True}).raise_for_status()
        with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
            api.put_connection("shop", EMULATOR_KEY)
            body = export_body(new_list(url), settings)
            body["field_mappings"] = {**body["field_mappings"], "LoyaltyTier": "properties.tier"}
            api.put_export("weekly", body)

            first_model, _ = upload_export(azurite, settings, 400, changed_every=1, version=0)
            host.deliver_blob("on_segment_export", first_model)
            first = host.driver.list_instances()[0].instance_id
            api.wait_for_run(first, timeout=120, until=in_phase("waiting_for_klaviyo"))

            upload_export(azurite, settings, 400, changed_every=1, version=1)  # every row's tier changes
            host.deliver_blob("on_segment_export", first_model)
            second = next(s.instance_id for s in host.driver.list_instances() if s.instance_id != first)
            waiting = api.wait_for_run(second, timeout=120, until=in_phase("waiting_for_turn"))
            assert waiting["progress"]["behind"] == first

            httpx.post(f"{url}/__emulator/clock", json={"freeze": False, "advance": 10}).raise_for_status()
            one, two = api.wait_for_run(first, timeout=120), api.wait_for_run(second, timeout=120)
        assert (one["report"]["status"], two["report"]["status"]) == ("succeeded", "succeeded")
        assert two["report"]["profiles_submitted"] == 400  # planned after the first committed: every tier changed
        later_tiers = {TIERS[(i + 1) % len(TIERS)] for i in range(400)}
        assert _tiers(url, [email_for(i) for i in range(400)]) == later_tiers
