"""The structured record every finished run logs for Application Insights (shared/finishing/telemetry.py):
its fields, and that a real run through the local host (in this process, Azurite + the Klaviyo emulator)
emits exactly one, matching its report."""

from __future__ import annotations

import logging

import orjson

from localdev.host_client import HostClient
from shared.finishing.notify import COUNTS
from shared.finishing.telemetry import PREFIX, emit_run_finished, run_record
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host, upload_export

LOGGER = "ci_klaviyo_sync.runs"

REPORT = {
    "export": "weekly", "run_id": "weekly.abc", "status": "partially_succeeded", "mode": "mirror",
    "trigger": "blob", "source": "Seg_1.csv", "dry_run": False, "rows_read": 10, "rows_rejected": 1,
    "duplicate_rows": 1, "profiles_submitted": 8, "profiles_unchanged": 0, "profiles_imported": 7,
    "profiles_failed": 1, "profiles_removed": 2, "profiles_subscribed": 0, "profiles_not_consented": 0,
    "warnings": 3, "jobs": [{"id": "j1"}], "duration_s": 12.5, "started_at": "2026-12-01T06:00:00Z",
    "ended_at": "2026-12-01T06:00:12Z", "error": None, "rejects_sample": [{"row": 3, "reason": "x"}],
    "notification": {"url": "https://h.example/x?sig=***", "delivered": True},
}  # fmt: skip


def records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_the_record_holds_every_count_and_the_runs_identity(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    emitted = emit_run_finished(REPORT)
    [rec] = records(caplog)
    assert rec.levelno == logging.WARNING  # a partial run
    message = rec.getMessage()
    assert message.startswith(PREFIX)
    fields = orjson.loads(message[len(PREFIX) :])
    assert fields == emitted == run_record(REPORT)
    assert {k: fields[k] for k in ("event", "export", "run_id", "status", "mode", "trigger", "dry_run")} == {
        "event": "run_finished", "export": "weekly", "run_id": "weekly.abc", "status": "partially_succeeded",
        "mode": "mirror", "trigger": "blob", "dry_run": False,
    }  # fmt: skip
    assert {k: fields[k] for k in COUNTS} == {k: REPORT[k] for k in COUNTS}
    assert (fields["duration_s"], fields["jobs"], fields["notified"]) == (12.5, 1, True)
    assert rec.profiles_failed == 1 and rec.export == "weekly"  # as attributes too
    assert "rejects_sample" not in fields and "sig" not in message  # no rows, no webhook URL


def test_a_succeeded_run_logs_at_info(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    emit_run_finished({**REPORT, "status": "succeeded", "notification": None})
    [rec] = records(caplog)
    assert rec.levelno == logging.INFO and orjson.loads(rec.getMessage()[len(PREFIX) :])["notified"] is None


def test_a_run_through_the_host_emits_one_record_matching_its_report(azurite, emulator_url, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = host_settings(azurite, emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        api.put_connection("shop", EMULATOR_KEY)
        api.put_export("weekly", export_body(new_list(emulator_url), settings))
        upload_export(azurite, settings, 700)
        started = api.start_run("weekly")
        report = api.wait_for_run(started["id"])["report"]
    mine = [r for r in records(caplog) if started["id"] in r.getMessage()]
    assert len(mine) == 1
    fields = orjson.loads(mine[0].getMessage()[len(PREFIX) :])
    assert (fields["export"], fields["run_id"], fields["status"], fields["trigger"]) == (
        "weekly", started["id"], "succeeded", "http",
    )  # fmt: skip
    assert {k: fields[k] for k in COUNTS} == {k: report[k] for k in COUNTS}
    assert fields["rows_read"] == 700 and fields["duration_s"] == report["duration_s"]
