"""Command line: `python -m localdev export ...` (one run), `host` (local Functions host), `demo`."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shared.errors import ExportError


def _parse_fields(values: list[str]) -> dict[str, str]:
    mappings = {}
    for item in values:
        src, sep, attr = item.partition("=")
        if not sep or not src or not attr:
            raise ExportError(f"--field wants SRC=ATTR, got {item!r}")
        mappings[src] = attr
    return mappings


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
    ex.add_argument("--delimiter", default=",", help="delimiter of a plain CSV source")

    sample = sub.add_parser("sample", help="write a generated Customer Insights export into a folder")
    sample.add_argument("folder")
    sample.add_argument("--rows", type=int, default=100_000)
    sample.add_argument("--partitions", type=int, default=4)
    return parser


def _progress_printer(label: str):
    """A rich progress bar on a terminal; nothing otherwise (CI logs stay readable)."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def run_dry(args) -> dict:
    from shared.plan import PlanOptions, plan_export
    from shared.profiles import ProfileMapper
    from shared.source import resolve_source_arg
    from shared.storage import LocalStore

    started = datetime.now(UTC)
    t0 = time.monotonic()
    run_id = f"dry-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    source = resolve_source_arg(args.source, entity=args.entity, delimiter=args.delimiter)
    mapper = ProfileMapper(source.columns, args.email_field, _parse_fields(args.field))
    workspace = LocalStore(args.workdir)
    progress, update = _progress_printer(f"planning {source.entity}")
    if progress:
        progress.start()
    try:
        plan = plan_export(
            source, mapper, workspace, f"{run_id}/", PlanOptions(max_profiles=args.max_profiles), progress=update
        )
    finally:
        if progress:
            progress.stop()
    return {
        "export": source.entity,
        "run_id": run_id,
        "status": "succeeded",
        "dry_run": True,
        "mode": args.mode,
        "list_id": args.list_id,
        "source": source.identity,
        "entity": source.entity,
        "rows_read": plan["rows_read"],
        "rows_rejected": plan["rows_rejected"],
        "duplicate_rows": plan["duplicate_rows"],
        "profiles_submitted": plan["profiles_to_send"],
        "profiles_unchanged": plan["profiles_unchanged"],
        "rejects_sample": plan["rejects_sample"],
        "rejects_file": workspace.describe(plan["rejects_file"]),
        "started_at": started.isoformat(),
        "ended_at": datetime.now(UTC).isoformat(),
        "duration_s": round(time.monotonic() - t0, 3),
    }


def _print_summary(report: dict) -> None:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    verb = "would send" if report.get("dry_run") else "sent"
    console.print(
        f"[bold]{report['status']}[/bold]: {report['rows_read']:,} rows read, {report['rows_rejected']:,} rejected, "
        f"{report['duplicate_rows']:,} duplicates, {verb} {report['profiles_submitted']:,} profiles "
        f"({report.get('profiles_unchanged', 0):,} unchanged) in {report['duration_s']:.2f} s"
    )
    for item in report.get("rejects_sample", [])[:5]:
        console.print(f"  rejected {item['partition']} row {item['row']}: {item['reason']}")
    if report.get("rejects_file"):
        console.print(f"  rejects file: {report['rejects_file']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sample":
            from localdev.sample import write_ci_export
            from shared.storage import LocalStore

            name = write_ci_export(LocalStore(args.folder), args.rows, partitions=args.partitions)
            print(Path(args.folder) / name)
            return 0
        if args.command == "export":
            if not args.dry_run:
                raise ExportError("only --dry-run is available from this command so far")
            report = run_dry(args)
            if args.report:
                Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
            _print_summary(report)
            return 0 if report["status"] in ("succeeded", "partially_succeeded") else 1
    except ExportError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2
