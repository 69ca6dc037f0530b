"""`localdev sample --realistic`: the dirt it writes, in its stated shares, and what a run makes of it (the
command line as a user runs it, into the Klaviyo emulator over HTTP)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from localdev.sample import REALISTIC_SHARES, email_for, realistic_kind, repeated_member
from tests.pipeline_helpers import ROOT, list_emails, new_list, run_cli

MAPPINGS = ["--field", "FirstName=first_name", "--field", "City=location.city", "--field", "Phone=phone_number"]


def expected_outcomes(rows: int, partitions: int, seed: int = 7) -> tuple[dict, set[str]]:
    """What the generator meant each row to be, worked out from its kinds alone (no CSV parsing):
    {(partition number, row number): (kind, reason)} for rejected and duplicate rows, and the members."""
    per_part = -(-rows // partitions)
    email_of: dict[int, str] = {}
    outcome: dict[tuple[int, int], tuple[str, str]] = {}
    for i in range(rows):
        where = (i // per_part + 1, i % per_part + 1)
        kind = "idn_email" if i == rows // 3 else realistic_kind(i, seed)
        if i == rows // 2:
            outcome[where] = ("rejected", "expected 8 fields, found 7")
        elif kind == "missing_email":
            outcome[where] = ("rejected", "missing email")
        elif kind == "invalid_email" or (kind == "idn_email" and i % 4 != 3):  # the 4th is punycode, ASCII
            outcome[where] = ("rejected", "invalid email address")
        elif kind == "idn_email":
            email_of[i] = f"customer{i}@xn--bcher-kva.example"
        elif kind == "repeat" and repeated_member(i, seed) is not None:
            email_of[i] = email_for(repeated_member(i, seed))
        else:
            email_of[i] = email_for(i)
    last = {email: i for i, email in email_of.items()}
    for i, email in email_of.items():
        if last[email] != i:
            outcome[(i // per_part + 1, i % per_part + 1)] = ("duplicate", "duplicate email: a later row wins")
    return outcome, set(last)


def test_realistic_sample_carries_the_stated_dirt(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "localdev", "sample", str(tmp_path), "--rows", "40000", "--realistic"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    model = Path(out.stdout.splitlines()[0])  # then the command that runs it
    assert model.name == "model.json"
    parts = sorted(model.parent.rglob("*.csv"))
    assert len(parts) == 4
    data = [p.read_bytes() for p in parts]
    assert all(d.startswith(b"\xef\xbb\xbf") for d in data)  # a byte-order mark
    text = b"".join(data).decode("utf-8")
    assert text.replace('"Flat 2\nLondon"', "").count("\n") == text.count("\r\n") > 40_000  # CRLF line ends
    assert '"Berlin\r\nMitte"' in text and '"Flat 2\nLondon"' in text  # quoted line breaks
    assert '"Platinum ""Elite"""' in text  # doubled quotes
    assert "東京" in text and "Łukasz" in text  # Unicode cities and names
    assert "@xn--bcher-kva.example" in text or "用户" in text or "jürgen" in text or "bücher" in text

    # The stated shares hold, within a third, over a million rows.
    kinds = Counter(realistic_kind(i) for i in range(1_000_000))
    for kind in ("missing_email", "invalid_email", "repeat"):
        assert abs(kinds[kind] / 1_000_000 - REALISTIC_SHARES[kind] / 100_000) < REALISTIC_SHARES[kind] / 300_000


def test_a_run_on_the_realistic_sample_rejects_and_reports_each_dirty_row(tmp_path, emulator_url):
    rows, partitions = 30_000, 2
    subprocess.run(
        [
            sys.executable,
            "-m",
            "localdev",
            "sample",
            str(tmp_path / "src"),
            "--rows",
            str(rows),
            "--realistic",
            "--partitions",
            str(partitions),
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    model = next((tmp_path / "src").rglob("model.json"))
    list_id = new_list(emulator_url)

    code, report, err = run_cli(tmp_path, model, list_id, emulator_url, *MAPPINGS)

    assert code == 0, err
    outcome, members = expected_outcomes(rows, partitions)
    kinds = Counter(kind for kind, _ in outcome.values())
    assert report["rows_read"] == rows
    assert (report["rows_rejected"], report["duplicate_rows"]) == (kinds["rejected"], kinds["duplicate"])
    assert report["profiles_submitted"] == report["profiles_imported"] == len(members)
    assert list_emails(emulator_url, list_id) == members
    lines = [orjson.loads(x) for x in open(report["rejects_file"], "rb").read().splitlines()]
    part = {f"HighValueCustomers_{n}.csv": n for n in range(1, partitions + 1)}
    got = {(part[x["partition"]], x["row"]): (x["kind"], x["reason"]) for x in lines}
    assert got == outcome
