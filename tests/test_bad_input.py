"""Bad sources fail cleanly before anything is sent: one clear line on stderr, no traceback. Row-level
problems reject only that row, with its reason in the rejects file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tracemalloc

import orjson
import pytest

from shared.platform.errors import SourceError
from shared.platform.storage import BlobStore, LocalStore
from shared.reading.source import open_source
from tests.pipeline_helpers import ROOT
from tests.readers import write_cdm


def dry_run(tmp_path, source, *extra, env: dict | None = None):
    cmd = [
        sys.executable, "-m", "localdev", "export", str(source), "--list-id", "L1", "--email-field", "Email",
        "--dry-run", "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"),
        "--report", str(tmp_path / "report.json"), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("KLAVIYO_API_KEY", "KEY_VAULT_URL")} | (env or {})
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
    # 4 of 6 rows rejected is over the default limit (20%): this run raises it, and the report says so.
    code, err, report = dry_run(tmp_path, source, "--field", "Notes=properties.notes", "--max-reject-share", "0.8")
    assert code == 0, err
    assert (report["max_reject_share"], report["reject_share_override"]) == (0.8, True)
    assert (report["rows_read"], report["rows_rejected"], report["profiles_submitted"]) == (6, 4, 2)
    reasons = {r["row"]: r["reason"] for r in report["rejects_sample"]}
    assert reasons[2] == "invalid email address"
    assert reasons[3] == "expected 3 fields, found 2"
    assert reasons[4] == "bytes that are not valid utf-8"
    assert reasons[5].startswith("profile is 120 KB, over Klaviyo's 100 KB limit")
    lines = [orjson.loads(x) for x in open(report["rejects_file"], "rb").read().splitlines()]
    assert sorted(x["row"] for x in lines) == [2, 3, 4, 5]


# -- hostile and broken exports: refused before anything is sent, in one line, on a folder and on Azurite ------

ROOT_DIR = "CustomerInsights_x/dest"
ACCOUNT = "https://ciaccount.blob.core.windows.net/exports"
ROWS = b"".join(b"%d,p%d@example.com\n" % (i, i) for i in range(50))


def _hostile_model(store, partitions: list, extra: dict | None = None) -> str:
    """A model.json of entity Seg (Id, Email) naming `partitions` (locations or partition objects)."""
    store.write_bytes(f"{ROOT_DIR}/Seg/p.csv", ROWS)
    listed = [{"name": f"p{i}", "location": p} if isinstance(p, str) else p for i, p in enumerate(partitions)]
    entity = {"name": "Seg", "attributes": [{"name": "Id"}, {"name": "Email"}], "partitions": listed, **(extra or {})}
    store.write_bytes(f"{ROOT_DIR}/model.json", orjson.dumps({"name": "dest", "entities": [entity]}))
    return f"{ROOT_DIR}/model.json"


def _partition(store, data: bytes, settings=None) -> str:
    store.write_bytes(f"{ROOT_DIR}/Seg/odd.csv", data)
    part = {"name": "odd", "location": f"{ACCOUNT}/{ROOT_DIR}/Seg/odd.csv"}
    if settings is not None:
        part["fileFormatSettings"] = settings
    return _hostile_model(store, [part])


def _escaping(store, below_model: str) -> str:
    """A partition location that climbs out of the export's folder to a file that is there."""
    store.write_bytes("secret.csv", ROWS)
    return _hostile_model(store, [f"{ACCOUNT}/{ROOT_DIR}/{below_model}"])


