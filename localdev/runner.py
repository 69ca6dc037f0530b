"""One export run from the command line, through the same orchestrator and activities as in Azure, on the
local durable driver (history in a local folder, so a killed run resumes when the command is run again)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from shared.platform.config import Connection, ExportConfig, PrivacyAcceptance, SourceConfig
from shared.platform.errors import ExportError
from shared.platform.runtime import blob_store, local_store
from shared.platform.settings import AppSettings
from shared.platform.storage import split_blob_url
from shared.runs import ORCHESTRATOR, build_run, instance_id

LOCAL_CONNECTION = "local"
EMULATOR_KEY_ENV = "KLAVIYO_API_KEY"


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-_]+", "-", text.lower()).strip("-_")[:60]
    return slug or "export"


def _source_location(source: str) -> tuple[dict, str, list[str], str]:
    """(store descriptor, name in it, root parts, kind) for a path or a blob URL."""
    if source.startswith(("http://", "https://")):
        account_url, container, path = split_blob_url(source)
        if not path.lower().endswith((".json", ".csv")):
            path = f"{path.rstrip('/')}/model.json" if path else "model.json"
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or os.environ.get("SEGMENTS_STORAGE")
        if conn:
            os.environ["SEGMENTS_STORAGE"] = conn
        else:
            os.environ.setdefault("SEGMENTS_STORAGE__blobServiceUri", account_url)
        kind = "csv" if path.lower().endswith(".csv") else "cdm"
        return blob_store("segments", container), path, [container], kind
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        path = path / "model.json"
    if not path.is_file():
        raise ExportError(f"no such source: {source}")
    kind = "csv" if path.suffix.lower() == ".csv" else "cdm"
    return local_store(str(path.parent)), path.name, list(path.parent.parts[1:]), kind


@contextmanager
def klaviyo_endpoint(url: str | None, list_id: str, dry_run: bool = False) -> Iterator[tuple[str, str]]:
    """(base URL, list id). With no URL and no key anywhere, run the emulator for this command, with a list
    made for the run (named after the given list id), so a first try needs no Klaviyo account."""
    if url or dry_run or os.environ.get(EMULATOR_KEY_ENV) or os.environ.get("KEY_VAULT_URL"):
        yield (url or AppSettings().klaviyo_base_url), list_id
        return
    import asyncio

    from localdev.services import run_emulator
    from shared.pushing.klaviyo.client import KlaviyoClient

    key = "pk_local_emulator_" + os.urandom(8).hex()

    async def make_list(base: str) -> str:
        async with KlaviyoClient(key, base) as client:
            return await client.create_list(list_id)

    with run_emulator(key) as emulator_url:
        os.environ[EMULATOR_KEY_ENV] = key
        emulator_list = asyncio.run(make_list(emulator_url))
        print(
            f"no Klaviyo key set: using the Klaviyo emulator at {emulator_url}, list {emulator_list} "
            f"(named {list_id!r})",
            file=sys.stderr,
        )
        try:
            yield emulator_url, emulator_list
        finally:
            os.environ.pop(EMULATOR_KEY_ENV, None)


def run_export(args, on_progress=None) -> dict:
    from localdev.cli import parse_notify
    from localdev.durable.driver import LocalDurableDriver
    from localdev.durable.store import LocalFolderHistoryStore

    store_desc, name, root_parts, kind = _source_location(args.source)
    workdir = Path(args.workdir).resolve()
    state_dir = Path(args.state).resolve()
    fields = dict(item.split("=", 1) for item in args.field)
    export_name = _slug(args.entity or Path(name).stem if kind == "csv" else args.entity or "segment")
    cfg = ExportConfig(
        name=export_name,
        connection=LOCAL_CONNECTION,
        list_id=args.list_id,
        # Where the source is was resolved above; the configuration's source only matters to blob events.
        source=SourceConfig(
            kind=kind,
            path_prefix="command-line/",
            entity=args.entity if kind == "cdm" else None,
            delimiter=args.delimiter,
        ),
        email_field=args.email_field,
        field_mappings=fields,
        mode=args.mode,
        max_profiles=args.max_profiles,
        **({"max_reject_share": args.max_reject_share} if args.max_reject_share is not None else {}),
        full_resync=args.full,
        subscribe=(
            {
                "consent_field": args.consent_field,
                "consent_values": [v for v in args.consent_values.split(",") if v.strip()],
                "consented_at_field": args.consented_at_field,
            }
            if args.mode == "subscribe" and args.consent_field
            else None
        ),
        mirror={"max_removal_share": args.max_removal_share} if args.mode == "mirror" else None,
        notify=parse_notify(getattr(args, "notify_url", None), getattr(args, "notify_on", "")),
    )
    # From the command line the user runs with their own key: their running it is the acceptance.
    conn = Connection(
        name=LOCAL_CONNECTION,
        secret_name="klaviyo-local",
        privacy_acceptance=PrivacyAcceptance(accepted_by="command line user", accepted_at=datetime.now(UTC)),
    )
    settings = AppSettings(JOB_POLL_INTERVAL_S=1)
    from shared.platform.runtime import open_store

    source_store = open_store(store_desc, settings)
    etag = source_store.info(name).etag
    base_id = instance_id(cfg.name, f"{source_store.describe(name)}", etag)

    with ExitStack() as stack:
        base_url, list_id = stack.enter_context(klaviyo_endpoint(args.klaviyo_url, args.list_id, args.dry_run))
        cfg.list_id = list_id
        run = build_run(
            cfg,
            conn,
            name,
            settings,
            instance_id(cfg.name, f"{source_store.describe(name)}", etag, datetime.now(UTC)),
            dry_run=args.dry_run,
            source_store=store_desc,
            root_parts=root_parts,
            workspace_store=local_store(str(workdir / "work")),
            state_store=local_store(str(state_dir)),
            reports_store=local_store(str(workdir / "reports")),
            klaviyo_base_url=base_url,
            allow_mass_removal=args.allow_mass_removal,
            trigger="cli",
        )
        import function_app

        history = LocalFolderHistoryStore(workdir / "history")
        driver = stack.enter_context(LocalDurableDriver(function_app.app, history))
        # A run of this source that was killed part way is resumed where it stopped; otherwise a new run.
        unfinished = [i for i in driver.resume() if i.startswith(base_id)]
        if unfinished:
            iid = unfinished[0]
            print(f"resuming run {iid} where it stopped", file=sys.stderr)
        else:
            driver.start_new(ORCHESTRATOR, run["run_id"], run)
            iid = run["run_id"]
        final = _wait(driver, iid, on_progress)
    if isinstance(final.output, dict):
        report = dict(final.output)
        if report.get("rejects_file"):
            report["rejects_file"] = str(workdir / "reports" / report["rejects_file"])
        return report
    reason = (final.failure_details or {}).get("message") or f"run ended {final.runtime_status}"
    raise ExportError(reason)


def _wait(driver, iid: str, on_progress):
    seen: list = [None]

    def changed(status) -> bool:
        return status.is_terminal or status.custom_status != seen[0]

    while True:
        status = driver.wait_for_status(iid, changed, timeout=None)
        if status.is_terminal:
            return status
        seen[0] = status.custom_status
        if on_progress and isinstance(seen[0], dict):
            on_progress(seen[0])
