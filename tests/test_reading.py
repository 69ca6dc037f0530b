"""Reading what Customer Insights writes: CDM folders and plain CSVs, local and in Blob Storage (Azurite)."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.planning.plan as plan_module
from shared.planning.units import PlanReader
from shared.platform.errors import ConfigError, SourceError
from shared.platform.storage import BlobStore, LocalStore
from shared.reading.csvscan import iter_blocks
from shared.reading.formats import CsvFormat, Partition
from shared.reading.source import load_cdm, load_csv, map_location, resolve_source_arg
from tests.readers import plan_and_read, rejects, write_cdm

COLS = ["CustomerId", "Email", "FirstName"]


def q(*fields: str) -> str:
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


def test_cdm_export_with_every_edge_case(tmp_path):
    store = LocalStore(tmp_path / "exports")
    part1 = (
        "\ufeff"  # a UTF-8 byte-order mark
        + q("1", "Ann@Example.com ", "Ann")
        + "\r\n"
        + q("2", "bob@example.com", 'Bob "the builder",\r\nJr')  # doubled quotes, delimiter, CRLF in a field
        + "\r\n"
        + q("3", "not-an-email", "Cid")
        + "\r\n"
        + q("4", "short@example.com")  # a short row
        + "\r\n"
    ).encode()
    part2 = (
        q("5", "dan@example.com", "Dan").encode()
        + b"\n"
        + b'"6","eve@example.com","Ev\xff"\n'  # bytes that are not UTF-8
        + q("7", "ANN@example.com", "Ann again").encode()  # a repeat across partitions: the later row wins
        + b"\n"
        + q("8", "", "Nobody").encode()  # no trailing newline on the last record
    )
    model = write_cdm(store, COLS, {"Seg_1.csv": part1, "Seg_2.csv": part2})
    source = load_cdm(store, model, ["exports"], None)
    work = LocalStore(tmp_path / "work")

    summary, sent = plan_and_read(source, "Email", work)

    assert summary["rows_read"] == 8
    assert summary["rows_rejected"] == 4
    assert summary["duplicate_rows"] == 1
    assert summary["unique_profiles"] == 3
    assert summary["rows_read"] == summary["rows_rejected"] + summary["duplicate_rows"] + summary["unique_profiles"]
    by_email = {email: (loc, row) for loc, email, row in sent}
    assert sorted(by_email) == ["ann@example.com", "bob@example.com", "dan@example.com"]
    assert by_email["ann@example.com"] == ("Seg_2.csv:3", ["7", "ANN@example.com", "Ann again"])
    assert by_email["bob@example.com"][1][2] == 'Bob "the builder",\r\nJr'
    reasons = {(r["partition"], r["row"]): r["reason"] for r in rejects(work)}
    assert reasons == {
        ("Seg_1.csv", 3): "invalid email address",
        ("Seg_1.csv", 4): "expected 3 fields, found 2",
        ("Seg_2.csv", 2): "bytes that are not valid utf-8",
        ("Seg_2.csv", 4): "missing email",
        ("Seg_1.csv", 1): "duplicate email: a later row wins",
    }
    assert [r["row"] for r in summary["rejects_sample"]] == [3, 4, 2, 4]


def test_format_settings_header_delimiter_and_defaults(tmp_path):
    store = LocalStore(tmp_path)
    data = b"Id;Email;FirstName\n1;a@x.io;A\n2;b@x.io;B\n"
    model = write_cdm(store, COLS, {"p.csv": data}, settings={"columnHeaders": True, "delimiter": ";"})
    source = load_cdm(store, model, [], None)
    assert source.partitions[0].fmt == CsvFormat(header=True, delimiter=";", quoting=True, encoding="utf-8")
    summary, sent = plan_and_read(source, "Email", LocalStore(tmp_path / "w"))
    assert [(loc, email) for loc, email, _ in sent] == [("p.csv:2", "a@x.io"), ("p.csv:3", "b@x.io")]
    assert summary["rows_read"] == 2
    # No fileFormatSettings: the CDM defaults hold (no header row, comma, quotes, UTF-8).
    model = write_cdm(store, COLS, {"d.csv": b"1,c@x.io,C\n"}, root="other")
    assert load_cdm(store, model, [], None).partitions[0].fmt == CsvFormat()


def test_partition_locations_map_onto_the_container_read_from():
    anchor = ["segments", "CustomerInsights_1", "dest"]
    url = "https://ci.blob.core.windows.net/exportcontainer/CustomerInsights_1/dest/Seg/2026/p%201.csv"
    assert map_location(url, anchor) == "Seg/2026/p 1.csv"
    assert map_location("Seg/p.csv", anchor) == "Seg/p.csv"
    with pytest.raises(SourceError, match="cannot map"):
        map_location("https://ci.blob.core.windows.net/c/elsewhere/p.csv", anchor)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "model.json is not valid JSON"),
        (b'{"entities": []}', "describes no entities"),
    ],
)
def test_broken_model_json_fails_clearly(tmp_path, content, message):
    (tmp_path / "model.json").write_bytes(content)
    with pytest.raises(SourceError, match=message):
        resolve_source_arg(str(tmp_path))


def test_entity_choice_and_missing_partition(tmp_path):
    store = LocalStore(tmp_path)
    other = {"name": "Other", "attributes": [{"name": "Email"}], "partitions": []}
    write_cdm(store, COLS, {"p.csv": b"1,a@x.io,A\n"}, extra_entities=[other], root="r")
    with pytest.raises(SourceError, match="holds 2 entities"):
        resolve_source_arg(str(tmp_path / "r"))
    with pytest.raises(SourceError, match=r"entity 'Nope' not in model\.json"):
        resolve_source_arg(str(tmp_path / "r"), entity="Nope")
    assert resolve_source_arg(str(tmp_path / "r"), entity="Seg").entity == "Seg"
    (tmp_path / "r/Seg/2026/11/29/0600/p.csv").unlink()
    with pytest.raises(SourceError, match=r"partition 'p\.csv' named in model\.json cannot be read"):
        resolve_source_arg(str(tmp_path / "r"), entity="Seg")


def test_email_field_must_be_a_column(tmp_path):
    store = LocalStore(tmp_path)
    source = load_cdm(store, write_cdm(store, COLS, {"p.csv": b"1,a@x.io,A\n"}), [], None)
    with pytest.raises(ConfigError, match="email field 'Mail' is not a column"):
        plan_and_read(source, "Mail", LocalStore(tmp_path / "w"))


def test_plain_csv_with_header(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_bytes(b"\xef\xbb\xbfemail,first\r\nx@y.io,X\r\n")
    source = resolve_source_arg(str(path))
    assert source.kind == "csv" and source.columns == ["email", "first"]
    _, sent = plan_and_read(source, "email", LocalStore(tmp_path / "w"))
    assert [(loc, e) for loc, e, _ in sent] == [("drop.csv:2", "x@y.io")]
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(SourceError, match="CSV file is empty"):
        resolve_source_arg(str(tmp_path / "empty.csv"))


def test_unbalanced_quote_fails_instead_of_reading_forever(tmp_path):
    store = LocalStore(tmp_path)
    body = b'1,"a@x.io,A\n' + b"2,b@x.io,B\n" * 120_000
    source = load_cdm(store, write_cdm(store, COLS, {"p.csv": body}), [], None)
    with pytest.raises(SourceError, match="longer than 1024 KB"):
        plan_and_read(source, "Email", LocalStore(tmp_path / "w"))


def test_units_split_the_rows_to_send_and_cover_each_once(tmp_path):
    store = LocalStore(tmp_path)
    rows = "".join(f"{i},u{i}@x.io,N{i}\n" for i in range(2_345)).encode()
    source = load_cdm(store, write_cdm(store, COLS, {"a.csv": rows, "b.csv": rows[: len(rows) // 2]}), [], None)
    summary, sent = plan_and_read(source, "Email", LocalStore(tmp_path / "w"), chunk_rows=100, unit_profiles=250)
    assert summary["duplicate_rows"] > 0
    assert len(sent) == summary["profiles_to_send"] == 2_345
    assert len({email for _, email, _ in sent}) == 2_345
    assert [u[2] for u in summary["units"]] == [250] * 9 + [95]


def test_a_push_locator_names_its_partition_and_row(tmp_path, monkeypatch):
    """A push's locators are row ids; PlanReader.where turns them into the partition and row a report
    shows, across chunks and partitions, and still reads the locators of push records written before: row
    ids as text, and "partition:row"."""
    store = LocalStore(tmp_path)
    rows = "".join(f"{i},u{i}@x.io,N{i}\n" for i in range(250)).encode()
    source = load_cdm(store, write_cdm(store, COLS, {"a.csv": rows, "b.csv": rows}), [], None)
    work = LocalStore(tmp_path / "w")
    monkeypatch.setattr(plan_module, "PLAN_BLOCK_BYTES", 500)  # blocks of ~30 rows: chunks of 40 or more
    plan_and_read(source, "Email", work, chunk_rows=40)  # the second file repeats the first: it wins
    reader = PlanReader(work, "run/")
    assert len(reader.plan["chunks"]) > 6
    a, b = (p.label for p in reader.partitions)
    assert [reader.where(gid) for gid in (0, 41, 249, 250, 499)] == [
        {"partition": a, "row": 1},
        {"partition": a, "row": 42},
        {"partition": a, "row": 250},
        {"partition": b, "row": 1},
        {"partition": b, "row": 250},
    ]
    assert reader.where("41") == reader.where(41)
    assert reader.where("old/Seg_1.csv:17") == {"partition": "old/Seg_1.csv", "row": 17}


def test_cdm_export_in_blob_storage(container):
    store = BlobStore(container)
    data = q("1", "a@x.io", "A").encode() + b"\r\n" + q("2", "b@x.io", "B").encode() + b"\r\n"
    model = write_cdm(store, COLS, {"Seg_1.csv": data})
    source = load_cdm(store, model, [container.container_name], None)
    _, sent = plan_and_read(source, "Email", BlobStore(container), mappings={"FirstName": "first_name"})
    assert [e for _, e, _ in sent] == ["a@x.io", "b@x.io"]
    assert source.identity.startswith(container.url)


def test_blob_url_source(container, azurite, monkeypatch):
    store = BlobStore(container)
    write_cdm(store, COLS, {"Seg_1.csv": b"1,a@x.io,A\n"})
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    url = f"{container.url}/CustomerInsights_x/dest"
    source = resolve_source_arg(url)
    assert [p.label for p in source.partitions] == ["Seg_1.csv"]


fields = st.text(alphabet=st.sampled_from(list('ab ,"\r\n\u00e9x')), max_size=12)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(rows=st.lists(st.lists(fields, min_size=3, max_size=3), min_size=1, max_size=40), block=st.integers(1, 64))
def test_blocks_agree_with_the_csv_module(tmp_path, rows, block):
    """Whatever the quoting, and wherever the blocks cut, records read back exactly as Python's csv wrote them."""
    buf = io.StringIO(newline="")
    csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n").writerows(rows)
    data = buf.getvalue().encode()
    store = LocalStore(tmp_path)
    store.write_bytes("p.csv", data)
    part = Partition("p.csv", len(data), "e", CsvFormat())
    blocks = list(iter_blocks(store, part, block_bytes=block))
    got = [r for b in blocks for r in b.rows]
    expected = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert got == expected
    # Every block can be read again on its own from its byte range (what a push activity does).
    again = [r for b in blocks for r in next(iter_blocks(store, part, start=b.start, end=b.end)).rows]
    assert again == expected


def test_load_csv_header_problems(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("h.csv", b"email,email\nx@y.io,z\n")
    with pytest.raises(SourceError, match="empty or repeated column names"):
        load_csv(store, "h.csv")