P = f"{ACCOUNT}/{ROOT_DIR}/Seg/p.csv"
HOSTILE = {
    "the same partition twice": (lambda s: _hostile_model(s, [P, P]), "names the partition location"),
    "20,000 partitions": (
        lambda s: _hostile_model(s, [P] * 20_000),
        "20,000 partitions for entity 'Seg', over the limit of 5,000",
    ),
    "a 100,000-partition model.json": (lambda s: _hostile_model(s, [P] * 100_000), "over the limit of 4 MB"),
    "a '..' location": (lambda s: _escaping(s, "Seg/../../../secret.csv"), "leaves the export's folder"),
    "an encoded '..' location": (
        lambda s: _hostile_model(s, [f"{ACCOUNT}/{ROOT_DIR}/Seg/%2E%2E%2F%2E%2E%2F%2E%2E%2Fsecret.csv"]),
        "leaves the export's folder",
    ),
    "a relative '..' location": (lambda s: _hostile_model(s, ["../outside.csv"]), "leaves the export's folder"),
    "fileFormatSettings a string": (
        lambda s: _partition(s, ROWS, "csv"),
        "fileFormatSettings in model.json must be an object",
    ),
    "columnHeaders a string": (
        lambda s: _partition(s, ROWS, {"columnHeaders": "false"}),
        "columnHeaders must be true or false",
    ),
    "a gzip partition": (lambda s: _partition(s, gzip.compress(ROWS * 20)), "rows were rejected"),
    "a newline as delimiter": (lambda s: _partition(s, ROWS, {"delimiter": "\n"}), "rows were rejected"),
    "a declared encoding that does not match": (
        lambda s: _partition(
            s, "é".join(f"{i},p{i}@example.com\n" for i in range(50)).encode("utf-8"), {"encoding": "UTF-16"}
        ),
        "rows were rejected",
    ),
}


def _refused_in_one_line(code: int, err: str, report: dict | None, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    if report is not None:  # the run started: its report says failed, with that line, and nothing was sent
        assert report["status"] == "failed" and expected in report["error"]
        assert report["profiles_submitted"] == report["profiles_imported"] == 0


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_export_in_a_folder_is_refused_in_one_line(tmp_path, case):
    make, expected = HOSTILE[case]
    model = make(LocalStore(tmp_path / "src"))
    _refused_in_one_line(*dry_run(tmp_path, tmp_path / "src" / model), expected)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_export_on_blob_storage_is_refused_in_one_line(tmp_path, azurite, container, case):
    make, expected = HOSTILE[case]
    store = BlobStore(container)
    model = make(store)
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    _refused_in_one_line(*dry_run(tmp_path, store.describe(model), env=env), expected)


def test_the_reject_share_names_the_top_reasons_and_an_override_is_recorded(tmp_path):
    model = tmp_path / "src" / _partition(LocalStore(tmp_path / "src"), gzip.compress(ROWS * 20))
    code, err, report = dry_run(tmp_path, model)
    assert code == 2 and report["bad_source"] and report["max_reject_share"] == 0.2
    assert "100% of" not in err and "(100%, over the limit of 20%)" in err
    assert "expected 2 fields" in err or "not valid utf-8" in err or "invalid email" in err

    code, err, report = dry_run(tmp_path / "again", model, "--max-reject-share", "1")
    assert code == 0, err
    assert report["status"] == "succeeded" and report["rows_rejected"] == report["rows_read"] > 0
    assert (report["max_reject_share"], report["reject_share_override"]) == (1.0, True)


def test_many_partitions_are_refused_in_bounded_memory(tmp_path):
    """Measured in this process: refusing 20,000 repeated partitions (2 MB of JSON) costs what parsing the
    JSON costs (orjson peaks at ~16 times the text), nothing per partition; 100,000 (11 MB) are refused by
    the model.json's size before it is read."""
    peaks = {}
    for count in (20_000, 100_000):
        store = LocalStore(tmp_path / str(count))
        model = _hostile_model(store, [P] * count)
        size = store.info(model).size
        tracemalloc.start()
        try:
            with pytest.raises(SourceError, match="over the limit"):
                open_source(store, model, [str(tmp_path)])
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peaks[count] < 20 * min(size, 4 << 20), (count, size, peaks[count])
    assert peaks[100_000] < peaks[20_000]  # refused by its size before it is parsed at all
