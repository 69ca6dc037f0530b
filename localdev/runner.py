"""One export run from the command line, through the same orchestrator and activities as in Azure, on the
local durable driver (history in a local folder, so a killed run resumes when the command is run again).

A command-line export is named by what it syncs: its source location, its list and its entity
(`export_name`). Runs of one such export wait for each other and an older write of its source is
superseded; unrelated exports in one workdir never touch each other. A command resumes only runs of its
own export, after taking the run's lease (`localdev.durable.store.take_lease`), so no two processes ever
drive one run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shared.platform.config import Connection, ExportConfig, PrivacyAcceptance, SourceConfig
from shared.platform.errors import ExportError
from shared.platform.runtime import blob_store, local_store
from shared.platform.settings import AppSettings
from shared.platform.storage import split_blob_url
from shared.runs import ORCHESTRATOR, build_run, instance_id

LOCAL_CONNECTION = "local"
EMULATOR_KEY_ENV = "KLAVIYO_API_KEY"
# The key of the emulator the command starts by itself: a local stand-in, not a Klaviyo key.
AUTO_EMULATOR_KEY = "pk_localdev_emulator_0000000000000000"


class UsageError(ExportError):
    """The command's arguments are wrong: exit 2 before anything runs."""


class RunFailed(Exception):
    """The run's orchestration itself failed (no report): exit 1 with its reason."""


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-_]+", "-", text.lower()).strip("-_")[:40].strip("-_")
    return slug or "export"


def export_name(location: str, list_id: str, entity: str | None, label: str) -> str:
    """The export a command runs: a readable label plus a digest of (source location, list, entity)."""
    digest = hashlib.sha256(f"{location}\n{list_id}\n{entity or ''}".encode()).hexdigest()[:12]
    return f"{_slug(label)}-{digest}"


