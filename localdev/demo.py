"""``python -m localdev demo`` (``make demo``): the app's main job on one machine, with no cloud account.

1. Start Azurite (in memory) and the Klaviyo emulator with Klaviyo's rate limits, and create a list there.
2. Start the local Functions host (:mod:`localdev.host`) with the app configured for them.
3. Through the app's HTTP API: add a Klaviyo connection (the key is checked against the emulator, the data
   privacy terms accepted) and an export watching ``CustomerInsights_demo/klaviyo-export/`` in the segments
   container.
4. Write a generated Customer Insights export (partitions first, ``model.json`` last, as Customer Insights
   does) into the segments container; the host sees the new ``model.json`` as Event Grid would deliver it,
   and the blob trigger starts the run.
5. Follow the run on ``GET /api/runs/{id}``, then print its report, where to look, and how many members the
   emulator's list has (read back from the emulator).

Everything started here is stopped at the end, on Ctrl+C too. Exit code 0 when the run succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from localdev.host import LocalHost, configure_logging
from localdev.host_client import HostClient, app_settings
from localdev.sample import DEFAULT_MAPPINGS, write_ci_export
from localdev.services import run_azurite, run_emulator
from shared.platform.storage import BlobStore
from shared.pushing.klaviyo.client import JSONAPI, REVISION, KlaviyoClient
from shared.runs import instance_id

EXPORT = "demo"
CONNECTION = "demo"
CONTAINER = "segments"
PREFIX = "CustomerInsights_demo/klaviyo-export/"
RUN_TIMEOUT_S = 600
# The generated phone numbers repeat every 10,000 rows, and a phone number identifies a Klaviyo profile: mapped,
# rows sharing one would land on one profile. The demo maps every other column.
DEMO_MAPPINGS = {column: target for column, target in DEFAULT_MAPPINGS.items() if target != "phone_number"}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the host binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _create_list(key: str, url: str, name: str) -> str:
    async with KlaviyoClient(key, url) as client:
        return await client.create_list(name)


def list_member_count(url: str, key: str, list_id: str, timeout: float = 60.0) -> int:
    """The list's ``profile_count`` as Klaviyo reports it (``additional-fields[list]=profile_count``), waiting
    out a 429 if Klaviyo's rate limit for that call is reached."""
    headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": REVISION, "accept": JSONAPI}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        while True:
            response = http.get(f"/api/lists/{list_id}", params={"additional-fields[list]": "profile_count"})
            if response.status_code != 429 or time.monotonic() > deadline:
                response.raise_for_status()
                return int(response.json()["data"]["attributes"]["profile_count"])
            time.sleep(float(response.headers.get("Retry-After", "1")))  # what the 429 asks for


def _export_config(list_id: str) -> dict[str, Any]:
    return {
        "connection": CONNECTION,
        "list_id": list_id,
        "source": {"container": CONTAINER, "kind": "cdm", "path_prefix": PREFIX, "entity": "HighValueCustomers"},
        "email_field": "Email",
        "field_mappings": DEMO_MAPPINGS,
        "mode": "upsert",
    }


