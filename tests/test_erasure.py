"""Erasing one person: `POST /api/erasure` on the local host (Azurite, the Klaviyo emulator) and
`python -m localdev erase` on a local sync state, each after a real run put the person there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

from localdev.host_client import HostClient
from localdev.sample import email_for, write_ci_export
from shared.planning.plan import KEYS_DTYPE
from shared.planning.profiles import email_key
from shared.platform.storage import BlobStore, LocalStore, ObjectStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import ROOT, new_list, run_cli
from tests.test_http_api import principal
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host, run_id_for, upload_export


def state_of(store: ObjectStore, prefix: str) -> tuple[list[str], np.ndarray, dict]:
    """(emails, keys, meta) of one sync state, checked to be in step with each other."""
    emails = store.read_bytes(f"{prefix}emails.txt").decode().split("\n")[:-1]
    keys = np.frombuffer(store.read_bytes(f"{prefix}keys.bin"), KEYS_DTYPE)
    meta = orjson.loads(store.read_bytes(f"{prefix}meta.json"))
    assert len(emails) == len(keys) == meta["profiles"]
    assert [email_key(e) for e in emails] == keys["e"].tolist()  # the same order
    return emails, keys, meta


def erase_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    cmd = [sys.executable, "-m", "localdev", "erase", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_erases_an_email_from_the_sync_state_and_a_later_run_sends_only_who_is_still_there(
    tmp_path: Path, emulator_url
):
    model = write_ci_export(LocalStore(tmp_path / "src"), 3_000, partitions=2)
    list_id = new_list(emulator_url)
    code, first, err = run_cli(tmp_path, tmp_path / "src" / model, list_id, emulator_url)
    assert (code, first["profiles_imported"]) == (0, 3_000), err
    state = LocalStore(tmp_path / "state")
    [meta_name] = [n for n in state.list("state/") if n.endswith("meta.json")]
    prefix = meta_name.removesuffix("meta.json")
    assert email_for(5) in state_of(state, prefix)[0]

    # Case and spaces as a person might write them; someone the app never saw.
    shouted = f"  {email_for(7).upper()} "
    done = erase_cli(email_for(5), shouted, "nobody@example.com", "--state", str(tmp_path / "state"))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"removed 2 from connection 'local', list '{list_id}' (2,998 profiles left)",
        "2 of 3 email(s) found in 1 of 1 sync state(s); 1 in none",
    ]
    emails, _, meta = state_of(state, prefix)
    assert len(emails) == 2_998 and {email_for(5), email_for(7)}.isdisjoint(emails)
    assert meta["mapping_key"] and meta["run_id"] == first["run_id"]  # the rest of the state is untouched

    # Both are still in the segment: the next run sends them again, and only them.
    code, again, err = run_cli(tmp_path, tmp_path / "src" / model, list_id, emulator_url)
    assert (code, again["profiles_submitted"], again["profiles_unchanged"]) == (0, 2, 2_998), err


def test_the_command_refuses_what_is_not_an_email_and_a_state_that_is_not_there(tmp_path: Path):
    bad = erase_cli("not-an-email", "--state", str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: email 1 is not an email address"]
    missing = erase_cli("someone@example.com", "--state", str(tmp_path / "no-such-folder"))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: no sync state found in {tmp_path / 'no-such-folder'} (is --state right?)"
    ]


def test_the_erasure_route_is_for_administrators_and_reports_what_it_changed(azurite, emulator_url):
    settings = host_settings(azurite, emulator_url)
    list_id = new_list(emulator_url)
    workspace = BlobStore.from_connection_string(azurite.connection_string, settings["WORKSPACE_CONTAINER"])
    prefix = f"state/shop/{list_id}/"
    with new_host(settings, poll_interval=0.2) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(list_id, settings))
        model, etag = upload_export(azurite, settings, 2_000, partitions=2)
        status = api.wait_for_run(run_id_for("weekly", settings, model, etag), timeout=120)
        assert status["report"]["profiles_imported"] == 2_000
        assert email_for(11) in state_of(workspace, prefix)[0]

        as_contributor = {"x-ms-client-principal": principal("contributor")}
        refused = api.request("POST", "/api/erasure", json={"email": email_for(11)}, headers=as_contributor)
        as_admin = {"x-ms-client-principal": principal("admin")}
        not_an_email = api.request("POST", "/api/erasure", json={"email": "nope"}, headers=as_admin)
        not_a_list = api.request("POST", "/api/erasure", json={"emails": email_for(11)}, headers=as_admin)
        assert email_for(11) in state_of(workspace, prefix)[0]  # none of those changed anything

        done = api.request("POST", "/api/erasure", json={"email": email_for(11).upper()}, headers=as_admin)
        no_key = api.http.post("/api/erasure", json={"email": email_for(12)}, headers={"x-functions-key": ""})

    assert refused.status_code == 403 and "may not do this: it takes the role admin" in refused.json()["error"]
    assert not_an_email.status_code == 400, (not_an_email.status_code, not_an_email.text)
    assert not_an_email.json()["error"] == "email 1 is not an email address"
    assert not_a_list.status_code == 400
    assert no_key.status_code == 401
    assert done.status_code == 200, done.text
    assert done.json() == {
        "emails": 1,
        "emails_found": 1,
        "states_checked": 1,
        "states_changed": [{"connection": "shop", "list_id": list_id, "removed": 1, "profiles_left": 1_999}],
        "found": [email_for(11)],
    }
    emails, _, _ = state_of(workspace, prefix)
    assert len(emails) == 1_999 and email_for(11) not in emails and email_for(12) in emails
