"""Run notifications (shared/finishing/notify.py) against a real local receiver: an HTTP server on a free
loopback port that answers with a scripted list of status codes and keeps every body it was sent. Whole
runs go through the command line (orchestrator and activities on the local durable driver, the Klaviyo
emulator over HTTP)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from pydantic import ValidationError

from localdev.cli import parse_notify
from localdev.sample import write_ci_export
from shared.finishing.notify import DeliveryPolicy, deliver, message, redact, wanted
from shared.platform.config import NotifyOptions
from shared.platform.errors import ExportError
from shared.platform.storage import LocalStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import new_list, run_cli

FAST = DeliveryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, timeout_s=5)


class Receiver:
    """What a webhook receiver saw: every request's body (JSON), in order."""

    def __init__(self, answers: list[int]):
        self.answers = list(answers)
        self.bodies: list[dict] = []
        self.raw: list[bytes] = []


@contextmanager
def receiver(*answers: int) -> Iterator[tuple[Receiver, str]]:
    """A webhook on 127.0.0.1 (a free port) answering `answers` in turn, then 200."""
    seen = Receiver(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.raw.append(body)
            seen.bodies.append(orjson.loads(body))
            code = seen.answers.pop(0) if seen.answers else 200
            self.send_response(code)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen, f"http://127.0.0.1:{server.server_address[1]}/hook?sig=secret-token-123"
    finally:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A loopback URL nobody listens on (the port was free a moment ago and is closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# -- configuration -------------------------------------------------------------------------------------------


def test_the_webhook_must_be_https_or_loopback_http():
    assert NotifyOptions(webhook_url="https://hooks.example.com/x").on == ["failed", "partially_succeeded"]
    for ok in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://[::1]:9/h"):
        NotifyOptions(webhook_url=ok)
    for bad in ("http://hooks.example.com/x", "ftp://127.0.0.1/x", "hooks.example.com", "https:///x"):
        with pytest.raises(ValidationError):
            NotifyOptions(webhook_url=bad)


def test_rejects_over_needs_its_share_and_the_share_needs_it():
    rule = NotifyOptions(webhook_url="https://h.example/x", on=["rejects_over"], rejects_over=0.05)
    assert rule.rejects_over == 0.05
    with pytest.raises(ValidationError):
        NotifyOptions(webhook_url="https://h.example/x", on=["rejects_over"])
    with pytest.raises(ValidationError):
        NotifyOptions(webhook_url="https://h.example/x", on=["failed"], rejects_over=0.05)
    with pytest.raises(ValidationError):
        NotifyOptions(webhook_url="https://h.example/x", on=["sometimes"])


def test_the_command_lines_notify_on_list():
    assert parse_notify(None, "failed") is None
    assert parse_notify("https://h.example/x", "failed,rejects_over=0.05") == {
        "webhook_url": "https://h.example/x",
        "on": ["failed", "rejects_over"],
        "rejects_over": 0.05,
    }
    with pytest.raises(ExportError, match="rejects_over"):
        parse_notify("https://h.example/x", "rejects_over")


def test_which_runs_match():
    default = {"webhook_url": "https://h.example/x"}
    assert wanted(default, {"status": "failed"}) and wanted(default, {"status": "partially_succeeded"})
    assert not wanted(default, {"status": "succeeded"}) and not wanted(None, {"status": "failed"})
    share = {"webhook_url": "https://h.example/x", "on": ["rejects_over"], "rejects_over": 0.05}
    assert wanted(share, {"status": "succeeded", "rows_read": 100, "rows_rejected": 6})
    assert not wanted(share, {"status": "succeeded", "rows_read": 100, "rows_rejected": 5})
    assert not wanted(share, {"status": "succeeded", "rows_read": 0, "rows_rejected": 0})


def test_query_tokens_and_credentials_are_redacted():
    assert redact("https://u:p@h.example/hook?sig=abc&sv=1") == "https://h.example/hook?sig=***&sv=***"
    assert redact("https://h.example/hook") == "https://h.example/hook"


def test_the_text_is_one_line_with_export_status_counts_duration_and_error():
    report = {"export": "weekly", "run_id": "r1", "status": "failed", "rows_read": 1200, "rows_rejected": 3,
              "duration_s": 4.25, "error": "Klaviyo refused\nthe key (401)"}  # fmt: skip
    body = message(report)
    assert body["text"] == (
        "Klaviyo sync 'weekly' failed: 1,200 rows read, 3 rejected, sent 0, imported 0, failed 0 in 4.2 s. "
        "Error: Klaviyo refused the key (401)"
    )
    assert (body["export"], body["run_id"], body["status"], body["rows_read"]) == ("weekly", "r1", "failed", 1200)


# -- delivery ------------------------------------------------------------------------------------------------


def test_a_receiver_answering_500_twice_then_200_gets_the_notification():
    with receiver(500, 500) as (seen, url):
        outcome = deliver(url, {"text": "hello"}, FAST)
    assert outcome["delivered"] and outcome["attempts"] == 3 and outcome["status_code"] == 200
    assert seen.bodies == [{"text": "hello"}] * 3
    assert "secret-token-123" not in orjson.dumps(outcome).decode()


def test_a_4xx_is_not_retried_and_a_dead_receiver_is_reported_not_raised():
    with receiver(404) as (seen, url):
        outcome = deliver(url, {"text": "x"}, FAST)
    assert (outcome["delivered"], outcome["attempts"], outcome["error"]) == (False, 1, "the receiver answered 404")
    assert len(seen.bodies) == 1
    outcome = deliver(dead_url(), {"text": "x"}, FAST)
    assert not outcome["delivered"] and outcome["attempts"] == 3 and outcome["error"].startswith("ConnectError")


# -- whole runs ----------------------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    return tmp_path / "src" / write_ci_export(LocalStore(tmp_path / "src"), 300, partitions=1)


def test_a_failed_run_posts_once_without_the_key(tmp_path, emulator_url, source):
    canary = "pk_canary_notify_0123456789"
    with receiver() as (seen, url):
        code, report, err = run_cli(tmp_path, source, "AnyList", emulator_url, "--notify-url", url, key=canary)
    assert code == 1 and report["status"] == "failed"
    assert len(seen.bodies) == 1
    body = seen.bodies[0]
    assert (body["export"], body["run_id"], body["status"]) == (report["export"], report["run_id"], "failed")
    assert body["error"] == report["error"] and report["error"] in body["text"]
    assert body["text"].startswith(f"Klaviyo sync '{report['export']}' failed: ")
    assert "\n" not in body["text"]
    assert body["report"].endswith(f"{report['run_id']}.json") and body["rejects_file"].endswith(".rejects.ndjson")
    assert canary.encode() not in seen.raw[0]
    assert report["notification"]["delivered"] is True and report["notification"]["attempts"] == 1
    assert "secret-token-123" not in orjson.dumps(report).decode() and "secret-token-123" not in err


def test_a_succeeded_run_posts_nothing_by_default(tmp_path, emulator_url, source):
    with receiver() as (seen, url):
        code, report, err = run_cli(tmp_path, source, new_list(emulator_url), emulator_url, "--notify-url", url)
    assert code == 0, err
    assert report["status"] == "succeeded" and report["notification"] is None
    assert seen.bodies == []


def test_a_succeeded_run_posts_when_asked_and_the_body_holds_no_key(tmp_path, emulator_url, source):
    with receiver(500, 500) as (seen, url):
        code, report, err = run_cli(
            tmp_path, source, new_list(emulator_url), emulator_url, "--notify-url", url, "--notify-on", "succeeded"
        )
    assert code == 0, err
    assert [b["status"] for b in seen.bodies] == ["succeeded"] * 3  # 500, 500, then delivered
    assert report["notification"]["delivered"] and report["notification"]["attempts"] == 3
    body = seen.bodies[-1]
    assert (body["profiles_submitted"], body["profiles_imported"], body["trigger"]) == (300, 300, "cli")
    assert all(EMULATOR_KEY.encode() not in raw for raw in seen.raw)


def test_a_dead_receiver_does_not_change_the_runs_status(tmp_path, emulator_url, source):
    list_id = new_list(emulator_url)
    code, report, err = run_cli(
        tmp_path, source, list_id, emulator_url, "--notify-url", dead_url(), "--notify-on", "succeeded"
    )
    assert code == 0, err
    assert report["status"] == "succeeded" and report["profiles_imported"] == 300
    assert report["notification"]["delivered"] is False and report["notification"]["attempts"] == 4
    assert "notification to http://127.0.0.1" in err and "not delivered" in err


def test_an_insecure_webhook_is_refused_with_one_line(tmp_path, emulator_url, source):
    code, report, err = run_cli(tmp_path, source, "AnyList", emulator_url, "--notify-url", "http://hooks.example/x")
    assert code == 2 and report is None
    assert err.strip() == (
        "error: invalid options: --notify-url: must be https (plain http only to 127.0.0.1, ::1 or localhost)"
    )
