"""Every setting the app reads, in one place (pydantic-settings: environment variables / app settings).

local.settings.example.json lists the same names with local defaults; the README explains each.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # The app's own storage account: configurations, run workspaces, reports (and the durable task hub).
    app_storage: str = Field("", alias="AzureWebJobsStorage")
    app_storage_blob_uri: str = Field("", alias="AzureWebJobsStorage__blobServiceUri")
    # The account Customer Insights exports into (connection string locally, service URI + identity in Azure).
    segments_storage: str = Field("", alias="SEGMENTS_STORAGE")
    segments_storage_blob_uri: str = Field("", alias="SEGMENTS_STORAGE__blobServiceUri")
    segments_container: str = Field("segments", alias="SEGMENTS_CONTAINER")
    csv_prefix: str = Field("csv/", alias="CSV_PREFIX")
    config_container: str = Field("export-config", alias="CONFIG_CONTAINER")
    workspace_container: str = Field("run-workspace", alias="WORKSPACE_CONTAINER")
    reports_container: str = Field("run-reports", alias="REPORTS_CONTAINER")

    key_vault_url: str = Field("", alias="KEY_VAULT_URL")
    secret_cache_ttl_s: float = Field(300.0, alias="SECRET_CACHE_TTL_S")
    klaviyo_base_url: str = Field("https://a.klaviyo.com", alias="KLAVIYO_BASE_URL")
    # Set (by Bicep) where App Service authentication fronts the app: a request without a principal is 401.
    # Unset, a function key holder without a principal is trusted as an administrator.
    auth_require_principal: bool = Field(False, alias="AUTH_REQUIRE_PRINCIPAL")

    push_wave_width: int = Field(8, ge=1, le=64, alias="PUSH_WAVE_WIDTH")
    chunk_rows: int = Field(10_000, ge=100, le=1_000_000, alias="CHUNK_ROWS")
    job_poll_interval_s: int = Field(5, ge=1, le=300, alias="JOB_POLL_INTERVAL_S")
    # Days that finished runs' durable history is kept (reports and rejects files: the same, in Bicep).
    run_retention_days: int = Field(90, ge=1, le=3650, alias="RUN_RETENTION_DAYS")


@lru_cache(maxsize=1)
def get_settings() -> AppSettings:
    return AppSettings()
