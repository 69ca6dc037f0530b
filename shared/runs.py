"""Starting runs: the durable input of a run, its instance id, and what a blob event or a request starts.

The durable client is passed in (anything with the DurableOrchestrationClient methods used here), so this
module stays free of azure.functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
from datetime import UTC, datetime

from shared.platform.config import ConfigStore, Connection, ExportConfig
from shared.platform.errors import ConfigError, SourceError
from shared.platform.runtime import blob_store
from shared.platform.settings import AppSettings
from shared.platform.storage import ObjectStore

ORCHESTRATOR = "export_orchestrator"
ACTIVE = {"Pending", "Running", "ContinuedAsNew"}


def instance_id(export: str, source_path: str, etag: str, manual_at: datetime | None = None) -> str:
    """Derived from the export and the source's identity (path + ETag): an event delivered twice names the
    same run. Export names hold no '.', so '<export>.' prefixes every run of one export. A run asked for
    on demand gets a time suffix, so it can re-run a source that was already run."""
    digest = hashlib.sha256(f"{export}\n{source_path}\n{etag}".encode()).hexdigest()[:24]
    suffix = f"-m{manual_at:%Y%m%d%H%M%S%f}" if manual_at else ""
    return f"{export}.{digest}{suffix}"


def build_run(
    cfg: ExportConfig,
    conn: Connection,
    source_path: str,
    settings: AppSettings,
    run_id: str,
    *,
    dry_run: bool = False,
    full_resync: bool | None = None,
    source_store: dict | None = None,
    root_parts: list[str] | None = None,
    workspace_store: dict | None = None,
    state_store: dict | None = None,
    reports_store: dict | None = None,
    klaviyo_base_url: str | None = None,
    rate_limits: bool = True,
    allow_mass_removal: bool = False,
    max_reject_share: float | None = None,
    trigger: str = "http",
) -> dict:
    """The orchestration's input: small, and holding no secret (only the Key Vault secret's name)."""
    conn.require_accepted()
    return {
        "run_id": run_id,
        "export": cfg.name,
        "list_id": cfg.list_id,
        "mode": cfg.mode,
        "trigger": trigger,
        "dry_run": dry_run,
        "full_resync": cfg.full_resync if full_resync is None else full_resync,
        "max_profiles": cfg.max_profiles,
        "max_reject_share": cfg.max_reject_share if max_reject_share is None else max_reject_share,
        "source": {
            "store": source_store or blob_store("segments", cfg.source.container),
            "name": source_path,
            "root_parts": root_parts if root_parts is not None else [cfg.source.container],
            "entity": cfg.source.entity,
            "delimiter": cfg.source.delimiter,
        },
        "mapping": {
            "email_field": cfg.email_field,
            "field_mappings": dict(cfg.field_mappings),
            "consent": cfg.subscribe.model_dump() if cfg.mode == "subscribe" and cfg.subscribe else None,
        },
        "mirror": (
            {"max_removal_share": cfg.mirror.max_removal_share, "allow_mass_removal": allow_mass_removal}
            if cfg.mode == "mirror" and cfg.mirror
            else None
        ),
        "workspace": {
            "store": workspace_store or blob_store("app", settings.workspace_container),
            "prefix": f"runs/{cfg.name}/{run_id}/",
        },
        "state": {
            "store": state_store or blob_store("app", settings.workspace_container),
            "prefix": f"state/{conn.name}/{cfg.list_id}/",
        },
        "reports": {
            "store": reports_store or blob_store("app", settings.reports_container),
            "name": f"runs/{cfg.name}/{run_id}.json",
        },
        "klaviyo": {
            "base_url": klaviyo_base_url or settings.klaviyo_base_url,
            "secret_name": conn.secret_name,
            "rate_limits": rate_limits,
        },
        # The webhook is configuration, not a secret (logs and reports show it redacted): it travels like the rest.
        "notify": cfg.notify.model_dump(mode="json") if cfg.notify else None,
        "wave_width": settings.push_wave_width,
        "chunk_rows": settings.chunk_rows,
        "poll_interval_s": settings.job_poll_interval_s,
        "started_at": datetime.now(UTC).isoformat(),
    }


def latest_source(segments: ObjectStore, cfg: ExportConfig) -> str:
    """The blob an on-demand run reads: the export's model.json, or its newest-named CSV."""
    names = [n for n in segments.list(cfg.source.path_prefix) if cfg.source.matches(n)]
    if not names:
        raise SourceError(f"no export found under {cfg.source.container}/{cfg.source.path_prefix}")
    return sorted(names, key=lambda n: (posixpath.dirname(n), n))[-1]


async def runs_for_blob(
    client,
    configs: ConfigStore,
    settings: AppSettings,
    container: str,
    blob_path: str,
    etag: str,
    **run_options,
) -> list[dict]:
    """What one BlobCreated event starts: one run per export watching the path. An instance that already
    exists under the derived id (pending, running or finished) is not started again. Called on the worker's
    event loop: configuration reads (blocking) run on a thread."""
    outcomes = []
    for cfg in await asyncio.to_thread(configs.exports_watching, container, blob_path):
        iid = instance_id(cfg.name, f"{container}/{blob_path}", etag)
        existing = await client.get_status(iid)
        if existing is not None and getattr(existing, "runtime_status", None) is not None:
            outcomes.append({"export": cfg.name, "instance_id": iid, "started": False})
            continue
        try:
            conn = await asyncio.to_thread(configs.get_connection, cfg.connection)
            run = build_run(cfg, conn, blob_path, settings, iid, trigger="blob", **run_options)
        except ConfigError as exc:
            outcomes.append({"export": cfg.name, "instance_id": iid, "started": False, "error": str(exc)})
            continue
        await client.start_new(ORCHESTRATOR, iid, run)
        outcomes.append({"export": cfg.name, "instance_id": iid, "started": True})
    return outcomes
