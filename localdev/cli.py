"""Command line: `python -m localdev export ...` (one run), `host` (local Functions host), `demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
from pydantic import ValidationError

from shared.platform.config import validation_errors
from shared.platform.errors import ExportError


def _parse_fields(values: list[str]) -> dict[str, str]:
    mappings = {}
    for item in values:
        src, sep, attr = item.partition("=")
        if not sep or not src or not attr:
            raise ExportError(f"--field wants SRC=ATTR, got {item!r}")
        mappings[src] = attr
    return mappings


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
    parser = argparse.ArgumentParser(prog="python -m localdev", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="run one export (or a dry run) from a local path or blob URL")
    ex.add_argument("source", help="a model.json, a folder holding one, a CSV file, or a blob URL")
    ex.add_argument("--list-id", required=True, help="the Klaviyo list to keep in step")
    ex.add_argument("--email-field", required=True, help="the column that holds the email address")
    ex.add_argument("--entity", help="the segment (entity) in model.json; default: the only one")
    ex.add_argument("--field", action="append", default=[], metavar="SRC=ATTR", help="map a column to an attribute")
    ex.add_argument("--mode", choices=["upsert", "mirror", "subscribe"], default="upsert")
    ex.add_argument("--klaviyo-url", help="Klaviyo base URL (default: start the emulator when no key is set)")
    ex.add_argument("--state", default=".localdev/state", help="folder for sync state")
    ex.add_argument("--workdir", default=".localdev/runs", help="folder for run workspaces and durable history")
    ex.add_argument("--report", help="write the JSON run report here")
    ex.add_argument("--dry-run", action="store_true", help="read and validate everything, send nothing")
    ex.add_argument("--full", action="store_true", help="send every profile, not only the changed ones")
    ex.add_argument("--max-profiles", type=int, help="fail before sending when the segment is larger")
    ex.add_argument("--consent-field", help="subscribe mode: the column that records email marketing consent")
    ex.add_argument("--consent-values", default="true,yes,1,subscribed", help="values that mean consent (comma list)")
    ex.add_argument("--consented-at-field", help="subscribe mode: the column with when consent was given")
    ex.add_argument("--max-removal-share", type=float, default=0.30, help="mirror mode: refuse larger removals")
    ex.add_argument("--allow-mass-removal", action="store_true", help="mirror mode: override the removal guard")
    ex.add_argument(
        "--max-reject-share", type=float, help="fail before sending when more rows than this share are rejected (0.2)"
    )
    ex.add_argument("--delimiter", default=",", help="delimiter of a plain CSV source")
    ex.add_argument("--notify-url", help="a webhook to POST the run's outcome to (https, or http to loopback)")
    ex.add_argument(
        "--notify-on",
        default="failed,partially_succeeded",
        metavar="LIST",
        help="when to notify: failed, partially_succeeded, succeeded, superseded, rejects_over=SHARE (comma list)",
    )

    sample = sub.add_parser("sample", help="write a generated Customer Insights export into a folder")
    sample.add_argument("folder")
    sample.add_argument("--rows", type=int, default=100_000)
    sample.add_argument("--partitions", type=int, default=4)

    host = sub.add_parser("host", help="serve the Functions app locally: HTTP routes, durable API, blob events")
    host.add_argument("--port", type=int, default=7071, help="port on 127.0.0.1 (default 7071)")
    host.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between looks for new blobs (default 1)"
    )
    host.add_argument("--settings", help="a local.settings.json (default: ./local.settings.json, if present)")
    host.add_argument(
        "--storage",
        choices=["azurite", "settings"],
        help="azurite: start an Azurite of the host's own (default); settings: use AzureWebJobsStorage and "
        "SEGMENTS_STORAGE as set (an emulator you run, or an account). Default: LOCALDEV_STORAGE, else azurite",
    )
    host.add_argument("--azurite-dir", help="where the host's own Azurite keeps its data (default .localdev/azurite)")

    demo = sub.add_parser("demo", help="Azurite + Klaviyo emulator + local host: a 100,000-profile export end to end")
    demo.add_argument("--rows", type=int, default=100_000, help="profiles in the generated export")
    demo.add_argument("--port", type=int, default=7071, help="the local host's port (a free one if it is taken)")
    demo.add_argument("--keep-running", action="store_true", help="keep everything up after the run, until Ctrl+C")
    return parser


def run_full(args) -> dict:
    """A run (or a dry run) through the orchestrator and activities on the local durable driver."""
    from localdev.runner import run_export

    progress = None
    if sys.stderr.isatty():
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("planning", total=None)

    def on_progress(status: dict) -> None:
        if progress is None:
            return
        label = (
            f"{status.get('phase', '')}: {status.get('profiles_submitted', 0):,} sent, "
            f"{status.get('profiles_imported', 0):,} imported, "
            f"jobs {status.get('jobs_done', 0)}/{status.get('jobs', 0)}"
        )
        progress.update(task, description=label, completed=status.get("units_done", 0), total=status.get("units_total"))

    try:
        return run_export(args, on_progress)
    finally:
        if progress is not None:
            progress.stop()


def _print_summary(report: dict) -> None:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    verb = "would send" if report.get("dry_run") else "sent"
    console.print(
        f"[bold]{report['status']}[/bold]: {report['rows_read']:,} rows read, {report['rows_rejected']:,} rejected, "
        f"{report['duplicate_rows']:,} duplicates, {verb} {report['profiles_submitted']:,} profiles "
        f"({report.get('profiles_unchanged', 0):,} unchanged) in {report['duration_s']:.2f} s"
    )
    if report.get("error"):
        console.print(f"  error: {report['error']}")
    for item in report.get("rejects_sample", [])[:5]:
        console.print(f"  rejected {item['partition']} row {item['row']}: {item['reason']}")
    if report.get("rejects_file"):
        console.print(f"  rejects file: {report['rejects_file']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sample":
            from localdev.sample import write_ci_export
            from shared.platform.storage import LocalStore

            name = write_ci_export(LocalStore(args.folder), args.rows, partitions=args.partitions)
            print(Path(args.folder) / name)
            return 0
        if args.command == "host":
            from localdev.host import serve

            return serve(args.port, args.poll_interval, args.settings, args.storage, args.azurite_dir)
        if args.command == "demo":
            from localdev.demo import run_demo

            return run_demo(rows=args.rows, port=args.port, keep_running=args.keep_running)
        if args.command == "export":
            report = run_full(args)
            if args.report:
                Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
            _print_summary(report)
            if report["status"] == "superseded":
                print(f"note: {report['error']}", file=sys.stderr)
                return 0
            if report["status"] not in ("succeeded", "partially_succeeded"):
                print(f"error: {report.get('error') or 'the run failed'}", file=sys.stderr)
                return 2 if report.get("bad_source") else 1  # a source that cannot be read, as below
            return 0
    except ExportError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if args.debug:
            raise
        problems = "; ".join(f"{e['field'] or 'value'}: {e['message']}" for e in validation_errors(exc))
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
