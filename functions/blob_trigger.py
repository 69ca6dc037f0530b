"""The Event Grid-sourced blob trigger on the segments container.

Bound to a BlobClient (SDK-type binding), so the worker hands over a client, not the blob's bytes: only
the name and ETag are read here, and the activities stream the data later.
"""

from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
import azurefunctions.extensions.bindings.blob as blob

from shared.platform.config import ConfigStore
from shared.platform.runtime import blob_store, open_store
from shared.platform.settings import get_settings
from shared.runs import runs_for_blob

bp = df.Blueprint()
log = logging.getLogger(__name__)


@bp.blob_trigger(
    arg_name="client_blob",
    path="%SEGMENTS_CONTAINER%/{name}",
    connection="SEGMENTS_STORAGE",
    source="EventGrid",
)
@bp.durable_client_input(client_name="client")
async def on_segment_export(client_blob: blob.BlobClient, client: df.DurableOrchestrationClient) -> None:
    settings = get_settings()
    # Async for the durable client; the SDK's blocking calls go to a thread, off the worker's event loop.
    props = await asyncio.to_thread(client_blob.get_blob_properties)
    configs = ConfigStore(open_store(blob_store("app", settings.config_container), settings))
    outcomes = await runs_for_blob(
        client, configs, settings, client_blob.container_name, client_blob.blob_name, props.etag.strip('"')
    )
    for outcome in outcomes:
        if outcome.get("error"):
            log.error("export %s not started: %s", outcome["export"], outcome["error"])
        else:
            log.info("export %s: run %s started=%s", outcome["export"], outcome["instance_id"], outcome["started"])
