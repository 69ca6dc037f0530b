"""Command line: `python -m localdev export ...` (one run), `sample`, `erase` (personal data), `host` (local
Functions host), `demo`.

Exit codes: 0 the run succeeded or partially succeeded (or was superseded); 1 it failed; 2 the arguments or
the source are wrong (checked before anything runs). Every failure ends in one line on stderr; `--debug`
(before or after the subcommand) shows the log, retries included, and tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import orjson
from pydantic import ValidationError

from shared.platform.config import validation_errors
from shared.platform.errors import ExportError

# The export configuration's fields, as the flags that set them (for messages about invalid values).
FLAGS = {
    "list_id": "--list-id",
    "email_field": "--email-field",
    "field_mappings": "--field",
    "mode": "--mode",
    "max_profiles": "--max-profiles",
    "subscribe": "--consent-field",
    "subscribe.consent_field": "--consent-field",
    "subscribe.consent_values": "--consent-values",
    "subscribe.consented_at_field": "--consented-at-field",
    "mirror.max_removal_share": "--max-removal-share",
    "max_reject_share": "--max-reject-share",
    "notify": "--notify-url",
    "source.delimiter": "--delimiter",
    "source.entity": "--entity",
}
PROGRESS_EVERY_S = 5.0  # without a terminal: a progress line at most this often (and on each new phase)


def _field(value: str) -> str:
    src, sep, attr = value.partition("=")
    if not sep or not src.strip() or not attr.strip():
        raise argparse.ArgumentTypeError(f"wants SRC=ATTR (a column, '=', a Klaviyo attribute), got {value!r}")
    return value


def _delimiter(value: str) -> str:
    named = {"tab": "\t", "\\t": "\t"}
    value = named.get(value, value)
    if len(value) != 1 or value in '\r\n"':
        raise argparse.ArgumentTypeError(f"wants one character (e.g. ';' or tab), got {value!r}")
    return value


def _share(value: str) -> float:
    share = float(value)
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError(f"wants a share between 0 and 1, got {value!r}")
    return share


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"wants a positive number, got {value!r}")
    return number


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option with its default (options without one say so in their help); descriptions as written."""

    def _get_help_string(self, action):
        if action.default is False and action.help and "default" not in action.help:
            return f"{action.help} (default: off)"
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (exit 2), not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def parse_notify(url: str | None, on: str) -> dict | None:
    """--notify-url/--notify-on as the export configuration's `notify` ("rejects_over=0.05" sets the share)."""
    if not url:
        return None
    events, share = [], None
    for item in (part.strip() for part in on.split(",")):
        name, sep, value = item.partition("=")
        if name == "rejects_over":
            try:
                share = float(value) if sep else None
            except ValueError:
                raise ExportError(f"--notify-on: rejects_over wants a share such as 0.05, got {value!r}") from None
            if share is None:
                raise ExportError("--notify-on: rejects_over wants a share, e.g. rejects_over=0.05")
        if item:
            events.append(name)
    return {"webhook_url": url, "on": events, "rejects_over": share}


