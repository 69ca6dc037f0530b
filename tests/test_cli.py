"""The command line as a new user meets it: exports that share a workdir, killed runs, an unreachable Klaviyo,
bad flags, `export FOLDER`, `sample`, the auto-started emulator, `--json` and `--help`. Real processes,
the Klaviyo emulator over HTTP, the local durable driver."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from localdev.cli import build_parser, summary_lines
from localdev.sample import email_for, write_ci_export
from localdev.services import free_port, run_emulator
from shared.platform.storage import LocalStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import ROOT, list_emails, new_list, run_cli
from tests.readers import write_cdm


def localdev(*args: str, cwd=ROOT, key: str | None = EMULATOR_KEY, env: dict | None = None):
    """python -m localdev ARGS as a user runs it (no terminal)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("KLAVIYO_API_KEY", "KEY_VAULT_URL")}
    environ["PYTHONPATH"] = str(ROOT)
    if key is not None:
        environ["KLAVIYO_API_KEY"] = key
    environ.update(env or {})
    cmd = [sys.executable, "-m", "localdev", *args]
    return subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)


def _export(tmp_path, name: str, rows: int, entity: str = "HighValueCustomers") -> str:
    store = LocalStore(tmp_path / name)
    return str(tmp_path / name / write_ci_export(store, rows, partitions=2, entity=entity))


# -- one workdir, several exports ------------------------------------------------------------------


def test_two_exports_in_one_workdir_both_send_and_an_older_write_of_one_source_is_superseded(tmp_path, emulator_url):
    a, b = _export(tmp_path, "a", 300), _export(tmp_path, "b", 200)
    os.utime(b, (time.time() - 3600, time.time() - 3600))  # B's export is older than A's
    list_a, list_b = new_list(emulator_url, "A"), new_list(emulator_url, "B")

    code, first, err = run_cli(tmp_path, a, list_a, emulator_url)
    assert code == 0, err
    code, second, err = run_cli(tmp_path, b, list_b, emulator_url)
    assert code == 0, err
    assert (first["status"], first["profiles_imported"]) == ("succeeded", 300)
    assert (second["status"], second["profiles_imported"]) == ("succeeded", 200)
    assert first["export"] != second["export"]
    assert list_emails(emulator_url, list_b) == {email_for(i) for i in range(200)}

    # The same source written again, but older than what already ran into list A: superseded, and said so.
    LocalStore(tmp_path / "a").write_bytes(
        "CustomerInsights_demo/klaviyo-export/model.json", open(a, "rb").read() + b"\n"
    )
    os.utime(a, (time.time() - 7200, time.time() - 7200))
    cmd = ["--list-id", list_a, "--email-field", "Email", "--klaviyo-url", emulator_url]
    work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")]
    proc = localdev("export", a, *cmd, *work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("superseded:")
    assert f"superseded by run {first['run_id']}, which ran a newer write of the same source" in proc.stdout
    assert "nothing was sent" in proc.stdout


def test_four_exports_started_at_once_in_one_workdir_all_succeed_with_exact_counts(tmp_path, emulator_url):
    sizes = [12_000, 9_000, 6_000, 3_000]
    sources = [_export(tmp_path, f"src{i}", n) for i, n in enumerate(sizes)]
    lists = [new_list(emulator_url, f"L{i}") for i in range(4)]
    procs = []
    for i, (source, list_id) in enumerate(zip(sources, lists, strict=True)):
        cmd = [
            sys.executable, "-m", "localdev", "export", source, "--list-id", list_id, "--email-field", "Email",
            "--klaviyo-url", emulator_url, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"),
            "--report", str(tmp_path / f"report-{i}.json"), "--json",
        ]  # fmt: skip
        env = {**os.environ, "KLAVIYO_API_KEY": EMULATOR_KEY, "PUSH_WAVE_WIDTH": "2", "CHUNK_ROWS": "2000"}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in procs]

    for (code, out, err), size, list_id in zip(outcomes, sizes, lists, strict=True):
        assert code == 0, err.decode()
        report = orjson.loads(out)
        assert report["status"] == "succeeded", report
        assert (report["profiles_submitted"], report["profiles_imported"], report["profiles_failed"]) == (size, size, 0)
        assert list_emails(emulator_url, list_id) == {email_for(i) for i in range(size)}
        assert b"resuming" not in err


def _history_of(workdir, export_prefix: str) -> dict | None:
    for path in (workdir / "history").glob("*.json"):
        if path.name.startswith(export_prefix):
            try:
                return orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError:  # replaced between the listing and the read
                return None
    return None


