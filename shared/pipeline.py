"""The export pipeline's steps, as the durable activities run them: plan, push, check jobs, finish.

Each step takes and returns small JSON-able dicts (names, counts, byte ranges), never rows; bulk data lives
in the run's workspace. The Klaviyo key is fetched inside the steps that call Klaviyo and never leaves
them. Steps are safe to retry: upserts are idempotent and the sync state is committed only by `finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import orjson

from shared.finishing import statefiles
from shared.finishing.notify import notify_run
from shared.finishing.report import JobSummary, RunReport
from shared.finishing.telemetry import emit_run_finished
from shared.planning.columnar import ColumnarProfiles
from shared.planning.plan import KEYS_DTYPE, PlanOptions, SyncState, plan_export
from shared.planning.profiles import PHONE_WARNING, ProfileMapper, email_key
from shared.planning.units import PlanReader
from shared.platform.config import DEFAULT_MAX_REJECT_SHARE
from shared.platform.errors import ExportError, SourceError
from shared.platform.runtime import open_store, secrets
from shared.platform.storage import ObjectStore
from shared.pushing import turns
from shared.pushing.klaviyo.batching import BatchBuilder
from shared.pushing.klaviyo.budget import account_limiter
from shared.pushing.klaviyo.client import KlaviyoClient
from shared.pushing.klaviyo.errors import KlaviyoError, KlaviyoUnavailable
from shared.pushing.klaviyo.limits import RateLimiter
from shared.pushing.klaviyo.models import SubscribeProfile
from shared.reading.source import open_source

log = logging.getLogger(__name__)
FAILURES_SAMPLE = 20
SUBSCRIBE_SOURCE = "Customer Insights segment export"
MAX_JOB_LIST_ITEMS = 2_000  # how far back the account's job list is read before asking job by job


# -- fatal problems --------------------------------------------------------------------------------


class Fatal(Exception):
    """Raised in the orchestrator for a step that returned {"fatal": message}; `bad_source`: the export's
    source cannot be read whole (a SourceError), rather than a limit, the configuration or Klaviyo."""

    def __init__(self, message: str, bad_source: bool = False):
        super().__init__(message)
        self.bad_source = bad_source


def fatal_as_result(step):
    """Problems that a retry cannot fix (bad source, bad configuration, Klaviyo's 4xx) come back as
    {"fatal": one line} instead of an exception, so the durable retry policy only retries what is transient
    (5xx after the client's own retries, dropped connections, crashes)."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except (ExportError, KlaviyoError) as exc:
            if isinstance(exc, KlaviyoUnavailable):
                raise
            return {"fatal": fatal_message(exc), "bad_source": isinstance(exc, SourceError)}

    return wrapper


def fatal_message(exc: BaseException) -> str:
    """One line for the report: our own errors and Klaviyo's as they are, anything else with its type."""
    text = str(exc) if isinstance(exc, ExportError | KlaviyoError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# -- sync state ------------------------------------------------------------------------------------


def load_state(store: ObjectStore, prefix: str) -> SyncState | None:
    if not store.exists(f"{prefix}meta.json"):
        return None
    meta = orjson.loads(store.read_bytes(f"{prefix}meta.json"))
    keys = np.frombuffer(store.read_bytes(f"{prefix}keys.bin"), KEYS_DTYPE)
    return SyncState(keys, meta["mapping_key"])


def _write_meta(store: ObjectStore, prefix: str, profiles: int, mapping_key: str, run_id: str) -> None:
    meta = {"mapping_key": mapping_key, "profiles": profiles, "run_id": run_id, "at": datetime.now(UTC)}
    store.write_bytes(f"{prefix}meta.json", orjson.dumps(meta))


# -- helpers ---------------------------------------------------------------------------------------


def _workspace(run: dict) -> tuple[ObjectStore, str]:
    return open_store(run["workspace"]["store"]), run["workspace"]["prefix"]


def _source_store(run: dict) -> ObjectStore:
    return open_store(run["source"]["store"])


def _mapper(run: dict, columns: list[str]) -> ProfileMapper:
    mapping = run["mapping"]
    return ProfileMapper(columns, mapping["email_field"], mapping.get("field_mappings") or {}, mapping.get("consent"))


@contextlib.asynccontextmanager
async def _client(run: dict):
    """A client on its Klaviyo account's limiter: every push of every run on one account, in every process
    and instance, draws on one budget, kept in the app's storage beside the workspaces."""
    api_key, base_url = secrets().get(run["klaviyo"]["secret_name"]), run["klaviyo"]["base_url"]
    if run["klaviyo"].get("rate_limits", True):
        limiter = await account_limiter(base_url, api_key, open_store(run["workspace"]["store"]))
    else:
        limiter = RateLimiter.off()
    async with KlaviyoClient(api_key, base_url, limiter=limiter) as client:
        yield client


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- one run at a time per export ------------------------------------------------------------------


@fatal_as_result
def take_turn(run: dict) -> dict:
    workspace, _ = _workspace(run)
    source_time = _source_store(run).info(run["source"]["name"]).modified
    return {**turns.take_turn(workspace, run["export"], run["run_id"], source_time), "source_time": source_time}


# -- plan ------------------------------------------------------------------------------------------


@fatal_as_result
def plan(run: dict) -> dict:
    """Read the whole source once; fail before anything is sent if it cannot be read whole."""
    src = run["source"]
    source = open_source(
        _source_store(run), src["name"], src.get("root_parts") or [], src.get("entity"), src.get("delimiter", ",")
    )
    mapper = _mapper(run, source.columns)
    state = load_state(open_store(run["state"]["store"]), run["state"]["prefix"])
    workspace, prefix = _workspace(run)
    mirror = run.get("mirror") if run.get("mode") == "mirror" else None
    options = PlanOptions(
        chunk_rows=run.get("chunk_rows", 10_000),
        max_profiles=run.get("max_profiles"),
        full_resync=bool(run.get("full_resync")),
        state=state,
        mirror_share=mirror["max_removal_share"] if mirror else None,
        allow_mass_removal=bool(mirror and mirror.get("allow_mass_removal")),
        max_reject_share=run.get("max_reject_share"),
    )
    if run.get("list_id") and not run.get("dry_run"):  # before the long read: a wrong key or URL fails at once
        asyncio.run(_check_list(run))
    return plan_export(source, mapper, workspace, prefix, options)


async def _check_list(run: dict) -> None:
    """A wrong list id or key fails the run before anything is sent, with Klaviyo's own words; a Klaviyo
    that cannot be connected to at all (refused, no such host: a wrong URL, a proxy, no network) fails it
    too, naming the URL, rather than going through every retry of the activity."""
    try:
        async with _client(run) as client:  # (which first asks Klaviyo whose key it is, once per key)
            await client.get_list(run["list_id"])
    except KlaviyoUnavailable as exc:
        if not isinstance(exc.__cause__, httpx.ConnectError):
            raise
        base_url = run["klaviyo"]["base_url"].rstrip("/")
        raise ExportError(
            f"cannot connect to Klaviyo at {base_url} after {exc.attempts} attempts ({exc.detail})"
        ) from None


# -- push ------------------------------------------------------------------------------------------


@fatal_as_result
def push(run: dict, index: int, unit: list[int]) -> dict:
    """Send one unit: read its rows from the source's byte ranges, build bulk import jobs, submit them."""
    workspace, prefix = _workspace(run)
    reader = PlanReader(workspace, prefix)
    source = _source_store(run)
    reader.check_unchanged(source)
    mapper = _mapper(run, reader.plan["columns"])
    built = build_unit(reader, source, unit, mapper, subscribing=run.get("mode") == "subscribe")
    batches, builder, key_by_locator, consenting, counts = built
    jobs, record, refused = asyncio.run(_submit(run, batches, builder.rejects, consenting))
    for job in record["jobs"]:
        job["keys"] = [key_by_locator[loc] for loc in job["locators"]]
    record["rejected"] = [{**reader.where(r.locator), "reason": r.detail} for r in refused]
    record["rejected_keys"] = [key_by_locator[r.locator] for r in refused]
    workspace.write_bytes(f"{prefix}push/{index:06d}.json", orjson.dumps(record))
    return {
        "unit": index,
        "jobs": jobs,
        "submitted": sum(j["total"] for j in jobs),
        "rejected": len(record["rejected"]),
        "warnings": counts["warnings"],
        "warning_kinds": counts["warning_kinds"],
        "subscribed": record["subscribed"],
        "not_consented": counts["not_consented"],
    }


def build_unit(reader: PlanReader, source: ObjectStore, unit: list[int], mapper: ProfileMapper, subscribing: bool):
    """The CPU side of a push: the unit's rows read back, mapped and batched into bulk import jobs.
    (batches, builder with oversize rejects, email key by locator, consenting profiles, counts)"""
    now = datetime.now(UTC)
    key_by_locator: dict[int, int] = {}
    consenting: list[tuple[int, SubscribeProfile]] = []
    counts = {"warnings": 0, "not_consented": 0, "warning_kinds": {}}
    kinds = counts["warning_kinds"]  # the warnings by what they say (the console shows the breakdown)

    columnar: dict[str, ColumnarProfiles] = {}
    builder = BatchBuilder()
    batches = []
    for chunk in reader.unit_chunks(unit):
        if not subscribing:  # consent is read row by row
            if chunk.part.name not in columnar:
                columnar[chunk.part.name] = ColumnarProfiles(chunk.part.fmt, mapper)
            piece = chunk.read(source)
            built = columnar[chunk.part.name].build_chunk(piece, chunk.records, chunk.chosen)
            if built is not None:
                made, sizes, ekeys, warnings = built
                counts["warnings"] += warnings
                if warnings:
                    kinds[PHONE_WARNING] = kinds.get(PHONE_WARNING, 0) + warnings
                locators = (chunk.chosen + chunk.first_gid).tolist()  # row ids: see PlanReader.where
                key_by_locator.update(zip(locators, ekeys.tolist(), strict=True))
                batches += builder.add_many(locators, made, sizes)
                continue
        for locator, row, email in reader.iter_rows(source, chunk):
            profile, warning = mapper.profile_json(row, email)
            if subscribing:
                consented, consented_at, consent_warning = mapper.consent_of(row, now)
                if consent_warning:
                    kinds[consent_warning] = kinds.get(consent_warning, 0) + 1
                if consented:
                    consenting.append((locator, SubscribeProfile(email, consented_at=consented_at)))
                else:
                    counts["not_consented"] += 1
            if warning is not None:
                kinds[warning] = kinds.get(warning, 0) + 1
            # Each warning counts once, as in warning_kinds: a row can carry a phone's and a consent's.
            counts["warnings"] += (warning is not None) + (subscribing and consent_warning is not None)
            key_by_locator[locator] = email_key(email)
            if (full := builder.add(locator, profile)) is not None:
                batches.append(full)
    if (last := builder.flush()) is not None:
        batches.append(last)
    return batches, builder, key_by_locator, consenting, counts


async def _submit(run: dict, batches, oversize, consenting) -> tuple[list[dict], dict, list]:
    jobs: list[dict] = []
    refused = list(oversize)
    record: dict = {"jobs": [], "subscribed": 0}
    async with _client(run) as client:
        for batch in batches:
            result = await client.submit_import_job(batch, run["list_id"])
            refused += result.rejected
            if result.job_id:
                jobs.append({"id": result.job_id, "total": result.submitted})
                record["jobs"].append({"id": result.job_id, "locators": list(result.locators)})
        if consenting:
            # Only people whose consent the export records, and whose profile Klaviyo took.
            refused_at = {r.locator for r in refused}
            ok = [profile for locator, profile in consenting if locator not in refused_at]
            await client.subscribe_profiles(run["list_id"], ok, custom_source=SUBSCRIBE_SOURCE)
            record["subscribed"] = len(ok)
    return jobs, record, refused


# -- mirror: remove who left the segment --------------------------------------------------------------


@fatal_as_result
def remove_departed(run: dict) -> dict:
    """Take out of the list the profiles this app put there earlier that left the segment (planned, and
    checked against the mass-removal guard, by `plan`). Ids are looked up by email; 1,000 removed a call."""
    workspace, prefix = _workspace(run)
    gone = np.frombuffer(workspace.read_bytes(f"{prefix}remove.bin"), np.uint64)
    state_store, state_prefix = open_store(run["state"]["store"]), run["state"]["prefix"]
    state = load_state(state_store, state_prefix)
    if state is None or not len(gone):
        return {"removed": 0, "not_found": 0}
    pos = np.searchsorted(state.keys["e"], gone)
    # Only the departed rows' emails, streamed (the whole list of a 5 M-profile state is ~700 MB of str).
    wanted = [e for e in statefiles.lines_at(state_store, f"{state_prefix}emails.txt", pos) if e]

    async def go() -> dict:
        async with _client(run) as client:
            ids = await client.lookup_profile_ids(wanted)
            await client.remove_list_members(run["list_id"], list(ids.values()))
            return {"removed": len(ids), "not_found": len(wanted) - len(ids)}

    return asyncio.run(go())


# -- check jobs ------------------------------------------------------------------------------------


@fatal_as_result
def check_jobs(run: dict, job_ids: list[str]) -> list[dict]:
    """The state of the run's jobs. Klaviyo's job list answers for 100 jobs a call, newest first; pages
    are read until every job is found (jobs missing from the first pages - another tool's jobs pushed
    them back - are asked for one by one)."""

    async def go() -> list[dict]:
        wanted, found = set(job_ids), {}
        async with _client(run) as client:
            seen = 0
            async for job in client.iter_import_jobs():
                if job.id in wanted:
                    found[job.id] = job
                    if len(found) == len(wanted):
                        break
                seen += 1
                if seen >= MAX_JOB_LIST_ITEMS:
                    break
            for job_id in wanted - found.keys():
                found[job_id] = await client.get_import_job(job_id)
        return [_job_state(found[j]) for j in job_ids]

    return asyncio.run(go())


def _job_state(job) -> dict:
    return {
        "id": job.id,
        "status": job.status,
        "total": job.total_count,
        "completed": job.completed_count,
        "failed": job.failed_count,
    }


# -- finish ----------------------------------------------------------------------------------------


def finish(run: dict, outcome: dict) -> dict:
    """Write the report and the rejects file; commit the sync state for what Klaviyo confirmed.

    `outcome`: {"plan": plan summary | None, "pushes": [push results], "jobs": [job states], "error": str | None}
    """
    started = time.monotonic()
    planned = outcome.get("plan") or {}
    jobs = {j["id"]: j for j in outcome.get("jobs") or []}
    reports = open_store(run["reports"]["store"])
    report_name = run["reports"]["name"]
    rejects_name = report_name.removesuffix(".json") + ".rejects.ndjson"
    superseded_by = outcome.get("superseded_by")
    report = RunReport(
        export=run["export"],
        run_id=run["run_id"],
        status="failed" if outcome.get("error") else ("superseded" if superseded_by else "succeeded"),
        dry_run=bool(run.get("dry_run")),
        mode=run.get("mode", "upsert"),
        trigger=run.get("trigger"),
        mass_removal_override=bool((run.get("mirror") or {}).get("allow_mass_removal")),
        max_reject_share=run.get("max_reject_share"),
        reject_share_override=(run.get("max_reject_share") or 0) > DEFAULT_MAX_REJECT_SHARE,
        bad_source=bool(outcome.get("bad_source")),
        list_id=run.get("list_id"),
        source=planned.get("source"),
        entity=planned.get("entity"),
        rows_read=planned.get("rows_read", 0),
        rows_rejected=planned.get("rows_rejected", 0),
        duplicate_rows=planned.get("duplicate_rows", 0),
        profiles_unchanged=planned.get("profiles_unchanged", 0),
        rejects_sample=planned.get("rejects_sample", []),
        started_at=run.get("started_at"),
        error=outcome.get("error"),
    )
    report.profiles_submitted = planned.get("profiles_to_send", 0) if planned else 0
    # The rejects file streams through a temporary file: the plan's part alone is ~90 bytes a rejected or
    # duplicate row (16 MB for a 3 M-row export with 6% of such rows), better not held three times over.
    lines = tempfile.TemporaryFile()
    excluded: set[int] = set()
    if planned:
        workspace, prefix = _workspace(run)
        if workspace.exists(planned["rejects_file"]):
            for piece in workspace.iter_bytes(planned["rejects_file"]):
                lines.write(piece)  # NDJSON lines, each ending with a newline
        if not report.dry_run:
            pushes = outcome.get("pushes") or []
            failures, excluded = asyncio.run(_collect_failures(run, workspace, prefix, pushes, jobs))
            report.profiles_failed = len(failures)
            report.failures_sample = failures[:FAILURES_SAMPLE]
            lines.writelines(orjson.dumps(f) + b"\n" for f in failures)
            report.jobs = [JobSummary(**{k: j[k] for k in ("id", "status", "total", "completed", "failed")})
                           for j in jobs.values()]  # fmt: skip
            report.profiles_imported = sum(j["completed"] for j in jobs.values())
            pushes = outcome.get("pushes") or []
            report.warnings = sum(p.get("warnings", 0) for p in pushes)
            for push_result in pushes:
                for what, n in (push_result.get("warning_kinds") or {}).items():
                    report.warning_kinds[what] = report.warning_kinds.get(what, 0) + n
            report.profiles_subscribed = sum(p.get("subscribed", 0) for p in pushes)
            report.profiles_not_consented = sum(p.get("not_consented", 0) for p in pushes)
            report.profiles_removed = (outcome.get("removal") or {}).get("removed", 0)
    else:
        report.profiles_submitted = 0
    if report.status != "failed" and report.profiles_failed:
        report.status = "partially_succeeded"
    if problems := report.count_problems():  # a report never contradicts itself: such a run fails, unsaved
        report.status = "failed"
        report.error = f"the run's counts do not add up ({'; '.join(problems)}); the sync state was not saved"
    with lines:
        if not lines.tell():
            lines.write(b"\n")  # an empty rejects file is one blank line, as it has always been
        lines.seek(0)
        reports.write_file(rejects_name, lines)
    report.rejects_file = rejects_name
    if planned and report.status != "failed" and not report.dry_run:
        _commit(run, planned, excluded)
    if not report.dry_run and not superseded_by and outcome.get("source_time") is not None:
        workspace, _ = _workspace(run)
        turns.end_turn(workspace, run["export"], run["run_id"], outcome["source_time"], report.status != "failed")
    if superseded_by:
        report.error = f"superseded by run {superseded_by}, which ran a newer write of the same source"
        newer, own = outcome.get("superseded_source_time"), outcome.get("source_time")
        if newer is not None and own is not None:
            report.error += f" (written {_utc(newer)}; this run's source was written {_utc(own)})"
        report.error += "; nothing was sent"
    ended = datetime.now(UTC)
    report.ended_at = ended
    if report.started_at:
        report.duration_s = round((ended - report.started_at).total_seconds(), 3)
    else:
        report.duration_s = round(time.monotonic() - started, 3)
    body = report.model_dump(mode="json")
    reports.write_bytes(report_name, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    # After the report is written: the webhook (whose outcome is recorded in the report, never its status)
    # and the run's telemetry record.
    located = {
        **body,
        "report_location": reports.describe(report_name),
        "rejects_location": reports.describe(rejects_name),
    }
    notification = notify_run(run.get("notify"), located)
    if notification is not None:
        body["notification"] = notification
        reports.write_bytes(report_name, orjson.dumps(body, option=orjson.OPT_INDENT_2))
    emit_run_finished(body)
    return body


def clean_up(run: dict) -> dict:
    """Delete the run's workspace (plan, emails, push records) once `finish` has returned: nothing reads it
    after that, and it holds every email of the segment (~60 MB per million rows). Until then it stays,
    as a resumed or retried step needs it. Safe to repeat; the Blob lifecycle rule removes what a failed
    clean-up leaves."""
    workspace, prefix = _workspace(run)
    return {"deleted": workspace.delete_prefix(prefix)}


async def _collect_failures(
    run: dict, workspace: ObjectStore, prefix: str, pushes: list[dict], jobs: dict
) -> tuple[list[dict], set[int]]:
    """Every profile that did not make it: stripped on a 400, reported on any page of a job's import
    errors, or in a job that never completed. Returns them (with locators) and their email keys."""
    failures: list[dict] = []
    excluded: set[int] = set()
    where = PlanReader(workspace, prefix).where
    # Only the pushes this run's orchestration recorded (a retried push overwrote its own record).
    units = sorted({p["unit"] for p in pushes})
    async with _client(run) as client:
        for unit in units:
            record = orjson.loads(workspace.read_bytes(f"{prefix}push/{unit:06d}.json"))
            failures += [{**r, "kind": "failed"} for r in record["rejected"]]
            excluded.update(record.get("rejected_keys", []))
            for job in record["jobs"]:
                state = jobs.get(job["id"])
                if state is None or state["status"] != "complete":
                    status = state["status"] if state else "unknown"
                    for loc in job["locators"]:
                        failures.append({**where(loc), "reason": f"import job {status}", "kind": "failed"})
                    excluded.update(job["keys"])
                    continue
                if not state["failed"]:
                    continue
                async for err in client.iter_import_errors(job["id"]):
                    if err.index is None or not 0 <= err.index < len(job["locators"]):
                        continue
                    reason = err.detail or err.title or err.code
                    failures.append({**where(job["locators"][err.index]), "reason": reason, "kind": "failed"})
                    excluded.add(job["keys"][err.index])
    return failures, excluded


def _commit(run: dict, planned: dict, excluded: set[int]) -> None:
    """The new state: every profile of this export as planned (keys and emails from the plan), less those
    Klaviyo did not confirm, so that they are sent again next run. Streamed either way (flat memory)."""
    workspace, prefix = _workspace(run)
    store, state_prefix = open_store(run["state"]["store"]), run["state"]["prefix"]
    if not excluded:  # the usual case: the plan's files become the state as they are
        for name in ("keys.bin", "emails.txt"):
            store.copy_from(workspace, f"{prefix}{name}", f"{state_prefix}{name}")
        profiles = workspace.info(f"{prefix}keys.bin").size // KEYS_DTYPE.itemsize
    else:
        wanted = np.fromiter(excluded, np.uint64, len(excluded))
        drop, _ = statefiles.rows_with_keys(workspace, f"{prefix}keys.bin", wanted)
        profiles = statefiles.copy_without(workspace, prefix, store, state_prefix, drop)
    _write_meta(store, state_prefix, profiles, planned["mapping_key"], run["run_id"])
