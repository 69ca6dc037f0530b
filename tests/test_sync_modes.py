"""Mirror and consent-aware subscribe runs end to end against the emulator, reading Klaviyo back."""

from __future__ import annotations

from localdev.sample import email_for
from shared.platform.storage import LocalStore
from tests.pipeline_helpers import add_outsider, consent_by_email, list_emails, new_list, run_cli
from tests.readers import write_cdm

COLS = ["CustomerId", "Email", "Consent", "ConsentedAt"]


def _export(tmp_path, ids, consent=lambda i: ("", "")):
    store = LocalStore(tmp_path / "src")
    lines = []
    for i in ids:
        value, at = consent(i)
        lines.append(f'"{i}","{email_for(i)}","{value}","{at}"')
    return tmp_path / "src" / write_cdm(store, COLS, {"p.csv": ("\n".join(lines) + "\n").encode()})


def test_mirror_removes_who_left_and_guards_against_mass_removal(tmp_path, emulator_url):
    list_id = new_list(emulator_url)
    source = _export(tmp_path, range(1_000))
    code, first, err = run_cli(tmp_path, source, list_id, emulator_url, "--mode", "mirror")
    assert code == 0, err
    assert (first["profiles_submitted"], first["profiles_removed"]) == (1_000, 0)
    add_outsider(emulator_url, list_id, "someone-else@example.org")

    _export(tmp_path, range(100, 1_000))  # 100 left the segment: 10%, under the 30% guard
    code, second, err = run_cli(tmp_path, source, list_id, emulator_url, "--mode", "mirror")
    assert code == 0, err
    assert second["profiles_removed"] == 100
    assert second["profiles_submitted"] == 0 and second["profiles_unchanged"] == 900
    members = {email_for(i) for i in range(100, 1_000)} | {"someone-else@example.org"}
    assert list_emails(emulator_url, list_id) == members

    _export(tmp_path, range(100, 500))  # 500 of 900 would go: refused before anything changes
    code, refused, err = run_cli(tmp_path, source, list_id, emulator_url, "--mode", "mirror")
    assert code == 1
    assert refused["status"] == "failed" and "mirror run refused" in refused["error"]
    assert "nothing was changed" in err
    assert "it would remove 500 of the 900 profiles" in err.splitlines()[-1]
    assert err.splitlines()[-1].endswith("(--allow-mass-removal)")
    assert list_emails(emulator_url, list_id) == members

    code, forced, err = run_cli(tmp_path, source, list_id, emulator_url, "--mode", "mirror", "--allow-mass-removal")
    assert code == 0, err
    assert forced["profiles_removed"] == 500 and forced["mass_removal_override"] is True
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(100, 500)} | {"someone-else@example.org"}


def test_subscribe_only_those_with_recorded_consent(tmp_path, emulator_url):
    cases = {
        0: ("yes", "2024-05-01T10:00:00Z"),  # consent, with when: historical import
        1: ("Yes", ""),  # consent, no timestamp
        2: ("no", "2024-05-01T10:00:00Z"),  # no consent
        3: ("", ""),  # missing
        4: ("yes", "not a date"),  # consent, malformed timestamp: subscribed without it, warned
        5: ("yes", "2999-01-01T00:00:00Z"),  # consent, timestamp in the future: subscribed without it, warned
        6: ("maybe", ""),  # a value that does not mean consent
    }
    list_id = new_list(emulator_url)
    source = _export(tmp_path, cases, consent=lambda i: cases[i])
    args = ["--mode", "subscribe", "--consent-field", "Consent", "--consent-values", "yes"]
    code, report, err = run_cli(tmp_path, source, list_id, emulator_url, *args, "--consented-at-field", "ConsentedAt")
    assert code == 0, err
    assert (report["profiles_subscribed"], report["profiles_not_consented"]) == (4, 3)
    assert report["warnings"] == 2
    assert report["warning_kinds"] == {
        "consented-at is not an ISO 8601 date; subscribed without it": 1,
        "consented-at is in the future; subscribed without it": 1,
    }
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in cases}
    consent = consent_by_email(emulator_url, [email_for(i) for i in cases])
    subscribed = {i for i in cases if consent[email_for(i)]["consent"] == "SUBSCRIBED"}
    assert subscribed == {0, 1, 4, 5}
    assert consent[email_for(0)]["consent_timestamp"].startswith("2024-05-01T10:00:00")