def build_parser() -> argparse.ArgumentParser:
    # --debug goes before or after the subcommand: the subcommands' copy leaves the default to the main one.
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the log (Klaviyo retries, activities) and tracebacks on stderr (default: off)",
    )
    parser = _Parser(prog="python -m localdev", description=__doc__, formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="show the log and tracebacks on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser(
        "export",
        parents=[debug],
        formatter_class=_Help,
        help="run one export (or a dry run) from a local path or blob URL",
        description="Run one export into a Klaviyo list, through the app's orchestrator and activities on the "
        "local durable driver. A killed run resumes when the same command is run again.",
    )
    ex.add_argument(
        "source",
        help="a model.json, a folder with one in or below it (e.g. the folder `sample` wrote), a CSV file with "
        "a header row, or a blob URL",
    )
    ex.add_argument("--list-id", required=True, help="the Klaviyo list to keep in step (required)")
    ex.add_argument("--email-field", required=True, help="the column that holds the email address (required)")
    ex.add_argument("--entity", help="the segment (entity) in model.json; default: the only one")
    ex.add_argument(
        "--field",
        action="append",
        default=[],
        type=_field,
        metavar="SRC=ATTR",
        help="map a column to a Klaviyo attribute (repeatable): first_name, last_name, phone_number, "
        "external_id, organization, title, locale, location.<city|country|...>, properties.<name>; default: none",
    )
    ex.add_argument("--mode", choices=["upsert", "mirror", "subscribe"], default="upsert", help="sync mode")
    ex.add_argument(
        "--klaviyo-url",
        help="Klaviyo base URL; default: https://a.klaviyo.com with KLAVIYO_API_KEY set, otherwise the Klaviyo "
        "emulator is started for the run (its data kept in WORKDIR/emulator)",
    )
    ex.add_argument("--state", default=".localdev/state", help="folder for sync state")
    ex.add_argument("--workdir", default=".localdev/runs", help="folder for run workspaces, reports and history")
    ex.add_argument("--report", help="write the JSON run report to this file (its folder is created); default: none")
    ex.add_argument("--json", action="store_true", help="print the run report as JSON on stdout (summary on stderr)")
    ex.add_argument("--dry-run", action="store_true", help="read and validate everything, send nothing")
    ex.add_argument("--full", action="store_true", help="send every profile, not only the changed ones")
    ex.add_argument(
        "--max-profiles", type=_positive, help="fail before sending when the segment is larger; default: no limit"
    )
    ex.add_argument(
        "--consent-field",
        help="subscribe mode: the column that records email marketing consent (required there); default: none",
    )
    ex.add_argument("--consent-values", default="true,yes,1,subscribed", help="values that mean consent (comma list)")
    ex.add_argument(
        "--consented-at-field", help="subscribe mode: the column with when consent was given; default: none"
    )
    ex.add_argument(
        "--max-removal-share", type=_share, default=0.30, help="mirror mode: refuse removing more of the list"
    )
    ex.add_argument("--allow-mass-removal", action="store_true", help="mirror mode: override the removal guard")
    ex.add_argument(
        "--max-reject-share",
        type=_share,
        help="fail before sending when more rows than this share of the rows read are rejected; default: 0.2 "
        "(the export's max_reject_share)",
    )
    ex.add_argument("--delimiter", type=_delimiter, default=",", help="delimiter of a plain CSV source ('tab' for tab)")
    ex.add_argument(
        "--notify-url", help="a webhook to POST the run's outcome to (https, or http to loopback); default: none"
    )
    ex.add_argument(
        "--notify-on",
        default="failed,partially_succeeded",
        metavar="LIST",
        help="when to notify: failed, partially_succeeded, succeeded, superseded, rejects_over=SHARE (comma list)",
    )

    sample = sub.add_parser(
        "sample",
        parents=[debug],
        formatter_class=_Help,
        help="write a generated Customer Insights export into a folder",
        description="Write a generated Customer Insights export (model.json and CSV partitions) into FOLDER and "
        "print the command that runs it.",
    )
    sample.add_argument("folder", help="where to write it (created if missing)")
    sample.add_argument("--rows", type=int, default=100_000, help="profiles in the export")
    sample.add_argument("--partitions", type=int, default=4, help="CSV partition files")
    sample.add_argument(
        "--realistic",
        action="store_true",
        help="write the dirt real exports carry: ~2%% missing and ~1%% invalid emails, ~3%% repeats in other "
        "case and padding, a short row, BOM, quoted line breaks, Unicode names (see README)",
    )

    erase = sub.add_parser(
        "erase",
        parents=[debug],
        formatter_class=_Help,
        help="erase people's emails from every export's sync state",
        description="Remove the emails from every export's sync state and say what changed (docs/OPERATIONS.md, "
        "Personal data).",
    )
    erase.add_argument("emails", nargs="+", metavar="EMAIL", help="email addresses (trimmed, any case)")
    erase.add_argument(
        "--state",
        default=".localdev/state",
        help="the sync state: a folder (as export's --state) or the app's workspace container URL "
        "(https://ACCOUNT.blob.core.windows.net/run-workspace)",
    )

    host = sub.add_parser(
        "host",
        parents=[debug],
        formatter_class=_Help,
        help="serve the Functions app locally: HTTP routes, durable API, blob events",
    )
    host.add_argument("--port", type=int, default=7071, help="port on 127.0.0.1")
    host.add_argument("--poll-interval", type=float, default=1.0, help="seconds between looks for new blobs")
    host.add_argument("--settings", help="a local.settings.json (default: ./local.settings.json, if present)")
    host.add_argument(
        "--storage",
        choices=["azurite", "settings"],
        help="azurite: start an Azurite of the host's own (default); settings: use AzureWebJobsStorage and "
        "SEGMENTS_STORAGE as set (an emulator you run, or an account). Default: LOCALDEV_STORAGE, else azurite",
    )
    host.add_argument("--azurite-dir", help="where the host's own Azurite keeps its data (default .localdev/azurite)")

    demo = sub.add_parser(
        "demo",
        parents=[debug],
        formatter_class=_Help,
        help="Azurite + Klaviyo emulator + local host: a 100,000-profile export end to end",
    )
    demo.add_argument("--rows", type=int, default=100_000, help="profiles in the generated export")
    demo.add_argument("--port", type=int, default=7071, help="the local host's port (a free one if it is taken)")
    demo.add_argument("--keep-running", action="store_true", help="keep everything up after the run, until Ctrl+C")
    return parser


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    """What argparse cannot check alone, before anything runs (exit 2 through parser.error)."""
    if args.command != "export":
        return
    if args.mode == "subscribe" and not args.consent_field:
        parser.error("--mode subscribe needs --consent-field (the column that records consent)")
    if args.report:
        report = Path(args.report)
        if report.is_dir():
            parser.error(f"--report {args.report}: is a folder; give a file name")
        try:  # created up front, so that a finished run never loses its report for want of a folder
            report.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--report {args.report}: cannot create its folder ({exc.strerror})")