def _follow(client: HostClient, iid: str, rows: int, console: Console) -> dict:
    """Show the run's progress until it ends; returns its last status."""
    phases: list[str] = []
    columns = (
        TextColumn("[bold]{task.fields[phase]:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("imported · {task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("run", total=rows, phase="waiting for the blob trigger", detail="")

        def show(status: dict) -> None:
            p = status.get("progress") or {}
            phase = p.get("phase") or status["runtime_status"].lower()
            if not phases or phases[-1] != phase:
                phases.append(phase)
                progress.console.print(f"  run {iid}: {phase}")
            detail = (
                f"{p.get('profiles_submitted', 0):,} sent, units {p.get('units_done', 0)}/{p.get('units_total', 0)}, "
                f"Klaviyo jobs {p.get('jobs_done', 0)}/{p.get('jobs', 0)}"
            )
            progress.update(task, phase=phase, detail=detail, completed=p.get("profiles_imported", 0))

        return client.wait_for_run(iid, RUN_TIMEOUT_S, on_status=show, interval=0.25)


def _summary(console: Console, host: LocalHost, azurite_blob_url: str, status: dict, extra: dict) -> None:
    report = status.get("report") or {}
    iid = status["instance_id"]
    compact = {k: v for k, v in report.items() if k != "jobs"}
    compact["jobs"] = f"{len(report.get('jobs') or [])} Klaviyo bulk import jobs (all listed in the report blob)"
    console.rule("run report")
    console.print_json(orjson.dumps(compact).decode())
    console.rule("where to look")
    reports = extra["reports_container"]
    durable = f"{host.base_url}/runtime/webhooks/durabletask/instances/{iid}?taskHub={host.task_hub}&connection=Storage"
    rows = [
        ("run status (API)", f"{host.base_url}/api/runs/{iid}?code={host.function_key}"),
        ("run history", f"{host.base_url}/api/history?code={host.function_key}"),
        ("durable status", durable),
        ("report blob", f"{azurite_blob_url}/{reports}/runs/{EXPORT}/{iid}.json"),
        ("rejects file", f"{azurite_blob_url}/{reports}/{report.get('rejects_file', '')}"),
        ("Klaviyo list", f"{extra['list_id']} on the emulator at {extra['klaviyo_url']}"),
        ("list members", f"{extra['members']:,} (read back from the emulator; the export has {extra['rows']:,})"),
    ]  # fmt: skip
    for label, value in rows:
        console.print(f"  [bold]{label:<17}[/bold] {value}", soft_wrap=True)
    if extra["keep_running"]:
        console.print("  These links work until you press Ctrl+C (--keep-running).")
    else:
        console.print("  These links stop working when the demo ends: run it with --keep-running to keep them alive.")
    verdict = report.get("status") or status["runtime_status"]
    console.print(
        f"\n[bold]{verdict}[/bold]: {report.get('rows_read', 0):,} rows read, "
        f"{report.get('profiles_imported', 0):,} profiles imported into Klaviyo in {report.get('duration_s', 0):.1f} s "
        f"(the run); demo wall time {extra['wall_s']:.1f} s.",
        soft_wrap=True,
    )


def run_demo(rows: int = 100_000, port: int = 7071, keep_running: bool = False, console: Console | None = None) -> int:
    console = console or Console(highlight=False)
    configure_logging(logging.WARNING)
    started = time.monotonic()
    key = "pk_demo_" + secrets.token_hex(12)
    try:
        with ExitStack() as stack:
            with console.status("starting Azurite and the Klaviyo emulator (Klaviyo's rate limits on)..."):
                azurite = stack.enter_context(run_azurite())
                klaviyo_url = stack.enter_context(run_emulator(key))
            list_id = _run(_create_list(key, klaviyo_url, "High-value customers (Customer Insights demo)"))
            console.print(f"Azurite on :{azurite.blob_port}, Klaviyo emulator at {klaviyo_url}, list {list_id}")

            settings = app_settings(azurite.connection_string, klaviyo_url, key, suffix="")
            settings["SEGMENTS_CONTAINER"] = CONTAINER
            host = LocalHost(port=port if _port_free(port) else 0, settings=settings, settings_file=None)
            stack.enter_context(host)
            console.print(f"local Functions host at {host.base_url} (function key {host.function_key})")
            client = stack.enter_context(HostClient(host.base_url, host.function_key))

            client.put_connection(CONNECTION, key, display_name="Klaviyo emulator (demo)")
            client.put_export(EXPORT, _export_config(list_id))
            console.print(f"PUT /api/connections/{CONNECTION} and /api/exports/{EXPORT}: watching {CONTAINER}/{PREFIX}")

            segments = BlobStore.from_connection_string(azurite.connection_string, CONTAINER)
            with console.status(f"writing a {rows:,}-profile Customer Insights export (partitions, then model.json)"):
                model = write_ci_export(segments, rows)
            etag = segments.info(model).etag
            iid = instance_id(EXPORT, f"{CONTAINER}/{model}", etag)
            console.print(f"uploaded {CONTAINER}/{model}: the blob trigger starts run {iid}")

            status = _follow(client, iid, rows, console)
            members = list_member_count(klaviyo_url, key, list_id)
            blob_url = f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
            extra = {
                "list_id": list_id,
                "klaviyo_url": klaviyo_url,
                "members": members,
                "rows": rows,
                "reports_container": settings["REPORTS_CONTAINER"],
                "wall_s": time.monotonic() - started,
                "keep_running": keep_running,
            }
            _summary(console, host, blob_url, status, extra)
            report = status.get("report") or {}
            ok = status["runtime_status"] == "Completed" and report.get("status") == "succeeded" and members == rows
            if keep_running:
                console.print("Azurite, the emulator and the host keep running: press Ctrl+C to stop them.")
                with contextlib.suppress(KeyboardInterrupt):
                    threading.Event().wait()
            else:
                console.print("Azurite, the emulator and the host stop now (--keep-running keeps them up).")
        console.print("stopped Azurite, the Klaviyo emulator and the local host")
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print("interrupted: stopped Azurite, the Klaviyo emulator and the local host")
        return 130


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)
