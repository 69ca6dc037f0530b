"""A small client of the local host's HTTP API (the demo and the tests use it), and the app settings for a
local host on Azurite and a Klaviyo endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"Completed", "Failed", "Terminated"}


def app_settings(
    storage: str,
    klaviyo_url: str,
    klaviyo_key: str,
    *,
    suffix: str = "",
    function_key: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The settings of the app for a local run: both storage accounts on ``storage`` (Azurite's connection
    string), Klaviyo at ``klaviyo_url`` with ``klaviyo_key``, no Key Vault. ``suffix`` gives every
    container its own name (tests that share one Azurite)."""
    tail = f"-{suffix}" if suffix else ""
    settings = {
        "AzureWebJobsStorage": storage,
        "SEGMENTS_STORAGE": storage,
        "SEGMENTS_CONTAINER": f"segments{tail}",
        "CONFIG_CONTAINER": f"export-config{tail}",
        "WORKSPACE_CONTAINER": f"run-workspace{tail}",
        "REPORTS_CONTAINER": f"run-reports{tail}",
        "KLAVIYO_API_KEY": klaviyo_key,
        "KLAVIYO_BASE_URL": klaviyo_url,
        "KEY_VAULT_URL": "",
        "JOB_POLL_INTERVAL_S": "1",
        **extra,
    }
    if function_key:
        settings["LOCAL_FUNCTION_KEY"] = function_key
    return settings


class ApiError(RuntimeError):
    def __init__(self, response: httpx.Response):
        self.response = response
        request = response.request
        super().__init__(f"{request.method} {request.url.path}: HTTP {response.status_code} {response.text[:500]}")


class HostClient:
    """``HostClient(base_url, function_key)``: the app's HTTP API with the function key sent as
    ``x-functions-key``."""

    def __init__(self, base_url: str, function_key: str, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers={"x-functions-key": function_key}, timeout=timeout)

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()

    def put_connection(self, name: str, api_key: str | None = None, **fields: Any) -> dict:
        body = {"accept_privacy_terms": True, **fields}
        if api_key is not None:
            body["api_key"] = api_key
        return self._ok(self.http.put(f"/api/connections/{name}", json=body))

    def put_export(self, name: str, config: dict) -> dict:
        return self._ok(self.http.put(f"/api/exports/{name}", json=config))

    def start_run(self, name: str, dry_run: bool = False) -> dict:
        params = {"dry_run": "true"} if dry_run else {}
        return self._ok(self.http.post(f"/api/exports/{name}/runs", params=params))

    def get_run(self, instance_id: str) -> dict | None:
        """``GET /api/runs/{id}``; None while no such run exists (yet)."""
        response = self.http.get(f"/api/runs/{instance_id}")
        if response.status_code == 404:
            return None
        return self._ok(response)

    def wait_for_run(
        self,
        instance_id: str,
        timeout: float = 300.0,
        *,
        until: Callable[[dict], bool] | None = None,
        on_status: Callable[[dict], None] | None = None,
        interval: float = 0.2,
    ) -> dict:
        """Poll ``GET /api/runs/{id}`` until ``until(status)`` (default: the run finished); returns that status.
        Raises TimeoutError after ``timeout`` seconds."""
        until = until or (lambda status: status["runtime_status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        last: dict | None = None
        while True:
            status = self.get_run(instance_id)
            if status is not None:
                last = status
                if on_status is not None:
                    on_status(status)
                if until(status):
                    return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {instance_id} not in the awaited state after {timeout:g} s (last: {last})")
            time.sleep(interval)  # polling the status API, as a user would: the condition is checked above
