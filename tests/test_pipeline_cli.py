"""The whole pipeline from the command line: the orchestrator and activities on the local durable driver,
against the Klaviyo emulator over HTTP, with the list read back at the end."""

from __future__ import annotations

import orjson

from localdev.sample import email_for, write_ci_export
from shared.platform.storage import LocalStore
from tests.pipeline_helpers import list_emails, new_list, run_cli
from tests.readers import write_cdm

COLS = ["CustomerId", "Email", "FirstName"]


def test_export_lands_every_valid_member_and_reports_every_rejected_row(tmp_path, emulator_url):
    store = LocalStore(tmp_path / "src")
    rows = [f'"{i}","{email_for(i)}","N{i}"' for i in range(2_500)]
    rows[10] = '"10","not an email","X"'
    rows[20] = '"20","short"'
    rows[30] = f'"30","{email_for(31)}","dup: the later row 31 wins"'
    rows.append('"9000","someone@fail.invalid","Klaviyo fails this one inside the job"')
    model = write_cdm(store, COLS, {"Seg_1.csv": ("\n".join(rows) + "\n").encode()})
    list_id = new_list(emulator_url)

    code, report, stderr = run_cli(
        tmp_path, tmp_path / "src" / model, list_id, emulator_url, "--field", "FirstName=first_name"
    )

    assert code == 0, stderr
    expected = {email_for(i) for i in range(2_500) if i not in (10, 20, 30)} | {"someone@fail.invalid"}
    assert report["rows_read"] == 2_501
    assert (report["rows_rejected"], report["duplicate_rows"]) == (2, 1)
    assert report["profiles_submitted"] == len(expected)
    assert report["status"] == "partially_succeeded"
    assert report["profiles_failed"] == 1
    assert report["profiles_imported"] == len(expected) - 1
    assert [f["row"] for f in report["failures_sample"]] == [2_501]
    assert list_emails(emulator_url, list_id) == expected - {"someone@fail.invalid"}
    lines = [orjson.loads(x) for x in open(report["rejects_file"], "rb").read().splitlines()]
    assert {(x["row"], x["kind"]) for x in lines} == {
        (11, "rejected"),
        (21, "rejected"),
        (31, "duplicate"),
        (2_501, "failed"),
    }


def test_incremental_sends_only_what_changed_and_resends_failures(tmp_path, emulator_url):
    store = LocalStore(tmp_path / "src")
    model = write_ci_export(store, 3_000, partitions=2)
    list_id = new_list(emulator_url)
    source = tmp_path / "src" / model
    mappings = ["--field", "FirstName=first_name", "--field", "LoyaltyTier=properties.tier"]

    code, first, err = run_cli(tmp_path, source, list_id, emulator_url, *mappings)
    assert code == 0, err
    assert (first["profiles_submitted"], first["profiles_unchanged"]) == (3_000, 0)

    code, again, err = run_cli(tmp_path, source, list_id, emulator_url, *mappings)
    assert code == 0, err
    assert (again["profiles_submitted"], again["profiles_unchanged"], again["jobs"]) == (0, 3_000, [])

    write_ci_export(store, 3_000, partitions=2, changed_every=100, version=1)  # 1% changed
    code, changed, err = run_cli(tmp_path, source, list_id, emulator_url, *mappings)
    assert code == 0, err
    assert (changed["profiles_submitted"], changed["profiles_unchanged"]) == (30, 2_970)

    code, full, err = run_cli(tmp_path, source, list_id, emulator_url, *mappings, "--full")
    assert code == 0, err
    assert full["profiles_submitted"] == 3_000
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(3_000)}


def test_dry_run_sends_nothing(tmp_path, emulator_url):
    model = write_ci_export(LocalStore(tmp_path / "src"), 500, partitions=1)
    list_id = new_list(emulator_url)
    code, report, err = run_cli(tmp_path, tmp_path / "src" / model, list_id, emulator_url, "--dry-run")
    assert code == 0, err
    assert report["dry_run"] and report["profiles_submitted"] == 500 and report["jobs"] == []
    assert list_emails(emulator_url, list_id) == set()


def test_unknown_list_fails_before_anything_is_sent(tmp_path, emulator_url):
    model = write_ci_export(LocalStore(tmp_path / "src"), 200, partitions=1)
    code, report, err = run_cli(tmp_path, tmp_path / "src" / model, "NoSuchList", emulator_url)
    assert code == 1
    assert report["status"] == "failed" and "NoSuchList" in report["error"]
    assert report["jobs"] == [] and report["profiles_imported"] == 0
    assert err.strip().splitlines()[-1] == f"error: {report['error']}"
    assert "Traceback" not in err


def test_wrong_key_fails_cleanly_and_never_shows_the_key(tmp_path, emulator_url):
    model = write_ci_export(LocalStore(tmp_path / "src"), 50, partitions=1)
    canary = "pk_canary_0123456789abcdef"
    code, _, err = run_cli(tmp_path, tmp_path / "src" / model, "AnyList", emulator_url, key=canary)
    assert code == 1
    assert "Traceback" not in err and canary not in err
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_missing_partition_fails_before_anything_is_sent(tmp_path, emulator_url):
    store = LocalStore(tmp_path / "src")
    model = write_ci_export(store, 100, partitions=2)
    partition = next(p for p in store.list() if p.endswith("_2.csv"))
    store.delete(partition)
    list_id = new_list(emulator_url)
    code, report, err = run_cli(tmp_path, tmp_path / "src" / model, list_id, emulator_url)
    assert code == 2  # a source that cannot be read
    where = tmp_path / "src" / partition
    assert [line for line in err.strip().splitlines() if not line.startswith("progress: ")] == [
        f"error: partition 'HighValueCustomers_2' named in model.json cannot be read: {where}"
    ]
    assert report["status"] == "failed" and report["rows_read"] == 0
    assert list_emails(emulator_url, list_id) == set()


def test_a_finished_run_leaves_no_workspace_behind(tmp_path, emulator_url):
    """Succeeded, dry run, failed after planning: once the report is written the run's workspace (plan,
    every email of the segment, push records) is gone; the sync state and the reports stay."""
    model = write_ci_export(LocalStore(tmp_path / "src"), 3_000, partitions=2)
    source = tmp_path / "src" / model
    workspace = LocalStore(tmp_path / "work" / "work")  # where the command line keeps run workspaces
    list_id = new_list(emulator_url)

    code, ran, err = run_cli(tmp_path, source, list_id, emulator_url)
    assert (code, ran["status"], ran["profiles_imported"]) == (0, "succeeded", 3_000), err
    code, dry, err = run_cli(tmp_path, source, list_id, emulator_url, "--dry-run", "--full")
    assert (code, dry["status"], dry["profiles_submitted"]) == (0, "succeeded", 3_000), err
    # Planned (the workspace written), then the list check fails the run.
    code, failed, err = run_cli(tmp_path, source, "NoSuchList", emulator_url, "--full")
    assert (code, failed["status"]) == (1, "failed"), err

    assert (tmp_path / "work" / "work" / "runs").is_dir()  # the runs had their workspaces here
    assert workspace.list("runs/") == []
    assert LocalStore(tmp_path / "state").list() != []  # the committed sync state stays
    for report in (ran, dry, failed):
        assert open(report["rejects_file"], "rb")  # and so do the reports' rejects files