def test_a_killed_run_of_a_is_not_resumed_by_a_run_of_b_which_says_how_to_resume_it(tmp_path):
    a, b = _export(tmp_path, "a", 20_000), _export(tmp_path, "b", 500, entity="Other")
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off") as url:
        list_a, list_b = new_list(url, "A"), new_list(url, "B")
        slow = {"kind": "slow", "path": "/api/profile-bulk-import-jobs", "method": "POST", "delay": 1.5}
        httpx.post(f"{url}/__emulator/faults", json=slow).raise_for_status()
        work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"), "--klaviyo-url", url]
        cmd = [sys.executable, "-m", "localdev", "export", a, "--list-id", list_a, "--email-field", "Email", *work]
        env = {**os.environ, "KLAVIYO_API_KEY": EMULATOR_KEY, "PUSH_WAVE_WIDTH": "1"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while ((_history_of(tmp_path / "work", "highvaluecustomers-") or {}).get("customStatus") or {}).get(
            "phase"
        ) != "pushing":
            assert proc.poll() is None and time.monotonic() < deadline, "run A never reached pushing"
            time.sleep(0.02)  # polling a file another process writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        httpx.delete(f"{url}/__emulator/faults").raise_for_status()
        killed = _history_of(tmp_path / "work", "highvaluecustomers-")

        run_b = localdev("export", b, "--list-id", list_b, "--email-field", "Email", *work)
        assert run_b.returncode == 0, run_b.stderr
        after_b = _history_of(tmp_path / "work", "highvaluecustomers-")
        assert after_b == killed  # B did not drive A: A's history is as the kill left it
        assert list_emails(url, list_a) != {email_for(i) for i in range(20_000)}
        note = next(line for line in run_b.stderr.splitlines() if "left unfinished" in line)
        assert killed["instanceId"] in note

        # The command the note gives resumes A and ends it exact.
        resume = shlex.split(note.split("resume it with: ", 1)[1])
        assert resume[:3] == ["python", "-m", "localdev"]
        run_a = localdev(*resume[3:])
        assert run_a.returncode == 0, run_a.stderr
        assert f"resuming run {killed['instanceId']}" in run_a.stderr
        assert list_emails(url, list_a) == {email_for(i) for i in range(20_000)}


def test_a_second_command_for_a_run_being_driven_waits_for_it_and_names_its_process(tmp_path):
    source = _export(tmp_path, "a", 20_000)
    with run_emulator(EMULATOR_KEY, "--rate-limits", "off", "--job-latency", "1") as url:
        list_id = new_list(url)
        httpx.post(f"{url}/__emulator/clock", json={"freeze": True}).raise_for_status()  # jobs never finish
        work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state"), "--klaviyo-url", url]
        cmd = [sys.executable, "-m", "localdev", "export", source, "--list-id", list_id, "--email-field", "Email"]
        env = {**os.environ, "KLAVIYO_API_KEY": EMULATOR_KEY}
        first = subprocess.Popen(
            [*cmd, *work, "--report", str(tmp_path / "report-1.json")], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while ((_history_of(tmp_path / "work", "highvaluecustomers-") or {}).get("customStatus") or {}).get(
            "phase"
        ) != "waiting_for_klaviyo":
            assert first.poll() is None and time.monotonic() < deadline, "the first run never waited for Klaviyo"
            time.sleep(0.02)  # polling a file another process writes
        # The same command again while the first drives the run: it re-reads the same source (same ETag),
        # so the run is the first one's; it must wait for it, naming the process, not drive it too.
        second = subprocess.Popen(
            [*cmd, *work, "--report", str(tmp_path / "report-2.json")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = second.stderr.readline()
        while "waiting for it" not in waiting:
            assert waiting, "the second command ended without waiting"
            waiting = second.stderr.readline()
        assert f"process {first.pid}" in waiting
        httpx.post(f"{url}/__emulator/clock", json={"freeze": False, "advance": 5}).raise_for_status()
        assert first.wait(timeout=300) == 0
        second.communicate(timeout=300)
        assert second.returncode == 0
    one, two = (orjson.loads((tmp_path / f"report-{i}.json").read_bytes()) for i in (1, 2))
    assert one["run_id"] == two["run_id"] and one["profiles_imported"] == 20_000


# -- one clear line --------------------------------------------------------------------------------


def test_an_unreachable_klaviyo_is_one_line_naming_the_url_after_a_few_attempts(tmp_path):
    source = _export(tmp_path, "a", 100)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")]
    proc = localdev("export", source, "--list-id", "L1", "--email-field", "Email", "--klaviyo-url", url, *work)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith(f"error: cannot connect to Klaviyo at {url} after 3 attempts")
    assert "--klaviyo-url" in errors[0] and "proxy" in errors[0]
    assert "Traceback" not in proc.stderr and "retry" not in proc.stderr

    # --debug after the subcommand: the retries show.
    debug = localdev(
        "export", source, "--list-id", "L1", "--email-field", "Email", "--klaviyo-url", url, *work, "--debug"
    )
    assert debug.returncode == 1
    assert "retry 1 of" in debug.stderr


# -- arguments -------------------------------------------------------------------------------------


def _semicolon_csv(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_bytes(b"Id;Email;Consent\n1;a@example.com;yes\n")
    return str(path)


BAD = {
    "field without =": (lambda t: ["--field", "FirstName"], "--field: wants SRC=ATTR"),
    "report into a file's folder": (lambda t: ["--report", str(t / "a-file" / "r.json")], "--report"),
    "semicolon file": (lambda t: ["--csv", _semicolon_csv(t)], "use --delimiter ';'"),
    "wrong email field": (lambda t: ["--email-field", "Mail"], "fix --email-field"),
    "subscribe without consent": (lambda t: ["--mode", "subscribe"], "--consent-field"),
    "consent field missing": (
        lambda t: ["--mode", "subscribe", "--consent-field", "Consent"],
        "--consent-field 'Consent' is not a column",
    ),
    "two exports below the folder": (lambda t: ["--two"], "2 exports below"),
    "negative max profiles": (lambda t: ["--max-profiles", "0"], "--max-profiles"),
    "not a list id": (lambda t: ["--list-id", "bad list!"], "--list-id: must be a Klaviyo list id"),
    "not an attribute": (lambda t: ["--field", "FirstName=nonsense"], "--field: 'nonsense' is not a Klaviyo"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_arguments_exit_2_with_one_line_before_anything_runs(tmp_path, case):
    make, expected = BAD[case]
    (tmp_path / "a-file").write_text("")
    source = _export(tmp_path, "src", 10)
    extra = make(tmp_path)
    if extra[:1] == ["--csv"]:
        source, extra = extra[1], []
    elif extra == ["--two"]:
        write_ci_export(LocalStore(tmp_path / "src"), 10, root="other/export")
        source, extra = str(tmp_path / "src"), []
    args = ["--list-id", "L1", "--email-field", "Email", "--workdir", str(tmp_path / "work"), *extra]
    proc = localdev("export", source, *args, "--state", str(tmp_path / "state"), key=None)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "state").exists()  # nothing ran


def test_report_into_a_missing_folder_is_created_up_front(tmp_path):
    source = _export(tmp_path, "src", 50)
    report = tmp_path / "out" / "deeper" / "report.json"
    args = ["--list-id", "L1", "--email-field", "Email", "--dry-run", "--report", str(report)]
    proc = localdev("export", source, *args, "--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "st"))
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(report.read_bytes())["profiles_submitted"] == 50


# -- export FOLDER, sample, the auto-started emulator, --json ------------------------------------------


def test_sample_prints_a_command_that_runs_on_the_container_root_twice_with_the_kept_emulator(tmp_path):
    """`sample` writes model.json two levels below the folder; the command it prints runs the folder as is,
    against the emulator it starts (no key); the second run finds the same list and sends nothing."""
    folder = tmp_path / "segments"
    made = localdev("sample", str(folder), "--rows", "2000", "--partitions", "2", cwd=tmp_path, key=None)
    assert made.returncode == 0, made.stderr
    command = shlex.split(made.stdout.strip().splitlines()[-1])
    assert command[1:4] == ["-m", "localdev", "export"] and command[4] == str(folder)

    first = localdev(*command[3:], "--json", cwd=tmp_path, key=None)
    assert first.returncode == 0, first.stderr
    second = localdev(*command[3:], "--json", cwd=tmp_path, key=None)
    assert second.returncode == 0, second.stderr
    one, two = orjson.loads(first.stdout), orjson.loads(second.stdout)
    assert (one["profiles_submitted"], one["profiles_imported"]) == (2_000, 2_000)
    assert (two["profiles_submitted"], two["profiles_unchanged"]) == (0, 2_000)
    assert one["list_id"] == two["list_id"] == one["klaviyo_emulator"]["list_id"]
    assert "0 sent, 2,000 unchanged" in second.stderr
    assert "Klaviyo emulator, not Klaviyo" in second.stderr
    # The emulator's lists and profiles are kept: an emulator started on its data file has the list's members.
    with run_emulator(EMULATOR_KEY, "--data", str(tmp_path / ".localdev" / "runs" / "emulator" / "data.pickle")) as url:
        assert list_emails(url, one["list_id"]) == {email_for(i) for i in range(2_000)}


def test_json_prints_the_report_on_stdout_and_the_summary_on_stderr(tmp_path, emulator_url):
    store = LocalStore(tmp_path / "src")
    rows = [f'"{i}","{email_for(i)}","+1 206 555 {i:04d}"' for i in range(100)]
    rows[5] = '"5","not an email",""'
    rows[7] = f'"7","{email_for(7)}","12"'  # not a phone number: left out, a warning
    model = write_cdm(store, ["Id", "Email", "Phone"], {"Seg_1.csv": ("\n".join(rows) + "\n").encode()})
    list_id = new_list(emulator_url)
    args = ["--list-id", list_id, "--email-field", "Email", "--klaviyo-url", emulator_url, "--json"]
    work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")]
    proc = localdev(
        "export", str(tmp_path / "src" / model), *args, "--field", "Phone=phone_number", *work,
        "--report", str(tmp_path / "report.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert report == orjson.loads((tmp_path / "report.json").read_bytes())
    assert (report["profiles_imported"], report["rows_rejected"]) == (99, 1)
    assert "succeeded: 100 rows read, 1 rejected" in proc.stderr
    assert "warning: 1 phone number" in proc.stderr
    assert "rejected Seg_1.csv row 6: invalid email address" in proc.stderr


def test_help_describes_every_option_and_its_default_for_every_subcommand():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subcommands.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.dest in ("help", "debug") or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default is False:  # a switch
                shown = " ".join(action.help.replace("%%", "%").split())
                assert f"{shown} (default: off)" in text, f"{name} {action.option_strings[0]}"
            elif action.default not in (None, []):
                assert f"(default: {action.default})" in text, f"{name} {action.option_strings[0]}"
            else:
                assert "default" in action.help or "required" in action.help, (
                    f"{name} {action.option_strings[0]} does not say its default"
                )


def test_the_summary_says_what_each_mode_did():
    base = {"rows_read": 10, "rows_rejected": 1, "duplicate_rows": 0, "profiles_unchanged": 2, "duration_s": 1.0}
    mirror = {**base, "status": "succeeded", "mode": "mirror", "profiles_submitted": 7, "profiles_imported": 7}
    assert "  mirror: 3 removed from the list (they left the segment)" in summary_lines(
        {**mirror, "profiles_removed": 3}
    )
    subscribe = {**mirror, "mode": "subscribe", "profiles_subscribed": 4, "profiles_not_consented": 3}
    subscribe["warning_kinds"] = {"consented-at is in the future; subscribed without it": 2}
    lines = summary_lines(subscribe)
    assert "  subscribe: 4 subscribed to email marketing, 3 not consented (added to the list only)" in lines
    assert "  warning: 2 consented-at is in the future; subscribed without it" in lines
    superseded = {**base, "status": "superseded", "profiles_submitted": 0, "error": "superseded by run x.1"}
    assert summary_lines(superseded)[1] == "  superseded by run x.1"


def test_a_recorded_command_never_holds_a_webhook_url_or_a_sas_token():
    from localdev.runner import _shareable

    argv = [
        "export", "https://acct.blob.core.windows.net/segments/x/model.json?sv=2024&sig=SECRET", "--list-id", "L",
        "--notify-url", "https://hooks.slack.com/services/T/B/SECRET", "--notify-url=https://h.example/SECRET",
    ]  # fmt: skip
    shown = _shareable(argv)
    assert "SECRET" not in " ".join(shown)
    assert shown[1] == "https://acct.blob.core.windows.net/segments/x/model.json"
    assert shown[4:] == ["--notify-url", "WEBHOOK_URL", "--notify-url=WEBHOOK_URL"]


def test_the_suite_s_report_check_flags_counts_that_contradict_each_other():
    from tests.fixtures.reports import _problems_of

    body = {"export": "e", "run_id": "e.1", "status": "partially_succeeded", "rows_read": 282_020}
    body |= {"profiles_submitted": 282_020, "profiles_imported": 282_020, "profiles_failed": 92_020}
    assert _problems_of(body, "r.json") == ["r.json: imported 282,020 + failed 92,020 > submitted 282,020"]
    assert _problems_of({**body, "profiles_imported": 190_000}, "r.json") == []


def test_the_engine_s_own_warnings_reach_the_user_without_debug(tmp_path, emulator_url):
    """Quiet by default is for retries and libraries: a webhook that could not be told is the user's business."""
    source = _export(tmp_path, "src", 50)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    args = ["--list-id", new_list(emulator_url), "--email-field", "Email", "--klaviyo-url", emulator_url]
    work = ["--workdir", str(tmp_path / "work"), "--state", str(tmp_path / "state")]
    proc = localdev("export", source, *args, *work, "--notify-url", dead, "--notify-on", "succeeded")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: run ")]
    assert len(warnings) == 1 and "notification to http://127.0.0.1" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr
