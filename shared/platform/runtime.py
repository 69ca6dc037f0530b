"""Where a run's pieces live, resolved from small descriptors that travel in durable payloads.

A store descriptor is {"kind": "local", "root": "/abs/folder"} or
{"kind": "blob", "account": "app" | "segments", "container": "name"}; blob accounts come from settings
(a connection string locally, a service URI + managed identity in Azure), never from the payload.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from shared.platform.secrets import SecretProvider, get_secret_provider
from shared.platform.settings import AppSettings, get_settings
from shared.platform.storage import BlobStore, LocalStore, ObjectStore

# The Azure SDK logs an Information record for every HTTP request (URL, headers) and every token it gets; the
# worker forwards Python records to Application Insights under the function's category, where host.json's
# log levels cannot tell them from the app's own. Their warnings and errors still pass.
NOISY_SDK_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity")


def quiet_sdk_loggers() -> None:
    for name in NOISY_SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def local_store(root: str) -> dict:
    return {"kind": "local", "root": root}


def blob_store(account: str, container: str) -> dict:
    return {"kind": "blob", "account": account, "container": container}


@lru_cache(maxsize=64)
def _blob(account: str, container: str, conn_str: str, service_uri: str) -> BlobStore:
    if conn_str:
        return BlobStore.from_connection_string(conn_str, container)
    if service_uri:
        return BlobStore.from_account_url(service_uri, container)
    raise ValueError(f"no storage configured for the {account} account")


def open_store(desc: dict, settings: AppSettings | None = None) -> ObjectStore:
    settings = settings or get_settings()
    if desc["kind"] == "local":
        return LocalStore(desc["root"])
    if desc["account"] == "segments":
        conn, uri = settings.segments_storage, settings.segments_storage_blob_uri
    else:
        conn, uri = settings.app_storage, settings.app_storage_blob_uri
    return _blob(desc["account"], desc["container"], conn, uri)


def secrets() -> SecretProvider:
    return get_secret_provider()