def _configure_logging(debug: bool) -> None:
    """Quiet by default: failures end in one line printed by main. --debug: the whole log on stderr."""
    if debug:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        for noisy in ("azure.core.pipeline.policies.http_logging_policy", "urllib3", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    else:
        # the engine's own warnings (a stale kernels library, a shared budget out of reach, a webhook not
        # delivered) still reach the user, one line each; libraries and retries stay quiet
        logging.basicConfig(level=logging.CRITICAL + 1, handlers=[logging.NullHandler()])
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        engine = logging.getLogger("shared")
        engine.setLevel(logging.WARNING)
        engine.addHandler(handler)


class _Progress:
    """A live bar on a terminal. Otherwise plain `progress:` lines once the run has taken a few seconds (a
    quick run prints none): one per new phase, and at most one every few seconds."""

    def __init__(self) -> None:
        self.bar = None
        self.last_line = time.monotonic()
        self.last_phase = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("planning", total=None)

    def __call__(self, status: dict) -> None:
        phase = status.get("phase", "")
        label = (
            f"{phase}: {status.get('profiles_submitted', 0):,} sent, {status.get('profiles_imported', 0):,} imported, "
            f"jobs {status.get('jobs_done', 0)}/{status.get('jobs', 0)}"
        )
        if self.bar is not None:
            self.bar.update(
                self.task, description=label, completed=status.get("units_done", 0), total=status.get("units_total")
            )
            return
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_EVERY_S or (phase != self.last_phase and self.last_phase is not None):
            self.last_phase, self.last_line = phase, now
            print(f"progress: {label}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_full(args, argv: list[str] | None = None) -> dict:
    """A run (or a dry run) through the orchestrator and activities on the local durable driver."""
    from localdev.runner import run_export

    progress = _Progress()
    try:
        return run_export(args, progress, argv)
    finally:
        progress.stop()


def summary_lines(report: dict) -> list[str]:
    """What the run did, in words: one headline, then a line per thing that happened."""

    def n(key: str) -> str:
        return f"{report.get(key, 0):,}"

    verb = "would send" if report.get("dry_run") else "sent"
    head = (
        f"{report['status']}: {n('rows_read')} rows read, {n('rows_rejected')} rejected, {n('duplicate_rows')} "
        f"duplicates, {n('profiles_submitted')} {verb}, {n('profiles_unchanged')} unchanged"
    )
    if not report.get("dry_run"):
        head += f", {n('profiles_imported')} imported, {n('profiles_failed')} failed"
    lines = [f"{head} in {report.get('duration_s') or 0:.2f} s"]
    if report["status"] == "superseded":
        lines.append(f"  {report.get('error') or 'superseded by a newer write of the same source'}")
    mode = report.get("mode", "upsert")
    if mode == "mirror" and not report.get("dry_run") and report["status"] != "failed":
        lines.append(f"  mirror: {n('profiles_removed')} removed from the list (they left the segment)")
        if report.get("mass_removal_override"):
            lines.append("  mirror: the mass-removal guard was overridden (--allow-mass-removal)")
    if mode == "subscribe" and not report.get("dry_run") and report["status"] != "failed":
        lines.append(
            f"  subscribe: {n('profiles_subscribed')} subscribed to email marketing, "
            f"{n('profiles_not_consented')} not consented (added to the list only)"
        )
    kinds = report.get("warning_kinds") or ({"warnings": report["warnings"]} if report.get("warnings") else {})
    for kind, count in kinds.items():
        lines.append(f"  warning: {count:,} {kind}")
    notified = report.get("notification")
    if notified and notified.get("delivered"):  # one that was not is a warning on stderr (see _export)
        lines.append(f"  notification delivered to {notified.get('url')}")
    for item in report.get("rejects_sample", [])[:5]:
        lines.append(f"  rejected {item['partition']} row {item['row']}: {item['reason']}")
    for item in report.get("failures_sample", [])[:5]:
        lines.append(f"  failed {item.get('partition')} row {item.get('row')}: {item.get('reason')}")
    listed = report.get("rows_rejected", 0) + report.get("duplicate_rows", 0) + report.get("profiles_failed", 0)
    if report.get("rejects_file") and listed:
        lines.append(f"  rejects file ({listed:,} rows): {report['rejects_file']}")
    emulator = report.get("klaviyo_emulator")
    if emulator:
        lines.append(
            f"  Klaviyo emulator, not Klaviyo: list {emulator['list_id']} (data kept in {emulator['data']}); "
            "set KLAVIYO_API_KEY to use Klaviyo"
        )
    return lines


def _flag_for(field: str | None) -> str:
    """The flag that sets a configuration field (e.g. field_mappings.FirstName -> --field)."""
    field = field or ""
    return FLAGS.get(field) or FLAGS.get(field.split(".", 1)[0]) or field or "value"


def _failure_line(exc: BaseException, args) -> str:
    """One line for what ended the command; a Klaviyo that cannot be reached says where and what to check."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("mirror run refused") and not args.allow_mass_removal:
        text += " (--allow-mass-removal)"
    if text.startswith("cannot connect to Klaviyo at"):
        where = "--klaviyo-url" if args.klaviyo_url else "the network (no --klaviyo-url: Klaviyo itself)"
        text += f"; check {where}, a proxy (HTTPS_PROXY, NO_PROXY) and that KLAVIYO_API_KEY is meant for it"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    _configure_logging(args.debug)
    try:
        if args.command == "sample":
            return _sample(args)
        if args.command == "erase":
            from localdev.erase import erase

            return erase(args.emails, args.state)
        if args.command == "host":
            from localdev.host import serve

            return serve(args.port, args.poll_interval, args.settings, args.storage, args.azurite_dir)
        if args.command == "demo":
            from localdev.demo import run_demo

            return run_demo(rows=args.rows, port=args.port, keep_running=args.keep_running)
        if args.command == "export":
            return _export(args, argv)
    except ExportError as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if args.debug:
            raise
        problems = "; ".join(f"{_flag_for(e['field'])}: {e['message']}" for e in validation_errors(exc))
        print(f"error: invalid options: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything unforeseen still ends with one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 2


def _sample(args) -> int:
    from localdev.sample import DEFAULT_MAPPINGS, write_ci_export
    from shared.platform.storage import LocalStore

    name = write_ci_export(LocalStore(args.folder), args.rows, partitions=args.partitions, realistic=args.realistic)
    model = Path(args.folder) / name
    print(model)
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    fields = " ".join(f"--field {src}={attr}" for src, attr in DEFAULT_MAPPINGS.items())
    print("run it with (no KLAVIYO_API_KEY: into a list of the local Klaviyo emulator; with a key: your list's id):")
    print(
        f"  {shlex.quote(str(python))} -m localdev export {shlex.quote(args.folder)} --list-id sample "
        f"--email-field Email {fields}"
    )
    return 0


def _export(args, argv: list[str]) -> int:
    from localdev.runner import RunFailed

    try:
        report = run_full(args, argv)
    except RunFailed as exc:
        print(f"error: {_failure_line(exc, args)}", file=sys.stderr)
        return 1
    if args.report:
        Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    summary = sys.stderr if args.json else sys.stdout
    for line in summary_lines(report):
        print(line, file=summary)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
        sys.stdout.flush()
    notified = report.get("notification")
    if notified and not notified.get("delivered"):
        print(
            f"warning: notification to {notified.get('url')} not delivered after {notified.get('attempts')} "
            f"attempts ({notified.get('error')}); the run's status is unchanged",
            file=sys.stderr,
        )
    if report["status"] not in ("succeeded", "partially_succeeded", "superseded"):
        print(f"error: {_failure_line(report.get('error') or 'the run failed', args)}", file=sys.stderr)
        return 2 if report.get("bad_source") else 1  # a source that cannot be read: exit 2, as before the run
    return 0