def test_subscribe_is_refused_without_a_consent_field(tmp_path, emulator_url):
    list_id = new_list(emulator_url)
    source = _export(tmp_path, range(3))
    code, _, err = run_cli(tmp_path, source, list_id, emulator_url, "--mode", "subscribe")
    assert code == 2
    assert "consent" in err and "Traceback" not in err
    assert list_emails(emulator_url, list_id) == set()


def test_max_profiles_fails_before_anything_is_sent(tmp_path, emulator_url):
    list_id = new_list(emulator_url)
    source = _export(tmp_path, range(50))
    code, report, _err = run_cli(tmp_path, source, list_id, emulator_url, "--max-profiles", "49")
    assert code == 1
    assert report["status"] == "failed" and "over this export's max_profiles of 49" in report["error"]
    assert report["jobs"] == [] and list_emails(emulator_url, list_id) == set()


def test_state_does_not_advance_when_a_run_fails(tmp_path, emulator_url):
    list_id = new_list(emulator_url)
    source = _export(tmp_path, range(100))
    meta = tmp_path / "state" / "state" / "local" / list_id / "meta.json"
    code, _first, err = run_cli(tmp_path, source, list_id, emulator_url)
    assert code == 0, err
    committed = meta.read_bytes()

    _export(tmp_path, range(100, 150))  # 50 new people...
    code, failed, _ = run_cli(tmp_path, source, list_id, emulator_url, "--max-profiles", "10")  # ...but it fails
    assert code == 1 and failed["status"] == "failed"
    assert meta.read_bytes() == committed  # the failed run committed nothing

    code, after, err = run_cli(tmp_path, source, list_id, emulator_url)
    assert code == 0, err
    assert after["profiles_submitted"] == 50  # the new people are sent by the next good run
    assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(150)}


def test_a_run_reports_bad_phones_by_kind(tmp_path, emulator_url):
    """Upsert runs build their pushes on the fast paths: the report's breakdown of warnings (what the run
    console shows) still names the bad phones, and counts them all."""
    from shared.planning.profiles import PHONE_WARNING

    store = LocalStore(tmp_path / "src")
    bad = {5, 17, 400, 999}
    lines = [f'"{i}","{email_for(i)}","{"12" if i in bad else f"+1425555{i:04d}"}"' for i in range(1_000)]
    body = ("\n".join(lines) + "\n").encode()
    source = tmp_path / "src" / write_cdm(store, ["CustomerId", "Email", "Phone"], {"p.csv": body})
    list_id = new_list(emulator_url)
    code, report, err = run_cli(tmp_path, source, list_id, emulator_url, "--field", "Phone=phone_number")
    assert code == 0, err
    assert report["profiles_submitted"] == 1_000
    assert report["warnings"] == len(bad)
    assert report["warning_kinds"] == {PHONE_WARNING: len(bad)}


def test_a_subscribe_run_counts_each_warning_once_like_its_breakdown(tmp_path, emulator_url):
    """A row with a bad phone and an unusable consented-at carries two warnings: the total the report and
    the console show is the sum of the breakdown."""
    from shared.planning.profiles import PHONE_WARNING

    store = LocalStore(tmp_path / "src")
    rows = [("12", "not a date"), ("12", "2024-05-01T10:00:00Z"), ("+14255550100", "2024-05-01T10:00:00Z")]
    lines = [f'"{i}","{email_for(i)}","{phone}","yes","{at}"' for i, (phone, at) in enumerate(rows)]
    body = ("\n".join(lines) + "\n").encode()
    source = tmp_path / "src" / write_cdm(store, ["CustomerId", "Email", "Phone", *COLS[2:]], {"p.csv": body})
    list_id = new_list(emulator_url)
    args = ["--mode", "subscribe", "--consent-field", "Consent", "--consent-values", "yes"]
    args += ["--consented-at-field", "ConsentedAt", "--field", "Phone=phone_number"]
    code, report, err = run_cli(tmp_path, source, list_id, emulator_url, *args)
    assert code == 0, err
    assert report["warning_kinds"] == {
        PHONE_WARNING: 2,
        "consented-at is not an ISO 8601 date; subscribed without it": 1,
    }
    assert report["warnings"] == 3