def find_export(folder: Path, given: str) -> Path:
    """The model.json in or below a folder (the container root that `sample` writes holds it two levels
    down); several: the user names one."""
    if (folder / "model.json").is_file():
        return folder / "model.json"
    found = sorted(p for p in folder.rglob("model.json") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"no model.json in or below {given} (give a model.json, a folder holding one, or a CSV)")
    names = ", ".join(str(Path(given) / p.relative_to(folder)) for p in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    raise UsageError(f"{len(found)} exports below {given}: {names}{more}; give one of them as SOURCE")


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
        path = find_export(path, source)
    if not path.is_file():
        raise UsageError(f"no such source: {source}")
    kind = "csv" if path.suffix.lower() == ".csv" else "cdm"
    return local_store(str(path.parent)), path.name, list(path.parent.parts[1:]), kind


# -- checks before anything runs -------------------------------------------------------------------


def _check_against_source(args, source) -> None:
    """What the user chose that the source contradicts, each naming the flag that fixes it."""
    columns = source.columns
    shown = ", ".join(columns)[:200]
    if args.email_field not in columns:
        for sep in ";\t|":
            if any(sep in c and args.email_field in c.split(sep) for c in columns):
                raise UsageError(
                    f"email field {args.email_field!r} is not a column: the file looks {sep!r}-delimited "
                    f"(use --delimiter {shlex.quote(sep)})"
                )
        raise UsageError(f"email field {args.email_field!r} is not a column (columns: {shown}); fix --email-field")
    missing = [src for src in (dict(f.split("=", 1) for f in args.field)) if src not in columns]
    if missing:
        raise UsageError(f"--field names column(s) the export does not have: {', '.join(missing)} (columns: {shown})")
    if args.mode == "subscribe":
        if not args.consent_field:
            raise UsageError("--mode subscribe needs --consent-field (the column that records consent)")
        for flag, col in (("--consent-field", args.consent_field), ("--consented-at-field", args.consented_at_field)):
            if col and col not in columns:
                raise UsageError(f"{flag} {col!r} is not a column (columns: {shown})")


def _open_source(store_desc: dict, name: str, root_parts: list[str], args, settings):
    from shared.platform.errors import SourceError
    from shared.platform.runtime import open_store
    from shared.reading.source import open_source

    store = open_store(store_desc, settings)
    try:
        return store, open_source(store, name, root_parts, args.entity, args.delimiter)
    except SourceError as exc:
        if str(exc).endswith("; name one") or "not in model.json" in str(exc):
            raise UsageError(f"{exc} (use --entity)") from None
        return store, None  # the run fails on it in planning, with a report of the failure


# -- Klaviyo ---------------------------------------------------------------------------------------


@contextmanager
def klaviyo_endpoint(
    url: str | None, list_id: str, dry_run: bool = False, *, workdir: Path | None = None, export: str = ""
) -> Iterator[tuple[str, str, dict | None]]:
    """(base URL, list id, emulator facts or None). With no URL and no key anywhere, run the emulator for
    this command. Its lists and profiles are kept in `<workdir>/emulator/` between runs, and the list it
    made for an export is reused, so a second run of the same export is incremental as against Klaviyo."""
    if url or dry_run or os.environ.get(EMULATOR_KEY_ENV) or os.environ.get("KEY_VAULT_URL"):
        yield (url or AppSettings().klaviyo_base_url), list_id, None
        return
    import asyncio

    from localdev.services import run_emulator
    from shared.pushing.klaviyo.client import KlaviyoClient
    from shared.pushing.klaviyo.errors import KlaviyoNotFound

    folder = (workdir or Path(".localdev/runs")).resolve() / "emulator"
    folder.mkdir(parents=True, exist_ok=True)
    lists_file = folder / "lists.json"
    with open(folder / "lock", "a+") as lock:  # one emulator over the kept data at a time
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another command that uses the emulator kept in {folder}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lists = orjson.loads(lists_file.read_bytes()) if lists_file.exists() else {}

        async def ensure_list(base: str) -> str:
            async with KlaviyoClient(AUTO_EMULATOR_KEY, base) as client:
                known = lists.get(export)
                if known:
                    try:
                        await client.get_list(known)
                        return known
                    except KlaviyoNotFound:  # the kept data was removed: a new list
                        pass
                return await client.create_list(list_id)

        with run_emulator(AUTO_EMULATOR_KEY, "--data", str(folder / "data.pickle")) as emulator_url:
            os.environ[EMULATOR_KEY_ENV] = AUTO_EMULATOR_KEY
            try:
                emulator_list = asyncio.run(ensure_list(emulator_url))
                if lists.get(export) != emulator_list:
                    lists[export] = emulator_list
                    lists_file.write_bytes(orjson.dumps(lists, option=orjson.OPT_INDENT_2))
                print(
                    f"no Klaviyo key set: using the Klaviyo emulator (kept in {folder}) at {emulator_url}, "
                    f"list {emulator_list} (named {list_id!r})",
                    file=sys.stderr,
                )
                yield emulator_url, emulator_list, {"url": emulator_url, "list_id": emulator_list, "data": str(folder)}
            finally:
                os.environ.pop(EMULATOR_KEY_ENV, None)


# -- runs in the workdir ---------------------------------------------------------------------------


def _command_file(workdir: Path, export: str) -> Path:
    return workdir / "commands" / f"{export}.json"


def _shareable(argv: list[str]) -> list[str]:
    """The command as it may be written down and shown: a webhook URL (its token is a secret) replaced by a
    placeholder, and the query of any URL (a SAS token) dropped."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--notify-url":
            arg = "WEBHOOK_URL"
        elif arg.startswith("--notify-url="):
            arg = "--notify-url=WEBHOOK_URL"
        elif arg.startswith(("http://", "https://")) and "?" in arg:
            arg = arg.split("?", 1)[0]
        out.append(arg)
    return out


def _record_command(workdir: Path, export: str, argv: list[str]) -> None:
    path = _command_file(workdir, export)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"cwd": os.getcwd(), "argv": _shareable(argv)}))


def resume_command(workdir: Path, export: str) -> str:
    """The command that (re)runs an export, as its last command was given (key and environment aside; a
    webhook URL shows as WEBHOOK_URL)."""
    path = _command_file(workdir, export)
    if not path.exists():
        return f"(no command recorded for export {export})"
    saved = orjson.loads(path.read_bytes())
    command = shlex.join(["python", "-m", "localdev", *saved["argv"]])
    return command if saved["cwd"] == os.getcwd() else f"cd {shlex.quote(saved['cwd'])} && {command}"


def _note_other_runs(history, workdir: Path, others: list[str]) -> None:
    """Unfinished runs of other exports: left alone, listed with what resumes them."""
    from localdev.durable.store import LeaseHeld

    for iid in others:
        try:
            lease = history.lease(iid, wait=False)
        except LeaseHeld as exc:
            print(f"note: run {iid} of another export is running in {exc.holder}", file=sys.stderr)
            continue
        lease.release()
        export = iid.split(".", 1)[0]
        print(
            f"note: run {iid} of another export was left unfinished; resume it with: {resume_command(workdir, export)}",
            file=sys.stderr,
        )


def run_export(args, on_progress=None, argv: list[str] | None = None) -> dict:
    from localdev.cli import parse_notify
    from localdev.durable.driver import TERMINAL, LocalDurableDriver, RuntimeStatus
    from localdev.durable.store import LocalFolderHistoryStore

    store_desc, name, root_parts, kind = _source_location(args.source)
    workdir = Path(args.workdir).resolve()
    state_dir = Path(args.state).resolve()
    fields = dict(item.split("=", 1) for item in args.field)
    settings = AppSettings(JOB_POLL_INTERVAL_S=1)
    source_store, source = _open_source(store_desc, name, root_parts, args, settings)
    if source is not None:
        _check_against_source(args, source)
    location = source_store.describe(name)
    label = args.entity or (Path(name).stem if kind == "csv" or source is None else source.entity)
    cfg = ExportConfig(
        name=export_name(location, args.list_id, args.entity, label),
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
    etag = source_store.info(name).etag
    base_id = instance_id(cfg.name, location, etag)
    history = LocalFolderHistoryStore(workdir / "history")
    _record_command(workdir, cfg.name, argv if argv is not None else sys.argv[1:])

    def waiting(iid: str):
        return lambda holder: print(f"run {iid} is being driven by {holder}; waiting for it", file=sys.stderr)

    with ExitStack() as stack:
        base_url, list_id, emulator = stack.enter_context(
            klaviyo_endpoint(args.klaviyo_url, args.list_id, args.dry_run, workdir=workdir, export=cfg.name)
        )
        cfg.list_id = list_id
        run = build_run(
            cfg,
            conn,
            name,
            settings,
            instance_id(cfg.name, location, etag, datetime.now(UTC)),
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

        driver = stack.enter_context(LocalDurableDriver(function_app.app, history))
        unfinished = []
        for iid in history.instance_ids():
            record = history.load(iid)
            if record is not None and RuntimeStatus(record["runtimeStatus"]) not in TERMINAL:
                unfinished.append(iid)
        own = [i for i in unfinished if i.startswith(f"{cfg.name}.")]
        _note_other_runs(history, workdir, [i for i in unfinished if i not in own])
        # Runs of this export that were left unfinished carry on here (they hold its turn), each once its
        # lease is ours: a run another command is driving is waited for, not driven twice.
        ours, done_elsewhere = None, None
        for iid in own:
            driver.lease(iid, on_wait=waiting(iid))
            status = driver.get_status(iid)
            if status is None or status.is_terminal:
                if status is not None and iid.startswith(base_id):
                    done_elsewhere = status
                continue
            print(f"resuming run {iid} where it stopped", file=sys.stderr)
            driver.resume([iid])
            if iid.startswith(base_id):
                ours = iid
        if done_elsewhere is not None and ours is None:
            print(f"run {done_elsewhere.instance_id} finished in the command it waited for", file=sys.stderr)
            final = done_elsewhere
        else:
            if ours is None:
                ours = run["run_id"]
                driver.lease(ours, on_wait=waiting(ours))
                driver.start_new(ORCHESTRATOR, ours, run)
            final = _wait(driver, ours, on_progress)
    if isinstance(final.output, dict):
        report = dict(final.output)
        if report.get("rejects_file"):
            report["rejects_file"] = str(workdir / "reports" / report["rejects_file"])
        if emulator is not None:
            report["klaviyo_emulator"] = emulator
        return report
    reason = (final.failure_details or {}).get("errorMessage") or f"run ended {final.runtime_status}"
    raise RunFailed(reason)


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
