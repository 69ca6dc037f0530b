"""Bad sources fail cleanly before anything is sent: one clear line on stderr, no traceback. Row-level
problems reject only that row, with its reason in the rejects file."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from shared.platform.storage import LocalStore
from tests.pipeline_helpers import ROOT
from tests.readers import write_cdm


def dry_run(tmp_path, source, *extra):
    cmd = [
        sys.executable, "-m", "localdev", "export", str(source), "--list-id", "L1", "--email-field", "Email",
        "--dry-run", "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"),
        "--report", str(tmp_path / "report.json"), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("KLAVIYO_API_KEY", "KEY_VAULT_URL")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = orjson.loads((tmp_path / "report.json").read_bytes()) if (tmp_path / "report.json").exists() else None
    return proc.returncode, proc.stderr, report


def _model(tmp_path, content: bytes) -> str:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "model.json").write_bytes(content)
    return str(tmp_path / "src")


def _cdm(tmp_path, partitions, entity="Seg"):
    return tmp_path / "src" / write_cdm(LocalStore(tmp_path / "src"), ["Id", "Email"], partitions, entity=entity)


def _csv(tmp_path, content: bytes):
    path = tmp_path / "drop.csv"
    path.write_bytes(content)
    return path


CASES = {
    "missing source": (lambda t: t / "nothing-here", "no such source"),
    "model.json not JSON": (lambda t: _model(t, b"{oops"), "model.json is not valid JSON"),
    "no entities": (lambda t: _model(t, b'{"entities": []}'), "describes no entities"),
    "named entity missing": (lambda t: _cdm(t, {"p.csv": b"1,a@x.io\n"}, entity="Other"), "entity 'Seg' not in"),
    "partition missing": (
        lambda t: _model(
            t,
            orjson.dumps(
                {
                    "entities": [
                        {
                            "name": "Seg",
                            "attributes": [{"name": "Email"}],
                            "partitions": [
                                {"name": "p1", "location": "https://x.blob.core.windows.net/c/src/Seg/p1.csv"}
                            ],
                        }
                    ]
                }
            ),
        ),
        "partition 'p1' named in model.json cannot be read",
    ),
    "empty file": (lambda t: _csv(t, b""), "CSV file is empty"),
    "header without email": (lambda t: _csv(t, b"Id,Name\n1,x\n"), "email field 'Email' is not a column"),
    "wrong delimiter": (lambda t: _csv(t, b"Id;Email\n1;a@x.io\n"), "looks ';'-delimited"),
    "100 MB field": (lambda t: _csv(t, b'Id,Email\n1,"' + b"x" * (100 * 1024 * 1024) + b'"\n'), "longer than 1024 KB"),
    "binary garbage": (lambda t: _csv(t, bytes(range(256)) * 4000), "CSV header"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_source_fails_with_one_line(tmp_path, case):
    make, expected = CASES[case]
    extra = ("--entity", "Seg") if case == "named entity missing" else ()
    code, err, report = dry_run(tmp_path, make(tmp_path), *extra)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("progress: ")]  # a slow run's
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    if report is not None:  # a run that started reports its failure; it never sent anything
        assert report["status"] == "failed" and report["profiles_submitted"] == 0


def test_row_problems_reject_only_that_row(tmp_path):
    big = "y" * 120_000
    body = (
        b"1,ok@x.io,a\n"
        b"2,not-an-email,b\n"
        b"3,short@x.io\n"
        b"4,bad\xffbytes@x.io,c\n" + f"5,big@x.io,{big}\n".encode() + b"6,fine@x.io,d\n"
    )
    source = tmp_path / "src" / write_cdm(LocalStore(tmp_path / "src"), ["Id", "Email", "Notes"], {"p.csv": body})
    code, err, report = dry_run(tmp_path, source, "--field", "Notes=properties.notes")
    assert code == 0, err
    assert (report["rows_read"], report["rows_rejected"], report["profiles_submitted"]) == (6, 4, 2)
    reasons = {r["row"]: r["reason"] for r in report["rejects_sample"]}
    assert reasons[2] == "invalid email address"
    assert reasons[3] == "expected 3 fields, found 2"
    assert reasons[4] == "bytes that are not valid utf-8"
    assert reasons[5].startswith("profile is 120 KB, over Klaviyo's 100 KB limit")
    lines = [orjson.loads(x) for x in open(report["rejects_file"], "rb").read().splitlines()]
    assert sorted(x["row"] for x in lines) == [2, 3, 4, 5]
