"""The Event Grid-sourced blob trigger (functions/blob_trigger.py), called the way the local host calls it (as the
Functions worker would: an azure.storage.blob.BlobClient and the durable client binding), and the host's blob
events: which blobs are delivered, and that a restarted host does not deliver them again."""

from __future__ import annotations

import logging

import pytest
from azure.storage.blob import BlobClient, ContainerClient

from localdev.host_blobs import SeenBlobs, event_grid_delivers
from localdev.host_client import HostClient
from shared.platform.config import ConfigStore, Connection, ExportConfig
from shared.platform.storage import BlobStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import (
    FUNCTION_KEY,
    export_body,
    host_settings,
    new_host,
    run_id_for,
    upload_export,
)

TRIGGER = "on_segment_export"


@pytest.fixture
def settings(azurite, emulator_url):
    return host_settings(azurite, emulator_url)


@pytest.fixture
def host(settings):
    """A host without its blob watcher: the tests deliver the events themselves."""
    with new_host(settings, poll_interval=None) as running:
        yield running


@pytest.fixture
def configured(host, settings, emulator_url):
    """A connection 'shop' and an export 'weekly' watching the Customer Insights folder, through the API."""
    list_id = new_list(emulator_url)
    with HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(list_id, settings))
        yield api


def _instances(host) -> list[str]:
    return [s.instance_id for s in host.driver.list_instances()]


def test_the_same_blob_event_delivered_three_times_starts_one_run(host, configured, settings, azurite, caplog):
    model, etag = upload_export(azurite, settings, 1_000)
    client_blob = host.blob_value(TRIGGER, model)
    assert type(client_blob) is BlobClient  # the SDK type itself, as the worker passes it
    assert (client_blob.container_name, client_blob.blob_name) == (settings["SEGMENTS_CONTAINER"], model)

    with caplog.at_level(logging.INFO, logger="functions.blob_trigger"):
        for _ in range(3):
            host.call_function(TRIGGER, client_blob=client_blob)

    run_id = run_id_for("weekly", settings, model, etag)
    assert _instances(host) == [run_id]
    started = [r.getMessage() for r in caplog.records if r.name == "functions.blob_trigger"]
    assert started == [f"export weekly: run {run_id} started={flag}" for flag in (True, False, False)]
    final = configured.wait_for_run(run_id, timeout=120)
    assert final["report"]["status"] == "succeeded"
    # Delivered again after the run finished: still the same run, not a second one.
    host.call_function(TRIGGER, client_blob=client_blob)
    assert _instances(host) == [run_id]
    assert len(configured.request("GET", "/api/exports/weekly/runs").json()) == 1


def test_a_blob_no_export_watches_starts_nothing(host, configured, settings, azurite, caplog):
    other, _ = upload_export(azurite, settings, 10, root="CustomerInsights_other/another-export")
    segments = BlobStore.from_connection_string(azurite.connection_string, settings["SEGMENTS_CONTAINER"])
    segments.write_bytes("csv/newsletter.csv", b"Email\nsomeone@example.com\n")

    with caplog.at_level(logging.INFO, logger="functions.blob_trigger"):
        host.deliver_blob(TRIGGER, other)
        host.deliver_blob(TRIGGER, "csv/newsletter.csv")

    assert _instances(host) == []
    assert not [r for r in caplog.records if r.name == "functions.blob_trigger"]


def test_an_export_on_a_connection_without_privacy_acceptance_is_not_started(host, settings, azurite, caplog):
    configs = ConfigStore(BlobStore.from_connection_string(azurite.connection_string, settings["CONFIG_CONTAINER"]))
    # The API refuses such a connection; one written before acceptance was required (or by hand) can exist.
    configs.put_connection(Connection(name="unaccepted", secret_name="klaviyo-unaccepted"))
    body = {"name": "weekly", **export_body("AbC123", settings, connection="unaccepted")}
    configs.put_export(ExportConfig.model_validate(body))
    model, _ = upload_export(azurite, settings, 100)

    with caplog.at_level(logging.INFO, logger="functions.blob_trigger"):
        host.deliver_blob(TRIGGER, model)

    assert _instances(host) == []
    errors = [r for r in caplog.records if r.name == "functions.blob_trigger" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert message.startswith("export weekly not started: connection 'unaccepted' has no recorded acceptance")


def test_the_host_delivers_new_and_changed_blobs_once_even_across_restarts(settings, azurite, emulator_url):
    list_id = new_list(emulator_url)
    with new_host(settings, poll_interval=0.1) as first, HostClient(first.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(list_id, settings))
        model, etag = upload_export(azurite, settings, 200)
        first.watcher.wait_for_polls(first.watcher.polls + 2)  # a whole poll after the upload
        assert [(e.name, e.etag) for e in first.watcher.delivered] == [(model, etag)]
        api.wait_for_run(run_id_for("weekly", settings, model, etag), timeout=120)

    with new_host(settings, poll_interval=0.1) as second, HostClient(second.base_url, FUNCTION_KEY) as api:
        second.watcher.wait_for_polls(1)
        assert second.watcher.delivered == []  # recorded in _seen-blobs.json by the first host
        changed, new_etag = upload_export(azurite, settings, 300)  # Customer Insights refreshed the segment
        assert (changed, new_etag != etag) == (model, True)
        second.watcher.wait_for_polls(second.watcher.polls + 2)
        assert [(e.name, e.etag) for e in second.watcher.delivered] == [(model, new_etag)]
        final = api.wait_for_run(run_id_for("weekly", settings, model, new_etag), timeout=120)
        assert final["report"]["rows_read"] == 300


@pytest.mark.parametrize(
    ("name", "delivered"),
    [
        ("model.json", True),
        ("CustomerInsights/x/model.json", True),
        ("CustomerInsights/x/Model.json", False),  # the model.json filter is case-sensitive
        ("CustomerInsights/x/Seg_1.csv", False),  # partitions: only their model.json is an event
        ("csv/newsletter.csv", True),
        ("CSV/Newsletter.CSV", True),  # the CSV filter is not
        ("csv/readme.txt", False),
        ("elsewhere/list.csv", False),
    ],
)
def test_event_grid_filter(name, delivered):
    assert event_grid_delivers(name, "csv/") is delivered


def test_the_seen_blob_record_is_a_blob_in_the_history_container(settings, azurite):
    with new_host(settings, poll_interval=None) as host:
        container = ContainerClient.from_connection_string(azurite.connection_string, host.history_container)
        seen = SeenBlobs(container)
        seen.record(f"{settings['SEGMENTS_CONTAINER']}/a/model.json", "0x1")
        assert SeenBlobs(container).entries == {f"{settings['SEGMENTS_CONTAINER']}/a/model.json": "0x1"}
        seen.forget_missing(settings["SEGMENTS_CONTAINER"], [])
        assert SeenBlobs(container).entries == {}
